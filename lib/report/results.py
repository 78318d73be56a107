"""The numbers of record: each chapter's headline figures in ``results/<preset>/``.

The files are written with their provenance through :mod:`lib.fileio` (atomic writes,
git commit, versions, device); the README's tables are rendered from them
(:mod:`lib.report`). Stage: report. Explained in chapter 1 (book/01_building_a_speechllm.ipynb).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lib.clock import summary
from lib.errors import CompanionError
from lib.fileio import figures_digest, provenance, save_json
from lib.paths import REPO_ROOT


def results_root() -> Path:
    """Where the numbers of record live: ``$COMPANION_RESULTS`` or ``<repo>/results``."""
    return Path(os.environ.get("COMPANION_RESULTS", REPO_ROOT / "results")).expanduser()


TRIAL_ENV = "COMPANION_TRIAL"
"""Set by :mod:`lib.book` for a run that is not a full run of the preset (some chapters
only, or ``-p`` overrides): its name, e.g. ``chapter-01`` or ``train_steps-9``."""


def check_record(rec: dict[str, Any], where: str) -> dict[str, Any]:
    """A results record the README may be rendered from: its digest matches its figures
    and every figure is consistent (a value inside its own 95 % interval, utterance counts
    positive whole numbers).

    Raises:
        CompanionError: naming ``where`` and the first field that fails.
    """
    want = rec.get("digest")
    if want is None:
        raise CompanionError(f"{where} carries no digest of its figures: it was not written "
                             "by a book run; run `make book` to record it")
    if figures_digest(rec) != want:
        raise CompanionError(f"{where}: its figures do not match their digest (edited by "
                             "hand?): restore it from git or run `make book` again")
    for path, value in _leaves(rec):
        name = path.rsplit("/", 1)[-1]
        if name.endswith("_ci95") or not isinstance(value, (int, float)):
            continue
        ci = _get(rec, path + "_ci95")
        if isinstance(ci, list) and len(ci) == 2 and all(isinstance(x, (int, float))
                                                         for x in ci):
            if value == value and not ci[0] - 1e-9 <= value <= ci[1] + 1e-9:
                raise CompanionError(f"{where}: {path} = {value} lies outside its own 95 % "
                                     f"interval {ci}: the record is inconsistent")
        if name == "n_utterances" and not (isinstance(value, int) and value > 0):
            raise CompanionError(f"{where}: {path} = {value} is not a positive count")
    return rec


def _leaves(obj: Any, path: str = "") -> list[tuple[str, Any]]:
    if isinstance(obj, dict):
        return [x for k, v in obj.items() if k != "provenance"
                for x in _leaves(v, f"{path}/{k}" if path else str(k))]
    if isinstance(obj, list) and not all(isinstance(x, (int, float)) for x in obj):
        return [x for i, v in enumerate(obj) for x in _leaves(v, f"{path}[{i}]")]
    return [(path, obj)]


def _get(rec: Any, path: str) -> Any:
    node = rec
    for part in path.replace("[", "/[").split("/"):
        if part.startswith("["):
            idx = int(part[1:-1])
            node = node[idx] if isinstance(node, list) and idx < len(node) else None
        else:
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return None
    return node


def recorded_line(path: Path | None) -> str:
    """The short line a chapter's page shows at its record: where its figures went and
    where its time went so far (the terminal showed the progress, the page keeps this)."""
    from lib.clock import duration

    t = summary()
    stages = ", ".join(f"{k} {100 * v / max(t['wall_s'], 1e-9):.0f} %"
                       for k, v in list(t["stages"].items())[:4])
    where = f"; this chapter's run so far: {duration(t['wall_s'])} ({stages})"
    if path is None:
        return "headline figures not recorded (not a full book run)" + where
    return f"headline figures recorded in {path}" + where


def records(preset: str, trial: str | None = None,
            root: Path | None = None) -> dict[str, dict[str, Any]]:
    """The records of a preset's last full run (or of ``trial``), by chapter, checked
    (:func:`check_record`)."""
    folder = (root or results_root()) / Path(preset).stem
    folder = folder / "trials" / trial if trial else folder
    return {p.stem: read_record(p) for p in sorted(folder.glob("ch[0-9][0-9].json"))}


def read_record(path: Path) -> dict[str, Any]:
    """One results file, checked (:func:`check_record`).

    Raises:
        CompanionError: not valid JSON, or it fails its checks (naming the file).
    """
    from lib.fileio import load_json

    try:
        rec = load_json(path)
    except ValueError as err:
        raise CompanionError(f"{path} is not valid JSON ({err}): restore it from git or run "
                             "`make book` again") from None
    return check_record(rec, str(path))


def record_path(chapter: str) -> Path | None:
    """Where a book run records ``chapter``: ``results/<preset>/<chapter>.json`` for a full
    run of the preset, ``results/<preset>/trials/<trial>/<chapter>.json`` for any other
    (:data:`TRIAL_ENV`); None outside a book run."""
    preset = os.environ.get("COMPANION_PRESET")
    if not preset:
        return None
    trial = os.environ.get(TRIAL_ENV)
    folder = results_root() / preset
    return (folder / "trials" / trial if trial else folder) / f"{chapter}.json"


def record_headline(chapter: str, figures: dict[str, Any], config: Any = None,
                    quick_run: bool = False) -> Path | None:
    """Keep a chapter's headline figures with their provenance and the digest of the figures
    (:func:`lib.fileio.figures_digest`, which the README renderer checks).

    Only a full book run of a preset (every chapter, no ``-p`` override, not a quick run)
    writes the numbers of record, ``results/<preset>/<chapter>.json``, from which the
    README's tables are rendered (:mod:`lib.report.readme`), never typed; any other book run
    writes beside them, under ``results/<preset>/trials/<its name>/`` (:func:`record_path`),
    and says so. Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    The record also carries where the chapter's time went (``time``: its wall time so far
    and the seconds of each stage, :func:`lib.clock.summary`), from which the README's time
    table is rendered.

    Returns:
        The file written, or ``None`` outside a book run or for a quick run.
    """
    path = record_path(chapter)
    if path is None or quick_run:
        return None
    rec = {"chapter": chapter, "preset": os.environ["COMPANION_PRESET"], **figures,
           "time": summary()}
    if os.environ.get(TRIAL_ENV):
        rec["trial"] = os.environ[TRIAL_ENV]
    rec["digest"] = figures_digest(rec)
    return save_json(path, {**rec, "provenance": provenance(config)})
