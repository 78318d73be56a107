"""``precision: auto`` on a CPU with native bf16: chosen per use by a probe of the machine,
kept in the cache, and float32 wherever bf16 does not pay (lib.machine)."""

from __future__ import annotations

import json

import pytest
import torch

import lib.clock
import lib.device
import lib.machine
from lib.config.resolve import resolve
from lib.config.sections import ModelConfig
from lib.errors import CompanionError
from lib.machine import machine_choice as REAL_CHOICE  # before conftest's stand-in


def measured(train_rounds, decode_rounds):
    """A probe's result with the given per-round ratios (median as the speedup)."""
    out = {"decoders": ["tiny-llama"], "rounds": len(train_rounds)}
    for use, r in (("training", train_rounds), ("decoding", decode_rounds)):
        out[use] = {"fp32_s": 1.0, "bf16_s": 1.0, "speedup": sorted(r)[len(r) // 2],
                    "round_speedups": list(r)}
    return out


def test_bf16_is_chosen_only_where_it_pays():
    """1.03x (the Xeon's training) buys nothing -> fp32; 1.45x in every round pays -> bf16;
    rounds on both sides of 1.15 cannot tell -> fp32."""
    d = lib.machine.decide(measured([0.89, 1.0, 1.03, 1.1, 1.12], [1.4, 1.45, 1.5, 1.42, 1.6]))
    assert (d["training"]["verdict"], d["training"]["chose"]) == ("buys nothing", "fp32")
    assert (d["decoding"]["verdict"], d["decoding"]["chose"]) == ("pays", "bf16")
    d = lib.machine.decide(measured([1.1, 1.2, 1.3, 1.3, 1.3], [1.0] * 5))
    assert (d["training"]["verdict"], d["training"]["chose"]) == ("undecided", "fp32")
    assert d["decoding"]["chose"] == "fp32"


@pytest.fixture
def probed(monkeypatch, tmp_path):
    """A CPU with native bf16, an empty cache, the real choice, and a probe that returns a
    constructed measurement and counts its calls."""
    monkeypatch.setenv("COMPANION_CACHE", str(tmp_path))
    monkeypatch.setattr(lib.machine, "machine_choice", REAL_CHOICE)
    monkeypatch.setattr(lib.device, "native_bf16", lambda: True)
    calls = []
    monkeypatch.setattr(lib.clock, "cpu_counters", lambda: (0.0, 0.0, 0.0))  # a quiet machine

    def probe(models, batch_size, eval_batch_size, rounds=5, seed=0):
        calls.append(([m.decoder for m in models], batch_size, eval_batch_size))
        return measured([1.0, 1.02, 1.03, 1.05, 1.1], [1.3, 1.4, 1.45, 1.5, 1.5])

    monkeypatch.setattr(lib.machine, "probe_precision", probe)
    return calls


def test_a_probe_on_a_shared_machine_is_measured_again_and_not_kept(probed, monkeypatch,
                                                                     capsys):
    """Other processes take 1.5 CPU seconds per second of wall time (75 % of two cores)
    during the first three probes: the run measures again, then takes the second probe's
    choice, stored as shared (measured once in the process whatever it resolves); the next
    run measures again, twice, and stores the quiet fourth probe's, which the one after
    reads back."""
    wall = {"t": 0.0}
    cpu = {"busy": 0.0}
    shared = {"n": 3}

    def probe(models, batch_size, eval_batch_size, rounds=5, seed=0):
        probed.append("probe")
        wall["t"] += 10.0
        if shared["n"]:
            shared["n"] -= 1
            cpu["busy"] += 10.0 * 1.5
        return measured([1.3] * 5, [1.3] * 5)

    monkeypatch.setattr(lib.machine, "probe_precision", probe)
    monkeypatch.setattr(lib.clock, "_now", lambda: wall["t"])
    monkeypatch.setattr(lib.clock, "cpu_counters", lambda: (cpu["busy"], 0.0, 0.0))
    monkeypatch.setattr(lib.clock.os, "cpu_count", lambda: 2)
    run = resolve(1, preset="tiny", changes={"device": "cpu"})
    assert run.train.precision == "bf16" and probed == ["probe", "probe"]
    resolve(1, preset="tiny", changes={"device": "cpu", "train_steps": 7})
    assert probed == ["probe", "probe"]  # the same process: measured once
    pair = ["tiny-llama", "tiny-gemma"]
    path = lib.machine.choice_path(pair)
    kept = json.loads(path.read_text())
    assert kept["machine"] == "shared" and kept["others_share"] == 0.75
    out = capsys.readouterr().out
    assert "other processes took 75 % of the CPU during the probe, measuring again" in out
    assert "; the next run measures again" in out
    lib.machine._MEASURED_HERE.clear()  # the next run: a new process
    resolve(1, preset="tiny", changes={"device": "cpu"})
    assert probed == ["probe"] * 4  # a third probe shared, the fourth quiet
    kept = json.loads(path.read_text())
    assert kept["machine"] == "to itself" and kept["others_share"] == 0.0
    lib.machine._MEASURED_HERE.clear()
    resolve(1, preset="tiny", changes={"device": "cpu"})
    assert len(probed) == 4  # read back


def test_auto_takes_the_machines_measured_choice_once_per_machine_and_decoders(probed):
    run = resolve(1, preset="tiny", changes={"device": "cpu"})
    assert (run.train.precision, run.eval.precision) == ("fp32", "bf16")
    pair = ["tiny-llama", "tiny-gemma"]  # the tiny preset's decoders
    assert probed == [(pair, run.train.batch_size, run.eval.batch_size)]
    path = lib.machine.choice_path(pair)
    kept = json.loads(path.read_text())
    assert kept["training"]["chose"] == "fp32" and kept["provenance"]["device"]["cpu_count"]
    again = resolve(1, preset="tiny", changes={"device": "cpu", "train_steps": 7})
    assert (again.train.precision, again.eval.precision) == ("fp32", "bf16")
    assert len(probed) == 1  # read back, not measured again
    resolve(1, preset="tiny", changes={"device": "cpu", "decoders": ["tiny-llama"]})
    assert len(probed) == 2 and lib.machine.choice_path(["tiny-llama"]).exists()
    named = resolve(1, preset="tiny", changes={"device": "cpu", "precision": "bf16"})
    assert named.train.precision == "bf16"  # a named precision is kept as given


def test_no_probe_where_bf16_is_emulated_or_on_a_gpu(probed, monkeypatch):
    monkeypatch.setattr(lib.device, "native_bf16", lambda: False)
    run = resolve(1, preset="tiny", changes={"device": "cpu"})
    assert (run.train.precision, run.eval.precision) == ("fp32", "fp32")
    assert lib.device.resolve_precision("auto", "cuda:0", lambda: "fp32") == "bf16"
    assert probed == []


def test_a_damaged_choice_is_one_line_naming_the_file(probed):
    path = lib.machine.choice_path(["tiny-llama", "tiny-gemma"])
    path.parent.mkdir(parents=True)
    path.write_text('{"training": {"chose": "fast"}}')
    with pytest.raises(CompanionError, match=r"precision-.*\.json is not a precision choice: "
                                             "delete it"):
        resolve(1, preset="tiny", changes={"device": "cpu"})
    assert path.read_text() == '{"training": {"chose": "fast"}}'  # left for the user


def test_the_probe_times_both_uses_on_the_run_s_decoders_and_changes_nothing(monkeypatch):
    """A real probe on a tiny SpeechLLM: each decoding timed is exactly PROBE_TOKENS forward
    passes of the decoder per call (counted at the decoder), both uses timed in both
    precisions, and the random state after it is the one before."""
    mc = ModelConfig(encoder="tiny-whisper", decoder="tiny-llama", projector_hidden=32,
                     lora_rank=4, lora_alpha=8)
    forwards = []
    from lib.build import speechllm

    build = speechllm.build_speechllm

    def counting_build(cfg, **kw):
        model = build(cfg, **kw)
        head = model.decoder.get_output_embeddings()  # once per forward pass, either use
        head.register_forward_hook(lambda *a: forwards.append(model.training))
        return model

    monkeypatch.setattr(speechllm, "build_speechllm", counting_build)
    torch.manual_seed(3)
    want = torch.rand(3)
    torch.manual_seed(3)
    out = lib.machine.probe_precision([mc], batch_size=2, eval_batch_size=2, rounds=2)
    assert torch.equal(torch.rand(3), want)
    assert out["decoders"] == ["tiny-llama"] and out["rounds"] == 2
    for use in ("training", "decoding"):
        m = out[use]
        assert m["fp32_s"] > 0 and m["bf16_s"] > 0 and len(m["round_speedups"]) == 2
    decoding = [f for f in forwards if not f]
    # warm-up (fp32, bf16) and two rounds of (fp32, bf16): six decodings of PROBE_TOKENS each
    assert len(decoding) == 6 * lib.machine.PROBE_TOKENS
    assert len(forwards) - len(decoding) == 6  # one training step per timing


def test_section_1_6_says_how_auto_chose():
    """The page's sentence names the stored probe's ratios, rounds, verdicts and choices, and
    says when no probe decided (a GPU, emulated bf16, both precisions named)."""
    from lib.recipes.bf16 import probe_sentence

    found = lib.machine.decide(measured([0.89, 1.0, 1.03, 1.1, 1.12], [1.4, 1.45, 1.5, 1.42, 1.6]))
    found["provenance"] = {"date": "2026-12-05T18:00:00+00:00"}
    said = probe_sentence(found)
    assert "(tiny-llama) on 2026-12-05, 5 alternating rounds" in said
    assert ("training bf16 1.03 times as fast as float32 (rounds 0.89-1.12: buys nothing, so "
            "fp32); decoding bf16 1.45 times as fast as float32 (rounds 1.40-1.60: pays, so "
            "bf16)") in said
    assert probe_sentence(None).startswith("no probe decided it")
    assert said.endswith("so bf16)")  # a choice stored before the machine was watched
    said = probe_sentence({**found, "machine": "shared", "others_share": 0.4})
    assert said.endswith("; other processes took 40 % of the CPU during it, more than a quiet "
                         "machine allows, so the next run measures again")
    said = probe_sentence({**found, "machine": "to itself", "others_share": 0.01})
    assert said.endswith("; other processes took 1 % of the CPU during it (a quiet machine)")


def test_the_record_keeps_the_training_check_s_seconds_in_each_precision():
    """Chapter 1's record keeps the float32 and bf16 seconds per step behind the training
    ratio, so two runs whose ratios differ show which precision's time moved."""
    import pandas as pd

    from lib.recipes.bf16 import precision_record
    from lib.recipes.section import Section

    probe = {"fp32_s": 1.2, "bf16_s": 0.8, "speedup": 1.5, "round_speedups": [1.4, 1.5, 1.6]}
    glue = {"cpu_name": "a CPU", "train_chose": "bf16", "decode_chose": "fp32",
            "train_verdict": "pays"}
    record = precision_record(Section(pd.DataFrame(), glue,
                                      {"checks": {}, "training": probe, "probe": None}))
    assert record["training"] == {"chose": "bf16", "bf16_speedup": 1.5,
                                  "rounds": [1.4, 1.5, 1.6], "fp32_s": 1.2, "bf16_s": 0.8,
                                  "verdict": "pays"}
