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
    if is_dataclass(obj):  # a field marked provenance=False (a run's clock) is left out
        return {f.name: to_dict(getattr(obj, f.name)) for f in fields(obj)
                if f.metadata.get("provenance", True)}
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


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def device_info() -> dict[str, Any]:
    """What the run ran on: CPU count and model, whether the CPU runs bf16 natively (the
    machines this project runs on differ in it, and training and decoding take bf16
    autocast only where it is native: ``precision: auto``), GPU name if any."""
    import torch

    info: dict[str, Any] = {"cpu_count": os.cpu_count(), "cpu": cpu_model(),
                            # lib.device.native_bf16, inlined: this module imports no lib
                            "cpu_native_bf16": bool(
                                torch.ops.mkldnn._is_mkldnn_bf16_supported()),
                            "platform": platform.platform(),
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


def file_sha256(path: Path) -> str:
    """The sha256 hex digest of a file's bytes, read in 1 MiB blocks.

    Raises:
        OSError: the file cannot be read.
    """
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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


def load_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows :func:`save_jsonl` wrote."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


# ------------------------------------------------------------------ verified artefacts


class CorruptFile(Exception):
    """A cached or recorded file whose content is not what was written (one line)."""


def _tensor_digest(tensors: dict[str, Any]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.view(-1).view(__import__("torch").uint8).numpy().tobytes())
    return h.hexdigest()


def save_tensors(path: Path, tensors: dict[str, Any],
                 metadata: dict[str, str] | None = None) -> Path:
    """Write tensors as safetensors with the sha256 of their bytes in the header (and
    ``metadata`` beside it), through a temporary file and a rename (a crash leaves the
    previous file)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata={**(metadata or {}),
                                           "sha256": _tensor_digest(tensors)})
    os.replace(tmp, path)
    return path


FINITE_SLICE = 1 << 20
"""Values checked at once by :func:`first_nonfinite`."""


def first_nonfinite(named: Any) -> str | None:
    """The name of the first floating-point tensor of ``named`` (``(name, tensor)`` pairs)
    that holds a NaN or an infinity, else None. Checked :data:`FINITE_SLICE` values at a
    time: ``torch.isfinite`` of a whole weight makes full-size temporaries (its ``abs``), and
    for Gemma-3's 262k-row embedding that copy, 640 MiB, was the peak memory of loading the
    model, larger than anything pruning removes."""
    import torch

    for name, t in named:
        if t.is_floating_point():
            flat = t.detach().reshape(-1)
            for start in range(0, flat.numel(), FINITE_SLICE):
                if not bool(torch.isfinite(flat[start:start + FINITE_SLICE]).all()):
                    return name
    return None


def load_tensors(path: Path, finite: bool = False) -> dict[str, Any]:
    """Read what :func:`save_tensors` wrote and check it: the header's digest against the
    bytes (a file without one, written before digests were kept, is checked for finite
    values only), and with ``finite`` every floating tensor for NaN / infinity.

    Raises:
        CorruptFile: the file is truncated or unreadable, its digest does not match, or a
            value is not finite (one line naming the file).
    """
    import torch
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            want = (f.metadata() or {}).get("sha256")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises several kinds on a damaged file
        raise CorruptFile(f"{path} is unreadable ({' '.join(str(err).split())[:80]})") from None
    if want is not None and _tensor_digest(tensors) != want:
        raise CorruptFile(f"{path} does not match the digest written with it")
    if finite or want is None:
        bad = first_nonfinite(tensors.items())
        if bad is not None:
            raise CorruptFile(f"{path} holds non-finite values (tensor {bad})")
    return tensors


def set_aside(path: Path, reason: str) -> Path:
    """Move a corrupt file out of the way (``<name>.corrupt``) and say so in one line."""
    path = Path(path)
    target = path.with_name(path.name + ".corrupt")
    os.replace(path, target)
    print(f"{reason}: set aside as {target.name} and rebuilt")
    return target


def figures_digest(record: dict[str, Any]) -> str:
    """The sha256 of a results record's figures (everything but its provenance and the
    digest itself), canonical JSON: what :mod:`lib.report.readme` checks before
    rendering."""
    figures = {k: v for k, v in record.items() if k not in ("provenance", "digest")}
    blob = json.dumps(figures, sort_keys=True, default=str, allow_nan=True)
    return hashlib.sha256(blob.encode()).hexdigest()


SEAL = "sha256"
"""The key under which a cached JSON result carries the digest of the rest of it."""


def _canonical_digest(obj: dict[str, Any]) -> str:
    rest = {k: v for k, v in obj.items() if k != SEAL}
    blob = json.dumps(rest, sort_keys=True, default=str, allow_nan=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def is_sealed(obj: Any) -> bool:
    """Whether ``obj`` (read back from JSON) carries the seal of exactly its content."""
    return isinstance(obj, dict) and obj.get(SEAL) == _canonical_digest(obj)


def save_cached_json(path: Path, obj: dict[str, Any]) -> Path:
    """Write a cached result (a dict) as JSON sealed with the sha256 of its content,
    which :func:`load_cached_json` checks (atomically, as :func:`save_json`)."""
    plain = json.loads(json.dumps(obj, default=str))  # as it will read back
    return save_json(path, {**plain, SEAL: _canonical_digest(plain)})


def load_cached_json(path: Path) -> Any:
    """A cached result written by :func:`save_cached_json`, or None when it is missing,
    unreadable or not what was written (an edit, damage, no seal): such a file is set
    aside (:func:`set_aside`) in one line, so the caller computes it again."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        set_aside(path, f"cached {path.name} is unreadable ({type(err).__name__})")
        return None
    if not is_sealed(obj):
        set_aside(path, f"cached {path.name} does not match its sha256 (edited, damaged or "
                        "written without one)")
        return None
    return {k: v for k, v in obj.items() if k != SEAL}
