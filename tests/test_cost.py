"""lib.prune.cost: the FLOP count against a hand computation, the hand-written greedy decoding
against ``generate()``, a child's peak memory as its own, and a smoke run of
scripts/benchmark_prune.py (its figures depend on the machine and are not asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from lib.prune.cost import (decoder_flops, greedy_decode, ideal_speedup, median,
                            peak_rss_bytes, run_isolated)
from lib.errors import CompanionError
from lib.paths import REPO_ROOT


def _llama(layers: int = 2):
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=8, num_hidden_layers=layers, vocab_size=16,
                       intermediate_size=12, num_attention_heads=2, num_key_value_heads=1,
                       tie_word_embeddings=True)


def test_flops_of_a_tiny_llama_by_hand():
    # hidden 8, 2 heads of 4, 1 kv head (k, v 4 wide), MLP 12, vocab 16; prompt 3, 2 new tokens
    macs_per_position = 8 * 8 + 8 * 4 + 8 * 4 + 8 * 8 + 3 * 8 * 12  # q k v o + gate up down
    assert macs_per_position == 480
    per_key = 2 * (2 * 4) * 2  # QK^T and AV: 2 heads x 4 dims, 2 FLOPs per multiply-add
    layer_prefill = 3 * 2 * 480 + (1 + 2 + 3) * per_key  # 3 positions, causal pairs
    layer_decode = 1 * 2 * 480 + 4 * per_key  # one step: the 4th position sees 4 keys
    head = 2 * 8 * 16  # logits of one position
    prefill, decode = 2 * layer_prefill + head, 2 * layer_decode + head
    f = decoder_flops(_llama(), prompt_tokens=3, new_tokens=2)
    assert (f["prefill"], f["decode"], f["total"]) == (6400, 2432, 8832)
    assert (prefill, decode) == (6400, 2432)
    assert f["head"] == 2 * head and f["layers"] == 2 * (layer_prefill + layer_decode)
    assert f["per_layer"] == [layer_prefill + layer_decode] * 2 and f["n_layers"] == 2
    assert f["layer_share"] == pytest.approx(f["layers"] / 8832)
    assert f["parameters"] == 16 * 8 + 2 * 480  # tied embedding, no FLOPs for the gather
    f2 = decoder_flops(_llama(), prompt_tokens=3, new_tokens=2, batch=2)
    assert f2["total"] == 2 * 8832 and f2["parameters"] == f["parameters"]
    assert decoder_flops(_llama(), prompt_tokens=3, new_tokens=1)["decode"] == 0


def test_sliding_window_caps_the_keys():
    from transformers import Gemma3TextConfig

    cfg = Gemma3TextConfig(hidden_size=8, num_hidden_layers=2, vocab_size=16,
                           intermediate_size=12, num_attention_heads=2, num_key_value_heads=1,
                           head_dim=4, sliding_window=2,
                           layer_types=["sliding_attention", "full_attention"])
    f = decoder_flops(cfg, prompt_tokens=3, new_tokens=2)
    sliding = 3 * 960 + (1 + 2 + 2) * 32 + 960 + 2 * 32  # at most 2 keys per query
    full = 3 * 960 + (1 + 2 + 3) * 32 + 960 + 4 * 32
    assert f["per_layer"] == [sliding, full]


def test_removing_k_of_l_layers_removes_k_over_l_of_the_layer_flops():
    cfg = _llama(6)
    kw = dict(prompt_tokens=50, new_tokens=7, batch=3)
    full = decoder_flops(cfg, **kw)
    pruned = decoder_flops(cfg, removed=[2, 3], **kw)
    assert full["layers"] - pruned["layers"] == full["layers"] * 2 // 6
    assert pruned["head"] == full["head"] and pruned["n_layers"] == 4
    assert decoder_flops(cfg, n_layers=4, **kw)["total"] == pruned["total"]
    assert ideal_speedup(cfg, [], **kw) == 1.0
    s = ideal_speedup(cfg, [2, 3], **kw)
    assert s == pytest.approx(full["total"] / pruned["total"]) and 1 < s < 6 / 4
    for part in ("prefill", "decode"):
        assert 1 < ideal_speedup(cfg, [2, 3], part=part, **kw) < 6 / 4
    with pytest.raises(CompanionError, match="keep at least one layer"):
        decoder_flops(cfg, removed=range(6))
    with pytest.raises(CompanionError, match="part="):
        ideal_speedup(cfg, [1], part="logits")


def test_pruned_config_counts_as_the_removed_layers():
    """remove_layers renumbers config.layer_types: the pruned config gives the same count."""
    from lib.build.components import load_decoder
    from lib.prune.surgery import remove_layers

    model, _ = load_decoder("tiny-gemma")
    kw = dict(prompt_tokens=9, new_tokens=3)
    expected = decoder_flops(model.config, removed=[1, 2], **kw)
    remove_layers(model, [1, 2])
    assert decoder_flops(model.config, **kw) == expected


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gemma"])
def test_greedy_decode_matches_generate(name):
    from lib.build.components import load_decoder

    model, _ = load_decoder(name)
    model.generation_config.eos_token_id = None  # generate() may not stop early either
    torch.manual_seed(0)
    embeds = torch.randn(2, 7, model.config.hidden_size)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, :2] = 0  # left padding
    ids, prefill_s, decode_s = greedy_decode(model, embeds, mask, 5)
    ref = model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=5,
                         do_sample=False, pad_token_id=0)
    assert ids.tolist() == ref.tolist() and ids.shape == (2, 5)
    assert prefill_s > 0 and decode_s > 0


def test_a_child_peak_is_its_own():
    hold = torch.ones(2**27)  # 512 MiB held here while the child runs
    child_peak_seen, peak = run_isolated(peak_rss_bytes)
    assert 0 < child_peak_seen <= peak
    assert peak < peak_rss_bytes() - 256 * 2**20, "the child reports the parent's peak"
    del hold
    assert median([3.0, 1.0, 2.0]) == 2.0 and median([1.0, 2.0, 4.0, 3.0]) == 2.5


def _hold_512_mib() -> bool:
    import sys as _sys

    hold = torch.ones(2**27)
    return bool(hold[0]) and "transformers.modeling_utils" in _sys.modules


def _preloaded() -> bool:
    import sys as _sys

    return "transformers.modeling_utils" in _sys.modules and "peft" in _sys.modules


def _burn(n: int) -> float:
    """Some CPU in the isolated process; its own CPU seconds when done (the reference)."""
    import resource

    x = 0
    for i in range(n):
        x += i * i
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def test_an_isolated_run_is_counted_as_this_process_cpu():
    """A forkserver's child is not this process's child: getrusage never counts it, and the
    chapter's clock booked it as other processes' CPU. Reference: the child's own
    getrusage at the end of its work."""
    from lib.clock import cpu_counters

    before = cpu_counters()
    if before is None:
        pytest.skip("no CPU counters on this system")
    burned, _ = run_isolated(_burn, 5_000_000)
    own = cpu_counters()[2] - before[2]
    assert burned > 0.05  # the case is large enough to tell
    assert own >= burned


def test_isolated_runs_start_from_the_preloaded_server_and_not_from_each_other():
    """Each run is a new process forked from a server that imported the model code (so it
    does not import it again), and none reports an earlier run's peak."""
    big_seen, big = run_isolated(_hold_512_mib)
    small_seen, small = run_isolated(_preloaded)
    assert big_seen and small_seen  # the imports were there before fn ran
    assert small < big - 256 * 2**20, "a run reports an earlier run's peak"


