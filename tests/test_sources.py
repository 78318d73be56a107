"""Data-source names resolve to the right loaders; bad names say what forms exist."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from lib.data.loaders import Utterance, write_manifest
from lib.errors import CompanionError
from lib.data.sources import load_source


def _librispeech(root, split, speaker, chapter, texts):
    folder = root / split / speaker / chapter
    folder.mkdir(parents=True)
    lines = []
    for i, text in enumerate(texts):
        uid = f"{speaker}-{chapter}-{i:04d}"
        sf.write(folder / f"{uid}.flac", np.random.default_rng(i).normal(0, .1, 8000), 16000)
        lines.append(f"{uid} {text}")
    (folder / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")


def test_librispeech_several_splits(tmp_path):
    _librispeech(tmp_path, "train-clean-100", "19", "198", ["A B", "C D"])
    _librispeech(tmp_path, "train-other-500", "20", "200", ["E F"])
    utts = load_source(f"librispeech:{tmp_path}#train-clean-100,train-other-500")
    assert sorted(u.text for u in utts) == ["A B", "C D", "E F"]
    only = load_source(f"librispeech:{tmp_path / 'train-other-500'}")
    assert [u.text for u in only] == ["E F"]


def test_manifest_split_filter(tmp_path):
    wav = tmp_path / "a.wav"
    sf.write(wav, np.random.default_rng(0).normal(0, .1, 8000), 16000)
    rows = [Utterance(f"u{i}", str(wav), f"word {i}", 0.5, "v", split, "manifest")
            for i, split in enumerate(["train", "test", "test"])]
    write_manifest(tmp_path / "m.jsonl", rows)
    assert [u.id for u in load_source(f"manifest:{tmp_path / 'm.jsonl'}#test")] == ["u1", "u2"]
    with pytest.raises(CompanionError, match="has no utterances"):
        load_source(f"manifest:{tmp_path / 'm.jsonl'}#dev")


@pytest.mark.parametrize("name", ["synthetic", "synthetic:dev", "librispeech:", "libri:x"])
def test_unknown_forms_list_the_valid_ones(name):
    with pytest.raises(CompanionError, match="use one of synthetic:train"):
        load_source(name)
