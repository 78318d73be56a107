"""CoVoST 2 read from the layout its scripts leave (TSV per pair and split, mp3 clips under
``clips/``), on a tiny folder in that layout; one line for a missing TSV, column or clip; the
paper presets' pairs arranged as multi-task data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from lib.data.covost import covost_tsv, load_covost
from lib.data.sources import load_source
from lib.errors import CompanionError

ROWS = {"en_de": [("a.mp3", "One two three.", "Eins zwei drei."), ("b.mp3", "Four five.",
                                                                   "Vier fünf.")],
        "fr_en": [("c.mp3", "Un deux trois.", "One two three."), ("d.mp3", "Quatre.",
                                                                 "Four.")]}


def covost_folder(root: Path, pair: str, splits=("train", "dev", "test")) -> Path:
    """A tiny CoVoST 2 folder of one pair: a TSV per split, 48 kHz mp3 clips."""
    (root / "clips").mkdir(parents=True, exist_ok=True)
    t = np.linspace(0, 0.6, int(48000 * 0.6), endpoint=False)
    for i, (clip, _, _) in enumerate(ROWS[pair]):
        sf.write(root / "clips" / clip, 0.3 * np.sin(2 * np.pi * (220 + 50 * i) * t), 48000,
                 format="MP3")
    for sp in splits:
        lines = ["path\tsentence\ttranslation\tclient_id"] + [
            f"{c}\t{s}\t{tr}\tspeaker{i}" for i, (c, s, tr) in enumerate(ROWS[pair])]
        covost_tsv(root, pair, sp).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def test_a_split_reads_as_utterances_with_transcript_and_translation(tmp_path):
    root = covost_folder(tmp_path / "fr", "fr_en")
    utts = load_covost(root, "fr_en", "test")
    assert [u.text for u in utts] == ["Un deux trois.", "Quatre."]
    assert [u.translation for u in utts] == ["One two three.", "Four."]
    assert {u.language for u in utts} == {"fr"} and utts[0].voice == "speaker0"
    assert utts[0].duration == pytest.approx(0.6, abs=0.06)
    via = load_source(f"covost2:{root}#fr_en:test")
    assert [u.id for u in via] == [u.id for u in utts]


def test_missing_pieces_are_one_line_each(tmp_path):
    root = covost_folder(tmp_path / "en", "en_de", splits=("train",))
    with pytest.raises(CompanionError, match="has no covost_v2.en_de.test.tsv"):
        load_covost(root, "en_de", "test")
    (root / "clips" / "b.mp3").unlink()
    with pytest.raises(CompanionError, match=r"1 of 2 clips are missing, first .*b\.mp3"):
        load_covost(root, "en_de", "train")
    covost_tsv(root, "en_de", "dev").write_text("path\tsentence\nx.mp3\thi\n")
    with pytest.raises(CompanionError, match="no column 'translation'"):
        load_covost(root, "en_de", "dev")
    with pytest.raises(CompanionError, match="split 'valid'"):
        load_covost(root, "en_de", "valid")


def test_the_paper_pairs_become_multitask_data(tmp_path, monkeypatch):
    from lib.config.resolve import resolve
    from lib.data.features import FeatureSet
    from lib.recipes import multitask as mt

    en, fr = covost_folder(tmp_path / "en", "en_de"), covost_folder(tmp_path / "fr", "fr_en")
    monkeypatch.setenv("COMPANION_CACHE", str(tmp_path / "cache"))
    cfg = resolve(5, preset="tiny", changes={
        "tasks": ["asr", "st-en-de", "asr-fr", "st-fr-en"], "task_dev_utterances": 1,
        "multitask_corpus": [f"covost2:{en}#en_de", f"covost2:{fr}#fr_en"]})
    data = mt.parallel_data(cfg, FeatureSet([], []))
    names = [t.name for t in data.mix.tasks]
    assert sorted(set(names)) == ["asr", "asr-fr", "st-en-de", "st-fr-en"]
    assert len(data.mix) == 8  # 4 training clips, each for the two tasks its pair serves
    assert [u.language for u in data.asr_only.utterances] == ["en", "en"]
    assert [u.text for u in data.tests["asr-fr"].utterances] == ["Un deux trois.", "Quatre."]
    assert data.tests["st-en-de"].utterances[0].translation == "Eins zwei drei."
    assert set(data.dev) == {"asr", "st-en-de", "asr-fr", "st-fr-en"}
