"""The capability probe (lmpipe/capability.py): a known separable signal is read, noise is not, the
result is reproducible under the seed, the features ignore padding, and the verdict rule holds at
each of its boundaries."""

from __future__ import annotations

import numpy as np
import pytest
import tiny_lm
import torch

from lmpipe import capability as cap
from lmpipe.capability import MISMATCHED, NO_CAPABILITY, TRANSFERS, ProbeResult, Selectivity
from lmpipe.params import EvaluateParams


def separable(n: int, d: int, n_classes: int, seed: int):
    """Each class shifted 6 units along its own axis, unit noise in all `d` dimensions: the classes
    are linearly separable but for about one row in 10^5."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, size=n)
    x = rng.normal(size=(n, d))
    x[np.arange(n), y] += 6.0
    return x, y


def test_probe_reads_a_separable_signal():
    x, y = separable(400, 32, 2, seed=0)
    r = cap.probe(x, y, k=64, n_classes=2, seed=1, bootstrap=500)
    assert (r.fit_rows, r.scored_rows) == (64, 336)
    assert r.accuracy > 0.97
    assert r.ci[0] > 0.95 and r.ci[0] <= r.accuracy <= r.ci[1]
    assert 0.4 < r.chance < 0.6


def test_probe_reads_a_separable_multiclass_signal():
    x, y = separable(600, 48, 4, seed=2)
    r = cap.probe(x, y, k=128, n_classes=4, seed=3, bootstrap=500)
    assert r.accuracy > 0.9 and r.ci[0] > 0.85
    assert r.chance < 0.35


def test_probe_on_noise_stays_near_chance_and_reads_no_capability():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(500, 128)), rng.integers(0, 2, size=500)  # more features than fit rows
    r = cap.probe(x, y, k=64, n_classes=2, seed=5, bootstrap=500)
    assert abs(r.accuracy - 0.5) < 0.08
    assert r.ci[0] <= r.chance + 0.1
    v = cap.verdict(0.4, (0.35, 0.45), r, LEARNED, gap_threshold=0.05, probe_margin=0.1, control_margin=0.05)
    assert v.label == NO_CAPABILITY


def test_probe_is_deterministic_under_the_seed():
    x, y = separable(300, 16, 2, seed=6)
    x += np.random.default_rng(7).normal(scale=3.0, size=x.shape)  # not perfectly separable
    a = cap.probe(x, y, k=64, n_classes=2, seed=11, bootstrap=300)
    b = cap.probe(x.copy(), y.copy(), k=64, n_classes=2, seed=11, bootstrap=300)
    assert a == b
    fit_a, _ = cap.split_rows(300, 64, 11)
    fit_c, _ = cap.split_rows(300, 64, 12)
    assert not np.array_equal(fit_a, fit_c)


def test_split_rows_are_disjoint_and_capped_at_half():
    fit, scored = cap.split_rows(100, 64, seed=0)
    assert len(fit) == 50 and len(scored) == 50  # k capped: the score rests on at least as many rows
    assert not set(fit) & set(scored) and sorted({*fit, *scored}) == list(range(100))
    fit, scored = cap.split_rows(500, 64, seed=0)
    assert (len(fit), len(scored)) == (64, 436)
    with pytest.raises(ValueError, match="at least 4"):
        cap.split_rows(3, 2, seed=0)


def test_fit_ignores_a_constant_feature_and_standardizes_on_fit_rows():
    x, y = separable(200, 4, 2, seed=8)
    x = np.column_stack([x, np.full(len(x), 7.0)])
    w, b, mean, scale = model = cap.fit_softmax_regression(x, y, 2)
    assert np.all(np.isfinite(w)) and w[-1].tolist() == [0.0, 0.0]
    assert mean[-1] == 7.0 and scale[-1] == 1.0
    assert (cap.predict_softmax_regression(model, x) == y).mean() > 0.95


def test_chance_is_the_majority_share_of_the_scored_rows():
    assert cap.chance_level(np.array([0, 0, 0, 1]), 2) == 0.75
    assert cap.chance_level(np.array([2, 2, 1, 0, 0, 2]), 3) == 0.5
    assert cap.chance_level(np.array([], dtype=int), 4) == 0.25


def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=50, n_positions=32, n_embd=16, n_layer=2, n_head=2)
    return GPT2LMHeadModel(config).eval()


def test_pooled_features_mask_padding_and_pick_the_layer():
    model = tiny_gpt2()
    ids = [[1, 2, 3, 4, 5, 6, 7], [8, 9], [10, 11, 12, 13], [], [14]]
    batched = cap.pooled_features(model, ids, -1, batch_size=8, max_length=32, pad_id=0, device="cpu")
    alone = np.vstack([cap.pooled_features(model, [x], -1, 1, 32, 0, "cpu") for x in ids])
    assert batched.shape == (5, 16)
    np.testing.assert_allclose(batched, alone, atol=1e-5)  # padding changes nothing
    assert np.all(batched[3] == 0)  # an empty text pools to zeros, not NaN
    with torch.no_grad():
        h = model.transformer(input_ids=torch.tensor([ids[0]]), output_hidden_states=True).hidden_states
    np.testing.assert_allclose(batched[0], h[-1][0].mean(dim=0).numpy(), atol=1e-5)
    first = cap.pooled_features(model, ids[:1], 1, 1, 32, 0, "cpu")
    np.testing.assert_allclose(first[0], h[1][0].mean(dim=0).numpy(), atol=1e-5)
    cut = cap.pooled_features(model, ids[:1], -1, 1, 3, 0, "cpu")  # truncated to max_length tokens
    np.testing.assert_allclose(cut, cap.pooled_features(model, [ids[0][:3]], -1, 1, 32, 0, "cpu"))
    with pytest.raises(ValueError, match="out of range"):
        cap.pooled_features(model, ids, 3, 8, 32, 0, "cpu")


def test_probe_texts_on_a_model_reads_a_token_level_signal():
    """Class 0 texts use tokens 1-9, class 1 texts tokens 20-29: even a random model's embeddings
    keep that apart, so the probe must read it."""
    model = tiny_gpt2()
    rng = np.random.default_rng(9)
    y = rng.integers(0, 2, size=120)
    ids = [rng.integers(1 + 19 * c, 10 + 20 * c, size=rng.integers(3, 12)).tolist() for c in y]
    r = cap.probe_texts(model, ids, y, layer=-1, k=40, n_classes=2, seed=0, bootstrap=200,
                        batch_size=16, max_length=32, pad_id=0, device="cpu")
    assert r.accuracy > 0.9 and (r.fit_rows, r.scored_rows) == (40, 80)


# --- the verdict rule -------------------------------------------------------------------------

STRONG = ProbeResult(accuracy=0.9, ci=(0.85, 0.95), chance=0.5, fit_rows=64, scored_rows=436)
WEAK = ProbeResult(accuracy=0.55, ci=(0.5, 0.6), chance=0.5, fit_rows=64, scored_rows=436)
LEARNED = Selectivity(control_accuracy=0.6, control_ci=(0.55, 0.65), lead=0.3, lead_ci=(0.25, 0.35))
SURFACE = Selectivity(control_accuracy=0.88, control_ci=(0.84, 0.92), lead=0.02, lead_ci=(-0.01, 0.05))
EPS = 1e-9


def probe_with_low(low: float) -> ProbeResult:
    return ProbeResult(accuracy=low + 0.05, ci=(low, low + 0.1), chance=0.5, fit_rows=64, scored_rows=436)


def lead_with_low(low: float) -> Selectivity:
    return Selectivity(control_accuracy=0.6, control_ci=(0.55, 0.65), lead=low + 0.05, lead_ci=(low, low + 0.1))


def rule(gap, gap_ci, probe_result, lead=LEARNED, probe_margin=0.1, control_margin=0.05):
    return cap.verdict(gap, gap_ci, probe_result, lead, gap_threshold=0.05, probe_margin=probe_margin,
                       control_margin=control_margin)


@pytest.mark.parametrize(("gap_low", "probe_result", "expected"), [
    (0.05, STRONG, TRANSFERS),  # exactly at the threshold: a gap that small is not ruled out
    (0.05, WEAK, TRANSFERS),  # transfer comes first, whatever the probe says
    (0.05 - EPS, WEAK, TRANSFERS),
    (0.05 + EPS, STRONG, MISMATCHED),  # just above: did not transfer
    (0.05 + EPS, WEAK, NO_CAPABILITY),
    (-0.02, WEAK, TRANSFERS),
])
def test_verdict_gap_boundary(gap_low, probe_result, expected):
    assert rule(gap_low + 0.04, (gap_low, gap_low + 0.08), probe_result).label == expected


@pytest.mark.parametrize(("probe_low", "expected"), [
    (0.75, NO_CAPABILITY),  # exactly chance + margin: not clearly above chance
    (0.75 + EPS, MISMATCHED),
    (0.75 - EPS, NO_CAPABILITY),
])
def test_verdict_probe_boundary(probe_low, expected):
    assert rule(0.3, (0.25, 0.35), probe_with_low(probe_low), probe_margin=0.25).label == expected


@pytest.mark.parametrize(("lead_low", "expected"), [
    (0.05, NO_CAPABILITY),  # exactly the control margin: not a lead pretraining is shown to give
    (0.05 + EPS, MISMATCHED),
    (0.05 - EPS, NO_CAPABILITY),
    (-0.2, NO_CAPABILITY),  # the untrained model reads it better
])
def test_verdict_control_boundary(lead_low, expected):
    assert rule(0.3, (0.25, 0.35), STRONG, lead_with_low(lead_low), control_margin=0.05).label == expected


def test_a_strong_probe_with_no_lead_over_the_control_is_no_capability():
    """What the world showed: rot13 read at 0.70 by a probe although pretraining held no rot13 text;
    the untrained twin reads it as well, so the reading is the probe's, not the model's."""
    v = rule(0.3, (0.25, 0.35), STRONG, SURFACE)
    assert v.label == NO_CAPABILITY and "untrained model" in v.reason and "surface cues" in v.reason


def test_the_transfer_probe_alone_can_show_the_capability():
    """A weak shifted-row probe, but a readout fit on plain rows carries over with a lead over the
    untrained twin: the base model reads the shift as the plain text."""
    v = rule(0.3, (0.25, 0.35), WEAK, SURFACE)
    assert v.label == NO_CAPABILITY and "no probe is above its bar" in v.reason
    moved = cap.verdict(0.3, (0.25, 0.35), WEAK, SURFACE, 0.05, 0.1, 0.05, transfer=(STRONG, LEARNED))
    assert moved.label == MISMATCHED and "the transfer probe shows" in moved.reason
    surface = cap.verdict(0.3, (0.25, 0.35), WEAK, SURFACE, 0.05, 0.1, 0.05, transfer=(STRONG, SURFACE))
    assert surface.label == NO_CAPABILITY and "transfer probe's reading is no better" in surface.reason


def test_transfer_probe_reads_only_what_plain_and_shifted_share():
    x, y = separable(300, 8, 2, seed=6)
    aligned = x + 0.1 * np.random.default_rng(1).normal(size=x.shape)  # the same directions: read as plain
    permuted = np.random.default_rng(3).normal(size=x.shape)
    permuted[np.arange(len(y)), y + 4] += 6.0  # the signal on other features: learnable, not the plain readout
    same = cap.probe_transfer(x, y, aligned, y, k=64, n_classes=2, seed=2, bootstrap=200)
    other = cap.probe_transfer(x, y, permuted, y, k=64, n_classes=2, seed=2, bootstrap=200)
    assert same.accuracy > 0.95 and other.ci[0] < 0.6
    assert cap.probe(permuted, y, k=64, n_classes=2, seed=2, bootstrap=200).accuracy > 0.95
    # scored on the rows `probe` scores, so the two compare row by row
    assert same.scored_rows == cap.probe(aligned, y, k=64, n_classes=2, seed=2, bootstrap=200).scored_rows


def test_verdict_default_margin_boundary_is_exact():
    """params.yaml's margin 0.1 over a balanced chance of 0.5: 0.6 itself is not enough."""
    assert rule(0.3, (0.25, 0.35), probe_with_low(0.6)).label == NO_CAPABILITY
    assert rule(0.3, (0.25, 0.35), probe_with_low(0.6 + EPS)).label == MISMATCHED


