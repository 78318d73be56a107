"""Presets and the values a chapter runs with: defaults, then the preset, then overrides.

A preset (``params/<name>.yaml``, or any ``.yaml`` path) holds only the values that differ
from the defaults of :mod:`lib.config.defaults`, each with a comment saying why; ``default``
holds none. A chapter's values are resolved in one order everywhere (the book, a notebook
run by hand, ``python -m lib.experiment``)::

    defaults  <-  the preset  <-  overrides (-p NAME VALUE)  <-  the chapter's own cell

Imports nothing of the library but :mod:`lib.config.defaults`, :mod:`lib.errors`,
:mod:`lib.params` and :mod:`lib.paths` (``lib.book`` reads presets without torch). Stage:
all (configuration). Explained in chapter 1 (book/01_building_a_speechllm.ipynb).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from lib.config.defaults import CHAPTER_PARAMS, defaults, own_names, param_names, parameter_names
from lib.errors import CompanionError
from lib.params import load_yaml, reject_unknown
from lib.paths import REPO_ROOT


def preset_names(root: Path = REPO_ROOT) -> list[str]:
    """The presets shipped in ``params/``."""
    return sorted(p.stem for p in (root / "params").glob("*.yaml"))


def preset_path(name: str, root: Path = REPO_ROOT) -> Path:
    """The file of a preset: ``<root>/params/<name>.yaml``, or ``name`` itself when it is a
    ``.yaml`` path.

    Raises:
        CompanionError: no such preset.
    """
    path = Path(name).expanduser()
    if path.suffix not in {".yaml", ".yml"}:
        path = root / "params" / f"{name}.yaml"
    if not path.is_file():
        raise CompanionError(
            f"unknown preset '{name}': use one of {', '.join(preset_names(root)) or '(none)'}"
            " or a path to a .yaml file"
        )
    return path


def preset_label(name: str, root: Path = REPO_ROOT) -> str:
    """The name a preset's figures and pages go under (``results/<label>/``,
    ``_build/<label>/``): a shipped preset's own name; a ``.yaml`` path's stem, unless that
    stem names a shipped preset and the path is not that preset's file, in which case the
    stem and the first 8 hex digits of the file's sha256 (``tiny-1a2b3c4d``), so a preset
    file kept elsewhere never writes into a shipped preset's records.

    Raises:
        CompanionError: no such preset (:func:`preset_path`).
    """
    import hashlib

    path = preset_path(name, root)
    if Path(name).expanduser().suffix not in {".yaml", ".yml"}:
        return name
    own = root / "params" / f"{path.stem}.yaml"
    if path.stem not in preset_names(root) or path.resolve() == own.resolve():
        return path.stem
    return f"{path.stem}-{hashlib.sha256(path.read_bytes()).hexdigest()[:8]}"


def load_preset(name: str, root: Path = REPO_ROOT,
                known: Collection[str] | None = None) -> dict[str, Any]:
    """The values a preset sets (what differs from the defaults), as a dict.

    The whole file is checked: its YAML, that it is a mapping, and that every key is a
    parameter of some chapter, so a misspelt name fails instead of being ignored.

    Args:
        name: a preset name (``tiny``) or the path of a ``.yaml`` file.
        root: the folder holding ``params/``.
        known: the valid parameter names; every chapter's by default.

    Raises:
        CompanionError: the preset does not exist, is not valid YAML, is not a mapping, or
            names an unknown parameter.
    """
    path = preset_path(name, root)
    data = load_yaml(path.read_text(), f"preset {path}") or {}
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise CompanionError(f"preset {path} must hold NAME: VALUE lines")
    known = parameter_names() if known is None else known
    reject_unknown(data, known, f"unknown parameter {{names}} in preset {path}: fix or "
                   f"remove it; the chapters take {', '.join(sorted(known))}")
    return data


def chapter_values(chapter: int, preset: str, overrides: Mapping[str, Any] | None = None,
                   own: Mapping[str, Any] | None = None,
                   root: Path = REPO_ROOT) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every parameter of ``chapter``: defaults, then ``preset``, ``overrides``, ``own``.

    Args:
        chapter: the chapter number (:data:`lib.config.defaults.CHAPTER_PARAMS`).
        preset: a preset name or ``.yaml`` path.
        overrides: values of parameters the chapter inherits (earlier chapters' ones).
        own: the values of the chapter's own parameters (its ``parameters`` cell).

    Returns:
        ``(values, source)``: name -> value for every parameter of the chapter, and where
        they came from (``preset``, ``overrides``, ``inherited``: the values the chapter
        inherits, as they are in effect, ``from_preset``: those the preset or an override
        set, ``cell_over_preset``: own values that differ from the preset's), for
        :meth:`lib.config.sections.Chapter1Config.summary` and provenance.

    Raises:
        CompanionError: an unknown chapter, preset or parameter name; an own parameter given
            as an override (set it in the cell instead).
    """
    if chapter not in CHAPTER_PARAMS:
        raise CompanionError(f"no chapter {chapter}: the chapters are "
                             f"{', '.join(map(str, CHAPTER_PARAMS))}")
    names, mine = param_names(CHAPTER_PARAMS[chapter]), own_names(chapter)
    overrides, own = dict(overrides or {}), dict(own or {})
    reject_unknown(overrides, names, f"unknown parameter(s) {{names}} in overrides: chapter "
                   f"{chapter} inherits {', '.join(n for n in names if n not in mine)}")
    given_twice = sorted(set(overrides) & set(mine))
    if given_twice:
        raise CompanionError(
            f"{', '.join(given_twice)} {'is' if len(given_twice) == 1 else 'are'} chapter "
            f"{chapter}'s own parameter(s): set {'it' if len(given_twice) == 1 else 'them'} "
            "in the parameters cell (or with -p), not in overrides")
    reject_unknown(own, mine, f"unknown parameter(s) {{names}}: chapter {chapter}'s own "
                   f"parameters are {', '.join(mine)}")
    from_preset = {k: v for k, v in load_preset(preset, root).items() if k in names}
    values = {**defaults(chapter), **from_preset, **overrides, **own}
    inherited = [k for k in names if k not in mine]
    source = {"preset": preset, "overrides": overrides,
              "inherited": {k: values[k] for k in inherited},
              "from_preset": [k for k in inherited if k in from_preset or k in overrides],
              "cell_over_preset": {k: {"cell": own[k], "preset": from_preset[k]}
                                   for k in own if k in from_preset
                                   and _plain(own[k]) != _plain(from_preset[k])}}
    return values, source


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
