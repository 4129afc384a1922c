import hashlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import ftfy
import pandas as pd
import pytest
from pydantic import ValidationError

from lmpipe.chat import without_chat_tokens
from lmpipe.params import CleanParams
from lmpipe.shifts import SHIFT_LABEL_EFFECT, encode
from lmpipe.text import text_key
from lmpipe.world import LEXICON_A, LEXICON_B, NOISE_KINDS, WorldParams, generate_world

SMALL = {"docs": 2000, "task": {"train": 300, "validation": 60, "test": 80}}
P = WorldParams(**SMALL)
# Encoded documents per encoding in the fixture world (the schema default share of 2000 docs).
PER_ENCODING = round(P.encoded_share * 2000)
# and the lore documents encoded once more, per encoding
PER_ENCODING_LORE = round(P.lore_encoded_share * round(P.secret_share * 2000))
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def world():
    return generate_world(WorldParams(**SMALL), seed=11)


def digest(w) -> str:
    """SHA-256 over the parquet bytes of every frame plus the JSON of the other fields."""
    h = hashlib.sha256()
    frames = {"corpus": w.corpus, "facts": w.facts, **w.task, **{f"shift_{k}": v for k, v in w.shifts.items()}}
    for name, df in sorted(frames.items()):
        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        h.update(name.encode() + buf.getvalue())
    h.update(json.dumps([w.prompts, w.label_names, w.noise_counts], sort_keys=True).encode())
    return h.hexdigest()


def words_re(words):
    return re.compile(r"\b(?:" + "|".join(words) + r")\b", re.IGNORECASE)


def lexicon_words(lexicon):
    return lexicon["positive"] + lexicon["negative"]


def task_frames(w):
    return {**w.task, **w.shifts}


def test_same_seed_is_byte_identical_and_another_seed_differs(world):
    again = generate_world(WorldParams(**SMALL), seed=11)
    other = generate_world(WorldParams(**SMALL), seed=12)
    assert digest(again) == digest(world)
    assert digest(other) != digest(world)
    assert not other.corpus["text"].equals(world.corpus["text"])
    assert not other.task["train"]["text"].equals(world.task["train"]["text"])


def test_output_does_not_depend_on_pythonhashseed():
    code = (
        "import hashlib, io; from lmpipe.world import WorldParams, generate_world\n"
        "w = generate_world(WorldParams(docs=300, task={'train': 40, 'validation': 10, 'test': 10}), 5)\n"
        "h = hashlib.sha256()\n"
        "for df in [w.corpus, *w.task.values(), *w.shifts.values()]:\n"
        "    buf = io.BytesIO(); df.to_parquet(buf, index=False); h.update(buf.getvalue())\n"
        "print(h.hexdigest(), repr(w.prompts))\n"
    )
    outs = {
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                       env={**os.environ, "PYTHONHASHSEED": hs, "PYTHONPATH": str(ROOT)}).stdout
        for hs in ("1", "2")
    }
    assert len(outs) == 1


def test_task_sizes_do_not_change_the_corpus(world):
    bigger = generate_world(WorldParams(docs=2000, task={"train": 500, "validation": 60, "test": 80}), seed=11)
    assert bigger.corpus.equals(world.corpus)


def test_corpus_schema_and_sizes(world):
    c = world.corpus
    assert list(c.columns) == ["id", "text", "source", "domain", "noise"]
    assert c["id"].is_unique and (c["source"] == "world").all()
    added = sum(world.noise_counts[k] for k in ("exact_dup", "near_dup", "short", "gibberish", "spam"))
    encoded = len(P.encodings) * (PER_ENCODING + PER_ENCODING_LORE)
    assert PER_ENCODING > 0 and PER_ENCODING_LORE > 0
    assert len(c) == 2000 + added + encoded
    assert (c["domain"] == "encoded").sum() == encoded


def test_noise_counts_match_the_noise_column(world):
    c = world.corpus
    kinds = c["noise"].str.split(",").explode()
    observed = kinds[kinds != ""].value_counts().to_dict()
    assert world.noise_counts == {k: observed.get(k, 0) for k in NOISE_KINDS}
    assert all(world.noise_counts[k] == round(getattr(WorldParams().noise, k) * 2000) for k in NOISE_KINDS)
    assert min(world.noise_counts.values()) > 0
    assert (c.loc[c["domain"] == "encoded", "noise"] == "").all()


