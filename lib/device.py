"""Where and in what precision the models run: ``device`` and ``precision`` resolved.

Imports nothing of the library but :mod:`lib.errors`. Stage: all (device). Explained in
chapter 1 (book/01_building_a_speechllm.ipynb).
"""

from __future__ import annotations

import os

from lib.errors import CompanionError

PRECISIONS = ("auto", "bf16", "fp32")
"""``auto``: bf16 where the hardware runs it natively, except for decoding on a CPU
(:func:`resolve_precision`); chapter 1's section 1.6 measures what each choice buys."""

USES = ("train", "decode")
"""What a precision is resolved for: training (and feature extraction), or decoding."""


def native_bf16() -> bool:
    """Whether this CPU runs bf16 natively (AVX-512 BF16 or AMX): where bf16 autocast is
    faster than float32 instead of emulated and slower (``make bench`` measures both)."""
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(precision: str, device: str = "auto", use: str = "train") -> str:
    """``auto`` -> ``bf16`` on a GPU; on a CPU, ``bf16`` for training where the CPU runs it
    natively (AVX-512 BF16 / AMX; what a step gains varies by machine) and ``fp32`` for
    decoding, where bf16 autocast measured no faster on the CPUs this book has run on (an
    AMD EPYC and an Intel Xeon with AMX, both with native bf16) while it still cast the
    frozen weights at every token (:mod:`lib.build.autocast` now casts them once; not yet
    measured again). Chapter 1, section 1.6, measures both again in every run.

    Raises:
        CompanionError: ``precision`` is not one of :data:`PRECISIONS`.
    """
    import torch

    if precision not in PRECISIONS:
        raise CompanionError(f"precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if use not in USES:
        raise ValueError(f"use {use!r}: one of {USES}")
    if precision != "auto":
        return precision
    if str(device).startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        return "bf16"
    return "bf16" if use == "train" and native_bf16() else "fp32"


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
