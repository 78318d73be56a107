"""The numbers of record: each chapter's headline figures in ``results/<preset>/``.

The files are written with their provenance through :mod:`lib.fileio` (atomic writes,
git commit, versions, device); the README's tables are rendered from them
(:mod:`lib.report`). Stage: report. Explained in chapter 1 (book/01_building_a_speechllm.ipynb).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lib.fileio import provenance, save_json
from lib.paths import REPO_ROOT


def results_root() -> Path:
    """Where the numbers of record live: ``$COMPANION_RESULTS`` or ``<repo>/results``."""
    return Path(os.environ.get("COMPANION_RESULTS", REPO_ROOT / "results")).expanduser()


def record_headline(chapter: str, figures: dict[str, Any], config: Any = None,
                    quick_run: bool = False) -> Path | None:
    """Keep a chapter's headline figures as ``results/<preset>/<chapter>.json``.

    Written only by a book run (``lib.book`` sets ``COMPANION_PRESET``) that is not a quick
    run, so the file always holds the last *full* run of that preset, with provenance. The
    README's tables are rendered from these files (:mod:`lib.report`), never typed.
    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Returns:
        The file written, or ``None`` outside a book run or for a quick run.
    """
    preset = os.environ.get("COMPANION_PRESET")
    if not preset or quick_run:
        return None
    path = results_root() / preset / f"{chapter}.json"
    return save_json(path, {"chapter": chapter, "preset": preset, **figures,
                            "provenance": provenance(config)})
