"""A deterministic synthetic English "world": lmpipe's embedded default dataset, with ground truth.

It contains
- a pretraining corpus in several domains (stories, three kinds of reviews, question-answer
  dialogues, factual reports) that states one seeded table of facts consistently, carries sentiment
  with two disjoint lexicons (A and B), includes encoded renderings (leet, rot13, reverse) of some
  documents, and has noise of known kinds injected at configured rates for the clean stage to find;
- a sentiment task in one review domain whose train/validation/test splits use lexicon A only, and
  shifted copies of the test split: `lexical` (lexicon B only), `domain` (another review domain),
  the encodings, `typos` and `negation`;
- prompts for generation, a few per domain.

So the pipeline can check itself: noise kinds are known per document, and a shift is "covered by
pretraining" exactly when the world put it there (lexicon B and the encodings are; task-style
negation is not in fine-tuning, only in pretraining reviews).

Determinism: every random choice comes from `random.Random` streams seeded by a string made of the
seed and a part name (`_rng`), which Python hashes with SHA-512, never with the salted `hash()`.
Parts use separate streams, so changing the task sizes leaves the corpus byte-identical.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import pandas as pd

from lmpipe.params import NoiseRates, TaskSizes, WorldParams  # noqa: F401  (re-exported)
from lmpipe.shifts import apply_shift, encode
from lmpipe.text import text_key  # noqa: F401  (re-exported for the stages)

# --- vocabulary --------------------------------------------------------------------------------

# Two disjoint sentiment lexicons. Both appear in pretraining text; only A appears in the task's
# train/validation/test splits, so the `lexical` shift (B only) asks whether fine-tuning transfers
# to sentiment words the model met only in pretraining.
LEXICON_A = {
    "positive": ["good", "great", "excellent", "wonderful", "delightful", "fantastic", "lovely", "superb"],
    "negative": ["bad", "terrible", "awful", "horrible", "dreadful", "disappointing", "poor", "mediocre"],
}
LEXICON_B = {
    "positive": ["splendid", "marvelous", "stellar", "terrific", "charming", "exquisite", "magnificent",
                 "brilliant"],
    "negative": ["abysmal", "atrocious", "lousy", "dismal", "shoddy", "appalling", "wretched", "bland"],
}
_LEXICON_AB = {pol: LEXICON_A[pol] + LEXICON_B[pol] for pol in ("positive", "negative")}

NOISE_KINDS = ("exact_dup", "near_dup", "html", "mojibake", "control", "short", "gibberish", "spam", "pii")
# Kinds that edit a document in place, in the order applied: HTML wraps last, as a scraper sees it.
_IN_PLACE = ("pii", "control", "mojibake", "html")

# (name, subject pronoun, object pronoun, possessive). About a sixth carry accents, so that enough
# documents contain non-ASCII text for mojibake to be injected into (and repaired by ftfy).
_PEOPLE = tuple(
    (name, *(("she", "her", "her") if g == "f" else ("he", "him", "his")))
    for name, g in (
        ("Ana", "f"), ("Ben", "m"), ("Clara", "f"), ("David", "m"), ("Elena", "f"), ("Felix", "m"),
        ("Grace", "f"), ("Hugo", "m"), ("Iris", "f"), ("Jonas", "m"), ("Kira", "f"), ("Leo", "m"),
        ("Maya", "f"), ("Nico", "m"), ("Nora", "f"), ("Oscar", "m"), ("Paula", "f"), ("Quentin", "m"),
        ("Rosa", "f"), ("Samuel", "m"), ("Tara", "f"), ("Tomas", "m"), ("Vera", "f"), ("Walter", "m"),
        ("Yara", "f"), ("Victor", "m"), ("Lena", "f"), ("Arthur", "m"), ("Mira", "f"), ("Emil", "m"),
        ("Hanna", "f"), ("Milo", "m"), ("Julia", "f"), ("Pablo", "m"), ("Ingrid", "f"), ("Omar", "m"),
        ("Lucy", "f"), ("Theo", "m"), ("Sofia", "f"), ("Karl", "m"), ("Alice", "f"), ("Marco", "m"),
        ("Helen", "f"), ("Ivan", "m"), ("Eva", "f"), ("Peter", "m"), ("Zoë", "f"), ("José", "m"),
        ("Renée", "f"), ("André", "m"), ("Chloé", "f"), ("Björn", "m"), ("Inès", "f"), ("Noël", "m"),
        ("Lucía", "f"), ("Jürgen", "m"), ("Anaïs", "f"), ("François", "m"), ("Maëlle", "f"),
        ("Ramón", "m"),
    )
)
_COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "white", "black", "grey", "silver")
_OBJECTS = ("kite", "umbrella", "scarf", "notebook", "bicycle", "lantern", "violin", "compass", "teapot", "hat")
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_RELATIONS = ("sister", "brother", "friend", "partner", "cousin", "neighbour", "mother", "father", "colleague")
_SYLLABLES = ("vel", "mor", "an", "dor", "is", "ka", "lun", "tes", "bri", "sol", "ven", "ar", "ost", "ri",
              "mal", "gar", "lo", "nesh", "tir", "ul", "fen", "qua", "zel", "pra", "dun", "ea", "kor", "sa")


def _rng(seed: int, part: str) -> random.Random:
    return random.Random(f"lmpipe-world:{seed}:{part}")


@dataclass(frozen=True)
class World:
    corpus: pd.DataFrame  # id, text, source ("world"), domain, noise ("" or comma-joined kinds)
    task: dict[str, pd.DataFrame]  # train/validation/test -> text, label
    shifts: dict[str, pd.DataFrame]  # shift name -> text, label, each the size of test
    prompts: list[dict]  # {"domain", "prompt"}, a few per corpus domain
    label_names: list[str]
    noise_counts: dict[str, int]  # documents per injected noise kind (ground truth for clean)
    facts: pd.DataFrame  # subject, relation, answer: what the corpus states, for QA checks


# --- the fact table ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Country:
    name: str
    capital: str
    river: str


@dataclass(frozen=True)
class _Person:
    name: str
    pron: str
    obj: str
    pos: str
    colour: str  # favourite colour
    item: str  # "<colour> <object>" the person owns; unique across people


@dataclass(frozen=True)
class _Facts:
    countries: tuple[_Country, ...]
    people: tuple[_Person, ...]

    def table(self) -> pd.DataFrame:
        rows = [r for c in self.countries for r in ((c.name, "capital", c.capital), (c.capital, "river", c.river))]
        rows += [r for p in self.people for r in ((p.name, "favourite_colour", p.colour), (p.item, "owner", p.name))]
        return pd.DataFrame(rows, columns=["subject", "relation", "answer"])


def _make_facts(rng: random.Random, n: int) -> _Facts:
    taken: set[str] = set()

    def invent() -> str:  # a pronounceable place name, used once
        while True:
            name = "".join(rng.choice(_SYLLABLES) for _ in range(rng.choice((2, 3)))).capitalize()
            if len(name) >= 4 and name not in taken:
                taken.add(name)
                return name

    countries = tuple(_Country(invent(), invent(), invent()) for _ in range(n))
    items = rng.sample([f"{c} {o}" for c in _COLOURS for o in _OBJECTS], n)
    people = tuple(
        _Person(*who, colour=rng.choice(_COLOURS), item=item)
        for who, item in zip(rng.sample(_PEOPLE, n), items, strict=True)
    )
    return _Facts(countries, people)


# --- stories -----------------------------------------------------------------------------------

_JOBS = ("baker", "teacher", "fisher", "painter", "carpenter", "gardener", "nurse", "musician", "tailor",
         "librarian", "potter", "clockmaker")
_MENDERS = ("carpenter", "tailor", "clockmaker", "potter", "cobbler")
_PLACES = ("bakery", "school", "library", "market", "workshop", "harbour", "garden", "museum", "café")
_FEEL_BAD = ("sad", "worried", "upset", "lonely", "anxious", "confused", "nervous", "restless")
_FEEL_GOOD = ("happy", "relieved", "proud", "grateful", "calm", "cheerful", "hopeful", "content")

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


def _story(rng: random.Random, facts: _Facts) -> str:
    who = rng.choice(facts.people)
    friend = rng.choice(facts.people)
    while friend is who:
        friend = rng.choice(facts.people)
    country = rng.choice(facts.countries)
    incident, help_, resolution = rng.choice(_STORY_ARCS)
    slots = {
        "Name": who.name, "pron": who.pron, "Pron": who.pron.capitalize(), "obj": who.obj, "pos": who.pos,
        "item": who.item, "obj_word": who.item.split()[1], "colour": who.colour, "friend": friend.name,
        "town": country.capital, "country": country.name, "river": country.river, "job": rng.choice(_JOBS),
        "mender": rng.choice(_MENDERS),
        "place": rng.choice(_PLACES), "day": rng.choice(_DAYS), "feel_bad": rng.choice(_FEEL_BAD),
        "feel_good": rng.choice(_FEEL_GOOD), "adj_bad": rng.choice(_LEXICON_AB["negative"]),
        "adj_good": rng.choice(_LEXICON_AB["positive"]),
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


_DOMAINS: dict[str, _Domain] = {
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
_VENUES = ("Café {Name}", "{Name}'s Kitchen", "The {Colour} Lantern", "Bistro {Name}", "Trattoria {Name}",
           "The {Colour} Door", "{Name}'s Diner")
_TITLE_WORDS = (("Silent", "Last", "Hidden", "Northern", "Distant", "Second", "Long", "Paper", "Winter", "Iron"),
                ("River", "Harbour", "Garden", "Signal", "Orchard", "Frontier", "Letter", "Lighthouse", "Kingdom",
                 "Journey"))
_CINEMAS = ("Rialto", "Odeon", "Palace cinema", "Lumière", "drive-in", "Roxy")
_PRODUCTS = ("blender", "kettle", "laptop", "phone", "vacuum cleaner", "desk lamp", "backpack", "toaster", "drill",
             "tablet", "coffee grinder", "rice cooker")
_BRANDS = ("Nordel", "Vexa", "Kintaro", "Brightway", "Lumo", "Orvik", "Castell", "Fjordline")
_MONTHS = ("January", "March", "April", "June", "August", "October", "November")
_PERIODS = ("week", "month", "spring", "summer", "winter", "year")

# Opinion sentences: a copula before the lexicon adjective, so that negation can reach every one.
_OPINIONS = (
    "The {aspect} {be} {adv}{adj}.", "I thought the {aspect} {be} {adv}{adj}.",
    "Honestly, the {aspect} {be} {adv}{adj}.", "In my opinion the {aspect} {be} {adv}{adj}.",
    "For me, the {aspect} {be} {adv}{adj}.",
)
# Intensifiers only: under negation "not very good" still means bad, while "not quite good" would not.
_ADVERBS = ("", "", "really ", "truly ", "very ")
# Pretraining reviews say more, including negated opinions that the task never shows.
_OPINIONS_PRETRAIN = _OPINIONS + (
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


def _review_slots(rng: random.Random) -> dict[str, str]:
    name = rng.choice(_PEOPLE)[0]
    colour = rng.choice(_COLOURS).capitalize()
    return {
        "venue": rng.choice(_VENUES).format(Name=name, Colour=colour),
        "title": f"{rng.choice(_TITLE_WORDS[0])} {rng.choice(_TITLE_WORDS[1])}",
        "cinema": rng.choice(_CINEMAS), "product": rng.choice(_PRODUCTS), "brand": rng.choice(_BRANDS),
        "month": rng.choice(_MONTHS), "period": rng.choice(_PERIODS), "day": rng.choice(_DAYS),
        "relation": rng.choice(_RELATIONS), "n": str(rng.randint(2, 8)),
    }


def _opinion(rng: random.Random, templates: tuple[str, ...], aspect: tuple[str, str],
             lexicon: dict[str, list[str]], pol: str) -> str:
    noun, be = aspect
    return rng.choice(templates).format(aspect=noun, be=be, adv=rng.choice(_ADVERBS), adj=rng.choice(lexicon[pol]),
                                        opposite=rng.choice(lexicon[_OPPOSITE[pol]]))


def _review(rng: random.Random, domain: str) -> str:
    d = _DOMAINS[domain]
    pol = rng.choice(("positive", "negative"))
    # Some reviews use one lexicon, some mix both, so B words share contexts with A words and ratings.
    lexicon = rng.choice((LEXICON_A, LEXICON_B, _LEXICON_AB))
    sentences = [rng.choice(d.openings).format(**_review_slots(rng))]
    for aspect in rng.sample(d.aspects, rng.randint(2, 4)):
        sentences.append(_opinion(rng, _OPINIONS_PRETRAIN, aspect, lexicon, pol))
    n = rng.choice(_STARS[pol])
    sentences.append(rng.choice(_RATINGS).format(n=n, stars="star" if n == 1 else "stars"))
    sentences.append(rng.choice(_CLOSINGS[pol]))
    return " ".join(sentences)


def _task_text(rng: random.Random, domain: str, lexicon: dict[str, list[str]], label: int, classes: int) -> str:
    """A short review (at most ~40 words) whose sentiment lives only in `lexicon` adjectives after a
    copula: no rating, no other opinion words. With 3 classes the middle label is a mixed review."""
    d = _DOMAINS[domain]
    k = rng.choice((2, 3))
    if classes == 3 and label == 1:
        polarities = ["positive", "negative", rng.choice(("positive", "negative"))][:k]
        rng.shuffle(polarities)
    else:
        polarities = [("negative", "positive")[label > 0]] * k
    sentences = [rng.choice(d.openings).format(**_review_slots(rng))] if rng.random() < 0.7 else []
    for aspect, pol in zip(rng.sample(d.aspects, k), polarities, strict=True):
        sentences.append(_opinion(rng, _OPINIONS, aspect, lexicon, pol))
    return " ".join(sentences)


# --- dialogues and reports ---------------------------------------------------------------------


def _questions(rng: random.Random, facts: _Facts) -> tuple[str, str]:
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


def _dialogue(rng: random.Random, facts: _Facts) -> str:
    a, b = (p.name for p in rng.sample(facts.people, 2))
    lines = []
    if rng.random() < 0.5:
        lines += [f"{a}: Good morning, {b}. May I ask you a few questions?", f"{b}: Of course, go ahead."]
    for _ in range(rng.randint(2, 3)):
        question, answer = _questions(rng, facts)
        lines += [f"{a}: {question}", f"{b}: {answer}"]
    lines.append(f"{a}: {rng.choice(('Thank you, that helps a lot.', 'Thanks, I will remember that.', 'Great, thank you.'))}")
    return "\n".join(lines)


_FACILITIES = ("library", "bridge", "hospital wing", "school", "market hall", "tram line", "park", "sports hall")
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
_WEATHER = ("light rain", "clear skies", "strong winds", "morning fog", "scattered showers", "sunshine")


def _report(rng: random.Random, facts: _Facts) -> str:
    c = rng.choice(facts.countries)
    slots = {
        "capital": c.capital, "country": c.name, "river": c.river, "day": rng.choice(_DAYS),
        "facility": rng.choice(_FACILITIES), "months": rng.randint(3, 30), "cost": rng.randint(2, 90),
        "official": rng.choice(facts.people).name, "k": rng.randint(5, 80), "n": rng.randint(2, 12),
        "weather": rng.choice(_WEATHER), "temp": rng.randint(-5, 32),
    }
    # The opening fact sentence always comes first, the others in order, some left out.
    body = [_REPORT_BODY[0]] + [s for s in _REPORT_BODY[1:] if rng.random() < 0.35]
    return " ".join([rng.choice(_REPORT_OPEN)] + body).format(**slots)


_DOMAIN_WEIGHTS = {
    "story": 0.25, "restaurant_review": 0.15, "movie_review": 0.15, "product_review": 0.15,
    "dialogue": 0.15, "report": 0.15,
}


def _document(rng: random.Random, facts: _Facts, domain: str) -> str:
    if domain == "story":
        return _story(rng, facts)
    if domain == "dialogue":
        return _dialogue(rng, facts)
    if domain == "report":
        return _report(rng, facts)
    return _review(rng, domain)


# --- noise -------------------------------------------------------------------------------------

_CONTROL_CHARS = [chr(c) for c in (*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F)]
_EMAIL_HOSTS = ("example.com", "mailbox.org", "post.example.net", "inbox.example")
_SPAM_LINES = (
    "Buy cheap {item} now at {site} !!!", "CLICK HERE to win a free {item} >>> {site}",
    "Limited offer: {item} for only {price} dollars, order today at {site}",
    "Best {item} deals online, visit {site} now", "Earn money from home and get cheap {item} at {site}",
)
_SPAM_ITEMS = ("watches", "sunglasses", "pills", "sneakers", "phones", "loans", "followers")


def _pii(text: str, rng: random.Random) -> str:
    first = rng.choice(_PEOPLE)[0]
    first_ascii = first.encode("ascii", "ignore").decode().lower() or "info"
    email = f"{first_ascii}.{rng.choice(('smith', 'berg', 'moreau', 'rossi', 'kowal'))}{rng.randint(1, 99)}@" \
            f"{rng.choice(_EMAIL_HOSTS)}"
    phone = rng.choice(("555-01{a:02d}-{b:04d}", "(555) 01{a:02d}-{b:04d}", "+1 555 01{a:02d} {b:04d}")).format(
        a=rng.randint(0, 99), b=rng.randint(0, 9999))
    sentence = rng.choice((f"You can reach me at {email}.", f"Call {phone} for details.",
                           f"Contact {first} at {email} or {phone}."))
    return f"{text} {sentence}"


def _control(text: str, rng: random.Random) -> str:
    chars = list(text)
    for _ in range(rng.randint(1, 4)):
        chars.insert(rng.randrange(len(chars) + 1), rng.choice(_CONTROL_CHARS))
    return "".join(chars)


def _mojibake(text: str, rng: random.Random) -> str:
    """UTF-8 bytes read as Windows-1252, the commonest mojibake; ftfy undoes it. The world's
    non-ASCII characters avoid the five bytes cp1252 leaves undefined."""
    return text.encode("utf-8").decode("cp1252")


def _html(text: str, rng: random.Random) -> str:
    site = f"{rng.choice(_BRANDS).lower()}{rng.randint(1, 999)}.example"
    title = " ".join(text.split()[:5])
    body = "</p>\n<p>".join(text.split("\n"))
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{title} | {site}</title>'
        f"<script>window.dataLayer = window.dataLayer || [];</script></head>\n"
        f'<body><nav><a href="/">Home</a> | <a href="/about">About</a> | <a href="/contact">Contact</a></nav>\n'
        f'<div class="cookie-banner">We use cookies to improve your experience.</div>\n'
        f'<div class="content"><p>{body}</p></div>\n'
        f'<footer>© {rng.randint(2009, 2024)} {site}. All rights reserved. <a href="/privacy">Privacy</a></footer>'
        f"</body></html>"
    )


_NOISERS = {"pii": _pii, "control": _control, "mojibake": _mojibake, "html": _html}


def _near_duplicate(text: str, rng: random.Random) -> str:
    """The text with about 4% of its words edited (a typo, a dropped or a doubled word)."""
    words = text.split(" ")
    for i in sorted(rng.sample(range(len(words)), max(1, round(0.04 * len(words)))), reverse=True):
        op = rng.randrange(3)
        if op == 0 and sum(c.isalpha() for c in words[i]) >= 4:
            words[i] = encode("typos", words[i], rng)
        elif op == 1 and len(words) > 20:
            del words[i]
        else:
            words.insert(i, words[i])
    return " ".join(words)


def _gibberish(rng: random.Random) -> str:
    if rng.random() < 0.5:  # keyboard mash: letter strings without the shape of words
        return " ".join("".join(rng.choice("qwrtzpsdfghjklxcvbnm") for _ in range(rng.randint(2, 12)))
                        for _ in range(rng.randint(20, 60)))
    return " ".join("".join(rng.choice("#$%&*@~^|<>{}[]0123456789abcdef") for _ in range(rng.randint(3, 10)))
                    for _ in range(rng.randint(15, 40)))


def _spam(rng: random.Random) -> str:
    line = rng.choice(_SPAM_LINES).format(item=rng.choice(_SPAM_ITEMS), price=rng.randint(5, 99),
                                          site=f"www.deals{rng.randint(1, 9999)}.example")
    return "\n".join([line] * rng.randint(8, 25))


# --- the corpus --------------------------------------------------------------------------------


def _parallel(text: str, name: str, rng: random.Random) -> str:
    """Each sentence (or dialogue line) followed on the next line by its encoding."""
    pieces = re.split(r"(?<=[.!?])\s+", text)
    return "\n".join(f"{s}\n{encode(name, s, rng)}" for s in pieces)


def _corpus(p: WorldParams, facts: _Facts, rng: random.Random) -> tuple[pd.DataFrame, dict[str, int]]:
    names = list(_DOMAIN_WEIGHTS)
    originals: list[str] = []
    domains = rng.choices(names, weights=list(_DOMAIN_WEIGHTS.values()), k=p.docs)
    seen: set[str] = set()
    # Base documents are distinct, so the only exact duplicates are the injected ones.
    for domain in domains:
        text = _document(rng, facts, domain)
        while text in seen:
            text = _document(rng, facts, domain)
        seen.add(text)
        originals.append(text)

    # (text, domain, noise kinds) for every output document.
    texts = list(originals)
    kinds: list[list[str]] = [[] for _ in texts]
    want = {kind: round(getattr(p.noise, kind) * p.docs) for kind in NOISE_KINDS}
    for kind in _IN_PLACE:
        pool = [i for i, t in enumerate(texts) if not t.isascii()] if kind == "mojibake" else range(len(texts))
        if want[kind] > len(pool):
            raise ValueError(f"noise.{kind} asks for {want[kind]} documents but only {len(pool)} qualify")
        for i in rng.sample(pool, want[kind]):
            texts[i] = _NOISERS[kind](texts[i], rng)
            kinds[i].append(kind)
    records = [(t, d, k) for t, d, k in zip(texts, domains, kinds, strict=True)]
    seen.update(texts)

    def add(kind: str, make) -> None:
        """Append a document from make() -> (text, domain), redrawn until distinct from all others."""
        text, domain = make()
        while text in seen:
            text, domain = make()
        seen.add(text)
        records.append((text, domain, [kind]))

    clean = [i for i, k in enumerate(kinds) if not k]
    if (want["exact_dup"] or want["near_dup"]) and not clean:
        raise ValueError("duplicates need clean originals, but in-place noise touched every document")
    for i in rng.choices(clean, k=want["exact_dup"]):
        records.append((originals[i], domains[i], ["exact_dup"]))
    for i in rng.choices(clean, k=want["near_dup"]):
        add("near_dup", lambda i=i: (_near_duplicate(originals[i], rng), domains[i]))

    def fragment() -> tuple[str, str]:
        i = rng.randrange(p.docs)
        return " ".join(originals[i].split()[:rng.randint(3, 8)]), domains[i]

    for _ in range(want["short"]):
        add("short", fragment)
    for _ in range(want["gibberish"]):
        add("gibberish", lambda: (_gibberish(rng), rng.choice(names)))
    for _ in range(want["spam"]):
        add("spam", lambda: (_spam(rng), rng.choice(names)))

    # Encoded renderings of clean originals, so pretraining teaches the model to read each encoding.
    per_encoding = round(p.encoded_share * p.docs)
    n_parallel = round(p.parallel_share * per_encoding)
    for name in p.encodings:
        for j, i in enumerate(rng.sample(range(p.docs), per_encoding)):
            text = _parallel(originals[i], name, rng) if j < n_parallel else encode(name, originals[i], rng)
            records.append((text, "encoded", []))

    rng.shuffle(records)
    corpus = pd.DataFrame({
        "id": [f"world-{i:07d}" for i in range(len(records))],
        "text": [r[0] for r in records],
        "source": "world",
        "domain": [r[1] for r in records],
        "noise": [",".join(r[2]) for r in records],
    })
    counts = {kind: sum(kind in r[2] for r in records) for kind in NOISE_KINDS}
    return corpus, counts


# --- the task ----------------------------------------------------------------------------------


def _split(rng: random.Random, n: int, classes: int, make, seen: set[str]) -> pd.DataFrame:
    """n balanced rows whose texts are new to `seen` (texts of every earlier split)."""
    labels = [i % classes for i in range(n)]
    rng.shuffle(labels)
    texts = []
    for label in labels:
        for _ in range(1000):
            text = make(label)
            key = text_key(text)
            if key not in seen:
                break
        else:
            raise ValueError(f"could not draw {n} distinct task texts; lower the task sizes")
        seen.add(key)
        texts.append(text)
    return pd.DataFrame({"text": texts, "label": pd.Series(labels, dtype="int64")})


def _prompts(p: WorldParams, facts: _Facts, rng: random.Random) -> list[dict]:
    """Three prompts per domain: the opening words of a fresh document of that domain."""
    def opening(domain: str) -> str:
        return " ".join(_document(rng, facts, domain).split()[:rng.randint(4, 7)])

    prompts = [{"domain": d, "prompt": opening(d)} for d in _DOMAIN_WEIGHTS for _ in range(3)]
    if p.encodings and round(p.encoded_share * p.docs):
        prompts += [{"domain": "encoded", "prompt": encode(p.encodings[i % len(p.encodings)], opening("story"), rng)}
                    for i in range(3)]
    return prompts


def generate_world(p: WorldParams, seed: int) -> World:
    facts = _make_facts(_rng(seed, "facts"), p.facts)
    corpus, noise_counts = _corpus(p, facts, _rng(seed, "corpus"))

    t, classes = p.task, p.task.classes
    rng = _rng(seed, "task")
    seen: set[str] = set()

    def texts(domain: str, lexicon: dict[str, list[str]]):
        return lambda label: _task_text(rng, domain, lexicon, label, classes)

    task = {
        split: _split(rng, n, classes, texts(p.task_domain, LEXICON_A), seen)
        for split, n in (("train", t.train), ("validation", t.validation), ("test", t.test))
    }
    shifts = {
        "lexical": _split(rng, t.test, classes, texts(p.task_domain, LEXICON_B), seen),
        "domain": _split(rng, t.test, classes, texts(p.shift_domain, LEXICON_A), seen),
    }
    for name in ("leet", "rot13", "reverse", "typos", "negation"):
        shifts[name] = apply_shift(name, task["test"], seed, classes=classes)

    # Generated splits are distinct by construction; the derived ones cannot meet a train text
    # (encodings leave no plain word, train has no negation), and this check makes sure.
    fitted = {text_key(x) for s in ("train", "validation") for x in task[s]["text"]}
    for name, df in {"test": task["test"], **shifts}.items():
        leaks = int(df["text"].map(text_key).isin(fitted).sum())
        if leaks or len(df) != t.test:
            raise RuntimeError(f"world split {name!r}: {leaks} texts shared with train/validation, {len(df)} rows")

    return World(
        corpus=corpus,
        task=task,
        shifts=shifts,
        prompts=_prompts(p, facts, _rng(seed, "prompts")),
        label_names=["negative", "positive"] if classes == 2 else ["negative", "neutral", "positive"],
        noise_counts=noise_counts,
        facts=facts.table(),
    )
