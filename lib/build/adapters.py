"""The decoder's LoRA adapters seen from outside: the pretrained LLM inside a SpeechLLM
(adapters off), how far training moved each adapted weight, and the adapters merged into
the weights (a plain transformers model).

Stage: building the SpeechLLM (its adapters). Explained in chapter 2
(book/02_where_redundancy_lies.ipynb) and chapter 4 (book/04_healing.ipynb).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import pandas as pd
import torch
from torch import nn

from lib.build.autocast import changed_in_place
from lib.build.speechllm import SpeechLLM


@contextlib.contextmanager
def pretrained_decoder(model: SpeechLLM) -> Iterator[SpeechLLM]:
    """Inside the block, ``model``'s decoder runs as the pretrained LLM (LoRA switched off).

    The same weights, device and dtype: no second copy of the decoder is loaded.
    Explained in chapter 2 (book/02_where_redundancy_lies.ipynb).
    """
    if hasattr(model.decoder, "disable_adapter"):
        with model.decoder.disable_adapter():
            yield model
    else:  # no adapters: the decoder is the pretrained LLM
        yield model


def lora_update_norms(model: SpeechLLM) -> pd.DataFrame:
    """How far training moved each LoRA-adapted weight: ``||scale * B A||_F / ||W||_F``.

    One row per adapted linear layer: ``layer`` (decoder layer index, -1 if outside the
    layers), ``module`` (e.g. ``q_proj``), ``relative_update``. Empty when the decoder has
    no adapters. Explained in chapter 2 (book/02_where_redundancy_lies.ipynb).
    """
    import re

    rows = []
    for name, mod in model.decoder.named_modules():
        lora_a, lora_b = getattr(mod, "lora_A", None), getattr(mod, "lora_B", None)
        base = getattr(mod, "base_layer", None)
        if not isinstance(lora_a, nn.ModuleDict) or base is None:
            continue
        w = base.weight.detach().float()
        for key in lora_a:
            delta = (lora_b[key].weight.detach().float() @ lora_a[key].weight.detach().float()
                     * float(mod.scaling[key]))
            m = re.search(r"\.layers\.(\d+)\.", name)
            rows.append({"layer": int(m.group(1)) if m else -1,
                         "module": name.rsplit(".", 1)[-1],
                         "relative_update": float(delta.norm() / w.norm())})
    return pd.DataFrame(rows, columns=["layer", "module", "relative_update"])


def merge_adapters(model: "SpeechLLM") -> "SpeechLLM":
    """Merge the decoder's peft LoRA adapters into its weights (a plain transformers model);
    bf16 copies cast from them before are not read again
    (:func:`lib.build.autocast.changed_in_place`)."""
    if has_adapters(model):
        merged = [m.get_base_layer().weight for m in _lora_layers(model)]
        model.decoder = model.decoder.merge_and_unload()
        changed_in_place(merged)
    return model


def merged_copy(model: "SpeechLLM") -> "SpeechLLM":
    """An unpruned copy of ``model`` with its adapters merged (``model`` is kept)."""
    import copy

    return merge_adapters(copy.deepcopy(model))


def has_adapters(model: "SpeechLLM") -> bool:
    """Whether ``model``'s decoder carries peft adapters (a pruned model's are merged away)."""
    return hasattr(model.decoder, "merge_and_unload")


def _lora_layers(model: "SpeechLLM") -> list[nn.Module]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.decoder.modules() if isinstance(m, BaseTunerLayer)]


@contextlib.contextmanager
def adapters_merged(model: "SpeechLLM") -> Iterator["SpeechLLM"]:
    """Inside the block, ``model``'s LoRA adapters are merged into its weights; on leaving,
    each adapted weight is put back bit for bit (copied from a copy taken before; subtracting
    the update again would leave rounding in it) and the adapters apart again.

    A decode runs one token at a time, where each adapted layer's two small matrix products
    beside its weight doubled the products of a step; the weight plus its update
    ``scale * B A`` computes the same function with one. A pruned model (merged when cut) and
    its full model are then decoded alike, so that a cut's cost is the layers it removed.
    Only the adapted weights are copied (the attention's), not the model.
    Explained in chapter 1 (section 1.6).
    """
    layers = [m for m in _lora_layers(model) if not m.merged]
    saved = [m.get_base_layer().weight.detach().clone() for m in layers]
    done = []
    try:
        for m in layers:
            m.merge()
            done.append(m)
        changed_in_place([m.get_base_layer().weight for m in done])
        yield model
    finally:
        with torch.no_grad():
            for m, w in zip(done, saved):
                m.unmerge()
                m.get_base_layer().weight.copy_(w)
