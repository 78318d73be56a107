"""The benchmark script runs and prints one row per decoder (figures are not asserted)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lib.paths import REPO_ROOT


def test_benchmark_prints_a_row_per_decoder():
    cmd = [sys.executable, str(REPO_ROOT / "scripts" / "benchmark.py"), "--decoders",
           "tiny-llama", "tiny-gemma", "--encoder", "tiny-whisper", "--steps", "1",
           "--new-tokens", "2", "--decode-batch", "2", "--batch", "2", "--device", "cpu",
           "--rounds", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line.split() for line in out.stdout.splitlines()
            if line.startswith(("tiny-llama", "tiny-gemma"))]
    assert [r[0] for r in rows] == ["tiny-llama", "tiny-gemma"]
    for r in rows:  # train utt/s, s/step, bare s/step, their ratio, decode utt/s
        train_ups, step_s, bare_s, ratio, decode_ups = map(float, r[1:6])
        assert train_ups > 0 and decode_ups > 0 and step_s > 0 and bare_s > 0
        assert train_ups == pytest.approx(2 / step_s, rel=0.03)  # --batch 2, 3 decimals
        assert ratio > 0
    assert "step/bare" in out.stdout and "precision" in out.stdout


def test_benchmark_bad_device_is_one_line():
    cmd = [sys.executable, str(REPO_ROOT / "scripts" / "benchmark.py"), "--device", "cuda:7"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if out.returncode == 0:  # a machine with 8 GPUs: nothing to check
        return
    assert out.returncode == 1 and out.stderr.strip().count("\n") == 0
    assert "no GPU is visible" in out.stderr or "cuda:7" in out.stderr


def test_scoring_benchmark_prints_its_ratios():
    cmd = [sys.executable, str(REPO_ROOT / "scripts" / "benchmark_scores.py"), "--decoders",
           "tiny-llama", "--texts", "6", "--batch", "3", "--repeats", "2"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    assert "tiny-llama:" in text
    for what in ("wall, bare vs streaming", "peak memory above the model",
                 "whole-process peak", "common approach"):
        line = next(l for l in text.splitlines() if what in l)
        assert "/" in line or "x" in line
    assert text.count("stream/bare") == 3 and "naive/stream wall" in text
