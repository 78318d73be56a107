"""Where and in what precision the models run: ``device`` and ``precision`` resolved.

Imports nothing of the library but :mod:`lib.errors`. Stage: all (device). Explained in
chapter 1 (book/01_building_a_speechllm.ipynb).
"""

from __future__ import annotations

import os

from lib.errors import CompanionError

PRECISIONS = ("auto", "bf16", "fp32")
"""``auto``: bf16 where the hardware runs it natively, for training and decoding
(:func:`resolve_precision`); chapter 1's section 1.6 measures what each choice buys."""


def native_bf16() -> bool:
    """Whether this CPU runs bf16 natively (AVX-512 BF16 or AMX): where bf16 autocast is
    faster than float32 instead of emulated and slower (``make bench`` measures both)."""
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(precision: str, device: str = "auto") -> str:
    """``auto`` -> ``bf16`` on a GPU, and on a CPU that runs bf16 natively (AVX-512 BF16 /
    AMX), for training and decoding alike; ``fp32`` where bf16 is emulated. Decoding used to
    stay in float32 on a CPU: bf16 autocast measured no faster while it cast the frozen
    weights again at every token; :mod:`lib.build.autocast` casts them once, and greedy
    decoding then ran 1.45 (SmolLM2) and 2.0 (Gemma-3) times as fast on an Intel Xeon with
    AMX, the paired WER level. What each use gains varies by machine: chapter 1, section 1.6,
    measures both in every run and says when ``auto``'s choice does not stand (then ``-p
    precision`` / ``-p eval_precision`` set either use on its own).

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
    return "bf16" if native_bf16() else "fp32"


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
