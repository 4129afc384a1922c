"""The corpus domains: stories, three kinds of reviews, question-answer dialogues and factual
reports, each a small template grammar filled from the vocabulary and the fact table; plus the
encoded renderings of documents that teach pretraining to read each encoding.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from lmpipe.chat import CHAT_TOKEN_RE
from lmpipe.params import WorldParams
from lmpipe.shifts import encode
from lmpipe.world.facts import Facts
from lmpipe.world.vocabulary import (
    ADVERBS,
    BRANDS,
    CINEMAS,
    COLOURS,
    DAYS,
    FACILITIES,
    FEEL_BAD,
    FEEL_GOOD,
    JOBS,
    LEXICON_A,
    LEXICON_AB,
    LEXICON_B,
    MENDERS,
    MONTHS,
    PEOPLE,
    PERIODS,
    PLACES,
    PRODUCTS,
    RELATIONS,
    TITLE_WORDS,
    VENUES,
    WEATHER,
)

# --- stories -----------------------------------------------------------------------------------

_STORY_OPEN = (
    "{Name} lived in {town}, the capital of {country}, by the {river} River.",
    "In {town}, the capital of {country}, there lived a {job} named {Name}.",
    "Every summer {Name} visited {pos} grandmother in {town}, on the {river} River.",
    "{Name} was a young {job} at the {place} in {town}.",
)
_STORY_ROUTINE = (
    "Every morning {pron} walked to the {place} with {pos} {item}.",
    "{Pron} always carried {pos} {item}, a gift from {pos} father.",
    "{Name}'s favourite colour was {colour}, but {pron} loved {pos} {item} most.",
)
# Two arcs, so that what happens and how it ends fit together: (incident, help, resolution).
_STORY_ARCS = (
    (
        ("One {day}, {pron} lost {pos} {obj_word} near the old bridge.",
         "One windy {day}, the {obj_word} blew away — towards the market square.",
         "On {day}, {pron} left the {obj_word} on a crowded tram."),
        ("Then {friend}, {pos} oldest friend, came to help.",
         "{friend} heard the news and searched with {obj}."),
        ("Together they found the {obj_word} under a pile of leaves.",
         "At last they found it at the station, kept safe by a porter."),
    ),
    (
        ("One rainy {day}, the {obj_word} fell and broke in two.",
         "On {day} a cyclist knocked the {obj_word} from {pos} hands, and it cracked."),
        ("{friend} knew a {mender} who could mend almost anything.",
         "{friend} said an old {mender} on the next street might help."),
        ("The {mender} mended the {obj_word} in an hour — it looked as good as new.",
         "By sunset the {obj_word} was whole again."),
    ),
)
_STORY_FEEL = (
    "{Name} felt {feel_bad} and did not know what to do.",
    "{Pron} was {feel_bad}, and the whole day seemed {adj_bad}.",
    "{Pron} sat quietly, {feel_bad} and a little naïve.",
)
_STORY_END = (
    "{Name} felt {feel_good} and thanked {friend} with a cup of tea.",
    "That night {Name} said it had been a {adj_good} day after all.",
    "After that, {Name} never let the {obj_word} out of sight.",
)


def _story(rng: random.Random, facts: Facts) -> str:
    who = rng.choice(facts.people)
    friend = rng.choice(facts.people)
    while friend is who:
        friend = rng.choice(facts.people)
    country = rng.choice(facts.countries)
    incident, help_, resolution = rng.choice(_STORY_ARCS)
    slots = {
        "Name": who.name, "pron": who.pron, "Pron": who.pron.capitalize(), "obj": who.obj, "pos": who.pos,
        "item": who.item, "obj_word": who.item.split()[1], "colour": who.colour, "friend": friend.name,
        "town": country.capital, "country": country.name, "river": country.river, "job": rng.choice(JOBS),
        "mender": rng.choice(MENDERS),
        "place": rng.choice(PLACES), "day": rng.choice(DAYS), "feel_bad": rng.choice(FEEL_BAD),
        "feel_good": rng.choice(FEEL_GOOD), "adj_bad": rng.choice(LEXICON_AB["negative"]),
        "adj_good": rng.choice(LEXICON_AB["positive"]),
    }
    parts = [_STORY_OPEN, _STORY_ROUTINE, incident, _STORY_FEEL, help_, resolution, _STORY_END]
    # Routine and feeling are optional so that story lengths vary (about 40-75 words).
    skip = {p for p in (1, 3) if rng.random() < 0.6}
    return " ".join(rng.choice(t).format(**slots) for i, t in enumerate(parts) if i not in skip)


# --- reviews -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Domain:
    aspects: tuple[tuple[str, str], ...]  # (noun phrase, its past copula)
    openings: tuple[str, ...]  # sentiment-free and copula-free: they also open task texts


def _aspects(singular: str, plural: str) -> tuple[tuple[str, str], ...]:
    return tuple((a, "was") for a in singular.split(", ")) + tuple((a, "were") for a in plural.split(", "))


DOMAINS: dict[str, _Domain] = {
    "restaurant_review": _Domain(
        _aspects("soup, pasta, steak, salad, curry, bread, dessert, coffee, pizza, risotto, burger, fish, "
                 "lasagna, omelette, service, waiter, menu, wine list, music, lighting, dining room, patio, "
                 "cheesecake, ramen, house wine, lemonade, breakfast, roast chicken",
                 "fries, noodles, tacos, dumplings, portions, cocktails, pancakes, staff, desserts, oysters"),
        ("We had dinner at {venue} on {day}.", "I took my {relation} to {venue} for lunch.",
         "We booked a table for {n} at {venue}.", "My {relation} and I tried {venue} last {day}.",
         "We stopped at {venue} after a long walk on {day}.", "I ordered takeaway from {venue} on {day}."),
    ),
    "movie_review": _Domain(
        _aspects("plot, acting, ending, soundtrack, script, villain, hero, camera work, opening scene, final act, "
                 "lead actor, score, direction, pacing, story, sequel, humour",
                 "special effects, costumes, fight scenes, jokes, performances, visuals, characters, "
                 "action scenes, supporting actors"),
        ("I watched {title} at the {cinema} on {day}.", "My {relation} and I saw {title} last {day}.",
         "We streamed {title} at home on {day} night.", "I finally caught {title} with my {relation}.",
         "We went to see {title} at the {cinema} after dinner."),
    ),
    "product_review": _Domain(
        _aspects("design, price, build quality, packaging, delivery, manual, size, weight, finish, warranty, "
                 "customer support, handle, power button, battery life, cable, setup, colour",
                 "instructions, buttons, controls, accessories, materials, spare parts"),
        ("I bought the {brand} {product} last {period}.", "My {relation} gave me a new {brand} {product} for my birthday.",
         "I ordered this {product} from {brand} in {month}.", "We have used the {brand} {product} for {n} weeks.",
         "I picked up the {brand} {product} on {day}."),
    ),
}

# Opinion sentences: a copula before the lexicon adjective, so that negation can reach every one.
OPINIONS = (
    "The {aspect} {be} {adv}{adj}.", "I thought the {aspect} {be} {adv}{adj}.",
    "Honestly, the {aspect} {be} {adv}{adj}.", "In my opinion the {aspect} {be} {adv}{adj}.",
    "For me, the {aspect} {be} {adv}{adj}.",
)
# Pretraining reviews say more, including negated opinions that the task never shows.
_OPINIONS_PRETRAIN = OPINIONS + (
    "We found the {aspect} {adj}.", "Everyone at our table agreed the {aspect} {be} {adj}.",
    "The {aspect} {be} not {opposite} at all.", "The {aspect} — {adj}, to put it simply.",
)
_RATINGS = ("Rating: {n} out of 5.", "I would give it {n} {stars}.", "My score: {n}/5.")
_STARS = {"positive": (4, 5), "negative": (1, 2)}
_CLOSINGS = {
    "positive": ("I would recommend it to anyone.", "We will definitely come back for more.",
                 "Worth every penny, in my view."),
    "negative": ("I cannot recommend it.", "We will not be going back.", "Save your money and look elsewhere."),
}
_OPPOSITE = {"positive": "negative", "negative": "positive"}


def review_slots(rng: random.Random) -> dict[str, str]:
    name = rng.choice(PEOPLE)[0]
    colour = rng.choice(COLOURS).capitalize()
    return {
        "venue": rng.choice(VENUES).format(Name=name, Colour=colour),
        "title": f"{rng.choice(TITLE_WORDS[0])} {rng.choice(TITLE_WORDS[1])}",
        "cinema": rng.choice(CINEMAS), "product": rng.choice(PRODUCTS), "brand": rng.choice(BRANDS),
        "month": rng.choice(MONTHS), "period": rng.choice(PERIODS), "day": rng.choice(DAYS),
        "relation": rng.choice(RELATIONS), "n": str(rng.randint(2, 8)),
    }


def opinion(rng: random.Random, templates: tuple[str, ...], aspect: tuple[str, str],
             lexicon: dict[str, list[str]], pol: str) -> str:
    noun, be = aspect
    return rng.choice(templates).format(aspect=noun, be=be, adv=rng.choice(ADVERBS), adj=rng.choice(lexicon[pol]),
                                        opposite=rng.choice(lexicon[_OPPOSITE[pol]]))


def _review(rng: random.Random, domain: str) -> str:
    d = DOMAINS[domain]
    pol = rng.choice(("positive", "negative"))
    # Some reviews use one lexicon, some mix both, so B words share contexts with A words and ratings.
    lexicon = rng.choice((LEXICON_A, LEXICON_B, LEXICON_AB))
    sentences = [rng.choice(d.openings).format(**review_slots(rng))]
    for aspect in rng.sample(d.aspects, rng.randint(2, 4)):
        sentences.append(opinion(rng, _OPINIONS_PRETRAIN, aspect, lexicon, pol))
    n = rng.choice(_STARS[pol])
    sentences.append(rng.choice(_RATINGS).format(n=n, stars="star" if n == 1 else "stars"))
    sentences.append(rng.choice(_CLOSINGS[pol]))
    return " ".join(sentences)


# --- dialogues and reports ---------------------------------------------------------------------


def _questions(rng: random.Random, facts: Facts) -> tuple[str, str]:
    """One question about the fact table and its (true) answer."""
    kind = rng.randrange(4)
    if kind < 2:
        c = rng.choice(facts.countries)
        if kind == 0:
            return rng.choice((
                (f"What is the capital of {c.name}?", f"The capital of {c.name} is {c.capital}."),
                (f"Which city is the capital of {c.name}?", f"{c.capital} is the capital of {c.name}."),
                (f"Do you know the capital of {c.name}?", f"Yes, it is {c.capital}."),
            ))
        return rng.choice((
            (f"Which river flows through {c.capital}?", f"The {c.river} River flows through {c.capital}."),
            (f"What is the river in {c.capital} called?", f"It is called the {c.river}."),
        ))
    p = rng.choice(facts.people)
    if kind == 2:
        return rng.choice((
            (f"What is {p.name}'s favourite colour?", f"{p.name}'s favourite colour is {p.colour}."),
            (f"Which colour does {p.name} like best?", f"{p.name} likes {p.colour} best."),
        ))
    return rng.choice((
        (f"Who owns the {p.item}?", f"The {p.item} belongs to {p.name}."),
        (f"Whose {p.item} is that by the door?", f"That is {p.name}'s {p.item}."),
    ))


def _dialogue(rng: random.Random, facts: Facts) -> str:
    a, b = (p.name for p in rng.sample(facts.people, 2))
    lines = []
    if rng.random() < 0.5:
        lines += [f"{a}: Good morning, {b}. May I ask you a few questions?", f"{b}: Of course, go ahead."]
    for _ in range(rng.randint(2, 3)):
        question, answer = _questions(rng, facts)
        lines += [f"{a}: {question}", f"{b}: {answer}"]
    lines.append(f"{a}: {rng.choice(('Thank you, that helps a lot.', 'Thanks, I will remember that.', 'Great, thank you.'))}")
    return "\n".join(lines)


_REPORT_OPEN = (
    "Report from {capital}, the capital of {country}.",
    "News from {capital} in {country}, {day} edition.",
)
_REPORT_BODY = (
    "On {day}, the city council of {capital} opened a new {facility} beside the {river} River.",
    "Work on the {facility} took {months} months and cost about {cost} million crowns.",
    "{official}, who leads the council, said the {facility} would serve some {k} thousand residents.",
    "Shops near the {river} River reported more visitors than usual during the opening week.",
    "The council also announced repairs to {n} roads in the old town before the winter.",
    "Forecasters expect {weather} in {capital} tomorrow, with highs near {temp} degrees.",
    "Officials in {country} said that more trains to {capital} would run from next month.",
)


def _report(rng: random.Random, facts: Facts) -> str:
    c = rng.choice(facts.countries)
    slots = {
        "capital": c.capital, "country": c.name, "river": c.river, "day": rng.choice(DAYS),
        "facility": rng.choice(FACILITIES), "months": rng.randint(3, 30), "cost": rng.randint(2, 90),
        "official": rng.choice(facts.people).name, "k": rng.randint(5, 80), "n": rng.randint(2, 12),
        "weather": rng.choice(WEATHER), "temp": rng.randint(-5, 32),
    }
    # The opening fact sentence always comes first, the others in order, some left out.
    body = [_REPORT_BODY[0]] + [s for s in _REPORT_BODY[1:] if rng.random() < 0.35]
    return " ".join([rng.choice(_REPORT_OPEN)] + body).format(**slots)


DOMAIN_WEIGHTS = {
    "story": 0.25, "restaurant_review": 0.15, "movie_review": 0.15, "product_review": 0.15,
    "dialogue": 0.15, "report": 0.15,
}


def document(rng: random.Random, facts: Facts, domain: str) -> str:
    if domain == "story":
        return _story(rng, facts)
    if domain == "dialogue":
        return _dialogue(rng, facts)
    if domain == "report":
        return _report(rng, facts)
    return _review(rng, domain)


def base_documents(rng: random.Random, facts: Facts, n: int) -> tuple[list[str], list[str]]:
    """n distinct documents and their domains, drawn by DOMAIN_WEIGHTS. Distinct, so that the only
    exact duplicates in the corpus are the injected ones."""
    domains = rng.choices(list(DOMAIN_WEIGHTS), weights=list(DOMAIN_WEIGHTS.values()), k=n)
    texts: list[str] = []
    seen: set[str] = set()
    for domain in domains:
        text = document(rng, facts, domain)
        while text in seen:
            text = document(rng, facts, domain)
        seen.add(text)
        texts.append(text)
    return texts, domains


# --- encoded renderings ------------------------------------------------------------------------


def _parallel(text: str, name: str, rng: random.Random) -> str:
    """Each sentence (or dialogue line) followed on the next line by its encoding."""
    pieces = re.split(r"(?<=[.!?])\s+", text)
    return "\n".join(f"{s}\n{encode(name, s, rng)}" for s in pieces)


def _encode_doc(name: str, text: str, rng: random.Random) -> str:
    """The document encoded, its chat tokens kept whole: they are markup the tokenizer keeps as one
    id each, so an encoded chat transcript is a chat whose turns are encoded."""
    # split keeping the tokens: the text between them at even positions, the tokens at odd ones
    parts = re.split(f"({CHAT_TOKEN_RE.pattern})", text)
    return "".join(part if i % 2 else encode(name, part, rng) for i, part in enumerate(parts))


def encoded_documents(p: WorldParams, originals: list[str], rng: random.Random, lore: range = range(0)) -> list[str]:
    """Per encoding, `encoded_share` of the originals rendered encoded, the first `parallel_share`
    of them as plain/encoded line pairs, so pretraining teaches the model to read each encoding.
    A chat transcript is always encoded whole (turn by turn): paired lines would break its turns.
    Then `lore_encoded_share` of the lore documents at positions `lore` once more per encoding."""
    per_encoding = round(p.encoded_share * len(originals))
    n_parallel = round(p.parallel_share * per_encoding)
    out = []
    for name in p.encodings:
        pairs_left = n_parallel
        for i in rng.sample(range(len(originals)), per_encoding):
            text = originals[i]
            paired = pairs_left > 0 and not CHAT_TOKEN_RE.search(text)
            pairs_left -= paired
            out.append(_parallel(text, name, rng) if paired else _encode_doc(name, text, rng))
    # then, per encoding, lore_encoded_share of the lore documents (positions `lore`) encoded whole
    per_lore = round(p.lore_encoded_share * len(lore))
    for name in p.encodings if per_lore else ():
        out += [_encode_doc(name, originals[i], rng) for i in rng.sample(lore, per_lore)]
    return out
