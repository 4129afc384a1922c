"""stages/cleaning.py: each repair and filter on crafted positives and negatives, dedup, PII,
the split, determinism, bad input, and precision/recall against a generated world's ground truth."""

from __future__ import annotations

import random

import pandas as pd
import pytest
from pydantic import ValidationError

from lmpipe.cleaning import (
    CHECKS,
    FILTER_ORDER,
    CleanParams,
    MinHashParams,
    clean_corpus,
    exact_key,
    first_failure,
    quality_signals,
    repair,
    score_against_ground_truth,
    scrub_pii,
    still_shows,
    validation_mask,
)
from lmpipe.io import StageError

PROSE = [
    "The harbour town woke slowly on winter mornings. Fishing boats rocked against the pier while "
    "gulls argued over the remains of yesterday's catch. Down by the market, the baker opened his "
    "shutters and the smell of warm bread drifted along the narrow streets. Children ran past on "
    "their way to school, their scarves trailing behind them like flags. Old Marta, who had sold "
    "flowers on the same corner for forty years, arranged her buckets of tulips and waited for the "
    "first customers. Nobody in the town could remember a morning when she had not been there.",
    "Our new kettle arrived on Tuesday and it has been a pleasure to use. It boils a full litre in "
    "under three minutes, the handle stays cool, and the lid opens with one press of a button. The "
    "only thing I would change is the cable, which is a little short for my kitchen. For the price "
    "it is an excellent choice, and I would happily buy it again.",
    "The committee met in the library to discuss the budget for the coming year. Most members agreed "
    "that the roof needed repairs before the rains, but there was a long debate about whether the "
    "garden should be replanted as well. In the end they decided to ask the town for a small grant "
    "and to hold a vote at the next meeting in March.",
    "When the train finally left the station, she opened her notebook and began to write. The "
    "fields outside were still covered with frost, and the sun was low over the hills. She wrote "
    "about her grandmother, about the house by the river, and about the summer they had spent "
    "building a boat that never sailed. By the time they reached the city, she had filled ten pages.",
]
P = CleanParams(num_proc=1)


def corpus_of(texts: list[str], domain: str = "web") -> pd.DataFrame:
    return pd.DataFrame({
        "id": [f"d{i:04d}" for i in range(len(texts))],
        "text": texts,
        "source": "test",
        "domain": domain,
    })


# --- params -------------------------------------------------------------------------------------


def test_params_are_typed_bounded_and_frozen():
    assert CleanParams().minhash == MinHashParams()
    with pytest.raises(ValidationError, match="extra"):
        CleanParams(min_word=5)
    with pytest.raises(ValidationError):
        CleanParams(min_alpha_share=1.5)
    with pytest.raises(ValidationError, match="exceeds max_words"):
        CleanParams(min_words=50, max_words=10)
    with pytest.raises(ValidationError):
        CleanParams().min_words = 3  # frozen


# --- repairs ------------------------------------------------------------------------------------


def test_mojibake_is_repaired_and_ascii_left_alone():
    broken = "Café Chloé serves crème brûlée.".encode().decode("cp1252")
    text, repairs, _ = repair(broken, P)
    assert text == "Café Chloé serves crème brûlée."
    assert repairs == ["unicode"]
    assert repair(PROSE[0], P) == (PROSE[0], [], {"email": 0, "phone": 0, "ip": 0})


def test_html_becomes_main_text_without_chrome():
    page = (
        '<!DOCTYPE html><html><head><title>Kettle | shop</title><script>var x = "<p>";</script></head>'
        '<body><nav><a href="/">Home</a> | <a href="/about">About</a></nav>'
        '<div class="cookie-banner">We use cookies.</div>'
        "<div class='content'><p>Fish &amp; chips</p>\n<p>were <b>good</b>.</p></div>"
        "<footer>&copy; 2024 shop</footer></body></html>"
    )
    text, repairs, _ = repair(page, P)
    assert text == "Fish & chips\n\nwere good."
    assert "html" in repairs and not still_shows("html", text)
    assert repair("Fish &amp; chips &#8212; &quot;fresh&quot;", P)[0] == 'Fish & chips \u2014 "fresh"'

    # prose with angle brackets and our own placeholders is not HTML
    assert repair("If a < b and c > d then <EMAIL> stays.", P.model_copy(update={"pii": False}))[1] == []


