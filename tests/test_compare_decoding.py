"""lib.prune.cost.compare_decoding: a SpeechLLM before and after pruning, on tiny models.

The parameter counts are checked against the removed layers' own parameters counted by
hand, the ideal speed-up against the layer share of a hand count, and the saved folders'
peak memory against the parameter bytes they must at least hold. No timing assertions.
"""

from __future__ import annotations

import math

import pytest

from lib.config.sections import ModelConfig
from lib.prune.cost import compare_decoding, peak_summary
from lib.report.rules import peak_spread
from lib.build.adapters import merged_copy
from lib.prune.surgery import pruned_copy
from lib.build.checkpoint import save_speechllm
from lib.build.speechllm import build_speechllm


@pytest.fixture(scope="module")
def tiny_pair():
    mc = ModelConfig(encoder="tiny-whisper", decoder="tiny-llama", projector_hidden=32,
                     lora_rank=4, lora_alpha=8)
    full = build_speechllm(mc, seed=0).eval()
    return full, pruned_copy(full, [1, 2])


def test_parameters_and_ideal_speedup_by_hand(tiny_pair, random_features):
    full, pruned = tiny_pair
    data = random_features(n=3, dim=full.projector.net[0].in_features // full.projector.stack)
    c = compare_decoding(full, pruned, data, new_tokens=3, rounds=1)
    layers = full.decoder_layers
    per_layer = [sum(p.numel() for n, p in layers[i].named_parameters() if "lora_" not in n)
                 for i in range(len(layers))]
    assert c["params_full_m"] * 1e6 - c["params_pruned_m"] * 1e6 == pytest.approx(
        per_layer[1] + per_layer[2], abs=0.5)
    # removing 2 of 4 identical layers: the ideal is above 1 and below 4 / 2 (the LM head,
    # which pruning keeps, has FLOPs too)
    assert 1.0 < c["ideal_speedup"] < 2.0
    assert c["speedup"] > 0 and c["speedup_over_ideal"] == pytest.approx(
        c["speedup"] / c["ideal_speedup"])
    assert math.isnan(c["peak_mib_full"]) and math.isnan(c["peak_mib_pruned"])
    assert c["batch"] == 3 and c["new_tokens"] == 3


def test_peak_memory_of_saved_models(tiny_pair, random_features, tmp_path):
    full, pruned = tiny_pair
    data = random_features(n=2, dim=full.projector.net[0].in_features // full.projector.stack)
    f = save_speechllm(merged_copy(full), tmp_path / "full")
    p = save_speechllm(pruned_copy(full, [1, 2]), tmp_path / "pruned")
    c = compare_decoding(full, pruned, data, new_tokens=2, rounds=1, full_folder=f,
                         pruned_folder=p, memory_rounds=1)
    # a fresh process holding the model holds at least its parameters
    assert c["peak_mib_full"] > c["param_mib_full"] > c["param_mib_pruned"]
    assert c["peak_mib_pruned"] > c["param_mib_pruned"]
    # one process per model: the median is that process's peak, and no spread is measured
    assert c["peak_mib_full_rounds"] == [c["peak_mib_full"]]
    assert c["peak_mib_pruned_rounds"] == [c["peak_mib_pruned"]]
    assert math.isnan(peak_spread(c))


def test_peak_summary_by_hand():
    s = peak_summary({"full": [1200.0, 1100.0, 1150.0], "pruned": [1000.0, 1090.0]})
    assert s["peak_mib_full"] == 1150.0  # the middle of three
    assert s["peak_mib_pruned"] == 1045.0  # the mean of the middle two
    assert peak_spread(s) == 100.0  # max(1200 - 1100, 1090 - 1000)
    assert s["peak_mib_full_rounds"] == [1200.0, 1100.0, 1150.0]
    empty = peak_summary({"full": [], "pruned": []})
    assert math.isnan(empty["peak_mib_full"]) and math.isnan(peak_spread(empty))
