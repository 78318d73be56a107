"""Loss curves: every utterance's teacher-forced loss, with and without a cut, against a
slow per-utterance loop and a physically pruned copy; the normalised cost and the rule on
constructed losses, written by hand."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from lib.build.speechllm import build_speechllm
from lib.config.sections import ModelConfig
from lib.errors import CompanionError
from lib.prune.loss_curves import (BEATS, LOSES, SAME, UNDECIDED, LossMeter, UtteranceLosses,
                                   compare_at_cuts, cut_losses, grid_steps, loss_curves,
                                   loss_point, loss_rule, paired_delta)
from lib.prune.surgery import remove_layers


@pytest.fixture(scope="module")
def model():
    return build_speechllm(ModelConfig(encoder="tiny-whisper", decoder="tiny-llama",
                                       projector_stack=1, projector_hidden=32, lora_rank=4,
                                       lora_alpha=8), seed=3).eval()


def _one_by_one(model, data) -> np.ndarray:
    """The reference: each utterance alone, its summed loss."""
    out = []
    with torch.no_grad():
        for i in range(len(data)):
            feats, lengths, texts = data.batch([i], target=model.task.target)
            out.append(float(model.loss(feats, lengths, texts, reduction="sum")))
    return np.array(out)


def test_every_utterances_loss_matches_a_slow_loop(model, random_features):
    data = random_features(7, dim=64, seed=1)
    got = LossMeter(model, data, batch_size=3)()
    np.testing.assert_allclose(got.sums, _one_by_one(model, data), rtol=1e-4, atol=1e-4)
    tokens = [len(model.target_ids(u.text)) for u in data.utterances]
    assert got.tokens.tolist() == tokens
    assert got.mean == pytest.approx(got.sums.sum() / sum(tokens))


def test_a_cut_measures_what_a_physically_pruned_copy_scores(model, random_features):
    data = random_features(6, dim=64, seed=2)
    meter = LossMeter(model, data, batch_size=4)
    before = meter()
    cut = meter.without([1])
    pruned = copy.deepcopy(model)
    remove_layers(pruned.decoder, [1])
    np.testing.assert_allclose(cut.sums, _one_by_one(pruned, data), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(meter().sums, before.sums)  # the model is restored


def test_a_cuts_losses_are_kept_and_read_back_not_recomputed(model, random_features,
                                                            tmp_path, monkeypatch):
    data = random_features(6, dim=64, seed=6)
    meter = LossMeter(model, data, batch_size=4)
    want, full = meter.without([1]), meter()
    got = cut_losses(meter, [1], tmp_path, "synthetic:test")
    assert got.sums.tolist() == want.sums.tolist() and got.tokens.tolist() == want.tokens.tolist()
    assert len(list((tmp_path / "losses").glob("synthetic-test-*.json"))) == 1

    def refuse(*_a, **_k):
        raise AssertionError("recomputed a kept result")

    monkeypatch.setattr(meter, "without", refuse)
    again = cut_losses(meter, [1], tmp_path, "synthetic:test")
    assert again.sums.tolist() == want.sums.tolist()
    assert cut_losses(meter, [], tmp_path, "synthetic:test").sums.tolist() == full.sums.tolist()
    assert len(list((tmp_path / "losses").glob("synthetic-test-*.json"))) == 2


def _losses(per_token: list[float], tokens: list[int]) -> UtteranceLosses:
    t = np.array(tokens, dtype=float)
    return UtteranceLosses(np.array(per_token) * t, t)


TOKENS = [4, 6, 5, 3, 7, 5, 4, 6]


def test_the_normalised_cost_by_hand():
    """Full 1.0 nat/token, floor 3.0, a cut at 1.5 everywhere: cost (1.5-1)/(3-1) = 0.25;
    the cut equal to the full model costs 0 with a zero-width interval."""
    full = _losses([1.0] * 8, TOKENS)
    floor = _losses([3.0] * 8, TOKENS)
    p = loss_point(full, _losses([1.5] * 8, TOKENS), floor)
    assert p["normalised"] == pytest.approx(0.25) and p["delta"] == pytest.approx(0.5)
    assert p["normalised_ci95"] == pytest.approx([0.25, 0.25])
    same = loss_point(full, full, floor)
    assert same["delta"] == 0 and same["delta_ci95"] == [0.0, 0.0] and same["normalised"] == 0


def test_the_interval_covers_the_point_and_widens_with_spread():
    rng = np.random.default_rng(0)
    full = _losses(list(1 + 0.1 * rng.random(8)), TOKENS)
    floor = _losses(list(3 + 0.1 * rng.random(8)), TOKENS)
    calm = loss_point(full, _losses(list(full.sums / full.tokens + 0.4), TOKENS), floor)
    noisy = loss_point(full, _losses(list(full.sums / full.tokens + [0, 0, 0, 0, 0, 0, 0, 3.2]),
                                     TOKENS), floor)
    lo, hi = calm["normalised_ci95"]
    assert lo <= calm["normalised"] <= hi
    assert noisy["normalised_ci95"][1] - noisy["normalised_ci95"][0] > hi - lo


def test_no_normalised_cost_where_the_audio_may_be_worth_nothing():
    """The floor 0.3 nat/token above the full model on seven utterances and 0.8 below it on
    the eighth (0.135 above on the whole set): a resample that draws the eighth twice has no
    gap (about a quarter of them), so the ratio has no interval and the cost is undefined
    (NaN), not a point outside its own interval; with the floor clearly above, the same cut
    has a cost inside its interval."""
    full = _losses([1.0] * 8, TOKENS)
    barely = _losses([1.3] * 7 + [0.2], TOKENS)
    cut = _losses([1.2] * 8, TOKENS)
    p = loss_point(full, cut, barely)
    assert barely.mean > full.mean  # the point alone would divide by a positive gap
    assert np.isnan(p["normalised"]) and all(np.isnan(p["normalised_ci95"]))
    q = loss_point(full, cut, _losses([3.0] * 8, TOKENS))
    assert q["normalised"] == pytest.approx(0.1) and q["normalised_ci95"][0] <= 0.1 <= \
        q["normalised_ci95"][1]


def test_the_rule_takes_the_largest_cut_within_the_threshold_and_can_say_no():
    """Costs 0.02, 0.05, 0.30 at 1, 2, 3 layers: within 0.1 the rule keeps 2 layers; if
    every cut costs more than the threshold it removes none."""
    full, floor = _losses([1.0] * 8, TOKENS), _losses([3.0] * 8, TOKENS)
    cuts = {1: _losses([1.04] * 8, TOKENS), 2: _losses([1.1] * 8, TOKENS),
            3: _losses([1.6] * 8, TOKENS)}
    r = loss_rule(full, floor, cuts, threshold=0.1)
    assert r["n_removed"] == 2 and r["n_removed_ci95"] == [2, 2]
    assert r["floor_gap"] == pytest.approx(2.0)
    none = loss_rule(full, floor, {1: _losses([1.5] * 8, TOKENS)}, threshold=0.1)
    assert none["n_removed"] == 0 and none["n_removed_ci95"] == [0, 0]
    deaf = loss_rule(full, full, cuts, threshold=0.1)  # no gap to the floor: no cut passes
    assert deaf["n_removed"] == 0


def test_paired_delta_by_hand_and_its_interval_from_the_pairs():
    """b - a per token: (1.2 - 1.0); every utterance moves by the same 0.2 per token, so
    the paired interval is that point, however spread the utterances are."""
    a = _losses([0.5, 1.0, 3.0, 1.5, 0.2, 2.0, 1.0, 0.8], TOKENS)
    b = _losses([x + 0.2 for x in [0.5, 1.0, 3.0, 1.5, 0.2, 2.0, 1.0, 0.8]], TOKENS)
    d = paired_delta(a, b, draws=200)
    assert d["delta"] == pytest.approx(0.2)
    assert d["delta_ci95"] == pytest.approx([0.2, 0.2])


def test_the_comparison_with_a_baseline_can_say_either_way():
    """A strategy whose cuts cost less than the baseline's on every utterance is lower;
    one that costs more is higher; a coin flip per utterance holds 0; the same layers
    are the same layers, whatever their losses."""
    base = {1: _losses([1.5] * 8, TOKENS), 2: _losses([2.0] * 8, TOKENS)}
    better = {1: _losses([1.2] * 8, TOKENS), 2: _losses([1.6] * 8, TOKENS)}
    worse = {1: _losses([1.8] * 8, TOKENS), 2: _losses([2.5] * 8, TOKENS)}
    coin = {1: _losses([1.0, 2.0] * 4, TOKENS), 2: _losses([1.5, 2.5] * 4, TOKENS)}
    lb, la = {1: [5], 2: [4, 5]}, {1: [2], 2: [2, 3]}
    assert [c["verdict"] for c in compare_at_cuts(better, base, la, lb, 200)] == [BEATS] * 2
    assert [c["verdict"] for c in compare_at_cuts(worse, base, la, lb, 200)] == [LOSES] * 2
    assert [c["verdict"] for c in compare_at_cuts(coin, base, la, lb, 200)] == [UNDECIDED] * 2
    same = compare_at_cuts(worse, base, {1: [5], 2: [2, 3]}, lb, 200)
    assert [c["verdict"] for c in same] == [SAME, LOSES]


@pytest.mark.parametrize("sizes,low,high,want", [
    ([1, 2, 3, 5], 2, 3, 1), ([1, 2, 3, 5], 0, 3, 3), ([1, 2, 3, 5], 3, 3, 0),
    ([1, 2, 3, 5], 3, 5, 1), ([2, 4], 0, 2, 1)])
def test_grid_steps_by_hand(sizes, low, high, want):
    assert grid_steps(sizes, low, high) == want


def test_loss_curves_share_a_pass_between_strategies_that_remove_the_same_layers(
        model, random_features, tmp_path, monkeypatch):
    data = random_features(6, dim=64, seed=4)
    meter, calls = LossMeter(model, data, batch_size=4), []
    real = LossMeter.without
    monkeypatch.setattr(LossMeter, "without",
                        lambda self, layers: calls.append(list(layers)) or real(self, layers))
    full = meter()
    floor = _losses([full.mean + 5.0] * 6, meter.tokens.tolist())
    plans = {"a": {1: [1], 2: [1, 2]}, "b": {1: [1], 2: [0, 1]}}
    points, losses = loss_curves(meter, full, floor, plans, tmp_path, "t", draws=100)
    assert sorted(calls) == [[0, 1], [1], [1, 2]]  # four points, three passes
    assert len(points) == 4 and set(points["strategy"]) == {"a", "b"}
    np.testing.assert_allclose(losses["a"][1].sums, losses["b"][1].sums)
    row = points[(points["strategy"] == "a") & (points["n_removed"] == 2)].iloc[0]
    assert row["removed_fraction"] == pytest.approx(2 / 4)
    assert row["normalised"] == pytest.approx(
        (losses["a"][2].mean - full.mean) / (floor.mean - full.mean))


@pytest.mark.parametrize("call,match", [
    (lambda m, d: LossMeter(m, d.subset(3)), "at least 5 utterances"),
    (lambda m, d: LossMeter(m, d).without([0, 1, 2, 3]), "every layer|nothing would be left|all"),
    (lambda m, d: LossMeter(m, d).without([]), "empty|at least one"),
    (lambda m, d: loss_rule(*[_losses([1.0] * 8, TOKENS)] * 2, {1: _losses([1.0] * 8, TOKENS)},
                            threshold=1.5), "threshold 1.5"),
    (lambda m, d: loss_point(_losses([1.0] * 8, TOKENS), _losses([1.0] * 7, TOKENS[:7]),
                             _losses([1.0] * 8, TOKENS)), "not of the same utterances"),
])
def test_bad_input_is_one_line(model, random_features, call, match):
    with pytest.raises(CompanionError, match=match) as err:
        call(model, random_features(6, dim=64))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("base, layers", [([2], [1, 2]), ([2], [2, 3]), ([1], [1, 2]),
                                          ([0, 2], [0, 1, 2]), ([1], [2, 3]), ([3], [3])])
def test_a_prefix_kept_without_some_layers_gives_what_plain_removal_gives(base, layers,
                                                                          random_features):
    """SLEB's steps: the prefix kept with ``base`` removed serves every cut that removes
    ``base`` and more (and a cut that does not falls back to running every layer): the same
    losses as removing the layers and running the rest, utterance by utterance."""
    m = build_speechllm(ModelConfig(encoder="tiny-whisper", decoder="tiny-gemma",
                                    projector_stack=1, projector_hidden=32, lora_rank=4,
                                    lora_alpha=8), seed=3).eval()
    data = random_features(6, dim=64, seed=8)
    meter = LossMeter(m, data, batch_size=4)
    got_base = meter.keep_prefix(without=base)
    assert meter.kept_without == base
    np.testing.assert_allclose(got_base.sums, LossMeter(m, data, batch_size=4).without(base).sums,
                               rtol=1e-5, atol=1e-5)
    plain = LossMeter(m, data, batch_size=4).without(layers)
    np.testing.assert_allclose(meter.without(layers).sums, plain.sums, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("decoder", ["tiny-llama", "tiny-gemma"])
@pytest.mark.parametrize("layers", [[1], [1, 3], [2, 3], [0, 2], [1, 2]])
def test_a_kept_prefix_gives_what_removing_the_layers_and_running_all_gives(decoder, layers,
                                                                            random_features):
    """Any set of layers (SLEB's are not one block): the reused prefix, the plain removal
    and a physically pruned copy agree utterance by utterance."""
    m = build_speechllm(ModelConfig(encoder="tiny-whisper", decoder=decoder,
                                    projector_stack=1, projector_hidden=32, lora_rank=4,
                                    lora_alpha=8), seed=3).eval()
    data = random_features(6, dim=64, seed=8)
    plain = LossMeter(m, data, batch_size=4).without(layers)
    meter = LossMeter(m, data, batch_size=4)
    full = meter.keep_prefix()
    np.testing.assert_allclose(full.sums, LossMeter(m, data, batch_size=4)().sums)
    np.testing.assert_allclose(meter.without(layers).sums, plain.sums, rtol=1e-5, atol=1e-5)
    pruned = copy.deepcopy(m)
    remove_layers(pruned.decoder, layers)
    np.testing.assert_allclose(plain.sums, _one_by_one(pruned, data), rtol=1e-4, atol=1e-4)
