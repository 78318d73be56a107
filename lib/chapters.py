"""The book's chapters and where their outputs go: which notebooks, selected how, with
which parameters (a preset, then ``-p`` overrides, cut to what each chapter declares).

Used by :mod:`lib.book` to run and build the book. Stage: the book. Explained in the
README (How the book is built).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lib.errors import CompanionError
from lib.params import reject_unknown
from lib.paths import REPO_ROOT


# --------------------------------------------------------------------------- layout


def preset_dir(preset: str, root: Path = REPO_ROOT) -> Path:
    """``_build/<preset>``: everything built for one preset (a path preset uses its stem)."""
    name = Path(preset).stem if preset.endswith((".yaml", ".yml")) else preset
    return root / "_build" / name


def check_folder(path: Path, create: bool = False) -> Path:
    """Make sure ``path`` is (or can become) a folder: no file stands in its way.

    Args:
        path: the folder, e.g. ``_build/<preset>/executed``.
        create: create it (and its parents) when it does not exist.

    Raises:
        CompanionError: ``path`` or one of its parents is a file, or it cannot be created.
    """
    for part in (path, *path.parents):
        if part.exists() and not part.is_dir():
            raise CompanionError(
                f"{part} is a file, not a folder: move or delete it (the book writes "
                f"{path} there), then run again"
            )
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CompanionError(f"cannot create the folder {path}: {err.strerror}: check "
                                 "its permissions and free space") from None
    return path


def list_chapters(root: Path = REPO_ROOT) -> list[Path]:
    """The chapter notebooks ``book/NN_*.ipynb``, in chapter order."""
    return sorted((root / "book").glob("[0-9][0-9]_*.ipynb"))


def select_chapters(chapters: Sequence[str] | None, root: Path = REPO_ROOT) -> list[Path]:
    """Chapters named by their number (``01`` or ``1``) or name (``01_building...``).

    A name may end in ``.ipynb`` and start with ``book/``; anything else must match a
    chapter exactly (``2.5`` or ``01_build`` is refused, not rounded to a chapter).

    Raises:
        CompanionError: there are no chapters, or a name matches none of them.
    """
    found = list_chapters(root)
    if not found:
        raise CompanionError(f"no chapters book/NN_*.ipynb under {root}")
    if not chapters:
        return found
    picked: list[Path] = []
    for want in chapters:
        key = str(want).strip().removesuffix(".ipynb")
        key = key.removeprefix("book/") if key.startswith("book/") else key
        hits = [p for p in found if key in (p.stem, p.stem[:2]) or _same_number(key, p)]
        if not hits:
            names = ", ".join(p.stem for p in found)
            raise CompanionError(f"unknown chapter {want!r}: give a chapter number (01 or 1) "
                                 f"or name; chapters: {names}")
        picked += [p for p in hits if p not in picked]
    return sorted(picked)


def _same_number(key: str, chapter: Path) -> bool:
    return key.isascii() and key.isdigit() and int(key) == int(chapter.stem[:2])


# --------------------------------------------------------------------------- parameters


def declared_parameters(notebook: Path) -> list[str]:
    """Names in the notebook's cell tagged ``parameters`` (what papermill can set)."""
    import papermill

    try:
        return list(papermill.inspect_notebook(str(notebook)))
    except ValueError as err:  # e.g. no kernel language in the notebook's metadata
        raise CompanionError(f"cannot read the parameters of {notebook.name}: {err}") from None


def chapter_parameters(
    declared: dict[Path, list[str]],
    preset: dict[str, Any],
    overrides: dict[str, Any] | None = None,
) -> dict[Path, dict[str, Any]]:
    """Each chapter's parameters: the preset, then the overrides, cut to what it declares.

    A preset may hold names that only some chapters use; an override must be used by one.

    Args:
        declared: each chapter's declared parameter names (:func:`declared_parameters`).
        preset: the preset's values (:func:`load_preset`).
        overrides: values given on the command line; they win over the preset.

    Raises:
        CompanionError: an override names a parameter that no chapter declares.
    """
    overrides = overrides or {}
    known = {name for names in declared.values() for name in names}
    reject_unknown(overrides, known, f"unknown parameter {{names}}; the chapters take: "
                   f"{', '.join(sorted(known)) or '(none)'}")
    merged = {**preset, **overrides}
    return {
        nb: {name: merged[name] for name in names if name in merged}
        for nb, names in declared.items()
    }
