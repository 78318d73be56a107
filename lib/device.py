"""Where and in what precision the models run: ``device`` and ``precision`` resolved.

Imports nothing of the library but :mod:`lib.errors`. Stage: all (device). Explained in
chapter 1 (book/01_building_a_speechllm.ipynb).
"""

from __future__ import annotations

import os
from typing import Callable

from lib.errors import CompanionError

PRECISIONS = ("auto", "bf16", "fp32")
"""``auto``: bf16 on a GPU; on a CPU, bf16 for a use only where this machine was measured to
gain from it (:func:`resolve_precision`, :mod:`lib.machine`); chapter 1's section 1.6
measures again what each choice buys."""


def native_bf16() -> bool:
    """Whether this CPU runs bf16 natively (AVX-512 BF16 or AMX): where bf16 autocast may be
    faster than float32 instead of emulated and slower (``make bench`` measures both)."""
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(precision: str, device: str = "auto",
                      measured: Callable[[], str] | None = None) -> str:
    """``auto`` -> ``bf16`` on a GPU; ``fp32`` on a CPU that emulates bf16 (several times
    slower); on a CPU that runs bf16 natively (AVX-512 BF16 / AMX), what this machine was
    measured to gain: ``measured()``, the run's choice for one use (training or decoding)
    from :func:`lib.machine.machine_choice`, which probes the machine once and keeps the
    choice: what pays differs by use, decoder and machine (the module explains it). Without
    ``measured`` (the library used outside a run), native bf16 is taken. A named precision
    is kept as given.

    Raises:
        CompanionError: ``precision`` is not one of :data:`PRECISIONS`.
    """
    import torch

    if precision not in PRECISIONS:
        raise CompanionError(f"precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if str(device).startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        return "bf16"
    if not native_bf16():
        return "fp32"
    return measured() if measured is not None else "bf16"


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; one GPU per process
    under ``torchrun`` / ``accelerate launch``.

    Raises:
        CompanionError: a GPU is asked for and none is visible.
    """
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"  # one GPU per process
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CompanionError(f"device={device!r} but no GPU is visible: use device='cpu'")
    return device
