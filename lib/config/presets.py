"""Presets and the values a chapter runs with: defaults, then the preset, then overrides.

A preset (``params/<name>.yaml``, or any ``.yaml`` path) holds only the values that differ
from the defaults of :mod:`lib.config.defaults`, each with a comment saying why; ``default``
holds none. A chapter's values are resolved from them once, by :func:`lib.config.resolve.resolve`.

Imports nothing of the library but :mod:`lib.config.defaults`, :mod:`lib.errors`,
:mod:`lib.params` and :mod:`lib.paths` (``lib.book`` reads presets without torch). Stage:
all (configuration). Explained in chapter 1 (book/01_building_a_speechllm.ipynb).
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

from lib.config.defaults import parameter_names
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
