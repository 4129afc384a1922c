"""Capability vs behaviour per shift: could the frozen base model read the shifted text at all?

Two signals, then one verdict per shift:

- The LM-loss ratio: the base model's loss per *character* on shifted text over its loss on the
  plain test text. It says the text looks familiar. Per character, not per token: leet and rot13
  text tokenizes into more (rarer) tokens than the same plain text, so a per-token loss spreads the
  same surprisal over more tokens and understates how badly the model reads it; the shifts keep
  the character count (typos change it by one per typo), so per-character losses compare like with
  like. It uses the first `evaluate.capability_rows` rows of each split (the encoded shifts are
  row-aligned with the test split, so the ratio is paired).
- The probe: a linear classifier (softmax regression) on the base model's mean-pooled hidden
  states, fit on `evaluate.probe_k` labelled rows of a split and scored on the others. If it reads
  the task well above chance, the task signal is in the representation, which a loss ratio cannot
  tell. The same probe on the plain test split is the reference.

- The control: the same probe, on the same rows, over the features of an *untrained* model of
  the same architecture (seeded random weights). A probe fit on k labelled rows can learn the task
  from surface cues of almost any consistent text: rot13 words are still distinct, repeated tokens,
  so a probe on random features of rot13 reviews scores well above chance although nothing was
  ever learned about rot13. Only the base probe's lead over the control (paired over the scored
  rows: the selectivity) is capability that pretraining put there.
- The transfer probe: fit on plain rows, scored on the shifted ones. It reads the task on shifted
  text only where the base model represents that text as it represents the plain text, i.e. reads
  it as the same content; an untrained model does so only where the two share tokens (typos,
  near-copies). Measured on the default world, a probe fit on shifted rows reads every encoding
  about as well from an untrained model as from the base model (consistent substitutions keep
  their bag-of-tokens signal), while the transfer probe separates them: lexicon B, which
  pretraining puts in lexicon A's contexts, transfers from the base model and not from the
  untrained one.

A fine-tuned classifier that fails on a shift the probe reads shows mismatched generalization
(Wei et al., 2023): the capability was there, the fine-tuned behaviour did not reach it.

Everything is deterministic under the seed: the row split is a seeded permutation, the probe starts
from zero weights and is fit full-batch with L-BFGS in float64 (a convex objective, so one optimum),
and the intervals are the seeded bootstrap of `lmpipe.scoring`."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from lmpipe import scoring
from lmpipe.evaluation import padded_batches, text_lm_loss
from lmpipe.params import LABEL_MAPPING_SHIFTS, EvaluateParams

TRANSFERS = "transfers"
MISMATCHED = "mismatched generalization"
NO_CAPABILITY = "no capability"
VERDICTS = (TRANSFERS, MISMATCHED, NO_CAPABILITY)


@dataclass(frozen=True)
class ProbeResult:
    accuracy: float  # held-out accuracy of the probe
    ci: tuple[float, float]  # bootstrap 95% interval of that accuracy
    chance: float  # majority-class share of the held-out rows: what a constant guess scores
    fit_rows: int
    scored_rows: int
    correct: np.ndarray = field(repr=False, compare=False, default_factory=lambda: np.zeros(0))  # per scored row


@dataclass(frozen=True)
class Selectivity:
    """The base-model probe's accuracy minus the untrained-model probe's, on the same scored rows."""

    control_accuracy: float
    control_ci: tuple[float, float]
    lead: float  # base accuracy - control accuracy
    lead_ci: tuple[float, float]  # paired bootstrap 95% interval of that difference


def selectivity(base: ProbeResult, control: ProbeResult, bootstrap: int, seed: int) -> Selectivity:
    """Paired comparison of two probes scored on the same rows (same split, same seed): the
    per-row difference of correctness (-1, 0 or 1) is resampled, so rows both probes get right or
    wrong add no noise."""
    if base.correct.shape != control.correct.shape:
        raise ValueError(f"probes were scored on different rows ({base.correct.size} vs {control.correct.size})")
    diff = base.correct.astype(np.float64) - control.correct.astype(np.float64)
    return Selectivity(control_accuracy=control.accuracy, control_ci=control.ci, lead=float(diff.mean()),
                       lead_ci=scoring.bootstrap_ci(diff, bootstrap, seed))


def untrained_twin(model, seed: int):
    """A model of the same class and config with freshly initialized (seeded) weights, in eval
    mode on the same device: the probe's control."""
    torch.manual_seed(seed)
    twin = type(model)(model.config).to(next(model.parameters()).device)
    return twin.eval()