def test_benchmark_prune_smoke(tmp_path):
    out_json = tmp_path / "prune.json"
    cmd = [sys.executable, str(REPO_ROOT / "scripts" / "benchmark_prune.py"), "--decoders",
           "tiny-llama", "--rounds", "1", "--fractions", "0.5", "--batch", "2",
           "--new-tokens", "3", "--json", str(out_json)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny model: threads only wait on a busy box
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line.split() for line in out.stdout.splitlines() if line.startswith("tiny-llama")]
    assert [r[1:3] for r in rows] == [["0%", "4/4"], ["50%", "2/4"]]
    assert "meas/ideal" in out.stdout and "peak RSS MiB" in out.stdout
    data = json.loads(out_json.read_text())
    assert {"provenance", "settings", "offline"} <= set(data)
    assert "versions" in data["provenance"]
    for r in data["offline"]:
        assert {"decoder", "removed_fraction", "layers_kept", "params_m", "time_s",
                "measured_speedup", "ideal_speedup", "ratio", "peak_rss_mib",
                "param_mib"} <= set(r)
        assert r["measured_speedup"] > 0 and r["ideal_speedup"] >= 1 and r["ratio"] > 0
        assert r["peak_rss_mib"] > r["param_mib"] > 0
    assert data["offline"][0]["ideal_speedup"] == 1.0
