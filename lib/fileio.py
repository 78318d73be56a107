"""Files that carry their provenance, written so that a failed run never loses one.

Every result file holds the config that made it, the git commit, the date, the seeds, the
library versions, the device and the wall time (the lm-evaluation-harness habit). Files are
written to a temporary name and renamed, so a crash leaves the previous file intact.

This module imports nothing of the library (a test keeps it so): every stage can write its
files through it without an import cycle. Stage: all (results). Explained in chapter 1
(book/01_building_a_speechllm.ipynb).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import subprocess
import tempfile
from dataclasses import fields, is_dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

_REPO_ROOT = Path(__file__).resolve().parent.parent  # the commit of record is this repo's
_PACKAGES = ("torch", "transformers", "peft", "accelerate", "jiwer", "sacrebleu", "numpy")


def to_dict(obj: Any) -> Any:
    """Plain JSON-able form of a (nested) config."""
    if is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(x) for x in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def config_hash(obj: Any, length: int = 12) -> str:
    """Short stable hash of a (nested) config: the key of a cached result."""
    blob = json.dumps(to_dict(obj), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def git_commit() -> dict[str, Any]:
    """The commit the code ran at and whether the tree had uncommitted changes."""
    def run(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=_REPO_ROOT, capture_output=True,
                                  text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = run("rev-parse", "HEAD")
    # What a book run writes itself (the results of record and the README rendered from
    # them) is not a change to the code that produced the numbers.
    dirty = bool(run("status", "--porcelain", "--untracked-files=no", "--", ".",
                     ":(exclude)results", ":(exclude)README.md"))
    return {"git_hash": commit or None, "git_dirty": dirty if commit else None}


def device_info() -> dict[str, Any]:
    """What the run ran on: CPU count, GPU name if any."""
    import torch

    info: dict[str, Any] = {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                            "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
    return info


def provenance(config: Any = None, seed: int | None = None,
               wall_time_s: float | None = None) -> dict[str, Any]:
    """A provenance record to store beside any result."""
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    rec = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **git_commit(),
        "seed": seed,
        "versions": versions,
        "device": device_info(),
    }
    if config is not None:
        rec["config"] = to_dict(config)
    if wall_time_s is not None:
        rec["wall_time_s"] = round(wall_time_s, 2)
    return rec


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_json(path: Path, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write_text(Path(path), json.dumps(obj, indent=2, default=str) + "\n")
    return Path(path)


def load_json(path: Path) -> Any:
    """Read a JSON file written by :func:`save_json`."""
    return json.loads(Path(path).read_text())


def save_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Atomically write rows as JSON Lines."""
    text = "".join(json.dumps(r, default=str) + "\n" for r in rows)
    atomic_write_text(Path(path), text)
    return Path(path)
