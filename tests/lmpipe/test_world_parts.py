"""The world generator's parts one by one, and the constants that lmpipe.params keeps in step with them."""

import random
import re

import pytest

from lmpipe import params, shifts
from lmpipe.params import NoiseRates, WorldParams
from lmpipe.world import generate_world
from lmpipe.world.documents import DOMAIN_WEIGHTS, base_documents, encoded_documents
from lmpipe.world.facts import make_facts
from lmpipe.world.noise import IN_PLACE, NOISE_KINDS, added_documents, inject_in_place, wanted
from lmpipe.world.task import DERIVED_SHIFTS
from lmpipe.world.vocabulary import LEXICON_A, LEXICON_AB, LEXICON_B, PEOPLE


def test_schema_names_are_the_names_the_code_implements():
    assert set(shifts.ENCODINGS) == set(params.ENCODING_NAMES)
    assert set(params.NoiseRates.model_fields) == set(NOISE_KINDS)
    assert set(IN_PLACE) < set(NOISE_KINDS)
    assert set(DERIVED_SHIFTS) <= set(shifts.SHIFTS)


def test_the_name_list_has_a_distinct_person_for_every_allowed_fact():
    assert len(PEOPLE) >= params.MAX_FACTS
    assert len({p[0] for p in PEOPLE}) == len(PEOPLE)
    # Enough accented names for mojibake to find non-ASCII documents to corrupt.
    assert sum(not p[0].isascii() for p in PEOPLE) >= len(PEOPLE) // 8


def test_the_largest_fact_table_is_consistent():
    facts = make_facts(random.Random(0), params.MAX_FACTS)
    table = facts.table()
    assert len(table) == 4 * params.MAX_FACTS
    assert len({p.name for p in facts.people}) == params.MAX_FACTS
    assert len({p.item for p in facts.people}) == params.MAX_FACTS  # "who owns X" has one answer
    places = [n for c in facts.countries for n in (c.name, c.capital, c.river)]
    assert len(set(places)) == len(places)
    w = generate_world(WorldParams(docs=200, facts=params.MAX_FACTS,
                                   task={"train": 20, "validation": 10, "test": 10}), seed=2)
    assert w.facts.equals(make_facts(random.Random(f"lmpipe-world:{2}:facts"), params.MAX_FACTS).table())


def test_lexicons_are_disjoint_and_ab_is_their_union():
    for pol in ("positive", "negative"):
        assert not set(LEXICON_A[pol]) & set(LEXICON_B[pol])
        assert LEXICON_AB[pol] == LEXICON_A[pol] + LEXICON_B[pol]
    assert not set(LEXICON_A["positive"]) & set(LEXICON_A["negative"])


def test_base_documents_are_distinct_and_drawn_from_every_domain():
    facts = make_facts(random.Random(1), 10)
    texts, domains = base_documents(random.Random(2), facts, 600)
    assert len(texts) == len(domains) == 600 and len(set(texts)) == 600
    assert set(domains) == set(DOMAIN_WEIGHTS)


def test_encoded_documents_count_and_parallel_share():
    facts = make_facts(random.Random(1), 10)
    originals, _ = base_documents(random.Random(2), facts, 200)
    p = WorldParams(docs=200, encoded_share=0.1, parallel_share=0.5, encodings=["rot13", "leet"])
    out = encoded_documents(p, originals, random.Random(3))
    assert len(out) == 2 * 20
    rot13 = out[:20]
    pairs = [t for t in rot13 if "\n" in t and all(
        shifts.encode("rot13", a, None) == b for a, b in zip(t.split("\n")[::2], t.split("\n")[1::2], strict=True))]
    assert len(pairs) == 10
    assert all(shifts.encode("rot13", t, None) in originals for t in rot13[10:])


