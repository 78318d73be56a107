"""The benchmark scripts run, print one row per decoder, and their ratios agree with the
numbers they print (the figures themselves depend on the machine and are not asserted)."""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys

import pytest

from lib.paths import REPO_ROOT


def test_benchmark_prints_a_row_per_decoder():
    cmd = [sys.executable, str(REPO_ROOT / "scripts" / "benchmark.py"), "--decoders",
           "tiny-llama", "tiny-gemma", "--encoder", "tiny-whisper", "--steps", "1",
           "--new-tokens", "2", "--decode-batch", "2", "--batch", "2", "--device", "cpu",
           "--rounds", "1", "--ctc-batch", "2"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    main, ctc = out.stdout.split("CTC warm-start step")
    rows = [line.split() for line in main.splitlines()
            if line.startswith(("tiny-llama", "tiny-gemma"))]
    assert [r[0] for r in rows] == ["tiny-llama", "tiny-gemma"]
    ctc_rows = [line.split() for line in ctc.splitlines()
                if line.startswith(("tiny-llama", "tiny-gemma"))]
    assert [r[0] for r in ctc_rows] == ["tiny-llama", "tiny-gemma"]
    for r in ctc_rows:  # fp32 ms, bf16 ms, their ratio (one round: the ratio of the two), utt/s
        fp32_ms, bf16_ms, ratio, ups = map(float, r[1:5])
        assert ratio == pytest.approx(fp32_ms / bf16_ms, rel=0.02, abs=0.01)
        assert ups == pytest.approx(2e3 / bf16_ms, rel=0.02, abs=0.1)  # --ctc-batch 2
    for r in rows:  # train utt/s, s/step, bare s/step, their ratio, decode utt/s, bf16/fp32
        train_ups, step_s, bare_s, ratio, decode_ups, bf16 = map(float, r[1:7])
        assert train_ups > 0 and decode_ups > 0 and step_s > 0 and bare_s > 0
        assert train_ups == pytest.approx(2 / step_s, rel=0.03)  # --batch 2, 3 decimals
        assert ratio > 0 and bf16 > 0
    assert "step/bare" in out.stdout and "precision" in out.stdout


def test_benchmark_bad_device_is_one_line():
    """With every GPU hidden, asking for one is a one-line error on any machine."""
    cmd = [sys.executable, str(REPO_ROOT / "scripts" / "benchmark.py"), "--device", "cuda:7"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 1, out.stderr[-2000:]
    assert out.stderr.strip().count("\n") == 0
    assert "'cuda:7'" in out.stderr and "no GPU is visible" in out.stderr


def test_scoring_benchmark_prints_its_ratios():
    cmd = [sys.executable, str(REPO_ROOT / "scripts" / "benchmark_scores.py"), "--decoders",
           "tiny-llama", "--texts", "6", "--batch", "3", "--repeats", "2"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    assert "tiny-llama:" in text
    lines = text.splitlines()

    def line_with(what: str) -> str:
        return next(line for line in lines if what in line)

    # The wall ratio is the median of the printed per-round ratios (3 decimals each).
    wall = re.search(r"stream/bare ([0-9.]+) \(rounds ([0-9., ]+)\)", line_with("wall, bare"))
    assert wall, line_with("wall, bare")
    rounds = [float(r) for r in wall.group(2).split(", ")]
    assert len(rounds) == 2 and all(r > 0 for r in rounds)
    assert float(wall.group(1)) == pytest.approx(statistics.median(rounds), abs=1.5e-3)
    # Memory ratios: stream MiB / bare MiB, up to the rounding of the printed MiB.
    for what in ("peak memory above the model", "whole-process peak"):
        m = re.search(r"bare ([0-9]+) MiB, stream ([0-9]+) MiB -> stream/bare ([0-9.]+)",
                      line_with(what))
        assert m, line_with(what)
        bare, stream, ratio = float(m.group(1)), float(m.group(2)), float(m.group(3))
        assert bare > 0 and ratio > 0
        assert (stream - 0.5) / (bare + 0.5) - 1e-3 <= ratio <= (stream + 0.5) / max(
            bare - 0.5, 1e-9) + 1e-3
    naive = re.search(r"naive/stream wall ([0-9.]+)x", line_with("common approach"))
    assert naive and float(naive.group(1)) > 0
    assert text.count("stream/bare") == 3