@dataclass(frozen=True)
class Verdict:
    label: str  # one of VERDICTS
    reason: str  # one sentence with the numbers behind it, for the report


@torch.inference_mode()
def pooled_features(model, ids: list[list[int]], layer: int, batch_size: int, max_length: int,
                    pad_id: int, device) -> np.ndarray:
    """Mean over real tokens (padding masked out) of hidden layer `layer` (-1 = the last; 0 = the
    embeddings), one float64 row per text in the order of `ids`.

    Only the transformer body runs (`model.base_model`): the LM head's vocabulary projection is not
    needed for features. Right padding under a causal mask leaves the real tokens' states as they
    would be unpadded."""
    body = getattr(model, "base_model", model)
    n_hidden = body.config.num_hidden_layers + 1
    if not -n_hidden <= layer < n_hidden:
        raise ValueError(f"probe layer {layer} is out of range for a model with {n_hidden} hidden states")
    out = np.zeros((len(ids), body.config.hidden_size), dtype=np.float64)
    for rows, x, mask in padded_batches(ids, batch_size, max_length, pad_id, device):
        hidden = body(input_ids=x, attention_mask=mask, output_hidden_states=True, use_cache=False).hidden_states[layer]
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        out[rows] = pooled.double().cpu().numpy()
    return out


