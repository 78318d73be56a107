"""Pruning as model surgery: skip decoder layers for a while, or remove them for good.

:func:`skip_layers` takes layers out of the decoder's ``nn.ModuleList`` (the config and
every kept attention's ``layer_idx`` follow) and puts everything back afterwards;
:func:`remove_layers` does it for good, so the pruned model saves and reloads with plain
transformers; :func:`prune_speechllm` merges a SpeechLLM's adapters first. Stage: prune.
Explained in chapter 2 (book/02_where_redundancy_lies.ipynb) and chapter 4.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from torch import nn

from lib.errors import CompanionError
from lib.build.components import decoder_configs, find_decoder_layers, layers_owner
from lib.build.adapters import merge_adapters

if TYPE_CHECKING:
    from lib.build.speechllm import SpeechLLM


def check_layers(layers: Any, n_layers: int) -> list[int]:
    """The layer indices to remove, validated against an ``n_layers``-layer decoder.

    Raises:
        CompanionError: one line naming the value: not integers, unsorted or repeated,
            outside ``0..n_layers-1``, empty, or every layer (nothing would be left).
    """
    try:
        out = [int(i) for i in layers]
    except (TypeError, ValueError):
        raise CompanionError(f"layers {layers!r} must be a list of layer indices (integers), "
                             "e.g. [4, 5, 6]") from None
    if any(int(i) != i for i in layers):
        raise CompanionError(f"layers {list(layers)} must be whole numbers")
    if not out:
        raise CompanionError("no layers to remove: give at least one layer index")
    if out != sorted(set(out)):
        raise CompanionError(f"layers {out} must be sorted and without repeats: use "
                             f"{sorted(set(out))}")
    if out[0] < 0 or out[-1] >= n_layers:
        raise CompanionError(f"layers {out} reach past this {n_layers}-layer decoder: use "
                             f"indices 0..{n_layers - 1}")
    if len(out) >= n_layers:
        raise CompanionError(f"removing all {n_layers} layers leaves no decoder: keep at "
                             "least one layer")
    return out


def block_layers(start: int, n: int, n_layers: int) -> list[int]:
    """The layers of block ``[start, start + n)``, validated (see :func:`check_layers`)."""
    if not (1 <= n < n_layers) or not (0 <= start <= n_layers - n):
        raise CompanionError(f"block [{start}, {start + n}) cannot be removed from a "
                             f"{n_layers}-layer decoder: need 1 <= n < {n_layers} and "
                             f"0 <= start <= {n_layers} - n")
    return list(range(start, start + n))


def _layer_idx_modules(layer: nn.Module) -> list[nn.Module]:
    return [m for m in (layer, getattr(layer, "self_attn", None))
            if m is not None and isinstance(getattr(m, "layer_idx", None), int)]


def _swap_layers(decoder: nn.Module, layers: Sequence[int]) -> Callable[[], None]:
    """Remove ``layers`` from ``decoder`` in place; return the function that puts them back.

    The ModuleList is swapped for one of the kept layers; each kept attention's
    ``layer_idx``, ``config.num_hidden_layers`` and ``config.layer_types`` are renumbered to
    match (what ``generate()`` with the KV cache and a saved pruned model need, transformers
    issue 30508). Works through a peft wrapper (the adapters go with their layers).
    """
    owner = layers_owner(decoder)
    old_layers = owner.layers
    big_l = len(old_layers)
    drop = set(check_layers(layers, big_l))
    keep = [i for i in range(big_l) if i not in drop]
    cfgs = decoder_configs(decoder, owner)
    saved_cfg = [(c, c.num_hidden_layers, getattr(c, "layer_types", None)) for c in cfgs]
    idx_attrs = [(m, m.layer_idx) for layer in old_layers for m in _layer_idx_modules(layer)]

    def restore() -> None:
        owner.layers = old_layers
        for mod, v in idx_attrs:
            mod.layer_idx = v
        for c, nl, types in saved_cfg:
            c.num_hidden_layers = nl
            if types is not None:
                c.layer_types = types

    try:
        new = nn.ModuleList([old_layers[i] for i in keep])
        for j, layer in enumerate(new):
            for mod in _layer_idx_modules(layer):
                mod.layer_idx = j
        owner.layers = new
        for c, _, types in saved_cfg:
            c.num_hidden_layers = len(keep)
            if types is not None:
                c.layer_types = [types[i] for i in keep]
    except BaseException:
        restore()
        raise
    return restore


@contextlib.contextmanager
def skip_layers(decoder: nn.Module, layers: Sequence[int]) -> Iterator[None]:
    """Temporarily remove decoder ``layers`` (any sorted set); everything restored on exit."""
    restore = _swap_layers(decoder, layers)
    try:
        yield
    finally:
        restore()


@contextlib.contextmanager
def skip_block(decoder: nn.Module, start: int, n: int) -> Iterator[None]:
    """Temporarily remove decoder layers ``[start, start + n)``; everything restored on exit."""
    with skip_layers(decoder, block_layers(start, n, len(find_decoder_layers(decoder)))):
        yield


def remove_layers(decoder: nn.Module, layers: Sequence[int]) -> nn.Module:
    """Remove decoder ``layers`` for good: an ordinary transformers model with fewer layers.

    Besides the renumbering of :func:`skip_layers`, the config records what was removed
    (``pruned_layers``, indices of the original model, accumulated over repeated calls, and
    ``unpruned_num_hidden_layers``), so a saved pruned model says what it is. Returns
    ``decoder`` (changed in place).
    """
    owner = layers_owner(decoder)
    big_l = len(owner.layers)
    drop = check_layers(layers, big_l)
    cfg = decoder_configs(decoder, owner)[0]
    before = list(getattr(cfg, "pruned_layers", None) or [])
    original = int(getattr(cfg, "unpruned_num_hidden_layers", None) or big_l)
    alive = [i for i in range(original) if i not in set(before)]  # current -> original
    _swap_layers(decoder, drop)
    for c in decoder_configs(decoder, owner):
        c.pruned_layers = sorted(before + [alive[i] for i in drop])
        c.unpruned_num_hidden_layers = original
    return decoder


def receiving_layers(layers: Sequence[int], n_layers: int) -> list[int]:
    """Indices, in the pruned model, of the layers that receive a cut.

    Each maximal run of removed layers hands its input to the first kept layer after it (the
    paper's healing target); a run that reaches the end hands it to the last kept layer.
    """
    drop = set(check_layers(layers, n_layers))
    keep = [i for i in range(n_layers) if i not in drop]
    out = set()
    for i in drop:
        if i - 1 in drop:
            continue  # not the start of a run
        j = i
        while j in drop:
            j += 1
        after = j if j < n_layers else keep[-1]
        out.add(keep.index(after))
    return sorted(out)


def prune_speechllm(model: "SpeechLLM", layers: Sequence[int]) -> "SpeechLLM":
    """Merge the adapters, then remove decoder ``layers`` for good (in place; returned)."""
    merge_adapters(model)
    remove_layers(model.decoder, layers)
    model.decoder.requires_grad_(False)
    return model


def pruned_copy(model: "SpeechLLM", layers: Sequence[int]) -> "SpeechLLM":
    """A pruned copy of ``model`` (adapters merged, ``layers`` removed); ``model`` is kept."""
    import copy

    return prune_speechllm(copy.deepcopy(model), layers)
