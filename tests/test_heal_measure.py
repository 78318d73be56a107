"""What healing wins back and chapter 4's controls: recovery, the seeded paired rule and the
repair contrast checked against formulas worked out by hand, and each verdict shown to say
"no" on a constructed case (a healing that does nothing, seeds that disagree, a control that
gains as much); the control's LoRA placed on the layer a cut would hand its input to."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from lib.build.adapters import merge_adapters
from lib.build.components import pruned_layers
from lib.build.speechllm import build_speechllm
from lib.config.sections import HealConfig, ModelConfig, TrainConfig
from lib.errors import CompanionError
from lib.heal.healing import control_targets, heal, heal_seeds
from lib.heal.measure import (compare_seeded, loss_recovery, repair_contrast, seed_mean,
                              seeded_contrast)
from lib.prune.loss_curves import UtteranceLosses
from lib.prune.loss_curves import within_loss_rule
from lib.report.rules import repair_verdict, seeded_verdict

TOKENS = np.array([4.0, 6.0, 5.0, 5.0, 8.0, 2.0, 3.0, 7.0])


def _losses(per_token, noise=0.0, seed=0):
    """Losses of the eight utterances: ``per_token`` nats on every token, plus noise."""
    rng = np.random.default_rng(seed)
    sums = TOKENS * per_token + noise * rng.standard_normal(len(TOKENS))
    return UtteranceLosses(sums, TOKENS.copy())


# ----------------------------------------------------------------------- recovery


def test_recovery_is_the_share_of_the_lost_loss_won_back():
    full, pruned, healed = _losses(2.0, 0.3, 1), _losses(3.0, 0.3, 2), _losses(2.25, 0.3, 3)
    r = loss_recovery(full, pruned, healed, draws=200)
    by_hand = ((pruned.sums.sum() - healed.sums.sum())
               / (pruned.sums.sum() - full.sums.sum()))  # the token totals cancel
    assert r["recovery"] == pytest.approx(by_hand)
    assert r["recovery_ci95"][0] <= r["recovery"] <= r["recovery_ci95"][1]
    assert r["lost"] == pytest.approx((pruned.sums.sum() - full.sums.sum()) / TOKENS.sum())


def test_a_healing_that_does_nothing_recovers_nothing():
    full, pruned = _losses(2.0, 0.3, 1), _losses(3.0, 0.3, 2)
    r = loss_recovery(full, pruned, pruned, draws=200)
    assert r["recovery"] == 0 and r["recovery_ci95"] == [0.0, 0.0]


def test_recovery_is_undefined_where_pruning_cost_nothing():
    full = _losses(2.0)
    r = loss_recovery(full, full, _losses(1.5), draws=200)
    assert np.isnan(r["recovery"]) and all(np.isnan(r["recovery_ci95"]))


def test_seed_mean_averages_each_utterance():
    a, b = _losses(1.0, 0.2, 1), _losses(2.0, 0.2, 2)
    assert np.allclose(seed_mean([a, b]).sums, (a.sums + b.sums) / 2)


# ----------------------------------------------------------------------- the seeded rule


def test_seeded_contrast_by_hand():
    diffs = [np.array([1.0, -1, 2, 0, 1, 1, 0, 2]), np.array([0.0, 1, 1, 1, 0, 2, 1, 0])]
    c = seeded_contrast(diffs, TOKENS, draws=300)
    per_seed = [d.sum() / TOKENS.sum() for d in diffs]
    assert c["per_seed"] == pytest.approx(per_seed)
    assert c["delta"] == pytest.approx(np.mean(per_seed))
    assert c["seed_range"] == pytest.approx([min(per_seed), max(per_seed)])
    wide = max([c["utterance_ci95"], c["seed_range"]], key=lambda iv: iv[1] - iv[0])
    assert c["ci95"] == wide


def test_a_variant_lower_on_every_seed_and_utterance_is_lower():
    b = [_losses(2.0, 0.2, s) for s in range(3)]
    a = [UtteranceLosses(x.sums - 0.5 * TOKENS, TOKENS) for x in b]  # 0.5 nats per token less
    c = compare_seeded(a, b, draws=300)
    assert c["delta"] == pytest.approx(-0.5)
    assert seeded_verdict(c) == "lower than"
    assert seeded_verdict(compare_seeded(b, a, draws=300)) == "higher than"


def test_identical_variants_are_not_distinguishable():
    b = [_losses(2.0, 0.2, s) for s in range(3)]
    c = compare_seeded(b, copy.deepcopy(b), draws=300)
    assert c["delta"] == 0 and seeded_verdict(c) == "not distinguishable from"


def test_seeds_that_disagree_say_no_where_the_utterances_alone_would_say_yes():
    """Seed 0: a is 0.3 nats per token lower on every utterance; seed 1: 0.1 higher. Each
    seed's utterance interval excludes zero; the seed range does not, and it is wider."""
    b = [_losses(2.0, 0.0, s) for s in range(2)]
    a = [UtteranceLosses(b[0].sums - 0.3 * TOKENS, TOKENS),
         UtteranceLosses(b[1].sums + 0.1 * TOKENS, TOKENS)]
    one = compare_seeded(a[:1], b[:1], draws=300)
    assert seeded_verdict(one) == "lower than"
    c = compare_seeded(a, b, draws=300)
    assert c["interval_from"] == "seeds" and c["ci95"] == pytest.approx([-0.3, 0.1])
    assert seeded_verdict(c) == "not distinguishable from"


