"""What a cut costs, measured on every utterance: the teacher-forced loss of the pruned model
against the full one and against the model hearing nothing useful.

A WER curve of a pruned SpeechLLM is dominated by insertion loops (a decoder that repeats
itself scores above 100 %), so its points follow noise. The loss of the reference
transcript, teacher-forced, costs one forward pass per utterance and degrades smoothly.
:class:`LossMeter` builds the batches of a test set once and gives every utterance's summed
target-token loss (:class:`UtteranceLosses`) for the decoder as it is at the call (a cut
applied with :func:`lib.prune.surgery.skip_layers`). :func:`loss_point` turns the full
model's, a cut's and the floor's losses (the same utterances, each heard with another
utterance's audio) into the paired difference and the normalised cost

    (L_cut - L_full) / (L_floor - L_full)

(0: nothing lost; 1: as bad as hearing nothing useful), each with a bootstrap interval over
utterances, all three resampled together. :func:`loss_rule` is the pruning rule stated on
that curve: the largest cut whose normalised cost stays within a threshold, with the
interval of the chosen cut from the same resamples. Every bootstrap reuses the per-utterance
sums: no extra forward pass; :func:`cut_losses` keeps them in the model's run folder, so a
cut is measured once across chapters and runs. :func:`loss_curves` gives every strategy's
curve on a test set, :func:`compare_at_cuts` one strategy against another by paired
differences.

Stage: prune. Explained in chapter 3 (book/03_pruning.ipynb).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lib.build.autocast import bf16_autocast
from lib.build.components import eval_mode, find_decoder_layers
from lib.cache import cached, file_label
from lib.clock import stage, track
from lib.errors import CompanionError
from lib.prune.surgery import check_layers, skip_layers

if TYPE_CHECKING:
    from lib.build.speechllm import SpeechLLM
    from lib.data.features import FeatureSet

BOOTSTRAP_DRAWS = 1000
"""Resamples of every bootstrap over utterances the chapters show."""

MIN_UTTERANCES = 5
"""Fewer utterances than this give no bootstrap worth showing: a loss curve refuses them."""


@dataclass(frozen=True)
class UtteranceLosses:
    """Per utterance of one test set: the summed target-token loss (nats) and the number of
    target tokens, in the test set's order."""

    sums: np.ndarray
    tokens: np.ndarray

    @property
    def mean(self) -> float:
        """The mean loss per target token over the whole set (a ratio of sums)."""
        return float(self.sums.sum() / self.tokens.sum())

    def resampled(self, idx: np.ndarray) -> np.ndarray:
        """The mean per token of each resample (rows of utterance indices)."""
        return self.sums[idx].sum(1) / self.tokens[idx].sum(1)


class LossMeter:
    """Every utterance's teacher-forced loss on ``data``, for the decoder as it is when
    called; the batches are built once."""

    def __init__(self, model: "SpeechLLM", data: "FeatureSet", batch_size: int = 8,
                 precision: str = "fp32", min_utterances: int = MIN_UTTERANCES) -> None:
        """``min_utterances``: fewer are refused (a bootstrap needs a few; a strategy that
        only ranks removals, 1)."""
        if data is None or len(data) < max(min_utterances, 1):
            raise CompanionError(f"a loss curve needs at least {min_utterances} utterances for "
                                 f"its bootstrap, got {0 if data is None else len(data)}: "
                                 "score a larger test set")
        if batch_size < 1:
            raise CompanionError(f"batch_size={batch_size}: use a positive integer")
        self.model, self.precision, self.batch_size = model, precision, batch_size
        self.kept: list[list[torch.Tensor]] | None = None  # see keep_prefix
        self.kept_without: list[int] = []
        self.digest = data.digest()  # what the cached losses are keyed by (with the cut)
        # batches of similar lengths (little padding); the losses come back in data order
        frames = data.frames()
        self.order = sorted(range(len(data)), key=lambda i: -frames[i])
        self.batches = [data.batch(self.order[s:s + batch_size], target=model.task.target)
                        for s in range(0, len(data), batch_size)]
        self.tokens = np.zeros(len(data))
        for k, (_, _, texts) in enumerate(self.batches):
            idx = self.order[k * batch_size:(k + 1) * batch_size]
            self.tokens[idx] = [len(model.target_ids(t)) for t in texts]

    @torch.no_grad()
    def __call__(self) -> UtteranceLosses:
        amp = bf16_autocast(self.model.decoder, self.model.device.type,
                            enabled=self.precision == "bf16")
        sums = np.zeros(len(self.order))
        with eval_mode(self.model), amp:
            for k, (feats, lengths, texts) in enumerate(self.batches):
                idx = self.order[k * self.batch_size:(k + 1) * self.batch_size]
                sums[idx] = self.model.loss(feats, lengths, texts, reduction="sequence"
                                            ).float().cpu().numpy()
        return UtteranceLosses(sums, self.tokens)

    def without(self, layers: Sequence[int]) -> UtteranceLosses:
        """The losses with decoder ``layers`` removed (restored afterwards). After
        :meth:`keep_prefix`, the layers before the first one removed are not run again.

        Raises:
            CompanionError: a cut of no layer or of every layer, or not layer indices
                (:func:`lib.prune.surgery.check_layers`).
        """
        return losses_without(self, layers)

    def keep_prefix(self, without: Sequence[int] = ()) -> UtteranceLosses:
        """The full model's losses (``without``: those of the decoder with these layers
        removed), keeping every layer's input on every batch: from then on a cut starting at
        layer ``s`` runs only the layers after it, fed with the kept input of layer ``s``
        (what the layers before it computed, which the cut does not change). A cut that
        removes the ``without`` layers and more starts at the first of the others (SLEB's
        next step). The same losses for about half the work; memory: one hidden state per
        layer, position and utterance."""
        return keep_prefix_of(self, without)


