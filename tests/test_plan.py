"""``python -m lib.experiment --plan``: the data counted and the features sized by hand, the
time arithmetic of an epoch and a run, nothing cached, a missing folder in one line."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf

TRAIN_SECONDS = [0.6, 1.0, 1.37, 0.8, 1.2, 0.9, 1.1, 0.7, 1.3, 0.95]
TEST_SECONDS = [0.7, 1.1]


def _librispeech(root, split, seconds):
    folder = root / split / "19" / "198"
    folder.mkdir(parents=True)
    lines = []
    for i, s in enumerate(seconds):
        uid = f"19-198-{i:04d}"
        wave = np.random.default_rng(i).normal(0, .1, round(s * 16000)).astype(np.float32)
        sf.write(folder / f"{uid}.flac", wave, 16000)
        lines.append(f"{uid} WORDS NUMBER {i}")
    (folder / "19-198.trans.txt").write_text("\n".join(lines) + "\n")


def test_the_plan_counts_the_data_and_sizes_the_features_by_hand(tmp_path, monkeypatch):
    from lib.config.resolve import resolve
    from lib.recipes.plan import plan_run, plan_text

    monkeypatch.setenv("COMPANION_CACHE", str(tmp_path / "cache"))
    _librispeech(tmp_path, "train-clean-100", TRAIN_SECONDS)
    _librispeech(tmp_path, "test-clean", TEST_SECONDS)
    cfg = resolve(1, preset="tiny", changes={
        "train_data": f"librispeech:{tmp_path}#train-clean-100",
        "test_data": [f"librispeech:{tmp_path}#test-clean"], "decoders": ["tiny-llama"]})
    plan = plan_run(cfg, probe_steps=2, processes=2)
    assert plan["train"]["utterances"] == len(TRAIN_SECONDS)
    assert plan["train"]["hours"] == pytest.approx(sum(TRAIN_SECONDS) / 3600, rel=1e-4)
    test = plan["tests"][f"librispeech:{tmp_path}#test-clean"]
    assert test["utterances"] == 2 and test["hours"] == pytest.approx(sum(TEST_SECONDS) / 3600,
                                                                      rel=1e-4)
    # Whisper's 100 mel frames a second, halved by its second convolution: 50 frames of
    # tiny-whisper's 64 values, kept as float16 (2 bytes), for every second of audio
    by_hand = 50 * 64 * 2 * (sum(TRAIN_SECONDS) + sum(TEST_SECONDS)) / 1e9
    assert plan["feature_gb"] == pytest.approx(by_hand, rel=0.03)  # a clip's last frame
    # an optimiser step takes batch_size x grad_accum utterances on each of two processes
    per_step = cfg.train.batch_size * cfg.train.grad_accum * 2
    m = plan["models"]["tiny-llama"]
    assert m["steps_per_epoch"] == math.ceil(len(TRAIN_SECONDS) / per_step) == 2
    assert m["step_s"] > 0
    assert m["epoch_hours"] == pytest.approx(2 * m["step_s"] / 3600)
    assert m["run_hours"] == pytest.approx(cfg.train.steps * m["step_s"] / 3600)
    assert plan["probe"]["utterances"] == cfg.train.batch_size * 2
    # nothing of the probe is cached
    assert not list((tmp_path / "cache").glob("features/*"))
    assert not list((tmp_path / "cache").glob("runs/*"))
    text = plan_text(plan, cfg)
    assert f"{len(TRAIN_SECONDS)} utterances" in text and "features on disk" in text
    assert "not counted: the CTC warm start" in text  # the tiny preset's recipe


def test_a_plan_of_a_missing_folder_is_one_line(tmp_path, monkeypatch, capsys):
    from lib.experiment import main

    monkeypatch.setenv("COMPANION_CACHE", str(tmp_path / "cache"))
    missing = tmp_path / "LibriSpeech"
    status = main(["--preset", "tiny", "--plan", "-p", "train_data",
                   f"librispeech:{missing}#train-clean-100"])
    err = capsys.readouterr().err.strip()
    assert status == 1 and len(err.splitlines()) == 1
    assert err.startswith("error: LibriSpeech folder not found") and str(missing) in err
