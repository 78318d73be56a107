"""Where the companion keeps what it builds: assets, corpora, features and runs.

Everything lives under one cache folder, ``$COMPANION_CACHE`` or ``<repo>/.cache``, so a
fresh clone starts clean and ``rm -rf .cache`` resets it. Nothing in it is tracked by git.

Stage: all (where the cache lives). Chapter 1 (book/01_building_a_speechllm.ipynb) says
what is cached and why.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """Root of the cache (created on first use).

    Raises:
        CompanionError: ``$COMPANION_CACHE`` names a file, or the folder cannot be made.
    """
    from lib.errors import CompanionError

    root = Path(os.environ.get("COMPANION_CACHE", REPO_ROOT / ".cache")).expanduser()
    if root.exists() and not root.is_dir():
        raise CompanionError(f"COMPANION_CACHE={root} is a file, not a folder: point it at a "
                             "folder (or unset it for <repo>/.cache)")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CompanionError(f"cannot create the cache folder {root} ({err.strerror}): set "
                             "COMPANION_CACHE to a folder you can write") from None
    return root


def cache_subdir(*parts: str) -> Path:
    """A folder inside the cache, e.g. ``cache_subdir("models", "whisper-base")``."""
    path = cache_dir().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def slug(name: str) -> str:
    """A file-name-safe short form of a model name or path (``Qwen/Qwen2.5-7B`` ->
    ``Qwen2.5-7B``, ``speech, transcript`` -> ``speech-transcript``)."""
    import re

    return re.sub(r"[^A-Za-z0-9.]+", "-", Path(name.rstrip("/")).name or name).strip("-")
