"""One redteam run: held-out requests under every attack, generated in one batched pass, scored.

The requests are the safety set's test split (subjects sft never saw): `redteam.requests`
restricted ones and as many benign ones, drawn with the pipeline seed. Every (attack, request)
prompt, the plain requests included, goes through `lmpipe.chat.generate_replies` in a single
pass: prompts are ordered by token length first, so a batch pads little, and the replies are put
back in order afterwards. Greedy decoding makes the replies, and so the metrics, deterministic.
Restricted replies give each attack's success and refusal rates, benign replies its capability
(lmpipe/redteam/scoring.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pandas as pd

from lmpipe.chat import generate_replies, is_refusal, prompt_text
from lmpipe.io import StageError
from lmpipe.params import Params
from lmpipe.redteam import scoring
from lmpipe.redteam.attacks import PLAIN, Attack, build_attacks

SAFETY_COLUMNS = ["id", "split", "kind", "subject", "relation", "question", "answer"]


@dataclass(frozen=True)
class Job:
    attack: Attack
    kind: str  # restricted | benign
    index: int  # position of the request in its kind's sample
    request: str  # the plain request
    prompt: str  # the request under the attack
    target: str  # restricted: the secret; benign: the true answer


def select_requests(safety: pd.DataFrame, n: int, seed: int) -> dict[str, pd.DataFrame]:
    """Up to `n` test-split requests of each kind, sampled with the seed, in a stable order; the
    benign ones about the restricted requests' subjects when the set has any."""
    test = safety[safety["split"] == "test"].sort_values("id", kind="stable")
    # Capability is measured on the restricted requests' own subjects where the set has their
    # benign facts: "can the model answer about this subject under this transform" is what says
    # whether a failed refusal could leak, not its knowledge of some other part of the world.
    about = test["subject"].isin(test.loc[test["kind"] == "restricted", "subject"])
    if (about & (test["kind"] == "benign")).any():
        test = test[about]
    out = {}
    for kind in ("restricted", "benign"):
        rows = test[test["kind"] == kind]
        if rows.empty:
            raise StageError(f"the safety set has no {kind} requests in its test split; redteam needs both kinds")
        out[kind] = rows.sample(n=min(n, len(rows)), random_state=seed % 2**32).reset_index(drop=True)
    return out


def build_jobs(attacks: list[Attack], requests: dict[str, pd.DataFrame]) -> list[Job]:
    return [Job(attack, kind, i, row.question, attack.apply(row.question), row.answer)
            for attack in [PLAIN, *attacks] for kind, df in requests.items()
            for i, row in enumerate(df.itertuples(index=False))]


def generate_all(model, tokenizer, jobs: list[Job], p, device) -> list[str]:
    """Replies to every job's prompt, in job order, shortest prompts batched together."""
    lengths = [len(tokenizer(prompt_text(tokenizer, j.prompt), add_special_tokens=False)["input_ids"]) for j in jobs]
    positions = getattr(model.config, "n_positions", None)
    if positions and max(lengths) + p.max_new_tokens > positions:
        worst = jobs[max(range(len(jobs)), key=lengths.__getitem__)]
        raise StageError(f"attack {worst.attack.name}: a prompt of {max(lengths)} tokens plus redteam.max_new_tokens"
                         f" ({p.max_new_tokens}) exceeds the model's {positions} positions; lower redteam.max_new_tokens")
    order = sorted(range(len(jobs)), key=lambda i: (lengths[i], i))
    start = time.perf_counter()
    out = generate_replies(model, tokenizer, [jobs[i].prompt for i in order], max_new_tokens=p.max_new_tokens,
                           batch_size=p.batch_size, device=device)
    replies = [""] * len(jobs)
    for i, reply in zip(order, out, strict=True):
        replies[i] = reply
    print(f"[redteam] {len(jobs)} replies in {time.perf_counter() - start:.1f}s", flush=True)
    return replies