def keep_prefix_of(meter: Any, without: Sequence[int] = ()) -> UtteranceLosses:
    """The losses of the decoder with ``without`` removed (none: the full model), keeping
    every running layer's input on every batch (``meter.kept``; ``meter.kept_without``
    says which layers were removed when it was kept)."""
    layers = find_decoder_layers(meter.model.decoder)
    base = check_layers(list(without), len(layers)) if len(without) else []
    kept: list[list[torch.Tensor]] = [[] for _ in layers]

    def capture(store: list[torch.Tensor]) -> Any:
        def hook(_: Any, args: tuple, kwargs: dict) -> None:
            store.append((args[0] if args else kwargs["hidden_states"]).detach())
        return hook

    hooks = [layer.register_forward_pre_hook(capture(kept[i]), with_kwargs=True)
             for i, layer in enumerate(layers)]
    meter.kept = None  # a failed pass leaves no half-kept prefix behind
    try:
        with skip_layers(meter.model.decoder, base) if base else contextlib.nullcontext():
            got = meter()
    finally:
        for h in hooks:
            h.remove()
    meter.kept, meter.kept_without = kept, base
    return got


def losses_without(meter: Any, layers: Sequence[int]) -> UtteranceLosses:
    """A cut measured by ``meter`` (:class:`LossMeter` or a meter with the same
    interface), reusing the kept prefix when there is one, the cut removes every layer it
    was kept without, and something runs after the first other layer removed."""
    modules = find_decoder_layers(meter.model.decoder)
    layers = check_layers(list(layers), len(modules))
    base = set(getattr(meter, "kept_without", None) or [])
    extra = [i for i in layers if i not in base]
    start = extra[0] if extra else 0
    after = [i for i in range(start + 1, len(modules)) if i not in set(layers)]
    if meter.kept is None or not base <= set(layers) or start == 0 or not after:
        with skip_layers(meter.model.decoder, layers):
            return meter()
    stored = iter(meter.kept[start])

    def feed(_: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        h = next(stored)
        if args:
            return (h, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": h}

    hook = modules[after[0]].register_forward_pre_hook(feed, with_kwargs=True)
    try:
        # every layer before the first that runs, and the removed ones after it
        with skip_layers(meter.model.decoder, sorted(set(range(after[0])) | set(layers))):
            return meter()
    finally:
        hook.remove()


@stage("losses")
def cut_losses(meter: LossMeter, layers: Sequence[int], out_dir: Path, name: str
               ) -> UtteranceLosses:
    """Every utterance's loss with ``layers`` removed (none: the full model), computed once
    and kept in ``<out_dir>/losses/`` (``out_dir``: the model's run folder), keyed by the
    test set's content, the layers, the precision and the batch size (padding changes bf16
    sums in their last bits); a later chapter, or a second run, reads it back.
    """
    layers = sorted(int(x) for x in layers)
    keyed = {"data": meter.digest, "layers": layers, "precision": meter.precision,
             "batch_size": meter.batch_size, "batches": "longest-first"}

    def compute(_: Path) -> dict[str, Any]:
        if layers and meter.kept is None:
            meter.keep_prefix()  # one full pass, then every cut skips its prefix
        got = meter.without(layers) if layers else meter()
        return {"sums": got.sums.tolist(), "tokens": got.tokens.tolist()}

    rec = cached(Path(out_dir) / "losses", file_label(name), keyed, compute)
    return UtteranceLosses(np.array(rec["sums"], dtype=float),
                           np.array(rec["tokens"], dtype=float))


def resample_rows(n: int, draws: int, seed: int) -> np.ndarray:
    """``draws`` rows of ``n`` utterance indices drawn with replacement (seeded)."""
    if draws < 100:
        raise CompanionError(f"draws={draws}: use at least 100 bootstrap resamples")
    return np.random.default_rng(seed).integers(0, n, size=(draws, n))


def check_same(*sets: UtteranceLosses) -> int:
    n = len(sets[0].sums)
    if any(len(s.sums) != n or not np.array_equal(s.tokens, sets[0].tokens) for s in sets):
        raise CompanionError("the losses compared are not of the same utterances: measure them "
                             "with one LossMeter")
    return n


def interval95(x: np.ndarray) -> list[float]:
    """The 2.5 and 97.5 percentiles (undefined resamples left out)."""
    lo, hi = np.nanpercentile(x, [2.5, 97.5])
    return [float(lo), float(hi)]


def normalised_cost(full: float, cut: Any, floor: float | Any) -> Any:
    """``(L_cut - L_full) / (L_floor - L_full)``; NaN where the floor is not above the full
    model (the model does not hear the audio: there is no range to lose)."""
    gap = np.asarray(floor, dtype=float) - full
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(gap > 0, (np.asarray(cut, dtype=float) - full) / gap, np.nan)


def paired_delta(a: UtteranceLosses, b: UtteranceLosses, draws: int = 1000, seed: int = 0
                 ) -> dict[str, Any]:
    """``b``'s mean loss per token minus ``a``'s on the same utterances, with the 95 %
    interval of the paired bootstrap (both resampled together, utterance by utterance)."""
    check_same(a, b)
    idx = resample_rows(len(a.sums), draws, seed)
    return {"delta": b.mean - a.mean, "delta_ci95": interval95(b.resampled(idx)
                                                               - a.resampled(idx))}


def loss_point(full: UtteranceLosses, cut: UtteranceLosses, floor: UtteranceLosses,
               draws: int = 1000, seed: int = 0) -> dict[str, Any]:
    """One point of a loss curve: the cut's mean loss per token, its paired difference to
    the full model and its normalised cost, each with a 95 % bootstrap interval (the three
    sets resampled together, utterance by utterance).

    The normalised cost divides by what the audio is worth (``L_floor - L_full``); it is
    defined only where that worth's own 95 % interval lies above zero. Where the interval
    reaches zero (a model that barely hears the audio), resamples divide by nothing or by
    almost nothing, the ratio has no bounded interval and its point can fall outside the
    percentiles of the rest (an untrained tiny model: 772 against [6.8, 545]); then the
    cost and its interval are NaN, as where the floor is not above the full model.
    """
    n = check_same(full, cut, floor)
    idx = resample_rows(n, draws, seed)
    f, c, fl = full.resampled(idx), cut.resampled(idx), floor.resampled(idx)
    heard = bool(np.percentile(fl - f, 2.5) > 0)
    nan = float("nan")
    return {"loss": cut.mean, "delta": cut.mean - full.mean, "delta_ci95": interval95(c - f),
            "normalised": (float(normalised_cost(full.mean, cut.mean, floor.mean)) if heard
                           else nan),
            "normalised_ci95": (interval95(normalised_cost(0.0, c - f, fl - f)) if heard
                                else [nan, nan]),
            "n_utterances": n}


def within_loss_rule(cost: Any, threshold: float) -> Any:
    """A normalised cost (a number or an array) within the rule's ``threshold``; NaN (no
    range to lose) is not within it. The comparison :func:`loss_rule` makes, and chapter 4
    asks of a healed cut."""
    return np.nan_to_num(np.asarray(cost, dtype=float), nan=np.inf) <= threshold + 1e-12


def loss_rule(full: UtteranceLosses, floor: UtteranceLosses,
              cuts: Mapping[int, UtteranceLosses], threshold: float, draws: int = 1000,
              seed: int = 0) -> dict[str, Any]:
    """The largest cut (layers removed) whose normalised cost is within ``threshold``, as
    measured and on each bootstrap resample of the utterances (every cut judged on its own,
    as the paper's rule is stated; none within it: 0).

    Returns:
        ``n_removed``, its ``n_removed_ci95`` (percentiles of the resamples' choices),
        ``threshold`` and ``floor_gap`` (L_floor - L_full, nats per token).

    Raises:
        CompanionError: a threshold outside (0, 1), no cut, or losses of other utterances.
    """
    if not 0 < float(threshold) < 1:
        raise CompanionError(f"threshold {threshold!r}: use a share of the range in (0, 1), "
                             "e.g. 0.1")
    if not cuts:
        raise CompanionError("no cut to judge: measure at least one")
    sizes = sorted(cuts)
    n = check_same(full, floor, *(cuts[k] for k in sizes))
    idx = resample_rows(n, draws, seed)
    f, fl = full.resampled(idx), floor.resampled(idx)
    cost = np.stack([normalised_cost(0.0, cuts[k].resampled(idx) - f, fl - f) for k in sizes])
    ok = np.where(within_loss_rule(cost, threshold), np.array(sizes)[:, None], 0)
    point = [k for k in sizes
             if within_loss_rule(normalised_cost(full.mean, cuts[k].mean, floor.mean), threshold)]
    lo, hi = np.percentile(ok.max(0), [2.5, 97.5])
    return {"n_removed": max(point, default=0), "n_removed_ci95": [int(lo), int(hi)],
            "threshold": float(threshold), "floor_gap": floor.mean - full.mean}


def loss_curves(meter: LossMeter, full: UtteranceLosses, floor: UtteranceLosses,
                plans: Mapping[str, Mapping[int, Sequence[int]]], out_dir: Path, name: str,
                draws: int = 1000, seed: int = 0) -> tuple[Any, dict[str, dict[int, Any]]]:
    """Every strategy's loss curve on one test set.

    Args:
        plans: strategy -> ``{n: layers}`` (:func:`lib.prune.strategies.strategy_layers`);
            two strategies that remove the same layers share one pass (:func:`cut_losses`).

    Returns:
        ``(points, losses)``: one row per strategy and cut (``strategy, test_set, n_removed,
        removed_fraction, layers, loss, delta, delta_low, delta_high, normalised,
        normalised_low, normalised_high``), and strategy -> ``{n: UtteranceLosses}`` for
        :func:`loss_rule` and paired comparisons.
    """
    import pandas as pd

    big_l = len(find_decoder_layers(meter.model.decoder))
    rows, losses = [], {}
    todo = [(s, n, layers) for s, plan in plans.items() for n, layers in sorted(plan.items())]
    for strategy, n, layers in track(todo, desc=f"{name}: cuts measured"):
        cut = cut_losses(meter, layers, out_dir, name)
        losses.setdefault(strategy, {})[n] = cut
        p = loss_point(full, cut, floor, draws, seed)
        rows.append({"strategy": strategy, "test_set": name, "n_removed": n,
                     "removed_fraction": n / big_l, "layers": list(layers),
                     "loss": p["loss"], "delta": p["delta"],
                     "delta_low": p["delta_ci95"][0], "delta_high": p["delta_ci95"][1],
                     "normalised": p["normalised"],
                     "normalised_low": p["normalised_ci95"][0],
                     "normalised_high": p["normalised_ci95"][1]})
    meter.kept = None  # the kept prefix is freed once the curve is measured
    return pd.DataFrame(rows), losses


def grid_steps(sizes: Sequence[int], low: int, high: int) -> int:
    """How many steps of the grid of cuts (``sizes`` and 0, no cut) lie between ``low`` and
    ``high``: the width of a chosen cut's interval in the units the curve can resolve."""
    grid = sorted({0, *(int(k) for k in sizes)})
    return sum(1 for k in grid if low < k <= high)


BEATS, LOSES, UNDECIDED, SAME = "lower loss", "higher loss", "no difference shown", \
    "the same layers"
"""The verdicts of :func:`compare_at_cuts`, per cut size."""


def compare_at_cuts(a: Mapping[int, UtteranceLosses], b: Mapping[int, UtteranceLosses],
                    layers_a: Mapping[int, Sequence[int]], layers_b: Mapping[int, Sequence[int]],
                    draws: int = 1000, seed: int = 0) -> list[dict[str, Any]]:
    """Strategy ``a`` against strategy ``b`` at every cut size both measured: the paired
    difference of their losses (``a`` minus ``b``) and a verdict for ``a``: ``lower loss``
    when the whole 95 % interval is below 0, ``higher loss`` when it is above, ``no
    difference shown`` when it holds 0, ``the same layers`` when both remove the same."""
    out = []
    for n in sorted(set(a) & set(b)):
        if sorted(layers_a[n]) == sorted(layers_b[n]):
            out.append({"n_removed": n, "delta": 0.0, "delta_ci95": [0.0, 0.0],
                        "verdict": SAME})
            continue
        d = paired_delta(b[n], a[n], draws, seed)
        lo, hi = d["delta_ci95"]
        out.append({"n_removed": n, **d,
                    "verdict": BEATS if hi < 0 else LOSES if lo > 0 else UNDECIDED})
    return out