def split_rows(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint (fit, scored) row indices: a seeded permutation's first `k` rows and the rest, each
    sorted. Splits of the same size get the same rows, so row-aligned shifts and the plain test
    split are probed on the same examples. `k` is capped at half the rows so that the score
    always rests on at least as many rows as the fit."""
    if n < 4:
        raise ValueError(f"a probe needs at least 4 labelled rows, got {n}")
    k = min(k, n // 2)
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[:k]), np.sort(order[k:])


def fit_softmax_regression(x: np.ndarray, y: np.ndarray, n_classes: int, max_iter: int = 500):
    """Multinomial logistic regression on standardized features: weights (d, C), bias (C,), and the
    fit rows' mean and scale.

    The objective is the summed cross-entropy plus ½‖W‖² (scikit-learn's C=1 convention; the bias
    is not penalized): with k≈64 rows and hundreds of features the classes are usually separable,
    and without the penalty the weights would grow without bound."""
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-12] = 1.0  # a constant feature carries nothing; leave it at zero
    xt = torch.from_numpy((x - mean) / scale)
    yt = torch.from_numpy(np.asarray(y, dtype=np.int64))
    w = torch.zeros((x.shape[1], n_classes), dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-10,
                            tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xt @ w + b, yt, reduction="sum") + 0.5 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy(), b.detach().numpy(), mean, scale


def predict_softmax_regression(model, x: np.ndarray) -> np.ndarray:
    w, b, mean, scale = model
    return (((x - mean) / scale) @ w + b).argmax(axis=1)


def chance_level(y: np.ndarray, n_classes: int) -> float:
    """Accuracy of always guessing the most frequent class of `y` (1/classes when `y` is empty)."""
    y = np.asarray(y, dtype=np.int64)
    if y.size == 0:
        return 1.0 / n_classes
    return float(np.bincount(y, minlength=n_classes).max() / y.size)


def _scored(correct: np.ndarray, scored_labels: np.ndarray, n_classes: int, fit_rows: int, bootstrap: int,
            seed: int) -> ProbeResult:
    """A probe's result from its per-row correctness on the scored rows."""
    return ProbeResult(accuracy=float(correct.mean()), ci=scoring.bootstrap_ci(correct, bootstrap, seed),
                       chance=chance_level(scored_labels, n_classes), fit_rows=fit_rows,
                       scored_rows=len(scored_labels), correct=correct)


def probe(features: np.ndarray, labels, k: int, n_classes: int, seed: int, bootstrap: int) -> ProbeResult:
    """Fit the probe on `k` rows of `features` and score it on the others (see `split_rows`)."""
    labels = np.asarray(labels, dtype=np.int64)
    fit, scored = split_rows(len(labels), k, seed)
    model = fit_softmax_regression(features[fit], labels[fit], n_classes)
    correct = predict_softmax_regression(model, features[scored]) == labels[scored]
    return _scored(correct, labels[scored], n_classes, len(fit), bootstrap, seed)


def probe_texts(model, ids: list[list[int]], labels, *, layer: int, k: int, n_classes: int, seed: int,
                bootstrap: int, batch_size: int, max_length: int, pad_id: int, device) -> ProbeResult:
    """`probe` on the base model's pooled features of tokenized texts (`pooled_features`)."""
    features = pooled_features(model, ids, layer, batch_size, max_length, pad_id, device)
    return probe(features, labels, k, n_classes, seed, bootstrap)


def probe_mixed(plain: np.ndarray, plain_labels, shifted: np.ndarray, shifted_labels, k: int, n_classes: int,
                seed: int, bootstrap: int) -> ProbeResult:
    """The probe for a shift that changes labels (negation): fit on k/2 plain and k/2 shifted rows
    together, score on the other shifted rows. Fit on shifted rows alone, a probe could learn the
    flipped rule from the sentiment words ("good" means negative) without reading the "not" at
    all; mixed with plain rows, only features that carry the negation can fit both. A scored row
    whose plain twin is among the fit rows has the opposite label there, which makes the test
    harder, never easier."""
    plain_labels, shifted_labels = (np.asarray(v, dtype=np.int64) for v in (plain_labels, shifted_labels))
    fit_s, scored = split_rows(len(shifted_labels), k // 2, seed)
    fit_p, _ = split_rows(len(plain_labels), k - len(fit_s), seed + 1)
    model = fit_softmax_regression(np.concatenate([plain[fit_p], shifted[fit_s]]),
                                   np.concatenate([plain_labels[fit_p], shifted_labels[fit_s]]), n_classes)
    correct = predict_softmax_regression(model, shifted[scored]) == shifted_labels[scored]
    return _scored(correct, shifted_labels[scored], n_classes, len(fit_p) + len(fit_s), bootstrap, seed)


def probe_transfer(plain: np.ndarray, plain_labels, shifted: np.ndarray, shifted_labels, k: int, n_classes: int,
                   seed: int, bootstrap: int) -> ProbeResult:
    """The transfer probe: fit on `k` rows of the *plain* split, score on the shifted split's other
    rows (the same rows `probe` scores). It asks whether the base model represents the shifted text
    where it represents the plain text, i.e. whether it reads the shift as the same content, which
    a probe fit on shifted rows cannot tell (it can learn any consistent encoding's surface from
    its k examples). For row-aligned shifts the fit rows' shifted twins are not scored."""
    plain_labels, shifted_labels = (np.asarray(v, dtype=np.int64) for v in (plain_labels, shifted_labels))
    fit, _ = split_rows(len(plain_labels), k, seed)
    _, scored = split_rows(len(shifted_labels), k, seed)
    model = fit_softmax_regression(plain[fit], plain_labels[fit], n_classes)
    correct = predict_softmax_regression(model, shifted[scored]) == shifted_labels[scored]
    return _scored(correct, shifted_labels[scored], n_classes, len(fit), bootstrap, seed)


def verdict(gap: float, gap_ci: tuple[float, float], probe_result: ProbeResult, lead: Selectivity,
            gap_threshold: float, probe_margin: float, control_margin: float,
            transfer: tuple[ProbeResult, Selectivity] | None = None) -> Verdict:
    """Per shift, in this order:

    - `transfers`: the fine-tuned classifier's accuracy gap (id − shift) has a 95% interval whose
      low end is at most `gap_threshold`, i.e. a gap that small is not ruled out;
    - `mismatched generalization`: the gap is significant, yet the base model reads the task on
      this text: a probe (fit on shifted rows, or the transfer probe fit on plain rows) has an
      interval wholly above chance + `probe_margin` AND a lead over the same probe on an untrained
      twin whose interval lies wholly above `control_margin` (the reading comes from pretraining,
      not from the probe fitting surface cues);
    - `no capability`: the gap is significant and no probe passes both bars.

    Every comparison is exact: a gap CI low end equal to the threshold transfers, a probe or lead
    CI low end equal to its bar is not enough."""
    readings = [("probe", probe_result, lead)] + ([("transfer probe", *transfer)] if transfer else [])
    values = (gap, *gap_ci) + tuple(v for _, r, s in readings for v in (r.accuracy, *r.ci, r.chance, s.lead, *s.lead_ci))
    if not all(np.isfinite(v) for v in values):
        raise ValueError(f"verdict needs finite gap and probe figures, got {values}")
    lo, hi = gap_ci
    gap_text = f"accuracy gap {gap:.3f} (95% CI {lo:.3f} to {hi:.3f})"
    if lo <= gap_threshold:
        return Verdict(TRANSFERS, f"The {gap_text} does not exclude gaps of at most {gap_threshold:.3f}:"
                                  " fine-tuned behaviour transfers.")
    texts, passed, weak = [], [], []
    for name, r, s in readings:
        (p_lo, p_hi), (l_lo, l_hi) = r.ci, s.lead_ci
        texts.append(f"the base-model {name} reads {r.accuracy:.3f} (95% CI {p_lo:.3f} to {p_hi:.3f}, fit on"
                     f" {r.fit_rows} rows, scored on {r.scored_rows}; chance {r.chance:.3f} + margin {probe_margin:.3f}),"
                     f" {s.lead:+.3f} over an untrained model's ({s.control_accuracy:.3f}; 95% CI {l_lo:+.3f} to"
                     f" {l_hi:+.3f}, needs above {control_margin:.3f})")
        reads = p_lo > r.chance + probe_margin
        (passed if reads and l_lo > control_margin else weak if reads else []).append(name)
    detail = "; ".join(texts)
    if passed:
        return Verdict(MISMATCHED, f"The {gap_text} exceeds {gap_threshold:.3f}, yet {detail}: the {passed[0]} shows"
                                   " the base model reads the task here from what pretraining taught it,"
                                   " fine-tuned behaviour did not transfer.")
    why = ("no probe is above its bar" if not weak else
           f"the {weak[0]}'s reading is no better than an untrained model's: it fits surface cues, not"
           " something pretraining taught")
    return Verdict(NO_CAPABILITY, f"The {gap_text} exceeds {gap_threshold:.3f}; {detail}: {why}, so the base"
                                  " model cannot read the task on this text.")


# --- the capability section of metrics/evaluate.json -------------------------------------------


def loss_ratios(base, tokenizer, ids: dict[str, list[list[int]]], p: EvaluateParams, device) -> dict:
    """The base model's per-character LM loss on each shift's first `p.capability_rows` texts over
    its loss on the plain test texts (the whole text, up to the model's context)."""
    rows, ctx = p.capability_rows, base.config.n_positions
    plain = text_lm_loss(base, tokenizer, ids["id"][:rows], p.batch_size, ctx, device)
    out = {"plain_loss": plain["per_token"], "plain_loss_per_char": plain["per_char"],
           "rows": min(rows, len(ids["id"])), "ratio_threshold": p.capability_ratio}
    for name in (n for n in ids if n != "id"):
        loss = text_lm_loss(base, tokenizer, ids[name][:rows], p.batch_size, ctx, device)
        out[name] = {"base_loss": loss["per_token"], "base_loss_per_char": loss["per_char"],
                     "loss_ratio": loss["per_char"] / max(plain["per_char"], 1e-9),
                     "loss_ratio_per_token": loss["per_token"] / max(plain["per_token"], 1e-9)}
    return out


def capability(base, tokenizer, ids: dict[str, list[list[int]]], labels: dict[str, np.ndarray], gap: dict,
               p: EvaluateParams, *, seed: int, max_length: int, n_classes: int, device) -> dict:
    """Per shift: the LM-loss ratio, the probe and the transfer probe, each with its interval, its
    untrained control and the lead over it, and the verdict with its reason; `ids` and `labels` hold "id" (the plain test
    split, the probe's reference) and every shift, `gap` is the task section's gaps.

    The probe reads the same `max_length` tokens the classifier reads: the verdict compares the
    two, and a probe that saw more of a long (e.g. leet) text than the classifier would credit the
    base model with signal the classifier never got. A shift that changes labels gets the mixed
    probe (`probe_mixed`). The gap in the verdict is the one the task section reports, over the
    whole shifted split: the classifier was not trained on the probe's fit rows, so they are fair
    test rows for it, and dropping them would only widen its interval."""
    out = loss_ratios(base, tokenizer, ids, p, device)
    control_model = untrained_twin(base, seed)
    feats = {which: {name: pooled_features(model, rows, p.probe_layer, p.batch_size, max_length,
                                           tokenizer.pad_token_id, device) for name, rows in ids.items()}
             for which, model in (("base", base), ("control", control_model))}
    del control_model

    def probe_pair(name: str) -> tuple[ProbeResult, Selectivity]:
        results = []
        for which in ("base", "control"):
            f = feats[which]
            if name in LABEL_MAPPING_SHIFTS:
                results.append(probe_mixed(f["id"], labels["id"], f[name], labels[name], p.probe_k, n_classes,
                                           seed, p.bootstrap))
            else:
                results.append(probe(f[name], labels[name], p.probe_k, n_classes, seed, p.bootstrap))
        return results[0], selectivity(results[0], results[1], p.bootstrap, seed)

    def transfer_pair(name: str) -> tuple[ProbeResult, Selectivity]:
        base_r, ctrl_r = (probe_transfer(feats[w]["id"], labels["id"], feats[w][name], labels[name], p.probe_k,
                                         n_classes, seed, p.bootstrap) for w in ("base", "control"))
        return base_r, selectivity(base_r, ctrl_r, p.bootstrap, seed)

    reference, ref_lead = probe_pair("id")
    out |= {"gap_threshold": p.gap_threshold, "probe_margin": p.probe_margin,
            "probe_control_margin": p.probe_control_margin, "probe_layer": p.probe_layer,
            "probe_reference_accuracy": reference.accuracy, "probe_reference_accuracy_ci": reference.ci,
            "probe_reference_chance": reference.chance, "probe_reference_control_accuracy": ref_lead.control_accuracy,
            "probe_reference_lead": ref_lead.lead, "probe_reference_lead_ci": ref_lead.lead_ci}
    for name in (n for n in ids if n != "id"):
        result, lead = probe_pair(name)
        moved, moved_lead = transfer_pair(name)
        v = verdict(gap[name], gap[f"{name}_ci"], result, lead, p.gap_threshold, p.probe_margin,
                    p.probe_control_margin, transfer=(moved, moved_lead))
        out[name] |= {"probe_accuracy": result.accuracy, "probe_accuracy_ci": result.ci,
                      "probe_chance": result.chance, "probe_fit_rows": result.fit_rows,
                      "probe_scored_rows": result.scored_rows, "probe_reference_accuracy": reference.accuracy,
                      "probe_control_accuracy": lead.control_accuracy, "probe_control_accuracy_ci": lead.control_ci,
                      "probe_lead": lead.lead, "probe_lead_ci": lead.lead_ci,
                      "transfer_accuracy": moved.accuracy, "transfer_accuracy_ci": moved.ci,
                      "transfer_control_accuracy": moved_lead.control_accuracy, "transfer_lead": moved_lead.lead,
                      "transfer_lead_ci": moved_lead.lead_ci,
                      "verdict": v.label, "reason": v.reason}
    return out