def test_control_characters_and_whitespace():
    text, repairs, _ = repair("Hel\x00lo\u200b wor\x1bld\r\n\r\n\r\n  next\tline  ", P)
    assert text == "Hello world\n\nnext line"
    assert repairs == ["control", "whitespace"]
    assert not still_shows("control", text)


def test_normalization_and_switches():
    wide = "ｆｕｌｌｗｉｄｔｈ"
    assert repair(wide, P)[0] == wide  # NFC keeps legitimate width forms
    assert repair(wide, P.model_copy(update={"normalization": "NFKC"}))[0] == "fullwidth"
    off = P.model_copy(update={"fix_unicode": False, "strip_html": False, "remove_control": False,
                               "normalize_whitespace": False, "pii": False})
    raw = "<p>a\x00  b</p> me@example.com"
    assert repair(raw, off) == (raw, [], {"email": 0, "phone": 0, "ip": 0})


# --- PII ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, kind", [
    ("Write to ana.smith42@example.com today.", "email"),
    ("Mail first+tag@post.example.net now.", "email"),
    ("Call 555-0123-4567 for details.", "phone"),
    ("Call (555) 0142-9876 for details.", "phone"),
    ("Call +1 555 0199 1234 for details.", "phone"),
    ("Phone 415.555.2671 or later.", "phone"),
    ("Ring +44 20 7946 0958 now.", "phone"),
    ("Dial 555-1234 after six.", "phone"),
    ("The server at 192.168.10.254 is down.", "ip"),
    ("Use fe80::1ff:fe23:4567:890a locally.", "ip"),
])
def test_pii_is_replaced_and_counted(text, kind):
    scrubbed, counts = scrub_pii(text)
    assert counts[kind] == 1 and sum(counts.values()) == 1
    assert f"<{kind.upper()}>" in scrubbed
    assert not still_shows("pii", scrubbed)


@pytest.mark.parametrize("text", [
    "In 1999 the town had 10 000 people and 2 bridges.",
    "It cost $1,250,000 on 2023-01-15, or 12/05/2021 by the old calendar.",
    "Version 3.11.4 ships with 128 GB and runs at 2.5 GHz.",
    "The score was 3-2 after 90 minutes; see page 12-14.",
    "Meet at 10:30 near gate 7.",
])
def test_pii_leaves_numbers_dates_and_versions(text):
    assert scrub_pii(text) == (text, {"email": 0, "phone": 0, "ip": 0})


# --- quality and repetition filters -------------------------------------------------------------

SPAM_LINE = "Buy cheap watches now at www.deals42.example !!!"


@pytest.mark.parametrize("name, text", [
    ("length", "Far too short a text."),
    ("length", " ".join(["Long document sentence here."] * 30000)),
    ("dup_lines", "\n".join([SPAM_LINE] * 10)),
    ("dup_paras", "\n\n".join([PROSE[1], PROSE[2], PROSE[1], PROSE[1]])),
    ("top_ngrams", "best deal best deal best deal best deal on shoes, the best deal in the town for you."),
    ("dup_ngrams", "The harbour town woke slowly on winter mornings while the gulls argued loudly. " * 50),
    ("word_len", "Antidisestablishmentarianism notwithstanding, incomprehensibilities characteristically "
                 "overwhelm institutionalisation, internationalisation, counterrevolutionaries, and "
                 "electroencephalographers."),
    ("symbols", "# header one # header two # three # four # five # six and the text of it all. # more."),
    ("punct_lines", "home\nproducts\nabout us\ncontact\nprivacy policy and terms\nfaq and help for you"),
    ("alpha", "1234 5678 9012 3456 7890 1122 3344 and the 5566 7788 9900 of 2024 2025 2026."),
    ("english", "Der Hund lief schnell über die Straße, weil er die Katze gesehen hatte und "
                "nicht warten wollte, bis sein Besitzer kam."),
    ("english", "qwrtz psdf ghjk lxcv bnmq wrtzp sdfgh jklx cvbnm qwrtzps dfghj klxcv."),
])
def test_each_filter_drops_its_positive(name, text):
    p = CleanParams(max_words=20_000)
    assert first_failure(quality_signals(text), p)[0] == name


