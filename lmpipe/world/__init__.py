"""A deterministic synthetic English "world": lmpipe's embedded default dataset, with ground truth.

It contains
- a pretraining corpus in several domains (stories, three kinds of reviews, question-answer
  dialogues, factual reports) that states one seeded table of facts consistently, carries sentiment
  with two disjoint lexicons (A and B), includes encoded renderings (leet, rot13, reverse) of some
  documents, and has noise of known kinds injected at configured rates for the clean stage to find;
- a sentiment task in one review domain whose train/validation/test splits use lexicon A only, and
  shifted copies of the test split: `lexical` (lexicon B only), `domain` (another review domain),
  the encodings, `typos` and `negation`;
- prompts for generation, a few per domain;
- restricted facts (fictional secrets of guilds, vaults and dishes, each subject with benign facts
  too), stated in a "lore" corpus domain, and the safety request set built on them (`secrets`).

So the pipeline can check itself: noise kinds are known per document, and a shift is "covered by
pretraining" exactly when the world put it there (lexicon B and the encodings are; task-style
negation is not in fine-tuning, only in pretraining reviews).

The parts: `vocabulary` (lexicons, names, word lists), `facts` (the fact table), `documents` (the
corpus domains and encoded renderings), `noise` (noise injection), `task` (task, shift splits,
prompts), `secrets` (restricted facts, lore documents, safety requests). This module composes them.

Determinism: every random choice comes from `random.Random` streams seeded by a string made of the
seed and a part name (`_rng`), which Python hashes with SHA-512, never with the salted `hash()`.
Parts use separate streams, so changing the task sizes leaves the corpus byte-identical.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pandas as pd

from lmpipe.params import NoiseRates, TaskSizes, WorldParams
from lmpipe.world.documents import DOMAIN_WEIGHTS, base_documents, encoded_documents
from lmpipe.world.facts import Facts, make_facts
from lmpipe.world.noise import NOISE_KINDS, added_documents, inject_in_place, wanted
from lmpipe.world.secrets import Subject, lore_documents, lore_prompts, make_secrets, safety_requests, secrets_table
from lmpipe.world.task import generation_prompts, label_names, task_and_shifts
from lmpipe.world.vocabulary import LEXICON_A, LEXICON_B

__all__ = ["LEXICON_A", "LEXICON_B", "NOISE_KINDS", "NoiseRates", "TaskSizes", "World", "WorldParams",
           "generate_world"]


@dataclass(frozen=True)
class World:
    corpus: pd.DataFrame  # id, text, source ("world"), domain, noise ("" or comma-joined kinds)
    task: dict[str, pd.DataFrame]  # train/validation/test -> text, label
    shifts: dict[str, pd.DataFrame]  # shift name -> text, label, each the size of test
    prompts: list[dict]  # {"domain", "prompt"}, a few per corpus domain
    label_names: list[str]
    noise_counts: dict[str, int]  # documents per injected noise kind (ground truth for clean)
    facts: pd.DataFrame  # subject, relation, answer: what the corpus states, for QA checks
    secrets: pd.DataFrame  # subject, relation, answer, restricted: what the lore domain states
    safety: pd.DataFrame  # the safety request set (lmpipe.world.secrets.SAFETY_COLUMNS)


def _rng(seed: int, part: str) -> random.Random:
    return random.Random(f"lmpipe-world:{seed}:{part}")


LORE = "lore"  # the corpus domain of the restricted facts


def _corpus(p: WorldParams, facts: Facts, subjects: tuple[Subject, ...],
            rng: random.Random) -> tuple[pd.DataFrame, dict[str, int]]:
    """Base and lore documents, noise (in place, then added documents), encoded renderings, shuffled."""
    n_lore = round(p.secret_share * p.docs) if subjects else 0
    originals, domains = base_documents(rng, facts, p.docs - n_lore)
    lore = lore_documents(rng, subjects, facts, n_lore, p.chat_share)
    originals, domains = originals + lore, domains + [LORE] * n_lore
    want = wanted(p.noise, p.docs)
    texts, kinds = inject_in_place(originals, want, rng)
    seen = set(originals) | set(texts)
    records = list(zip(texts, domains, kinds, strict=True))
    records += added_documents(originals, domains, kinds, want, seen, rng, list(DOMAIN_WEIGHTS))
    lore_at = range(len(originals) - n_lore, len(originals))
    records += [(text, "encoded", []) for text in encoded_documents(p, originals, rng, lore_at)]
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


def generate_world(p: WorldParams, seed: int) -> World:
    facts = make_facts(_rng(seed, "facts"), p.facts)
    subjects = make_secrets(_rng(seed, "secrets"), p.secrets, facts)
    corpus, noise_counts = _corpus(p, facts, subjects, _rng(seed, "corpus"))
    task, shifts = task_and_shifts(p, seed, _rng(seed, "task"))
    return World(
        corpus=corpus,
        task=task,
        shifts=shifts,
        prompts=generation_prompts(p, facts, _rng(seed, "prompts"))
        + (lore_prompts(_rng(seed, "lore-prompts"), subjects, facts) if p.secret_share > 0 else []),
        label_names=label_names(p.task.classes),
        noise_counts=noise_counts,
        facts=facts.table(),
        secrets=secrets_table(subjects),
        safety=safety_requests(subjects, _rng(seed, "safety"), facts),
    )
