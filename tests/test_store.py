"""Feature sets in shards, read lazily: the same tensors as written, a damaged or incomplete
set never taken as whole, earlier single-file caches read as they are, and the feature
stage's peak memory flat in the number of utterances."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from lib.data.features import FeatureSet, extract_features
from lib.data.loaders import Utterance
from lib.data.store import FeatureStore, LazyFeats, ShardWriter, set_files
from lib.fileio import CorruptFile, save_tensors

ROOT = Path(__file__).resolve().parent.parent


def _tensors(n, dim=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(3 + i % 5, dim, generator=g).half() for i in range(n)]


def _write(path, tensors, max_bytes, order=None):
    w = ShardWriter(path, max_bytes)
    for i in order or range(len(tensors)):
        w.add(i, tensors[i])
    return w.close()


def test_shards_hold_what_was_written_in_order_read_one_clip_at_a_time(tmp_path):
    ts = _tensors(23)
    order = list(range(22, -1, -1))  # written longest-first-like, out of order
    n = _write(tmp_path / "k.safetensors", ts, max_bytes=300, order=order)
    assert n > 3 and len(set_files(tmp_path / "k.safetensors")) == n
    store = FeatureStore(tmp_path / "k.safetensors")
    assert store.n_shards == n and store.indices() == list(range(23))
    lazy = LazyFeats(store, store.indices())
    for i, t in enumerate(ts):  # the reference: the tensors handed to the writer
        assert torch.equal(lazy[i], t) and lazy.frames()[i] == t.shape[0]
    # slices, concatenation and iteration stay lazy and agree with a list's
    shifted = lazy[1:] + lazy[:1]
    assert isinstance(shifted, LazyFeats)
    for a, b in zip(shifted, ts[1:] + ts[:1]):
        assert torch.equal(a, b)


def test_a_single_file_written_before_shards_is_a_set_of_one(tmp_path):
    ts = _tensors(5)
    path = tmp_path / "old.safetensors"
    save_tensors(path, {str(i): t for i, t in enumerate(ts)})  # the earlier cache format
    store = FeatureStore(path)
    assert store.n_shards == 1 and [torch.equal(store.get(i), t)
                                    for i, t in enumerate(ts)] == [True] * 5
    # and a set that fits one shard is written as exactly that file
    again = tmp_path / "new.safetensors"
    assert _write(again, ts, max_bytes=1 << 30) == 1
    assert again.read_bytes() == path.read_bytes()


def test_an_interrupted_or_shortened_set_is_never_read_as_whole(tmp_path):
    ts = _tensors(12)
    path = tmp_path / "k.safetensors"
    w = ShardWriter(path, 200)
    for i, t in enumerate(ts):
        w.add(i, t)  # killed here: numbered shards written, the first one never
    assert (tmp_path / w.parts[0]).is_file() and not path.exists()
    long = _write(path, ts, 200)
    short = _write(path, ts[:4], 200)  # the same key written again, shorter
    assert short < long and len(set_files(path)) == short  # stale shards removed
    assert FeatureStore(path).indices() == list(range(4))


def test_a_damaged_or_missing_shard_is_one_line(tmp_path):
    ts = _tensors(12)
    path = tmp_path / "k.safetensors"
    n = _write(path, ts, 200)
    files = FeatureStore(path, verify=False).files
    second = files[1]
    data = bytearray(second.read_bytes())
    data[-3] ^= 0xFF  # a flipped bit in a tensor's bytes
    second.write_bytes(bytes(data))
    with pytest.raises(CorruptFile, match=r"k\.1\.safetensors does not match"):
        FeatureStore(path)
    files[-1].unlink()
    with pytest.raises(CorruptFile, match=rf"k\.{n - 1}\.safetensors is missing"):
        FeatureStore(path, verify=False)


def _utts(tmp_path, n):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        wav = tmp_path / f"c{i}.wav"
        sf.write(wav, rng.normal(0, 0.1, 1600 + 400 * (i % 4)).astype(np.float32), 16000)
        out.append(Utterance(id=f"u{i}", audio=str(wav), text=f"w{i}", duration=0.1 + i % 4,
                             voice="v", split="test", source="manifest"))
    return out


def test_a_sharded_cache_gives_the_features_held_in_memory(tmp_path, monkeypatch, capsys):
    from lib.build.components import build_encoder

    monkeypatch.setenv("COMPANION_CACHE", str(tmp_path / "cache"))
    enc = build_encoder("tiny-whisper")
    utts = _utts(tmp_path, 9)
    held = extract_features(enc, utts, batch_size=2, use_cache=False)  # the reference
    assert isinstance(held.feats, list)
    first = extract_features(enc, utts, batch_size=2, shard_bytes=4000)
    again = extract_features(enc, utts, batch_size=2, shard_bytes=4000)
    assert "shards)" in capsys.readouterr().out  # the cached set said so, with its shards
    for fs in (first, again):
        assert isinstance(fs.feats, LazyFeats) and fs.feats.store.n_shards > 1
        assert [u.id for u in fs.utterances] == [u.id for u in held.utterances]
        assert fs.frames() == [f.shape[0] for f in held.feats]
        for a, b in zip(fs.feats, held.feats):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert fs.digest() == FeatureSet(held.utterances, list(held.feats)).digest()
        other = fs.other_audio()
        assert torch.equal(other.feats[0], held.feats[1])
        feats, lengths, texts = fs.batch([3, 0])
        ref = held.batch([3, 0])
        assert torch.equal(feats, ref[0]) and torch.equal(lengths, ref[1]) and texts == ref[2]


def test_a_damaged_cached_set_is_set_aside_and_encoded_again(tmp_path, monkeypatch, capsys):
    from lib.build.components import build_encoder
    from lib.data.features import features_path

    monkeypatch.setenv("COMPANION_CACHE", str(tmp_path / "cache"))
    enc = build_encoder("tiny-whisper")
    utts = _utts(tmp_path, 6)
    first = extract_features(enc, utts, shard_bytes=4000)
    path = features_path(enc, utts, "fp32")
    second = first.feats.store.files[1]
    second.write_bytes(second.read_bytes()[:-10])  # truncated
    again = extract_features(enc, utts, shard_bytes=4000)
    lines = [x for x in capsys.readouterr().out.splitlines() if "set aside" in x]
    assert lines and all("rebuilt" in x for x in lines)
    assert len(list(path.parent.glob("*.corrupt"))) == first.feats.store.n_shards
    for a, b in zip(again.feats, first.feats):
        assert torch.equal(a, b)


def test_the_feature_stage_peak_memory_is_flat_in_the_number_of_utterances(tmp_path):
    """The benchmark's own measurement on ten times the clips: flat with shards, and (the
    control that shows the measurement can say no) not flat with the whole set in one."""
    out = tmp_path / "features.json"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "benchmark_features.py"),
                    "--utterances", "8", "--times", "10", "--dim", "512", "--frames", "400",
                    "--shard-mb", "1", "--json", str(out)], check=True, capture_output=True)
    verdicts = json.loads(out.read_text())["verdicts"]
    assert verdicts["sharded"]["flat"] is True
    assert verdicts["one shard"]["flat"] is False and verdicts["one shard"]["growth_share"] > 0.5