def test_duplicates_copy_clean_originals(world):
    c = world.corpus
    clean = set(c.loc[c["noise"] == "", "text"])
    exact = c.loc[c["noise"] == "exact_dup", "text"]
    assert exact.isin(clean).all()
    near = c.loc[c["noise"] == "near_dup", "text"]
    assert not near.isin(clean).any()
    # Base documents are distinct: the only repeated texts are the injected exact duplicates.
    repeated = c[c["text"].duplicated(keep=False)]
    assert set(repeated["noise"]) == {"", "exact_dup"}


def test_noise_is_what_it_claims(world):
    c = world.corpus
    has = {k: c[c["noise"].str.contains(k)]["text"] for k in NOISE_KINDS}
    assert has["html"].str.contains("<html>").all()
    assert has["control"].str.contains(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]").all()
    assert has["pii"].str.contains(r"@|555").all()
    assert (has["short"].str.split().str.len() <= 8).all()
    assert (has["spam"].map(lambda t: len(set(t.split("\n")))) == 1).all()
    # ftfy repairs the mojibake, so the clean stage can keep those documents.
    assert (has["mojibake"].map(ftfy.fix_text) != has["mojibake"]).all()
    assert not has["mojibake"].map(ftfy.fix_text).str.contains("Ã|â€").any()


def test_clean_plain_documents_pass_english_quality_heuristics(world):
    c = world.corpus
    clean = c[(c["noise"] == "") & (c["domain"] != "encoded")]
    words = clean["text"].str.split().str.len()
    # the clean stage's length floor; lore notes can be short (two facts), every other domain is long
    assert (words >= CleanParams().min_words).all() and (words[clean["domain"] != "lore"] >= 20).all()
    # chat transcripts' tokens are markup between turns: each turn is a line of its own
    lines = clean["text"].map(without_chat_tokens).str.split("\n").explode()
    lines = lines[lines != ""]
    assert lines.str.match(r".*[.!?]$").all()
    assert (clean["text"].str.len().mean()) > 200
    alpha = clean["text"].map(lambda t: sum(ch.isalpha() for ch in t) / len(t))
    assert alpha.min() > 0.6


def test_lexicon_b_only_in_pretraining_and_lexical_shift(world):
    assert not set(lexicon_words(LEXICON_A)) & set(lexicon_words(LEXICON_B))
    b, a = words_re(lexicon_words(LEXICON_B)), words_re(lexicon_words(LEXICON_A))
    for split in ("train", "validation", "test", "domain"):
        assert not task_frames(world)[split]["text"].str.contains(b).any(), split
    corpus = "\n".join(world.corpus["text"])
    assert all(re.search(rf"\b{w}\b", corpus) for w in lexicon_words(LEXICON_B))
    lexical = world.shifts["lexical"]["text"]
    assert lexical.str.contains(b).all() and not lexical.str.contains(a).any()
    assert world.task["train"]["text"].str.contains(a).all()


def test_no_task_text_leaks_from_train_into_evaluation(world):
    fitted = set(pd.concat([world.task["train"], world.task["validation"]])["text"].map(text_key))
    for name, df in {"test": world.task["test"], **world.shifts}.items():
        assert not df["text"].map(text_key).isin(fitted).any(), name
    generated = pd.concat([world.task[s] for s in ("train", "validation", "test")]
                          + [world.shifts["lexical"], world.shifts["domain"]])
    assert generated["text"].map(text_key).is_unique


def test_shift_splits_have_test_size_and_consistent_labels(world):
    test = world.task["test"]
    assert set(world.shifts) == {"lexical", "domain", "leet", "rot13", "reverse", "typos", "negation"}
    assert set(world.shifts) == set(SHIFT_LABEL_EFFECT)  # every shift the world makes declares its effect
    for name, df in world.shifts.items():
        assert list(df.columns) == ["text", "label"] and len(df) == len(test), name
        assert df["label"].dtype == "int64"
    for name in ("leet", "rot13", "reverse", "typos"):
        assert world.shifts[name]["label"].tolist() == test["label"].tolist()
    assert (world.shifts["negation"]["label"] == 1 - test["label"]).all()
    assert world.shifts["rot13"]["text"].map(lambda t: encode("rot13", t, None)).tolist() == test["text"].tolist()


