"""lmpipe.cleaning.filters: each quality and repetition filter on crafted positives and
negatives, their order and switches; the clean params' bounds."""

from __future__ import annotations

import pytest
from cleaning_samples import PROSE, corpus_of
from pydantic import ValidationError

from lmpipe.cleaning.filters import CHECKS, FILTER_ORDER, first_failure, quality_signals
from lmpipe.cleaning.streaming import clean_corpus
from lmpipe.params import CleanParams, MinHashParams

P = CleanParams(num_proc=1)


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