def test_verdict_reasons_name_the_numbers():
    v = rule(0.464, (0.418, 0.508), STRONG)
    assert v.label == MISMATCHED
    for figure in ("0.464", "0.418", "0.508", "0.900", "0.850", "0.950", "0.500", "0.100", "0.050", "64", "436",
                   "0.600", "+0.300", "+0.250", "+0.350"):
        assert figure in v.reason, figure
    assert rule(0.01, (0.0, 0.02), WEAK).reason.endswith("fine-tuned behaviour transfers.")
    assert "cannot read" in rule(0.4, (0.3, 0.5), WEAK).reason
    assert {rule(0.4, (g, 0.5), p).label for g, p in ((0.0, WEAK), (0.3, STRONG), (0.3, WEAK))} == set(cap.VERDICTS)


def test_verdict_refuses_non_finite_figures():
    with pytest.raises(ValueError, match="finite"):
        rule(float("nan"), (float("nan"), float("nan")), STRONG)


# --- the untrained control ----------------------------------------------------------------------


def test_selectivity_is_paired_over_the_same_rows():
    x, y = separable(300, 8, 2, seed=4)
    good = cap.probe(x, y, k=64, n_classes=2, seed=1, bootstrap=200)
    noise = cap.probe(np.random.default_rng(9).normal(size=x.shape), y, k=64, n_classes=2, seed=1, bootstrap=200)
    lead = cap.selectivity(good, noise, bootstrap=200, seed=1)
    assert lead.control_accuracy == noise.accuracy
    assert lead.lead == pytest.approx(good.accuracy - noise.accuracy)
    assert lead.lead_ci[0] > 0.3  # separable vs noise: a lead far from zero
    same = cap.selectivity(good, good, bootstrap=200, seed=1)
    assert (same.lead, same.lead_ci) == (0.0, (0.0, 0.0))  # identical rows: no lead and no noise
    other_rows = cap.probe(x[:200], y[:200], k=64, n_classes=2, seed=1, bootstrap=200)
    with pytest.raises(ValueError, match="different rows"):
        cap.selectivity(good, other_rows, bootstrap=200, seed=1)


