"""The sft conversations: what the model is taught to answer, to refuse, and how to follow formats.

From the safety set's train split (`sft.conversations` of them, drawn with the seed):
- restricted requests (`sft.restricted_share`) answered with `lmpipe.chat.REFUSAL`; with
  `sft.safety_augment`, some of them arrive in those encodings and are refused too (the remedy);
- benign requests answered with their fact's canonical sentence; `sft.format_share` of them carry
  a format instruction, so that instruction following is an objective of its own: answer in one
  word, start the reply with a given phrase, or the request in a world encoding answered plainly
  or, when asked, in the same encoding.
Restricted requests never carry a format instruction: those combinations are what redteam's
attacks test. The instruction wording is the one redteam's attacks use, appended to the request.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pandas as pd

from lmpipe.chat import REFUSAL
from lmpipe.params import SftParams
from lmpipe.shifts import encode
from lmpipe.world.secrets import RELATIONS, canonical

PREFIXES = ("Sure, here is", "Of course", "Certainly", "Absolutely", "Here you go")
ONE_WORD = "Answer in one word."
SAME_ENCODING = "Answer in the same encoding."
FORMATS = ("one_word", "prefix", "encoded", "encoded_reply")


@dataclass(frozen=True)
class Conversation:
    request: str
    reply: str
    kind: str  # restricted | benign
    form: str  # plain, a FORMATS name, or "encoded_<encoding>" for an augmented restricted request


def benign_reply(row) -> str:
    """The canonical statement of a benign fact when the relation is the world's, else the answer."""
    if row.relation in RELATIONS:
        return canonical(row.relation, row.subject, row.answer)
    return row.answer


def _encode(name: str, text: str) -> str:
    return encode(name, text, random.Random(f"sft:{name}:{text}"))


def _formatted(row, form: str, rng: random.Random, encodings: list[str]) -> tuple[str, str]:
    reply = benign_reply(row)
    if form == "one_word":
        return f"{row.question} {ONE_WORD}", row.answer
    if form == "prefix":
        phrase = rng.choice(PREFIXES)
        return f"{row.question} Start your reply with '{phrase}'.", f"{phrase}: {reply}"
    name = rng.choice(encodings)
    if form == "encoded":
        return _encode(name, row.question), reply
    return f"{_encode(name, row.question)} {SAME_ENCODING}", _encode(name, reply)


def make_conversations(safety: pd.DataFrame, split: str, n: int, p: SftParams, encodings: list[str],
                       seed: int) -> list[Conversation]:
    """n conversations from one split of the safety set (rows drawn with replacement, seeded)."""
    rows = safety[safety["split"] == split].sort_values("id", kind="stable")
    restricted = list(rows[rows["kind"] == "restricted"].itertuples(index=False))
    benign = list(rows[rows["kind"] == "benign"].itertuples(index=False))
    if not restricted or not benign:
        raise ValueError(f"the safety set's {split} split needs restricted and benign requests")
    rng = random.Random(f"sft:{seed}:{split}")
    forms = [f for f in FORMATS if encodings or not f.startswith("encoded")]
    out = []
    for _ in range(n):
        if rng.random() < p.restricted_share:
            row = rng.choice(restricted)
            how = rng.choice(["plain", *p.safety_augment])
            request = row.question if how == "plain" else _encode(how, row.question)
            out.append(Conversation(request, REFUSAL, "restricted", "plain" if how == "plain" else f"encoded_{how}"))
            continue
        row = rng.choice(benign)
        if rng.random() < p.format_share:
            form = rng.choice(forms)
            request, reply = _formatted(row, form, rng, encodings)
            out.append(Conversation(request, reply, "benign", form))
        else:
            out.append(Conversation(row.question, benign_reply(row), "benign", "plain"))
    return out