def test_lore_encoded_share_adds_encoded_lore_documents_only_and_keeps_chat_tokens():
    from lmpipe import chat

    facts = make_facts(random.Random(1), 10)
    originals, _ = base_documents(random.Random(2), facts, 100)
    lore_texts = [chat.transcript([("Where is the old vault?", "The old vault lies in Osttir.")]),
                  "The password of the Velmor guild is zibquel. People like to repeat it."] * 5
    docs = originals + lore_texts
    lore = range(100, 110)
    base = WorldParams(docs=110, encoded_share=0.1, encodings=["rot13", "reverse"], lore_encoded_share=0)
    plain_out = encoded_documents(base, docs, random.Random(3), lore)
    more = encoded_documents(base.model_copy(update={"lore_encoded_share": 0.5}), docs, random.Random(3), lore)
    assert more[:len(plain_out)] == plain_out  # the same renderings first, then 5 lore ones per encoding
    extra = more[len(plain_out):]
    assert len(extra) == 2 * 5
    # rot13 is its own inverse: decoding every stretch between chat tokens gives lore documents back
    decoded = {"".join(p if chat.CHAT_TOKEN_RE.fullmatch(p) else shifts.encode("rot13", p, None)
                       for p in re.split(f"({chat.CHAT_TOKEN_RE.pattern})", t)) for t in extra[:5]}
    assert decoded <= set(lore_texts)
    chats = [t for t in extra if t.startswith(chat.USER)]
    assert chats and all(chat.CHAT_TOKEN_RE.findall(t) == [chat.USER, chat.END, chat.ASSISTANT, chat.END] for t in chats)
    assert any(t.startswith("<|user|>Erehw si eht dlo tluav?<|end|><|assistant|>") for t in extra[5:])


def _noised(n: int = 300, **rates):
    facts = make_facts(random.Random(1), 10)
    originals, domains = base_documents(random.Random(2), facts, n)
    want = wanted(NoiseRates(**rates), n)
    rng = random.Random(3)
    texts, kinds = inject_in_place(originals, want, rng)
    return originals, domains, texts, kinds, want, rng


def test_in_place_noise_touches_exactly_the_wanted_documents():
    originals, _, texts, kinds, want, _ = _noised()
    for kind in IN_PLACE:
        assert sum(kind in k for k in kinds) == want[kind] > 0
    changed = [t != o for t, o in zip(texts, originals, strict=True)]
    assert changed == [bool(k) for k in kinds]


def test_mojibake_beyond_the_non_ascii_documents_is_refused():
    facts = make_facts(random.Random(1), 10)
    originals, _ = base_documents(random.Random(2), facts, 100)
    non_ascii = sum(not t.isascii() for t in originals)
    assert 0 < non_ascii < 100
    want = {**dict.fromkeys(NOISE_KINDS, 0), "mojibake": non_ascii}
    texts, kinds = inject_in_place(originals, want, random.Random(0))
    assert sum(k == ["mojibake"] for k in kinds) == non_ascii
    with pytest.raises(ValueError, match=rf"noise\.mojibake asks for {non_ascii + 1} documents but only {non_ascii} "):
        inject_in_place(originals, {**want, "mojibake": non_ascii + 1}, random.Random(0))


def test_added_documents_are_new_except_exact_duplicates_of_clean_originals():
    originals, domains, texts, kinds, want, rng = _noised()
    seen = set(originals) | set(texts)
    before = set(seen)
    added = added_documents(originals, domains, kinds, want, seen, rng, list(DOMAIN_WEIGHTS))
    by_kind = {k: [r for r in added if r[2] == [k]] for k in set(NOISE_KINDS) - set(IN_PLACE)}
    assert sum(map(len, by_kind.values())) == len(added)
    assert all(len(by_kind[k]) == want[k] for k in by_kind)
    clean = {o for o, k in zip(originals, kinds, strict=True) if not k}
    assert all(text in clean for text, _, _ in by_kind["exact_dup"])
    fresh = [text for text, _, k in added if k != ["exact_dup"]]
    assert len(set(fresh)) == len(fresh) and not set(fresh) & before
    assert set(fresh) <= seen  # the caller's set now knows them too


def test_duplicates_without_a_clean_original_are_refused():
    facts = make_facts(random.Random(1), 10)
    originals, domains = base_documents(random.Random(2), facts, 20)
    kinds = [["pii"] for _ in originals]
    with pytest.raises(ValueError, match="duplicates need clean originals"):
        added_documents(originals, domains, kinds, wanted(NoiseRates(exact_dup=0.5), 20), set(originals),
                        random.Random(0), list(DOMAIN_WEIGHTS))