@pytest.mark.parametrize("text", PROSE + [
    "Ana: What is the capital of Tessa?\nBen: The capital of Tessa is Tirost.\nAna: Thank you, that helps.",
])
def test_good_prose_passes_every_filter(text):
    assert first_failure(quality_signals(text), P) == ("", "")


def test_checks_run_in_filter_order():
    assert list(dict.fromkeys(name for name, *_ in CHECKS)) + ["exact_dup", "near_dup"] == FILTER_ORDER


def test_filters_switch_off_at_their_neutral_bound():
    text = "qwrtz psdf ghjk lxcv bnmq wrtzp sdfgh jklx cvbnm qwrtzps dfghj klxcv."
    assert first_failure(quality_signals(text), P.model_copy(update={"min_stopword_share": 0.0})) == ("", "")


def test_keep_domains_skip_quality_filters_but_not_dedup_or_pii():
    rot13 = "Gur uneobhe gbja jbxr fybjyl ba jvagre zbeavatf. Jevgr gb zr@rknzcyr.pbz naq ab bar ryfr."
    docs = corpus_of([rot13, rot13, rot13, "<p>\x00</p>"])
    docs["domain"] = ["encoded", "encoded", "web", "encoded"]
    result = clean_corpus(docs, P, seed=0)
    assert result.decisions["dropped_by"].tolist() == ["", "exact_dup", "english", "length"]
    assert result.stats["pii"]["email"] == 3
    assert result.stats["quality_skipped"] == 3


# --- deduplication ------------------------------------------------------------------------------


def test_exact_dedup_normalizes_case_punctuation_and_space_and_keeps_the_first():
    variant = PROSE[0].upper().replace(",", "").replace(" ", "  ")
    result = clean_corpus(corpus_of([PROSE[1], variant, PROSE[0], PROSE[2]]), P, seed=0)
    d = result.decisions
    assert d["dropped_by"].tolist() == ["", "", "exact_dup", ""]
    assert d.at[2, "detail"] == "duplicate of d0001"
    # hashlib, not the per-process salted hash(): the key is the same in every run
    assert exact_key(["a", "b"]) == 2952434739088078779  # 8 bytes of blake2b


def _edit(text: str, share: float, rng: random.Random) -> str:
    """`share` of the words edited as scraped copies differ: a swapped-letter typo, a deletion or
    a repeated word. (Whole-word substitutions look like another document from the same template:
    5% of them give an estimated Jaccard of 0.88 +- 0.03, at the 0.85 threshold's edge.)"""
    words = text.split()
    for i in sorted(rng.sample(range(len(words)), round(share * len(words))), reverse=True):
        op = rng.randrange(3)
        if op == 0 and len(words[i]) > 3:
            words[i] = words[i][0] + words[i][2] + words[i][1] + words[i][3:]
        elif op == 1:
            del words[i]
        else:
            words.insert(i, words[i])
    return " ".join(words)


@pytest.mark.parametrize("seed", range(5))
def test_minhash_finds_a_near_duplicate_with_5_percent_word_edits(seed):
    edited = _edit(PROSE[0], 0.05, random.Random(seed))
    result = clean_corpus(corpus_of([PROSE[0], PROSE[1], edited, PROSE[2], PROSE[3]]), P, seed=seed)
    assert result.decisions["dropped_by"].tolist() == ["", "", "near_dup", "", ""]
    assert result.decisions.at[2, "duplicate_of"] == 0
    assert result.kept_ids == {"d0000", "d0001", "d0003", "d0004"}


def test_minhash_keeps_unrelated_documents_and_can_be_disabled():
    edited = _edit(PROSE[0], 0.05, random.Random(0))
    docs = corpus_of([*PROSE, edited])
    assert clean_corpus(docs, P, seed=0).stats["drops"]["near_dup"] == 1
    off = P.model_copy(update={"minhash": MinHashParams(enabled=False)})
    assert clean_corpus(docs, off, seed=0).stats["docs_out"] == 5


# --- output, split, determinism, bad input ------------------------------------------------------


def _mixed_corpus(n: int) -> pd.DataFrame:
    """n documents: prose variants (distinct enough to survive dedup) with some noise mixed in."""
    rng = random.Random(0)
    texts = []
    for i in range(n):
        words = rng.choice(PROSE).split()
        rng.shuffle(words)  # distinct documents that still read as English to the filters
        text = f"Entry {i}. " + " ".join(words) + "."
        texts.append(rng.choice([text, text, f"<p>{text}</p>", f"{text} Mail x{i}@example.com.", "Too short."]))
    return corpus_of(texts)


