"""Pruning: remove a block of decoder layers, and measure what removing it costs.

:func:`skip_block` is the model surgery (the layers leave the decoder's ``nn.ModuleList``
and the config follows, then everything is put back); :func:`ablation_losses` removes every
block of ``n`` layers in turn and records the loss, and :func:`rank_agreement` /
:func:`ablation_summary` ask whether the cheap redundancy score (:mod:`lib.redundancy`)
ranks blocks the way removing them does. Stage: prune. Explained in chapter 2 (the
redundancy of decoder layers).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from lib.errors import CompanionError
from lib.agreement import spearman_rho
from lib.redundancy import check_features, is_speechllm
from lib.redundancy_stats import RedundancyResult
from lib.components import decoder_body, eval_mode, find_decoder_layers

if TYPE_CHECKING:
    from lib.features import FeatureSet
    from lib.speechllm import SpeechLLM


def _layers_owner(decoder: nn.Module) -> nn.Module:
    """The module whose ``.layers`` attribute is the decoder's ModuleList."""
    layers = find_decoder_layers(decoder)
    inner = decoder_body(decoder)
    if getattr(inner, "layers", None) is not layers:
        raise CompanionError(f"cannot find the module holding the layers of "
                             f"{type(decoder).__name__}")
    return inner


def _configs(decoder: nn.Module, owner: nn.Module) -> list[Any]:
    out = []
    for m in (decoder, owner, getattr(decoder, "get_base_model", lambda: None)()):
        cfg = getattr(m, "config", None) if m is not None else None
        if cfg is not None and all(cfg is not c for c in out):
            out.append(cfg)
    return out


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
    owner = _layers_owner(decoder)
    old_layers = owner.layers
    big_l = len(old_layers)
    drop = set(check_layers(layers, big_l))
    keep = [i for i in range(big_l) if i not in drop]
    cfgs = _configs(decoder, owner)
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
    owner = _layers_owner(decoder)
    big_l = len(owner.layers)
    drop = check_layers(layers, big_l)
    cfg = _configs(decoder, owner)[0]
    before = list(getattr(cfg, "pruned_layers", None) or [])
    original = int(getattr(cfg, "unpruned_num_hidden_layers", None) or big_l)
    alive = [i for i in range(original) if i not in set(before)]  # current -> original
    _swap_layers(decoder, drop)
    for c in _configs(decoder, owner):
        c.pruned_layers = sorted(before + [alive[i] for i in drop])
        c.unpruned_num_hidden_layers = original
    return decoder


def pruned_layers(decoder: nn.Module) -> list[int]:
    """The original indices of the layers :func:`remove_layers` took out ([] if none)."""
    cfg = _configs(decoder, _layers_owner(decoder))[0]
    return list(getattr(cfg, "pruned_layers", None) or [])


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


class _MeanLoss:
    """The SpeechLLM's mean target-token loss over a fixed set of batches (see
    :func:`loss_function`)."""

    def __init__(self, model: "SpeechLLM", batches: list, n_tokens: int,
                 precision: str = "fp32") -> None:
        self.model, self.batches, self.n_tokens = model, batches, n_tokens
        self.precision = precision

    @torch.no_grad()
    def __call__(self) -> float:
        s = 0.0
        amp = torch.autocast(self.model.device.type, dtype=torch.bfloat16,
                             enabled=self.precision == "bf16")
        with eval_mode(self.model), amp:
            for feats, lengths, texts in self.batches:
                s += float(self.model.loss(feats, lengths, texts, reduction="sum"))
        return s / self.n_tokens


def loss_function(model: "SpeechLLM", data: "FeatureSet", batch_size: int = 8,
                  precision: str = "fp32") -> _MeanLoss:
    """A callable giving the model's loss on ``data``: the mean over all target tokens.

    The batches are built once, so calling it after each change of the decoder (a layer
    skipped, a block removed) costs only the forward passes. Used by the ablation and by
    the loss-driven pruning strategies (:mod:`lib.strategies`). ``precision="bf16"`` runs
    the forward passes under bf16 autocast (the loss itself in float32): what ranks
    hundreds of candidate removals on a CPU with native bf16, about 3x faster.
    """
    if not is_speechllm(model):
        raise CompanionError(f"the loss needs a SpeechLLM, got {type(model).__name__}")
    if data is None or len(data) == 0:
        raise CompanionError("the loss got an empty feature set: pass utterances")
    if batch_size < 1:
        raise CompanionError(f"batch_size={batch_size}: use a positive integer")
    batches, total = [], 0
    for s in range(0, len(data), batch_size):
        idx = list(range(s, min(s + batch_size, len(data))))
        check_features(data, idx)
        feats, lengths, texts = data.batch(idx, target=model.task.target)
        total += sum(len(model.target_ids(t)) for t in texts)
        batches.append((feats, lengths, texts))
    return _MeanLoss(model, batches, total, precision)


