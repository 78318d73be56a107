"""A run's redundancy scores on disk: saved beside the run by chapter 2, read back (or
computed once) by the chapters that prune with them.

Stage: redundancy scores. Explained in chapter 2 (book/02_where_redundancy_lies.ipynb) and
chapter 3 (book/03_pruning.ipynb).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lib.config.sections import ScoreConfig
from lib.fileio import atomic_write_text, provenance, set_aside
from lib.paths import slug
from lib.score.stats import RedundancyResult

if TYPE_CHECKING:
    from lib.build.speechllm import SpeechLLM
    from lib.data.features import FeatureSet

SPEECH_LABEL = "speech, transcript"
"""The input the pruning strategies read: speech, scored on the transcript tokens."""


def save_scores(results: dict[str, RedundancyResult], run_dir: Path) -> Path:
    """Save each redundancy result (JSON) and one tidy CSV in ``<run_dir>/redundancy/``,
    each with provenance.

    Args:
        results: input label -> :class:`lib.score.stats.RedundancyResult`.
        run_dir: the trained SpeechLLM's run folder.

    Returns:
        The folder written.
    """
    import pandas as pd

    out = Path(run_dir) / "redundancy"
    prov = provenance()
    frames = []
    for label, res in results.items():
        res.save(out / f"{slug(label)}.json", prov)
        frames.append(res.to_frame().assign(input=label))
    atomic_write_text(out / "scores.csv", pd.concat(frames).to_csv(index=False))
    return out


def speech_scores(model: "SpeechLLM", run_dir: Path, data: "FeatureSet", sc: ScoreConfig
                  ) -> RedundancyResult:
    """Chapter 2's redundancy scores on speech (transcript tokens) of ``model``.

    Read from ``<run_dir>/redundancy/speech-transcript.json`` when chapter 2 saved them for
    as many utterances as ``sc.n_score_utterances``; otherwise computed on the first
    ``sc.n_score_utterances`` of ``data`` and saved there (chapter 2's own file, made with other
    settings, is left as it is). The strategies ``angular`` and ``block-influence`` read
    them.
    """
    from lib.score.redundancy import score_speech

    scored = data.subset(sc.n_score_utterances)
    path = Path(run_dir) / "redundancy" / f"{slug(SPEECH_LABEL)}.json"
    if path.is_file():
        try:
            res = RedundancyResult.load(path)
        except Exception as err:  # a damaged file: set it aside and score again
            set_aside(path, f"saved scores {path.name} are unreadable ({type(err).__name__})")
        else:
            if res.n_sequences == len(scored) and res.positions == "transcript":
                return res
    res = score_speech(model, scored, batch_size=sc.batch_size, positions="transcript")
    if not path.is_file():
        res.save(path, provenance())
    return res