def test_the_seeded_rule_refuses_unmatched_seeds_or_utterances():
    b = [_losses(2.0) for _ in range(3)]
    with pytest.raises(CompanionError, match="same seeds: got 2 and 3"):
        compare_seeded(b[:2], b)
    other = UtteranceLosses(np.ones(5), np.ones(5))
    with pytest.raises(CompanionError, match="not of the same utterances"):
        compare_seeded([b[0]], [other])
    with pytest.raises(CompanionError, match="at least one seed"):
        seeded_contrast([], TOKENS)


# ----------------------------------------------------------------------- the control


def test_repair_contrast_by_hand_and_its_three_verdicts():
    full, pruned = _losses(2.0, 0.2, 1), _losses(3.0, 0.2, 2)
    healed = [UtteranceLosses(pruned.sums - 0.6 * TOKENS, TOKENS) for _ in range(3)]
    control = [UtteranceLosses(full.sums - 0.1 * TOKENS, TOKENS) for _ in range(3)]
    r = repair_contrast(full, pruned, healed, control, draws=300)
    assert (r["gain_healed"], r["gain_control"]) == pytest.approx((0.6, 0.1))
    assert r["delta"] == pytest.approx(0.5)
    assert repair_verdict(r).startswith("healing repairs the cut")
    # a healing that does nothing, beside a control that gains, or one that training hurt
    idle = repair_contrast(full, pruned, [pruned] * 3, control, draws=300)
    assert idle["delta"] == pytest.approx(-0.1) and idle["gain_healed_ci95"] == [0.0, 0.0]
    assert repair_verdict(idle).startswith("healing is not shown to win anything back")
    hurt = [UtteranceLosses(full.sums + 0.2 * TOKENS, TOKENS) for _ in range(3)]
    worse = repair_contrast(full, pruned, [pruned] * 3, hurt, draws=300)
    assert worse["delta"] == pytest.approx(0.2)  # above zero, and still no repair
    assert repair_verdict(worse).startswith("healing is not shown to win anything back")
    # healing gains, but less than the same training gives the unpruned model
    less = [UtteranceLosses(pruned.sums - 0.05 * TOKENS, TOKENS) for _ in range(3)]
    assert repair_verdict(repair_contrast(full, pruned, less, control, draws=300)).startswith(
        "the same training helps the unpruned model more")
    # healing gains exactly what the control gains: not shown to repair
    same = [UtteranceLosses(pruned.sums - 0.1 * TOKENS, TOKENS) for _ in range(3)]
    even = repair_contrast(full, pruned, same, control, draws=300)
    assert even["delta"] == pytest.approx(0.0, abs=1e-12)
    assert "not shown to repair" in repair_verdict(even)
    with pytest.raises(CompanionError, match="as many seeds as the healing: got 3 and 2"):
        repair_contrast(full, pruned, healed, control[:2])


def test_within_the_loss_rule_says_no_above_the_threshold():
    assert within_loss_rule(0.1, 0.1) and within_loss_rule(0.02, 0.1)
    assert not within_loss_rule(0.11, 0.1) and not within_loss_rule(float("nan"), 0.1)