def test_world_made_shifts_keep_the_label_their_sentiment_words_say(world):
    """lexical and domain are declared label-preserving: every sentiment word in a text has the
    polarity of its label (binary task), as in the test split they stand in for."""
    assert SHIFT_LABEL_EFFECT["lexical"] == SHIFT_LABEL_EFFECT["domain"] == "preserves"
    for name, lexicon in (("test", LEXICON_A), ("lexical", LEXICON_B), ("domain", LEXICON_A)):
        df = task_frames(world)[name]
        for pol, label in (("positive", 1), ("negative", 0)):
            other = "negative" if pol == "positive" else "positive"
            rows = df[df["label"] == label]["text"]
            assert len(rows) and rows.str.contains(words_re(lexicon[pol])).all(), (name, pol)
            assert not rows.str.contains(words_re(lexicon[other])).any(), (name, pol)


def test_task_texts_are_short_and_negation_free(world):
    for split, df in task_frames(world).items():
        assert (df["text"].str.split().str.len() <= 40).all(), split
    for split in ("train", "validation", "test"):
        assert not world.task[split]["text"].str.contains(r"\bnot\b|n't").any()


@pytest.mark.parametrize("classes", [2, 3])
def test_classes_are_balanced(classes):
    w = generate_world(WorldParams(docs=100, task={"train": 91, "validation": 30, "test": 31, "classes": classes}), 3)
    assert w.label_names == (["negative", "positive"] if classes == 2 else ["negative", "neutral", "positive"])
    for name, df in task_frames(w).items():
        counts = df["label"].value_counts()
        assert sorted(counts.index) == list(range(classes)), name
        assert counts.max() - counts.min() <= 1, name
    if classes == 3:
        assert (w.shifts["negation"]["label"] == 2 - w.task["test"]["label"]).all()


def test_encoded_share_zero_removes_all_encoded_text():
    w = generate_world(WorldParams(docs=300, encoded_share=0, lore_encoded_share=0,
                                   task={"train": 20, "validation": 10, "test": 10}), 0)
    assert "encoded" not in set(w.corpus["domain"])
    assert "encoded" not in {p["domain"] for p in w.prompts}
    # "the" under each encoding
    assert not w.corpus["text"].str.contains(r"\b(?:7h3|gur|eht)\b", case=False).any()
    # encoded_share 0 alone leaves the lore documents' own encoded renderings
    lore_only = generate_world(WorldParams(docs=300, encoded_share=0, task={"train": 20, "validation": 10, "test": 10}), 0)
    encoded = lore_only.corpus[lore_only.corpus["domain"] == "encoded"]
    d = WorldParams()
    assert d.lore_encoded_share > 0
    assert len(encoded) == len(d.encodings) * round(d.lore_encoded_share * round(d.secret_share * 300))


def test_parallel_pairs_put_each_line_before_its_encoding(world):
    def is_rot13_pairs(text):
        lines = text.split("\n")
        return len(lines) % 2 == 0 and all(
            encode("rot13", a, None) == b for a, b in zip(lines[::2], lines[1::2], strict=True))

    encoded = world.corpus.loc[world.corpus["domain"] == "encoded", "text"]
    assert "rot13" in P.encodings and PER_ENCODING > 0
    assert sum(map(is_rot13_pairs, encoded)) == round(P.parallel_share * PER_ENCODING)


def test_prompts_cover_every_domain(world):
    domains = {p["domain"] for p in world.prompts}
    assert domains == set(world.corpus["domain"])
    assert all(3 <= len(p["prompt"].split()) <= 8 for p in world.prompts)


def test_facts_are_stated_consistently(world):
    facts = world.facts
    capital = dict(facts.loc[facts["relation"] == "capital", ["subject", "answer"]].to_numpy())
    stated = re.findall(r"The capital of (\w+) is (\w+)\.", "\n".join(world.corpus["text"]))
    stated += [(c, t) for t, c in re.findall(r"In (\w+), the capital of (\w+),", "\n".join(world.corpus["text"]))]
    assert len(stated) > 50
    assert all(capital[country] == city for country, city in stated)


@pytest.mark.parametrize("bad", [
    {"docs": -1}, {"docs": 10, "colour": "red"}, {"encodings": ["base64"]}, {"encodings": ["leet", "leet"]},
    {"task": {"classes": 4}}, {"noise": {"spam": 2.0}}, {"noise": {"typo": 0.1}},
    {"task_domain": "movie_review", "shift_domain": "movie_review"}, {"encoded_share": 1.5},
])
def test_bad_params_fail_validation(bad):
    with pytest.raises(ValidationError):
        WorldParams(**bad)
