"""A killed full run of the book resumes where it stopped.

A full run stages its records in ``results/<preset>/.run-<id>/`` until every chapter has
finished (:func:`lib.report.results.publish_run`). Beside them it keeps what it ran:
``run.json``, the digest of the code (the library, the chapters, the presets, the
requirements) and of each chapter's parameters. When ``make book`` is started again on the
same code with the same values, the new run takes the killed run's id, keeps every chapter
whose executed copy carries that id, and runs the rest; inside a chapter the cache keeps
every step that had finished. When the code or the values changed, the run says so in one
line and starts anew: its chapters run again, and each step whose cache key did not change
is read from the cache rather than recomputed. Stage: the book. Explained in the README
(Re-running a chapter).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from lib.fileio import atomic_write_text, git_commit
from lib.paths import REPO_ROOT

STATE = "run.json"
"""The file in a staging folder that says what the run ran."""


def code_digest(root: Path) -> str:
    """The sha256 of the files a chapter's figures depend on: the library's Python files,
    the requirements, and ``root``'s chapters and presets, by path and content."""
    files = [(REPO_ROOT, f) for f in [*sorted((REPO_ROOT / "lib").rglob("*.py")),
                                      REPO_ROOT / "requirements.txt"]]
    files += [(root, f) for f in [*sorted((root / "book").glob("*.ipynb")),
                                  *sorted((root / "params").glob("*.y*ml"))]]
    h = hashlib.sha256()
    for base, f in files:
        if f.is_file():
            h.update(f.relative_to(base).as_posix().encode() + b"\0")
            h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def run_state(root: Path, params: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What a full run runs: the code's digest, each chapter's parameters but the run's own
    ``record``, and the commit (for the message only)."""
    values = {name: {k: v for k, v in p.items() if k != "record"}
              for name, p in sorted(params.items())}
    blob = json.dumps(values, sort_keys=True, default=str)
    return {"code": code_digest(root), "values": hashlib.sha256(blob.encode()).hexdigest(),
            **git_commit()}


def _state(folder: Path) -> dict[str, Any] | None:
    try:
        saved = json.loads((folder / STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) else None


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.get("code") == b.get("code") and a.get("values") == b.get("values")


def _commit(state: dict[str, Any]) -> str:
    commit = (state.get("git_hash") or "")[:7] or "no commit"
    return commit + (" with uncommitted changes" if state.get("git_dirty") else "")


def finished_chapters(out: Path, notebooks: list[Path], run_id: str) -> list[Path]:
    """The chapters whose executed copy in ``out`` was written by the run ``run_id``."""
    done = []
    for nb in notebooks:
        try:
            meta = json.loads((out / nb.name).read_text(encoding="utf-8"))["metadata"]
            record = meta["papermill"]["parameters"].get("record")
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        if record == f"run:{run_id}":
            done.append(nb)
    return done


def resume_or_start(folder: Path, state: dict[str, Any], out: Path, notebooks: list[Path],
                    new_id: str) -> tuple[str, list[Path]]:
    """The id a full run records under and the chapters it keeps from a killed run.

    ``folder`` is ``results/<preset>/`` (its ``.run-*`` staging folders are runs that were
    killed: the caller holds the preset's lock). The newest one that ran the same code
    with the same values is resumed; any other is named in one line and left for
    :func:`lib.report.results.publish_run` to clear. A new run writes its ``run.json``.

    Returns:
        ``(run_id, kept)``: the killed run's id and its finished chapters, or ``new_id``
        and no chapter.
    """
    from lib.report.results import staging

    left = sorted(folder.glob(".run-*"), key=lambda p: p.name, reverse=True)
    for staged in left:
        saved = _state(staged)
        run_id = staged.name.removeprefix(".run-")
        if saved is not None and _same(saved, state):
            kept = finished_chapters(out, notebooks, run_id)
            names = ", ".join(nb.stem[:2] for nb in kept) or "none"
            print(f"resuming the interrupted run {run_id} (same code and values): chapters "
                  f"finished and kept: {names}; the others run, each step already cached "
                  "is read back", flush=True)
            return run_id, kept
        was = _commit(saved) if saved else "unknown code"
        print(f"the interrupted run {run_id} ran other code or values ({was}; now "
              f"{_commit(state)}): its cache keys may no longer match, so every chapter "
              "runs again and only the steps whose keys did not change are read from the "
              "cache", flush=True)
    staged = staging(folder, new_id)
    staged.mkdir(parents=True, exist_ok=True)
    atomic_write_text(staged / STATE, json.dumps(state, indent=1, sort_keys=True) + "\n")
    return new_id, []
