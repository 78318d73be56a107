"""How a training step runs on this device: the attention kernel and the frozen weights' dtype.

Two costs of a CPU training step that change no number the step computes, measured on a
2-core Xeon with native bf16 (SmolLM2, batches of 8, seconds per step: 1.66 as transformers
loads the model, 1.00 with both changes below, with LoRA dropout kept; Gemma-3 1.89 -> 1.72
from the attention alone):

- **Attention.** transformers picks PyTorch's ``sdpa`` kernel; on a CPU its backward pass
  took 10 ms per layer and batch against 1 ms for its forward (profiled), more than every
  matrix product of the layer. The ``eager`` implementation (softmax of two matrix
  products) computes the same function with ordinary products, whose backward is cheap.
  On a GPU the fused kernel stays.
- **Frozen weights under bf16 autocast.** Autocast keeps a cast copy of a weight only when
  it requires a gradient; the decoder's frozen weights were cast to bf16 again in every
  forward (Gemma-3's 262k-row output layer alone: 18 % of a step in ``copy_``). Each frozen
  linear layer reads its bf16 copy, made once (:mod:`lib.build.autocast`). A bf16 matrix
  product under autocast reads the same bf16 values either way, so the losses and
  gradients are the same bits; the fp32 weights are put back around everything else (a
  dev check decodes in float32 with them).

Used by the training loop (:func:`lib.train.loop.train_speechllm`) and by the bf16 probe
(:func:`lib.train.precision.training_speedup`), so that the probe times the step that trains.
Stage: training. Explained in chapter 1 (section 1.6).
"""

from __future__ import annotations

from typing import Any

from lib.build.autocast import FrozenBf16
from lib.build.components import base_model
from lib.build.speechllm import SpeechLLM

CPU_ATTENTION = "eager"
"""The attention implementation a training step uses on a CPU (see above)."""


class TrainingKernels:
    """Context manager: inside it, ``model``'s decoder trains with :data:`CPU_ATTENTION` (on
    a CPU) and, when ``bf16``, with bf16 copies of its frozen linear weights
    (:class:`lib.build.autocast.FrozenBf16`, each copy made once); on leaving, the model is
    as it came (the same parameter objects, the same attention). A loop enters it around
    every step and leaves it for anything else.
    """

    def __init__(self, model: SpeechLLM, bf16: bool) -> None:
        self.base = base_model(model.decoder)
        self.attention = CPU_ATTENTION if model.device.type == "cpu" else None
        self.saved_attention: Any = None
        self.frozen = FrozenBf16(model.decoder) if bf16 else None

    def __enter__(self) -> "TrainingKernels":
        if self.attention is not None:
            self.saved_attention = self.base.config._attn_implementation
            if self.saved_attention != self.attention:
                self.base.set_attn_implementation(self.attention)
        if self.frozen is not None:
            try:
                self.frozen.__enter__()
            except BaseException:
                self.__exit__()
                raise
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.frozen is not None:
            self.frozen.__exit__(*exc)
        if self.attention is not None and self.saved_attention != self.attention:
            self.base.set_attn_implementation(self.saved_attention)
