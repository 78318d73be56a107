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


def check_folder(path: Path, create: bool = False, *, label: str | None = None,
                 cure: str | None = None, create_cure: str = "check its permissions and "
                 "free space") -> Path:
    """Make sure ``path`` is (or can become) a folder: no file stands in its way.

    Args:
        path: the folder, e.g. ``_build/<preset>/executed``.
        create: create it (and its parents) when it does not exist.
        label: how the error names the folder (default: the path itself).
        cure: what the error says to do about a file in the way (default: move or delete
            it).
        create_cure: what it says to do when the folder cannot be created.

    Raises:
        CompanionError: ``path`` or one of its parents is a file, or it cannot be created.
    """
    from lib.errors import CompanionError

    for part in (path, *path.parents):
        if part.exists() and not part.is_dir():
            raise CompanionError(f"{label or part} is a file, not a folder: " + (
                cure or f"move or delete it (the book writes {path} there), then run again"))
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CompanionError(f"cannot create the folder {label or path} "
                                 f"({err.strerror}): {create_cure}") from None
    return path


def cache_dir() -> Path:
    """Root of the cache (created on first use).

    Raises:
        CompanionError: ``$COMPANION_CACHE`` names a file, or the folder cannot be made.
    """
    root = Path(os.environ.get("COMPANION_CACHE", REPO_ROOT / ".cache")).expanduser()
    return check_folder(root, create=True, label=f"COMPANION_CACHE={root}",
                        cure="point it at a folder (or unset it for <repo>/.cache)",
                        create_cure="set COMPANION_CACHE to a folder you can write")


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
