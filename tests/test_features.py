"""Feature extraction: cached once, and a bad audio file skips only that utterance."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from lib.data.audio import DataWarning
from lib.data.loaders import Utterance
from lib.errors import CompanionError
from lib.data.features import extract_features
from lib.build.components import build_encoder


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


def test_features_do_not_depend_on_the_batch(encoder):
    """A clip encoded with longer clips equals the clip encoded alone (issue 11 defect)."""
    rng = np.random.default_rng(1)
    waves = [rng.normal(0, 0.1, n).astype(np.float32) for n in (16000, 5000, 24000, 800)]
    with torch.no_grad():
        batch, lengths = encoder(waves)
        for i, wave in enumerate(waves):
            alone, n = encoder([wave])
            assert int(n[0]) == int(lengths[i])
            torch.testing.assert_close(batch[i, : int(n[0])], alone[0, : int(n[0])],
                                       atol=1e-5, rtol=1e-4)
            # 50 frames per second after Whisper's two convolutions (hop 160, stride 2).
            assert int(n[0]) == (len(wave) // 160 + 1) // 2


def test_clips_over_30_s_are_encoded_in_chunks(encoder):
    """A 70 s clip keeps all its frames: three 30 s windows (30 + 30 + 10 s), concatenated."""
    rng = np.random.default_rng(2)
    wave = rng.normal(0, 0.1, 70 * 16000).astype(np.float32)
    with torch.no_grad():
        feats, lengths = encoder([wave])
        first, n1 = encoder([wave[: 30 * 16000]])
        last, n3 = encoder([wave[60 * 16000:]])
    assert int(lengths[0]) == 3500  # 70 s x 50 frames/s
    torch.testing.assert_close(feats[0, :1500], first[0, : int(n1[0])], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(feats[0, 3000:3500], last[0, : int(n3[0])], atol=1e-5,
                               rtol=1e-4)


def test_feature_cache_misses_when_the_audio_changes(tmp_path, monkeypatch, encoder):
    """Same path, same size, other samples: the cache must not be reused."""
    monkeypatch.setenv("COMPANION_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(3)
    path = tmp_path / "clip.wav"
    sf.write(path, rng.normal(0, 0.1, 16000).astype(np.float32), 16000)
    first = extract_features(encoder, [_utt(path, 0)])
    size = path.stat().st_size
    sf.write(path, rng.normal(0, 0.1, 16000).astype(np.float32), 16000)
    assert path.stat().st_size == size
    second = extract_features(encoder, [_utt(path, 0)])
    assert not torch.equal(first.feats[0], second.feats[0])


def test_a_clip_too_short_to_encode_is_skipped_in_one_line(tmp_path, monkeypatch, encoder):
    """50 ms is less than one projector frame (k=5 encoder frames of 20 ms)."""
    monkeypatch.setenv("COMPANION_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(4)
    short, good = tmp_path / "short.wav", tmp_path / "good.wav"
    sf.write(short, rng.normal(0, 0.1, 800).astype(np.float32), 16000)
    sf.write(good, rng.normal(0, 0.1, 16000).astype(np.float32), 16000)
    with pytest.warns(DataWarning) as rec:
        fs = extract_features(encoder, [_utt(short, 0), _utt(good, 1)])
    assert [u.id for u in fs.utterances] == ["u1"]
    (msg,) = [str(w.message) for w in rec]
    assert "short.wav" in msg and "0.05 s" in msg and "\n" not in msg
    with pytest.raises(CompanionError, match="shorter than"):
        encoder([rng.normal(0, 0.1, 10).astype(np.float32)])


def test_other_audio_keeps_the_targets_and_shifts_the_audio_by_one(random_features):
    """Utterance i hears utterance i+1's features (the last hears the first's); ids,
    transcripts and order stay, so losses stay paired with the full model's."""
    import torch

    fs = random_features(4, dim=8)
    shifted = fs.other_audio()
    assert [u.id for u in shifted.utterances] == [u.id for u in fs.utterances]
    for i in range(4):
        assert torch.equal(shifted.feats[i], fs.feats[(i + 1) % 4])