def test_untrained_twin_has_the_architecture_and_fresh_seeded_weights():
    tok = tiny_lm.tokenizer()
    lm = tiny_lm.lm(tok, n_positions=32)
    twin, again = cap.untrained_twin(lm, seed=5), cap.untrained_twin(lm, seed=5)
    assert type(twin) is type(lm) and twin.config.to_dict() == lm.config.to_dict() and not twin.training
    w = dict(lm.named_parameters())
    t, a = dict(twin.named_parameters()), dict(again.named_parameters())
    assert set(t) == set(w)
    name = next(n for n in w if n.endswith("attn.c_attn.weight"))
    assert not torch.equal(t[name], w[name]) and torch.equal(t[name], a[name])


# --- the capability section of metrics/evaluate.json -----------------------------------------


def test_capability_section_per_shift_on_a_tiny_lm():
    tok = tiny_lm.tokenizer()
    tok.padding_side = "right"
    lm = tiny_lm.lm(tok, n_positions=32)
    texts = [tiny_lm.SENTENCES[i % len(tiny_lm.SENTENCES)] + f" {i}" for i in range(40)]
    y = np.array([i % 2 for i in range(40)])
    ids = {"id": tok(texts)["input_ids"], "upper": tok([t.upper() for t in texts])["input_ids"]}
    labels = {"id": y, "upper": y}
    gap = {"upper": 0.3, "upper_ci": (0.2, 0.4)}
    p = EvaluateParams(bootstrap=100, probe_k=16, probe_margin=0.1, gap_threshold=0.05)
    kwargs = {"seed": 3, "max_length": 24, "n_classes": 2, "device": torch.device("cpu")}
    out = cap.capability(lm, tok, ids, labels, gap, p, **kwargs)
    assert out == cap.capability(lm, tok, ids, labels, gap, p, **kwargs)  # deterministic
    up = out["upper"]
    assert list(up)[:3] == ["base_loss", "base_loss_per_char", "loss_ratio"]
    assert (up["probe_fit_rows"], up["probe_scored_rows"]) == (16, 24)
    assert up["probe_reference_accuracy"] == out["probe_reference_accuracy"]
    # the section's probe is exactly probe_texts with the params, the reference on the plain split
    probe_on = {"layer": -1, "k": 16, "n_classes": 2, "seed": 3, "bootstrap": 100, "batch_size": p.batch_size,
                "max_length": 24, "pad_id": tok.pad_token_id, "device": torch.device("cpu")}
    shifted = cap.probe_texts(lm, ids["upper"], y, **probe_on)
    assert (up["probe_accuracy"], up["probe_accuracy_ci"]) == (shifted.accuracy, shifted.ci)
    assert out["probe_reference_accuracy"] == cap.probe_texts(lm, ids["id"], y, **probe_on).accuracy
    control = cap.probe_texts(cap.untrained_twin(lm, 3), ids["upper"], y, **probe_on)
    assert (up["probe_control_accuracy"], up["probe_control_accuracy_ci"]) == (control.accuracy, control.ci)
    lead = cap.selectivity(shifted, control, 100, 3)
    assert (up["probe_lead"], up["probe_lead_ci"]) == (lead.lead, lead.lead_ci)
    # the transfer probe: plain fit rows, shifted scored rows, on both models
    feats = {m: {n: cap.pooled_features(model, ids[n], -1, p.batch_size, 24, tok.pad_token_id, torch.device("cpu"))
                 for n in ("id", "upper")} for m, model in (("base", lm), ("control", cap.untrained_twin(lm, 3)))}
    moved = [cap.probe_transfer(feats[m]["id"], y, feats[m]["upper"], y, 16, 2, 3, 100) for m in ("base", "control")]
    assert (up["transfer_accuracy"], up["transfer_control_accuracy"]) == (moved[0].accuracy, moved[1].accuracy)
    transfer = (moved[0], cap.selectivity(moved[0], moved[1], 100, 3))
    expected = cap.verdict(0.3, (0.2, 0.4), shifted, lead, 0.05, 0.1, p.probe_control_margin, transfer=transfer)
    assert (up["verdict"], up["reason"]) == (expected.label, expected.reason)
    assert (out["gap_threshold"], out["probe_margin"], out["probe_layer"]) == (0.05, 0.1, -1)
    transferred = cap.capability(lm, tok, ids, labels, {"upper": 0.0, "upper_ci": (-0.1, 0.1)}, p, **kwargs)
    assert transferred["upper"]["verdict"] == TRANSFERS


