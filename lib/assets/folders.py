"""Folders that appear whole or not at all: a temporary folder renamed into place, with a
manifest saying what it holds.

Stage: building the SpeechLLM (offline assets). Explained in chapter 1
(book/01_building_a_speechllm.ipynb).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lib.assets.registry import FORMAT_VERSION


_STALE_TMP_S = 6 * 3600
def _clean_stale_tmp(parent: Path, alias: str) -> None:
    """Remove temp folders left by killed runs (older than a few hours)."""
    now = time.time()
    for old in parent.glob(f".{alias}.tmp-*"):
        with contextlib.suppress(OSError):
            if now - old.stat().st_mtime > _STALE_TMP_S:
                shutil.rmtree(old, ignore_errors=True)


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The folder's manifest, or None when absent or unreadable."""
    try:
        return json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def atomic_folder(
    final: Path, is_done: Callable[[Path], bool] = lambda _: False
) -> Iterator[Path]:
    """Yield a temp folder next to ``final``; rename its ``out`` into place on success.

    A killed run leaves only a hidden ``.<name>.tmp-*`` folder, never a half
    ``final``. If another process finished ``final`` meanwhile (``is_done``), its
    copy is kept and ours is dropped.
    """
    parent = final.parent
    parent.mkdir(parents=True, exist_ok=True)
    _clean_stale_tmp(parent, final.name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=parent))
    try:
        out = tmp / "out"
        out.mkdir()
        yield tmp
        if is_done(final):
            return
        if final.exists():
            aside = tmp / "old"
            with contextlib.suppress(OSError):
                final.rename(aside)
        try:
            out.rename(final)
        except OSError:
            if read_manifest(final) is None:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_manifest(folder: Path, data: dict[str, Any]) -> None:
    """Write ``manifest.json`` (the last file written into a build)."""
    import torch
    import transformers

    data = {
        **data,
        "format": FORMAT_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    (folder / "manifest.json").write_text(json.dumps(data, indent=2) + "\n")
