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
    """``_build/<label>``: everything built for one preset, under its label
    (:func:`lib.config.presets.preset_label`: a path preset uses its stem, and its stem and
    digest when the stem names a shipped preset)."""
    from lib.config.presets import preset_label

    return root / "_build" / preset_label(preset, root)


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
    preset_name: str | None = None,
    record: str | None = None,
) -> dict[Path, dict[str, Any]]:
    """What papermill injects into each chapter.

    A chapter whose parameters cell declares ``preset`` and its own parameters
    (:func:`resolves_itself`) resolves its values in its own kernel (:func:`lib.config.resolve.resolve`, the one place a preset is read into a
    chapter's values): it gets ``preset=<preset_name>``, ``record`` (``run:<id>`` or
    ``trial:<name>``: what the run writes), ``overrides`` (the ``-p`` values of any
    parameter it takes) and, so that its page shows them, the ``-p`` values of its own
    parameters. A notebook without ``preset`` gets the preset's and the overrides' values
    of the names it declares, as papermill does.

    Args:
        declared: each chapter's declared parameter names (:func:`declared_parameters`).
        preset: the preset's values (:func:`lib.config.presets.load_preset`).
        overrides: values given on the command line; they win over the preset.
        preset_name: the preset as the kernel should load it (a name or an absolute path).
        record: what the run writes, for chapters that declare ``record``.

    Raises:
        CompanionError: an override names a parameter that no chapter takes.
    """
    from lib.config.defaults import CHAPTER_PARAMS, own_names, param_names

    overrides = overrides or {}
    known = {name for names in declared.values() for name in names}
    takes = {nb: set(param_names(CHAPTER_PARAMS[chapter_number(nb)]))
             if resolves_itself(nb, names) else set() for nb, names in declared.items()}
    known |= {n for names in takes.values() for n in names}
    known -= {"preset", "overrides", "record"}
    elsewhere = {name: min(c for c in CHAPTER_PARAMS if name in own_names(c))
                 for name in sorted(set(overrides) - known)
                 if any(name in own_names(c) for c in CHAPTER_PARAMS)}
    if elsewhere:
        name, chapter = next(iter(elsewhere.items()))
        running = ", ".join(f"{chapter_number(nb):02d}" for nb in declared)
        raise CompanionError(f"-p {name}: a parameter of chapter {chapter}, which this run "
                             f"does not include (chapters {running}): add --chapter "
                             f"{chapter:02d}, or leave -p {name} out")
    reject_unknown(overrides, known, f"unknown parameter {{names}}; the chapters take: "
                   f"{', '.join(sorted(known)) or '(none)'}")
    out = {}
    for nb, names in declared.items():
        values: dict[str, Any] = {}
        if "preset" in names and preset_name is not None:
            values["preset"] = preset_name
        if "record" in names and record is not None:
            values["record"] = record
        if resolves_itself(nb, names):
            mine = {k: v for k, v in overrides.items() if k in takes[nb]}
            if "overrides" in names and mine:
                values["overrides"] = mine
            values.update({k: v for k, v in mine.items() if k in names})
        else:
            merged = {**preset, **overrides}
            values.update({name: merged[name] for name in names
                           if name in merged and name not in ("preset", "overrides", "record")})
        out[nb] = values
    return out


def resolves_itself(notebook: Path, names: list[str]) -> bool:
    """A book chapter that resolves its values in its kernel: its cell declares ``preset``
    and the chapter's own parameters (:func:`lib.config.defaults.own_names`)."""
    from lib.config.defaults import CHAPTER_PARAMS, own_names

    n = chapter_number(notebook)
    return "preset" in names and n in CHAPTER_PARAMS and set(own_names(n)) <= set(names)


def chapter_number(notebook: Path) -> int:
    """The chapter number of ``book/NN_name.ipynb`` (-1 when the name has none)."""
    head = notebook.stem[:2]
    return int(head) if head.isdigit() else -1
