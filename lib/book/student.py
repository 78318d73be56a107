"""Student copies of the chapters: the exercises kept, their solutions and every output gone.

``make student`` (``python -m lib.book student``) writes ``_build/student/book/NN_name.ipynb``
from the source chapters, the single source of both editions: a solution is what stands
between a markdown cell opening ``{solution-start}`` and the one closing ``{solution-end}``
(sphinx-exercise's gated syntax, :mod:`lib.recipes.exercises`), code cells included; every
other cell is kept as it is, outputs and execution counts cleared. A copy runs like its
chapter: in Jupyter started from the repository (so that ``import lib`` works), or with
papermill and a preset (:func:`lib.book.run.run_chapters` with ``root=_build/student``).

Stage: the book (course). Explained in the course page (book/course.md).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from lib.book.chapters import list_chapters
from lib.errors import CompanionError
from lib.fileio import atomic_write_text, file_sha256
from lib.paths import REPO_ROOT, check_folder

START, END = "{solution-start}", "{solution-end}"


def _text(cell: dict[str, Any]) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def strip_solutions(nb: dict[str, Any], name: str = "notebook") -> dict[str, Any]:
    """``nb`` without its solutions (the cells from a ``{solution-start}`` markdown cell to
    the ``{solution-end}`` one, both included) and without outputs.

    Raises:
        CompanionError: a solution that is opened and never closed, or closed unopened
            (naming the notebook and the cell, counted from 1).
    """
    cells, inside = [], None
    for i, cell in enumerate(nb["cells"], 1):
        text = _text(cell) if cell["cell_type"] == "markdown" else ""
        if START in text:
            if inside is not None:
                raise CompanionError(f"{name}: cell {i} opens a solution inside the one opened "
                                     f"at cell {inside}: close it with {END} first")
            inside = i
        if inside is None:
            if END in text:
                raise CompanionError(f"{name}: cell {i} closes a solution that was never "
                                     f"opened: add {START} before it")
            kept = dict(cell)
            if kept["cell_type"] == "code":
                kept["outputs"], kept["execution_count"] = [], None
            cells.append(kept)
        elif END in text:
            inside = None
    if inside is not None:
        raise CompanionError(f"{name}: the solution opened at cell {inside} is never closed: "
                             f"end it with a markdown cell holding {END}")
    return {**nb, "cells": cells}


WRITTEN = ".written.json"
"""In the student folder: the sha256 of each copy as ``make student`` last wrote it, so a
copy a student has changed since is told apart and never replaced."""


def write_student_copies(root: Path = REPO_ROOT, out: Path | None = None) -> list[Path]:
    """Write every chapter's student copy into ``out/book/`` (``_build/student/book/`` by
    default) beside a copy of ``params/``, so the folder runs as a book of its own.

    A copy a student has changed since it was written (its digest is not the one recorded
    in :data:`WRITTEN`) is kept: the new copy goes beside it as ``NN_name.new.ipynb``, in
    one line naming both.

    Returns:
        The notebooks written, in chapter order.
    """
    out = Path(out) if out is not None else root / "_build" / "student"
    book = check_folder(out / "book", create=True)
    ledger = book / WRITTEN
    try:
        known = json.loads(ledger.read_text(encoding="utf-8")) if ledger.is_file() else {}
    except ValueError:
        known = {}
    written = []
    for nb_path in list_chapters(root):
        nb = json.loads(nb_path.read_text(encoding="utf-8"))
        text = json.dumps(strip_solutions(nb, nb_path.name), indent=1, ensure_ascii=False) + "\n"
        target = book / nb_path.name
        if target.is_file() and file_sha256(target) != known.get(target.name) \
                and target.read_text(encoding="utf-8") != text:
            beside = target.with_name(f"{target.stem}.new.ipynb")
            atomic_write_text(beside, text)
            print(f"{target} was changed since it was written: kept as it is; the new copy is "
                  f"{beside.name}")
            written.append(beside)
            continue
        atomic_write_text(target, text)
        known[target.name] = file_sha256(target)
        written.append(target)
    atomic_write_text(ledger, json.dumps(known, indent=1) + "\n")
    shutil.copytree(root / "params", out / "params", dirs_exist_ok=True)
    return written