@torch.no_grad()
def ablation_losses(model: "SpeechLLM", data: "FeatureSet", n: int, batch_size: int = 8,
                    max_utterances: int | None = None,
                    precision: str = "fp32") -> pd.DataFrame:
    """Target loss of the SpeechLLM with each block ``[l, l+n)`` skipped, plus the full model.

    The loss is ``model.loss`` (mean over target tokens), averaged over batches weighted by
    each batch's number of target tokens, i.e. the mean over all target tokens of the set.

    Returns:
        Columns start, end, block_size, loss, delta (loss minus the full model's), n_tokens;
        the full model is the row with ``start = end = -1`` and ``block_size = 0``.
        ``precision="bf16"``: the forward passes under bf16 autocast (see
        :func:`loss_function`).
    """
    if not is_speechllm(model):
        raise CompanionError(f"ablation_losses needs a SpeechLLM, got {type(model).__name__}")
    big_l = len(find_decoder_layers(model.decoder))
    if not (1 <= int(n) < big_l):
        raise CompanionError(f"block size n={n} out of range: use 1 <= n < {big_l} for this "
                             f"{big_l}-layer decoder")
    n = int(n)
    if data is None or len(data) == 0:
        raise CompanionError("ablation_losses got an empty feature set: pass utterances")
    if batch_size < 1:
        raise CompanionError(f"batch_size={batch_size}: use a positive integer")
    mean_loss = loss_function(model, data.subset(max_utterances), batch_size, precision)
    total = mean_loss.n_tokens
    with eval_mode(model):
        ref = mean_loss()
        rows = [(-1, -1, 0, ref, 0.0, total)]
        for l in range(0, big_l - n + 1):
            with skip_block(model.decoder, l, n):
                v = mean_loss()
            rows.append((l, l + n, n, v, v - ref, total))
    return pd.DataFrame(rows, columns=["start", "end", "block_size", "loss", "delta", "n_tokens"])


def rank_agreement(ablation_df: pd.DataFrame, result: RedundancyResult, n: int,
                   metric: str = "angular_last") -> float:
    """Spearman correlation over l between ``d(l, n)`` and the loss with ``[l, l+n)`` removed."""
    if not (1 <= n <= result.n_layers):
        raise CompanionError(f"block size n={n} out of range 1..{result.n_layers}")
    rows = ablation_df[(ablation_df["block_size"] == n) & (ablation_df["start"] >= 0)]
    if rows.empty:
        raise CompanionError(f"the ablation table has no rows for block size {n}: run "
                             f"ablation_losses(..., n={n})")
    surf = result._surface(metric)
    d = np.array([surf[int(l), n] for l in rows["start"]])
    loss = rows["loss"].to_numpy(dtype=float)
    ok = np.isfinite(d) & np.isfinite(loss)
    return spearman_rho(d[ok], loss[ok])


def ablation_summary(ablation_df: pd.DataFrame, result: RedundancyResult, n: int,
                     metric: str = "angular_last") -> dict[str, Any]:
    """How the block the score picks fares when it is actually removed.

    Returns ``spearman`` (:func:`rank_agreement`), ``n_blocks``, the score's block
    (``chosen_start``, its loss increase ``chosen_delta`` and ``chosen_rank``: 1 = the least
    harmful removal of all candidates) and the least harmful block by removal
    (``best_start``, ``best_delta``).
    """
    rho = rank_agreement(ablation_df, result, n, metric)
    rows = ablation_df[(ablation_df["block_size"] == n) & (ablation_df["start"] >= 0)]
    rows = rows.sort_values("delta", kind="stable").reset_index(drop=True)
    best = result.best_blocks(metric).set_index("block_size")
    if n not in best.index:
        raise CompanionError(f"the scores have no valid block of size {n}")
    chosen = int(best.loc[n, "start"])
    hit = rows.index[rows["start"] == chosen]
    if hit.empty:
        raise CompanionError(f"the ablation table has no row for block [{chosen}, {chosen + n})")
    return {"spearman": rho, "n_blocks": len(rows), "chosen_start": chosen,
            "chosen_delta": float(rows.loc[hit[0], "delta"]), "chosen_rank": int(hit[0]) + 1,
            "best_start": int(rows.loc[0, "start"]), "best_delta": float(rows.loc[0, "delta"])}
