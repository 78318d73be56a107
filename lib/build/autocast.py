"""bf16 autocast with the frozen weights cast once, not in every forward pass.

Autocast keeps the bf16 copy of a weight it casts only when the weight requires a gradient;
a frozen decoder's weights are cast again in every forward pass, and in every step of a
decode. On a 2-core Xeon with native bf16 that cast was 18 % of a Gemma-3 training step
(its 262k-row output layer) and made bf16 decoding no faster than float32. Inside
:func:`bf16_autocast` each frozen ``nn.Linear`` of the module reads a bf16 copy of its
weight instead; a bf16 matrix product under autocast reads the same bf16 values either way,
so every number is the same bit for bit. Copies are kept per weight for as long as the
weight lives and remade when it is changed in place (its version counter moves: adapters
merged into it) or given new storage. Norms and embeddings keep float32, as autocast does.

Used wherever the library runs a frozen model under bf16 autocast: training
(:mod:`lib.train.kernels`), decoding (:mod:`lib.evaluate.decode`), the loss passes of the
profiles and curves (:mod:`lib.prune`), the encoder's feature pass
(:mod:`lib.data.features`). Stage: building the SpeechLLM.
Explained in chapter 1 (section 1.6).
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Any, Iterator

import torch
from torch import nn

_COPIES: dict[int, tuple[Any, int, int, torch.Tensor]] = {}
"""id of a weight -> (a weak reference to it, its storage address, its version, its copy)."""


def bf16_copy(weight: torch.Tensor) -> torch.Tensor:
    """The bf16 copy of a float32 ``weight``: made once, remade when the weight was changed
    in place (its version) or given new storage (``.data =``), dropped with the weight."""
    key = id(weight)
    hit = _COPIES.get(key)
    if hit is not None and hit[0]() is weight and hit[1:3] == (weight.data_ptr(),
                                                               weight._version):
        return hit[3]
    copy = weight.detach().to(torch.bfloat16)
    ref = weakref.ref(weight, lambda _, k=key: _COPIES.pop(k, None))
    _COPIES[key] = (ref, weight.data_ptr(), weight._version, copy)
    return copy


def changed_in_place(weights: list[torch.Tensor]) -> None:
    """Say that ``weights`` were changed through ``.data`` (as peft merges adapters), which
    no version counter sees: each counter is moved (``x * 1``, no bit changes), so that a
    copy :func:`bf16_copy` made before is not taken for the changed weight."""
    with torch.no_grad():
        for w in weights:
            w.mul_(1)


class FrozenBf16:
    """Context manager: inside it, every frozen float32 ``nn.Linear`` weight of ``module``
    is its bf16 copy (:func:`bf16_copy`); on leaving, the same parameter objects are back
    (also after an exception)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.swapped: list[tuple[nn.Module, nn.Parameter]] = []

    def __enter__(self) -> "FrozenBf16":
        try:
            for m in self.module.modules():
                w = m._parameters.get("weight") if isinstance(m, nn.Linear) else None
                if w is not None and not w.requires_grad and w.dtype == torch.float32:
                    copy = nn.Parameter(bf16_copy(w), requires_grad=False)
                    self.swapped.append((m, w))
                    m._parameters["weight"] = copy
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        for m, w in reversed(self.swapped):
            m._parameters["weight"] = w
        self.swapped = []


@contextlib.contextmanager
def bf16_autocast(module: nn.Module, device_type: str, enabled: bool = True) -> Iterator[None]:
    """bf16 autocast on ``device_type`` with ``module``'s frozen weights cast once
    (:class:`FrozenBf16`); with ``enabled`` False, nothing (float32 as it is)."""
    if not enabled:
        yield
        return
    with FrozenBf16(module), torch.autocast(device_type, dtype=torch.bfloat16):
        yield
