"""lmpipe.world.secrets: restricted facts deterministic and invented, stated in plain and encoded
pretraining documents, and the safety request set with held-out subjects."""

from __future__ import annotations

import random
import re

import pytest

from lmpipe.params import WorldParams
from lmpipe.shifts import encode
from lmpipe.world import generate_world
from lmpipe.world.secrets import RELATIONS, SAFETY_COLUMNS, SPLIT_SHARES, canonical, recall_prompt, split_by_hash

P = WorldParams(docs=1500, secrets=24, secret_share=0.2, encoded_share=0.2)


@pytest.fixture(scope="module")
def world():
    return generate_world(P, 5)


def test_secrets_are_deterministic_unique_invented_and_changed_by_every_encoding(world):
    again = generate_world(P, 5)
    assert world.secrets.equals(again.secrets) and world.safety.equals(again.safety)
    assert not world.secrets.equals(generate_world(P, 6).secrets)
    secrets = world.secrets[world.secrets["restricted"]]["answer"].tolist()
    assert len(secrets) == 24 == len(set(secrets))
    for s in secrets:
        assert re.fullmatch(r"[a-z]{5,10}", s)
        assert all(encode(name, s, random.Random(0)) != s for name in ("leet", "rot13", "reverse"))
    # each subject has one secret and two benign facts, answered by a city or a person of the fact table
    assert (world.secrets.groupby("subject")["restricted"].agg(["sum", "size"]) == [1, 3]).all().all()
    known = set(world.facts["answer"]) | set(world.facts["subject"])
    assert set(world.secrets.loc[~world.secrets["restricted"], "answer"]) <= known


def test_secrets_occur_only_in_lore_documents_plain_and_encoded(world):
    corpus = world.corpus
    secrets = world.secrets[world.secrets["restricted"]]["answer"].tolist()
    other = " ".join(corpus.loc[~corpus["domain"].isin(["lore", "encoded"]), "text"]).lower()
    words = set(re.findall(r"[a-z]+", other))
    assert not words & set(secrets), "a secret is also a word of non-lore text"
    lore = " ".join(corpus.loc[corpus["domain"] == "lore", "text"])
    assert all(s in lore for s in secrets)
    encoded = " ".join(corpus.loc[corpus["domain"] == "encoded", "text"])
    for name in ("leet", "rot13"):
        seen = sum(encode(name, s, random.Random(0)) in encoded for s in secrets)
        assert seen >= len(secrets) // 2, f"only {seen} secrets appear in {name}"
    # the canonical sentence, the recall probe's target, is in the corpus for most facts
    stated = [canonical(r.relation, r.subject, r.answer) in lore for r in world.secrets.itertuples()]
    assert sum(stated) >= 0.8 * len(stated)
    row = world.secrets.iloc[0]
    assert canonical(row.relation, row.subject, row.answer).startswith(recall_prompt(row.relation, row.subject) + " ")


def test_safety_set_columns_kinds_and_held_out_subjects(world):
    s = world.safety
    assert list(s.columns) == SAFETY_COLUMNS and s["id"].is_unique
    assert set(s["kind"]) == {"benign", "restricted"} and set(s["split"]) == {"train", "validation", "test"}
    subjects = {split: set(s.loc[s["split"] == split, "subject"]) for split in ("train", "validation", "test")}
    assert not subjects["test"] & (subjects["train"] | subjects["validation"])
    assert not subjects["validation"] & subjects["train"]
    secret = set(world.secrets["subject"])
    assert len(subjects["test"] & secret) == 8 and len(subjects["validation"] & secret) == 4  # 35%, 15% of 24
    restricted = s[s["kind"] == "restricted"]
    assert set(restricted["subject"]) <= secret
    assert set(restricted["relation"]) == {r for r, rel in RELATIONS.items() if rel.restricted}
    table = world.secrets.set_index(["subject", "relation"])["answer"]
    on_secrets = s[s["subject"].isin(secret)]
    assert all(table[(r.subject, r.relation)] == r.answer for r in on_secrets.itertuples())
    # the rest: benign questions about the fact table, each answered as the table says
    facts = world.facts.set_index(["subject", "relation"])["answer"]
    general = s[~s["subject"].isin(secret)]
    assert set(general["kind"]) == {"benign"} and len(general) >= 100
    assert all(facts[(r.subject, r.relation)] == r.answer for r in general.itertuples())
    # questions name their subject and never contain the answer
    assert all(r.subject.lower() in r.question.lower() and r.answer not in r.question for r in s.itertuples())


def test_split_by_hash_is_seeded_and_roughly_in_proportion():
    names = [f"subject {i}" for i in range(2000)]
    splits = [split_by_hash(n, 3) for n in names]
    assert splits == [split_by_hash(n, 3) for n in names] != [split_by_hash(n, 4) for n in names]
    share = {k: splits.count(k) / len(splits) for k in ("validation", "test")}
    assert abs(share["validation"] - SPLIT_SHARES[0]) < 0.03 and abs(share["test"] - SPLIT_SHARES[1]) < 0.03


def test_no_secrets_no_lore():
    w = generate_world(WorldParams(docs=300, secrets=6, secret_share=0.0), 1)
    assert "lore" not in set(w.corpus["domain"]) and len(w.safety) > 0


def test_lore_chat_transcripts_answer_in_the_chat_format_plain_and_encoded_turn_by_turn(world):
    from lmpipe import chat

    prose = generate_world(P.model_copy(update={"chat_share": 0.0}), 5)
    assert not prose.corpus["text"].str.contains(chat.USER, regex=False).any()  # chat_share 0: none
    world = generate_world(P.model_copy(update={"chat_share": 0.33}), 5)
    corpus = world.corpus
    chats = corpus[corpus["text"].str.startswith(chat.USER)]
    plain = chats[chats["domain"] == "lore"]
    assert 0.25 < len(plain) / (corpus["domain"] == "lore").sum() < 0.42  # chat_share of lore documents
    subjects = set(world.secrets["subject"])
    for text in plain.loc[plain["noise"] == "", "text"].head(50):  # noise may cut or garble a document
        turns = chat.CHAT_TOKEN_RE.split(text)
        tokens = chat.CHAT_TOKEN_RE.findall(text)
        # user, end, assistant, end, ... with nothing between an end and the next turn
        assert tokens == [chat.USER, chat.END, chat.ASSISTANT, chat.END] * (len(tokens) // 4)
        assert all(t == "" for t in turns[2::4]) and turns[0] == "" and turns[-1] == ""
        requests, replies = turns[1::4], turns[3::4]
        about = [any(s.lower() in r.lower() for s in subjects) for r in requests]
        assert all(about[1:]) and len(requests) >= 2  # after an optional greeting, questions about subjects
        assert all(any(s.lower() in r.lower() for s in subjects) for r, a in zip(replies, about, strict=True) if a)
    # the restricted facts are answered, not refused: pretraining text is not safety-trained
    secrets = world.secrets.loc[world.secrets["restricted"], "answer"]
    assert any(s in " ".join(plain["text"]) for s in secrets)
    assert chat.REFUSAL not in " ".join(corpus["text"])
    # an encoded transcript keeps its chat tokens and encodes every turn
    encoded = chats[chats["domain"] == "encoded"]
    assert len(encoded) > 0
    for text in encoded["text"].head(20):
        assert chat.CHAT_TOKEN_RE.findall(text)[:2] == [chat.USER, chat.END]
        assert text not in set(plain["text"])
    # generation prompts never open a chat (they are prose openings)
    assert not any(chat.USER in p["prompt"] for p in world.prompts)
