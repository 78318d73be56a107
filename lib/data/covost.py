"""CoVoST 2 (Wang et al., 2020): Common Voice clips with their transcripts and translations,
read from the layout its own scripts leave, for the paper-scale speech translation runs.

CoVoST 2's ``get_covost_splits.py`` writes, for a language pair ``<src>_<tgt>``, one TSV per
split beside the source language's Common Voice clips:

    <root>/covost_v2.<src>_<tgt>.<split>.tsv   columns: path, sentence, translation, client_id
    <root>/clips/<path>                         the clip (mp3, 48 kHz)

A source name ``covost2:<root>#<src>_<tgt>:<split>`` (:mod:`lib.data.sources`) reads one
split of one pair: each row an :class:`lib.data.loaders.Utterance` that hears ``<src>``,
with its transcript (``text``) and its translation (``translation``). Nothing is
downloaded (Common Voice needs its own terms accepted); the paper presets name the folders.
Stage: data. Explained in chapter 6 (book/06_one_backbone.ipynb).
"""

from __future__ import annotations

import csv
from pathlib import Path

from lib.data.loaders import Utterance
from lib.errors import CompanionError

COVOST_COLUMNS = ("path", "sentence", "translation", "client_id")
"""The columns every CoVoST 2 TSV holds (others, such as ``split``, are ignored)."""

COVOST_SPLITS = ("train", "dev", "test")


def covost_tsv(root: str | Path, pair: str, split: str) -> Path:
    """Where CoVoST 2 keeps one split of one pair under ``root``."""
    return Path(root) / f"covost_v2.{pair}.{split}.tsv"


def _pair(pair: str) -> tuple[str, str]:
    src, sep, tgt = pair.partition("_")
    if not (sep and src and tgt):
        raise CompanionError(f"CoVoST 2 pair {pair!r}: write it as <source>_<target>, e.g. "
                             "en_de or fr_en")
    return src, tgt


def load_covost(root: str | Path, pair: str, split: str,
                limit: int | None = None) -> list[Utterance]:
    """One split of one CoVoST 2 language pair, in the TSV's order; with ``limit``, its
    first ``limit`` rows only (the clips of the others are neither checked nor opened).

    Raises:
        CompanionError: an unknown split, a missing folder, TSV or column, an empty
            split, or clips missing (one line naming the first and how many).
    """
    import soundfile as sf

    src, _ = _pair(pair)
    if split not in COVOST_SPLITS:
        raise CompanionError(f"CoVoST 2 split {split!r}: use one of {', '.join(COVOST_SPLITS)}")
    root = Path(root)
    tsv = covost_tsv(root, pair, split)
    if not tsv.is_file():
        raise CompanionError(f"CoVoST 2 folder {root} has no {tsv.name}: run CoVoST 2's "
                             f"get_covost_splits.py for {pair} there, or name the folder "
                             "that holds its TSVs and clips/ (nothing was read)")
    with tsv.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        missing = [c for c in COVOST_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise CompanionError(f"{tsv} has no column {missing[0]!r}: a CoVoST 2 TSV has "
                                 f"{', '.join(COVOST_COLUMNS)}")
        rows = list(reader)[:limit]
    if not rows:
        raise CompanionError(f"{tsv} lists no clip: regenerate the split")
    clips = [root / "clips" / r["path"] for r in rows]
    absent = [c for c in clips if not c.is_file()]
    if absent:
        raise CompanionError(f"CoVoST 2 {pair} {split}: {len(absent)} of {len(clips)} clips "
                             f"are missing, first {absent[0]}: put Common Voice's {src} clips "
                             f"in {root / 'clips'} (nothing was read)")
    out = []
    for r, clip in zip(rows, clips):
        out.append(Utterance(id=f"covost-{pair}-{Path(r['path']).stem}", audio=str(clip),
                             duration=float(sf.info(str(clip)).duration),
                             text=r["sentence"].strip(), voice=r["client_id"], split=split,
                             source="covost2", language=src,
                             translation=r["translation"].strip()))
    return out