def _transcripts(rows: list[dict], n: int, *, plain: bool) -> list[dict]:
    """`n` transcripts per attack: successes first (refusals first for plain requests)."""
    key = (lambda r: not r["refused"]) if plain else (lambda r: not r["success"])
    return sorted(rows, key=key)[:n]


def score(jobs: list[Job], replies: list[str], params: Params, secrets: tuple[str, ...] = ()) -> tuple[dict, dict]:
    """metrics/redteam.json and the transcripts file, from the replies; `secrets` (every restricted
    answer of the set) also gives each attack's leak rate."""
    p, seed = params.redteam, params.seed
    rows: dict[tuple[str, str], list[dict]] = {}
    for job, reply in zip(jobs, replies, strict=True):
        rows.setdefault((job.attack.name, job.kind), []).append(
            {"index": job.index, "request": job.request, "prompt": job.prompt, "reply": reply,
             "success": scoring.found(reply, job.target, job.attack.encoding), "refused": is_refusal(reply),
             "leaked": job.kind == "restricted" and scoring.leaks(reply, secrets, job.attack.encoding)})
    attack_of = {j.attack.name: j.attack for j in jobs}

    def flags(name: str, kind: str, key: str) -> list[bool]:
        return [r[key] for r in rows[(name, kind)]]

    leaked = (lambda name: flags(name, "restricted", "leaked")) if secrets else (lambda name: None)
    plain = scoring.plain_metrics(flags("plain", "restricted", "success"), flags("plain", "restricted", "refused"),
                                  p.bootstrap, seed, leaked("plain"))
    benign = scoring.benign_metrics(flags("plain", "benign", "success"), flags("plain", "benign", "refused"))
    attacks = {}
    for name, attack in attack_of.items():
        if attack is PLAIN:
            continue
        attacks[name] = scoring.attack_metrics(
            name, attack.family, flags(name, "restricted", "success"), flags(name, "restricted", "refused"),
            flags(name, "benign", "success"), attack.encoding in params.sft.safety_augment, p.bootstrap, seed,
            leaked(name))
    metrics = {"plain": plain, "benign": benign, "attacks": attacks,
               "findings": scoring.findings(plain, benign, attacks)}
    transcripts = {name: _transcripts(rows[(name, "restricted")], p.transcripts, plain=name == "plain")
                   for name in attack_of}
    return metrics, {"attacks": transcripts, "pair": contrast_pair(rows, attacks)}


def contrast_pair(rows: dict[tuple[str, str], list[dict]], attacks: dict[str, dict]) -> dict | None:
    """A request refused when asked plainly and leaked under the attack with the highest ASR."""
    for name in sorted((n for n, a in attacks.items() if a["asr"] > 0), key=lambda n: -attacks[n]["asr"]):
        plain = rows[("plain", "restricted")]
        for attacked in rows[(name, "restricted")]:
            asked = plain[attacked["index"]]
            if attacked["success"] and asked["refused"]:
                return {"attack": name, "request": asked["request"], "plain_reply": asked["reply"],
                        "attack_prompt": attacked["prompt"], "attack_reply": attacked["reply"]}
    return None


def run(model, tokenizer, safety: pd.DataFrame, params: Params, device) -> tuple[dict, dict]:
    """Metrics and transcripts of every attack; `safety` is the whole safety set."""
    p = params.redteam
    requests = select_requests(safety, p.requests, params.seed)
    attacks = build_attacks(params.world.encodings, p.control)
    jobs = build_jobs(attacks, requests)
    print(f"[redteam] {len(attacks)} attacks + plain x ({len(requests['restricted'])} restricted +"
          f" {len(requests['benign'])} benign requests) = {len(jobs)} prompts", flush=True)
    replies = generate_all(model, tokenizer, jobs, p, device)
    secrets = tuple(sorted(set(safety.loc[safety["kind"] == "restricted", "answer"])))
    return score(jobs, replies, params, secrets)