def _surface_and_meaning(n: int, seed: int):
    """Plain rows and their negations: x0 carries the surface sentiment words, x1 the meaning."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    sign = 2 * y - 1
    plain = np.stack([sign + 0.3 * rng.normal(size=n), sign + 0.3 * rng.normal(size=n)], axis=1)
    # negated text keeps its sentiment words (x0) and flips its meaning (x1); the label flips too
    negated = np.stack([sign + 0.3 * rng.normal(size=n), -sign + 0.3 * rng.normal(size=n)], axis=1)
    return plain, y, negated, 1 - y


def test_mixed_probe_credits_only_features_that_carry_the_flipped_label():
    plain, y, negated, y_neg = _surface_and_meaning(400, 0)
    # the meaning direction alone: the representation reads the negation
    reads = cap.probe_mixed(plain[:, 1:], y, negated[:, 1:], y_neg, k=64, n_classes=2, seed=0, bootstrap=200)
    assert reads.accuracy > 0.95
    # surface words alone: a probe fit on negated rows only finds the flipped shortcut...
    shortcut = cap.probe(negated[:, :1], y_neg, k=64, n_classes=2, seed=0, bootstrap=200)
    assert shortcut.accuracy > 0.95
    # ...which the mixed probe refuses: plain and negated rows disagree on what x0 means
    blind = cap.probe_mixed(plain[:, :1], y, negated[:, :1], y_neg, k=64, n_classes=2, seed=0, bootstrap=200)
    assert blind.accuracy < 0.7 and blind.ci[0] < blind.chance + 0.1
    assert blind.fit_rows == 64 and blind.scored_rows == 400 - 32