@pytest.mark.parametrize("layers, n, expected", [
    ([2, 3], 6, [4]),  # the block hands its input to layer 4
    ([4, 5], 6, [3]),  # a block at the end: the last kept layer
    ([0], 4, [1]),
    ([1, 3], 5, [2, 4]),  # two runs, two receivers
])
def test_control_lora_goes_where_the_cut_would_hand_its_input(layers, n, expected):
    assert control_targets(layers, n) == expected


def test_heal_seeds_start_at_chapter_1s():
    assert heal_seeds(HealConfig(seeds=3), TrainConfig(seed=7)) == [7, 8, 9]


@pytest.fixture
def data(random_features):
    return random_features(4, split="train", base=20, step=5)


def _unpruned():
    m = build_speechllm(ModelConfig(encoder="tiny-whisper", decoder="tiny-gemma",
                                    projector_hidden=32, lora_rank=4, lora_alpha=8), seed=0)
    return merge_adapters(m).eval()


def test_the_control_trains_lora_on_the_given_layer_of_the_unpruned_model(data, tmp_path):
    model = _unpruned()
    before = copy.deepcopy(model.decoder.state_dict())
    hc = HealConfig(steps=2, batch_size=2, learning_rate=1e-2, warmup_steps=0, lora_rank=4,
                    lora_alpha=8)
    hr = heal(model, data, "both", hc, TrainConfig(checkpoint_every=2, precision="fp32"),
              base_run=tmp_path / "base", seed=1, lora_layers=[1])
    assert pruned_layers(model.decoder) == []  # still every layer
    assert hr.trainable["layers"] == [1] and hr.record()["steps"] == 2
    lora = {n for n, p in model.decoder.named_parameters() if "lora_" in n}
    assert lora and all(".layers.1." in n for n in lora)
    base = {k.replace("base_model.model.", "").replace(".base_layer", ""): v
            for k, v in model.decoder.state_dict().items() if "lora_" not in k}
    assert all(torch.equal(base[k], v) for k, v in before.items())  # frozen weights kept
    with pytest.raises(CompanionError, match=r"LoRA layers \[9\]: give indices"):
        heal(_unpruned(), data, "both", hc, TrainConfig(precision="fp32"),
             base_run=tmp_path / "base", lora_layers=[9])


def test_another_seed_is_another_healing_run(data, tmp_path):
    from lib.prune.surgery import pruned_copy

    hc = HealConfig(steps=1, batch_size=2, warmup_steps=0, lora_rank=4, lora_alpha=8)
    train = TrainConfig(checkpoint_every=1, precision="fp32")
    m = _unpruned()
    a = heal(pruned_copy(m, [1]), data, "both", hc, train, tmp_path / "base", seed=0)
    b = heal(pruned_copy(m, [1]), data, "both", hc, train, tmp_path / "base", seed=1)
    assert a.run_dir != b.run_dir


def test_a_real_healing_with_a_zero_rate_recovers_nothing_and_repairs_nothing(random_features,
                                                                             tmp_path):
    """End to end on a tiny SpeechLLM: healing whose learning rate is zero leaves every
    utterance's loss where pruning put it, and the repair verdict says no against a control
    that did train."""
    from lib.prune.loss_curves import LossMeter
    from lib.prune.surgery import pruned_copy

    data = random_features(6, split="train", base=20, step=5)
    base = _unpruned()
    train = TrainConfig(checkpoint_every=2, precision="fp32")
    idle = HealConfig(steps=2, batch_size=2, learning_rate=0.0, warmup_steps=0, lora_rank=4,
                      lora_alpha=8)
    full = LossMeter(base, data, batch_size=2)()
    pruned_model = pruned_copy(base, [1])
    pruned = LossMeter(pruned_model, data, batch_size=2)()
    healed_model = pruned_copy(base, [1])
    heal(healed_model, data, "both", idle, train, tmp_path / "base")
    healed = LossMeter(healed_model, data, batch_size=2)()
    np.testing.assert_allclose(healed.sums, pruned.sums, rtol=1e-6)  # nothing won back
    control_model = _unpruned()
    heal(control_model, data, "both", dataclasses.replace(idle, learning_rate=5e-2), train,
         tmp_path / "base", lora_layers=control_targets([1], len(base.decoder_layers)))
    control = LossMeter(control_model, data, batch_size=2)()
    rep = repair_contrast(full, pruned, [healed], [control], draws=200)
    assert rep["gain_healed"] == pytest.approx(0.0, abs=1e-6)
    assert repair_verdict(rep).startswith("healing is not shown to win anything back")
