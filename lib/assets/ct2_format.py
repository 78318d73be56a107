"""Read a CTranslate2 ``model.bin``: its spec name and every variable as a tensor.

File layout (little endian)::

    uint32 binary version (6)
    string spec name ("WhisperSpec")      # uint16 length incl. NUL, bytes, NUL
    uint32 spec revision
    uint32 variable count
    per variable: string name, uint8 rank, uint32 dims[rank], uint8 dtype,
                  uint32 byte count, raw bytes
    uint32 alias count, per alias: string alias, string target

Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

Stage: building the SpeechLLM (offline assets).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from lib.errors import CompanionError

# CTranslate2 dtype codes -> numpy dtypes (bf16 is read as uint16 then widened).
_DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<f4"),
    1: np.dtype("i1"),
    2: np.dtype("<i2"),
    3: np.dtype("<i4"),
    4: np.dtype("<f2"),
    5: np.dtype("<u2"),
}


def _read_string(f: BinaryIO) -> str:
    """Read a uint16-length-prefixed, NUL-terminated UTF-8 string."""
    (length,) = struct.unpack("<H", f.read(2))
    raw = f.read(length)
    return raw.rstrip(b"\0").decode("utf-8")


def _to_tensor(raw: bytes, dtype_code: int, dims: list[int]) -> torch.Tensor:
    """Turn raw variable bytes into a tensor (bf16 kept as bf16)."""
    if dtype_code not in _DTYPES:
        raise CompanionError(f"CTranslate2 dtype code {dtype_code} is not supported.")
    arr = np.frombuffer(raw, dtype=_DTYPES[dtype_code]).copy()
    if dtype_code == 5:
        widened = arr.astype(np.uint32) << 16
        tensor = torch.from_numpy(widened.view(np.float32)).to(torch.bfloat16)
    else:
        tensor = torch.from_numpy(arr)
    return tensor.reshape(dims) if dims else tensor.reshape(())


def read_ct2_model(
    source: Path | bytes | Iterable[Path],
) -> tuple[str, dict[str, torch.Tensor]]:
    """Parse a CTranslate2 ``model.bin`` into named tensors.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Args:
        source: The file, its bytes, or the ordered parts of a split file (joined in
            memory in the order given).

    Returns:
        The spec name (e.g. ``"WhisperSpec"``) and a dict of variables; aliases are
        resolved to the tensor they point at.

    Raises:
        CompanionError: If the file is truncated or not a CTranslate2 model.
    """
    if isinstance(source, bytes):
        data = source
    elif isinstance(source, Path):
        data = source.read_bytes()
    else:
        data = b"".join(Path(p).read_bytes() for p in source)
    f = io.BytesIO(data)
    try:
        (version,) = struct.unpack("<I", f.read(4))
        if version < 5 or version > 6:
            raise CompanionError(
                f"CTranslate2 binary version {version} is not supported (expected 5 or 6)."
            )
        spec = _read_string(f)
        struct.unpack("<I", f.read(4))  # spec revision
        (count,) = struct.unpack("<I", f.read(4))
        variables: dict[str, torch.Tensor] = {}
        for _ in range(count):
            name = _read_string(f)
            (rank,) = struct.unpack("<B", f.read(1))
            dims = list(struct.unpack(f"<{rank}I", f.read(4 * rank)))
            (dtype_code,) = struct.unpack("<B", f.read(1))
            (nbytes,) = struct.unpack("<I", f.read(4))
            raw = f.read(nbytes)
            if len(raw) != nbytes:
                raise CompanionError("CTranslate2 model.bin is truncated.")
            variables[name] = _to_tensor(raw, dtype_code, dims)
        (n_alias,) = struct.unpack("<I", f.read(4))
        for _ in range(n_alias):
            alias = _read_string(f)
            target = _read_string(f)
            variables[alias] = variables[target]
    except struct.error as exc:
        raise CompanionError(f"CTranslate2 model.bin is truncated or corrupt ({exc}).")
    return spec, variables


def dequantize(variables: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Turn int8/int16 weights with a ``weight_scale`` back into float32."""
    out: dict[str, torch.Tensor] = {}
    for name, value in variables.items():
        if name.endswith("/weight_scale"):
            continue
        scale = variables.get(name + "_scale")
        if scale is not None and not value.is_floating_point():
            value = value.float() / scale.float().reshape(-1, 1)
        out[name] = value.float() if value.is_floating_point() else value
    return out