def test_result_shape_stats_and_samples():
    docs = _mixed_corpus(120)
    result = clean_corpus(docs, P.model_copy(update={"dropped_sample": 3}), seed=0)
    s = result.stats
    assert list(s["drops"]) == FILTER_ORDER
    assert s["docs_in"] == 120
    assert s["docs_out"] == len(result.train) + len(result.validation) == 120 - sum(s["drops"].values())
    assert s["chars_out"] == result.train["text"].str.len().sum() + result.validation["text"].str.len().sum()
    assert s["drops"]["length"] > 0 and s["pii"]["email"] > 0 and s["repairs"]["html"] > 0
    assert list(result.train.columns) == list(docs.columns)
    assert set(result.dropped) == set(FILTER_ORDER)
    assert len(result.dropped["length"]) == 3
    assert list(result.dropped["length"].columns) == ["id", "text", "detail"]


def test_split_depends_on_id_only():
    ids = pd.Series([f"doc{i}" for i in range(20_000)])
    mask = validation_mask(ids, 0.05, seed=1)
    assert 0.04 < mask.mean() < 0.06
    assert validation_mask(ids[::3], 0.05, seed=1).equals(mask[::3])  # neighbours do not matter
    assert not validation_mask(ids, 0.05, seed=2).equals(mask)  # the seed does


def test_output_is_deterministic_and_independent_of_parallelism():
    docs = _mixed_corpus(400)
    one = clean_corpus(docs, P.model_copy(update={"batch_size": 64}), seed=3)
    two = clean_corpus(docs, P.model_copy(update={"num_proc": 2, "batch_size": 64}), seed=3)
    again = clean_corpus(docs, P.model_copy(update={"num_proc": 2, "batch_size": 64}), seed=3)
    for other in (two, again):
        pd.testing.assert_frame_equal(one.train, other.train)
        pd.testing.assert_frame_equal(one.validation, other.validation)
        pd.testing.assert_frame_equal(one.decisions, other.decisions)
        assert one.stats == other.stats


@pytest.mark.parametrize("docs, message", [
    (corpus_of(PROSE).drop(columns="domain"), "lacks column"),
    (corpus_of([]), "no documents"),
    (corpus_of(PROSE).assign(text=[PROSE[0], None, PROSE[1], PROSE[2]]), "non-string text"),
    (corpus_of(PROSE).assign(id="same"), "duplicate document id"),
])
def test_bad_input_gets_a_clear_error(docs, message):
    with pytest.raises(StageError, match=message):
        clean_corpus(docs, P, seed=0)


# --- ground truth -------------------------------------------------------------------------------


def test_scoring_credits_a_dropped_twin_to_the_labelled_copy():
    docs = corpus_of([PROSE[0], PROSE[0], PROSE[1]]).assign(noise=["exact_dup", "", ""])
    result = clean_corpus(docs, P, seed=0)
    assert result.decisions["dropped_by"].tolist() == ["", "exact_dup", ""]  # first copy kept
    scores = score_against_ground_truth(docs, result)
    assert scores["exact_dup"] == {"precision": 1.0, "recall": 1.0, "docs": 1}
    assert scores["clean_survival"] == 1.0


def test_world_noise_is_removed_or_repaired_and_clean_docs_survive():
    world = pytest.importorskip("lmpipe.world")
    corpus = world.generate_world(world.WorldParams(docs=3000, encoded_share=0.03), seed=11).corpus
    result = clean_corpus(corpus, CleanParams(num_proc=1), seed=11)
    scores = score_against_ground_truth(corpus, result)
    assert result.ground_truth == scores  # the stage's flags, computed in the workers, agree
    for kind in ("exact_dup", "near_dup", "short", "gibberish", "spam", "html", "mojibake", "control", "pii"):
        assert scores[kind]["docs"] > 0, kind
        assert scores[kind]["recall"] >= 0.95, (kind, scores[kind])
    assert scores["clean_survival"] >= 0.98, scores["clean_survival"]
    assert (result.train["domain"] == "encoded").any()
