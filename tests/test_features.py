"""Feature extraction: cached once, and a bad audio file skips only that utterance."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from lib.data import DataWarning, Utterance
from lib.errors import CompanionError
from lib.features import extract_features
from lib.speechllm import build_encoder


def _utt(path, i):
    return Utterance(id=f"u{i}", audio=str(path), text="a b", duration=1.0, voice="v",
                     split="test", source="manifest")


@pytest.fixture
def encoder():
    return build_encoder("tiny-whisper")


def test_bad_files_are_skipped_with_one_line(tmp_path, monkeypatch, encoder):
    monkeypatch.setenv("COMPANION_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    good = tmp_path / "good.wav"
    sf.write(good, rng.normal(0, 0.1, 16000).astype(np.float32), 16000)
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(16000, dtype=np.float32), 16000)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF not really a wav file at all")
    utts = [_utt(good, 0), _utt(silent, 1), _utt(corrupt, 2), _utt(good, 3)]
    with pytest.warns(DataWarning) as rec:
        fs = extract_features(encoder, utts)
    assert [u.id for u in fs.utterances] == ["u0", "u3"]
    messages = " ".join(str(w.message) for w in rec)
    assert "silent.wav" in messages and "corrupt.wav" in messages
    assert all("\n" not in str(w.message) for w in rec)
    torch.testing.assert_close(fs.feats[0], fs.feats[1])
    again = extract_features(encoder, utts)  # cached, same subset
    assert [u.id for u in again.utterances] == ["u0", "u3"]


def test_all_bad_is_an_error(tmp_path, monkeypatch, encoder):
    monkeypatch.setenv("COMPANION_CACHE", str(tmp_path / "cache"))
    with pytest.warns(DataWarning), pytest.raises(CompanionError, match="none of the 1"):
        extract_features(encoder, [_utt(tmp_path / "missing.wav", 0)])
