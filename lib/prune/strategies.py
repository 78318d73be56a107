"""Which decoder layers to remove: the pruning strategies, and the paper's rule for how many.

Each strategy maps a cut size ``n`` (layers removed) to a sorted list of layer indices:

- ``angular`` (the paper, after Gromov et al. 2024): the block ``[l*, l*+n)`` with the
  smallest last-token angular distance ``d(l, n)`` on speech (chapter 2's scores);
- ``block-influence`` (ShortGPT): the ``n`` layers of lowest ``BI_l = 1 - cos(h_l, h_l+1)``,
  not necessarily contiguous;
- ``gromov`` (Gromov et al.'s heuristic): the deepest block that stops before the last layer,
  ``[L-1-n, L-1)``: the simple rule "remove the last n layers before the final one" that,
  healed, beats metric-chosen blocks in "Reassessing Layer Pruning" (ICLR 2026);
- ``sleb`` (SLEB, Song et al. 2024): remove the one layer whose removal raises the dev loss
  least, then repeat on the pruned model;
- ``random``: a seeded random contiguous block (the floor any score must beat);
- ``oracle``: the contiguous block whose removal raises the dev loss least, found by trying
  every block (the ceiling for a one-shot block choice).

Each strategy is one entry of :data:`STRATEGIES`. How many layers may go is the paper's rule,
:mod:`lib.prune.rule`. Stage: prune. Explained in chapter 3 (book/03_pruning.ipynb).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from lib.clock import stage, track
from lib.errors import CompanionError
from lib.prune.surgery import block_layers, check_layers

if TYPE_CHECKING:
    from lib.build.speechllm import SpeechLLM
    from lib.data.features import FeatureSet
    from lib.score.stats import RedundancyResult


def cut_sizes(fractions: Sequence[float], n_layers: int) -> list[int]:
    """Layers removed for each fraction: ``round(f * L)``, at least 1, at most ``L - 1``.

    Two fractions that round to the same size give one cut (the curve has no repeats).
    """
    out: list[int] = []
    for f in fractions:
        if not (0 < float(f) < 1):
            raise CompanionError(f"removed fraction {f!r} is outside (0, 1): give fractions "
                                 "of the decoder's layers such as 0.25")
        n = min(max(1, int(round(float(f) * n_layers))), n_layers - 1)
        if n not in out:
            out.append(n)
    return sorted(out)


def angular_layers(result: "RedundancyResult", n: int) -> list[int]:
    """The paper's choice: the block of ``n`` layers with the smallest ``d(l, n)``."""
    best = result.best_blocks("angular_last").set_index("block_size")
    if n not in best.index:
        raise CompanionError(f"the redundancy scores have no valid block of {n} layers: "
                             "score more utterances (n_score_utterances)")
    return block_layers(int(best.loc[n, "start"]), n, result.n_layers)


def block_influence_layers(result: "RedundancyResult", n: int) -> list[int]:
    """ShortGPT's choice: the ``n`` layers of lowest Block Influence (ties: lower index)."""
    bi = np.asarray(result.bi, dtype=float)
    if not np.isfinite(bi).all():
        raise CompanionError("the Block Influence scores have undefined layers: score more "
                             "utterances")
    order = np.argsort(bi, kind="stable")
    return check_layers(sorted(int(i) for i in order[:n]), result.n_layers)


def gromov_layers(n_layers: int, n: int) -> list[int]:
    """Gromov et al.'s heuristic: the deepest ``n`` layers before the last, ``[L-1-n, L-1)``."""
    return block_layers(n_layers - 1 - n, n, n_layers)


def random_layers(n_layers: int, n: int, seed: int) -> list[int]:
    """A contiguous block of ``n`` layers at a start drawn uniformly (seeded by ``seed, n``)."""
    rng = np.random.default_rng([int(seed), int(n), n_layers])
    return block_layers(int(rng.integers(0, n_layers - n + 1)), n, n_layers)


def oracle_layers(model: "SpeechLLM", data: "FeatureSet", n: int, batch_size: int = 8,
                  precision: str = "fp32") -> list[int]:
    """The contiguous block whose removal raises the dev loss least (every block tried, the
    layers before each block reused from the full pass: :func:`lib.prune.profiles.
    block_profile`; ties: the lower start)."""
    from lib.prune.loss_curves import LossMeter
    from lib.prune.profiles import block_profile

    profile = block_profile(LossMeter(model, data, batch_size, precision, min_utterances=1), n)
    best = int(np.argmin(profile.increase()))  # the first of equal minima: the lower start
    return block_layers(int(profile.starts[best]), n, len(model.decoder_layers))


def sleb_order(model: "SpeechLLM", data: "FeatureSet", max_removed: int,
               batch_size: int = 8, precision: str = "fp32") -> list[tuple[int, float]]:
    """SLEB's greedy removal: ``(layer, dev loss after removing it)`` in removal order.

    At each step every remaining layer is tried on top of those already removed and the one
    whose removal gives the lowest loss goes (ties: lower index). The first ``n`` entries are
    the strategy's cut of ``n`` layers, so one call serves every cut size. The layers before
    each removal are reused (:meth:`lib.prune.loss_curves.LossMeter.keep_prefix`), kept
    again after each step without the layers removed so far: a candidate runs only the
    layers after it.
    """
    big_l = len(model.decoder_layers)
    if not (1 <= max_removed < big_l):
        raise CompanionError(f"max_removed={max_removed}: use 1..{big_l - 1} for this "
                             f"{big_l}-layer decoder")
    from lib.prune.loss_curves import LossMeter

    meter = LossMeter(model, data, batch_size, precision, min_utterances=1)
    meter.keep_prefix()  # the layers before a removal are not run again
    removed: list[int] = []
    order: list[tuple[int, float]] = []
    for _ in track(range(max_removed), desc="sleb: layers removed one by one"):
        best: tuple[float, int] | None = None
        for cand in range(big_l):
            if cand in removed:
                continue
            v = meter.without(sorted(removed + [cand])).mean
            if best is None or v < best[0]:
                best = (v, cand)
        assert best is not None
        removed.append(best[1])
        order.append((best[1], best[0]))
        if len(removed) < max_removed:
            meter.keep_prefix(without=sorted(removed))  # the next step starts from here
    return order


@dataclass(frozen=True)
class PlanInputs:
    """What a strategy may read to choose its layers (each reads only what it needs)."""

    n_layers: int
    speech_scores: "RedundancyResult | None" = None  # chapter 2's scores on speech
    model: "SpeechLLM | None" = None  # the SpeechLLM, for the loss-driven strategies
    dev: "FeatureSet | None" = None  # their calibration utterances
    batch_size: int = 8
    seed: int = 0  # the random strategy's
    precision: str = "fp32"  # bf16: the dev losses under autocast


def _by_score(pick: Callable[["RedundancyResult", int], list[int]]) -> Callable[..., Any]:
    def choose(x: PlanInputs, sizes: Sequence[int]) -> dict[int, list[int]]:
        return {n: pick(x.speech_scores, n) for n in sizes}
    return choose


def _sleb(x: PlanInputs, sizes: Sequence[int]) -> dict[int, list[int]]:
    order = [layer for layer, _ in sleb_order(x.model, x.dev, max(sizes), x.batch_size,
                                              x.precision)]
    return {n: sorted(order[:n]) for n in sizes}


@dataclass(frozen=True)
class Strategy:
    """One pruning strategy: how it chooses layers for every cut size, what it reads."""

    choose: Callable[[PlanInputs, Sequence[int]], dict[int, list[int]]]
    contiguous: bool  # removes one block of neighbouring layers
    needs: str  # "scores" (chapter 2's), "model" (and a dev subset) or "nothing"
    after: str  # whose method it is


PAPER_STRATEGY = "angular"
"""The paper's strategy: the one whose cut chapter 3 confirms by WER and chapter 4 heals."""

STRATEGIES: dict[str, Strategy] = {
    "angular": Strategy(_by_score(angular_layers), True, "scores", "the paper; Gromov et al."),
    "block-influence": Strategy(_by_score(block_influence_layers), False, "scores",
                                "ShortGPT (Men et al. 2024)"),
    "gromov": Strategy(lambda x, sizes: {n: gromov_layers(x.n_layers, n) for n in sizes},
                       True, "nothing", "Gromov et al. 2024, the heuristic"),
    "sleb": Strategy(_sleb, False, "model", "SLEB (Song et al. 2024)"),
    "random": Strategy(lambda x, sizes: {n: random_layers(x.n_layers, n, x.seed)
                                         for n in sizes}, True, "nothing", "the floor"),
    "oracle": Strategy(lambda x, sizes: {n: oracle_layers(x.model, x.dev, n, x.batch_size,
                                                          x.precision) for n in sizes},
                       True, "model", "the ceiling of a one-shot block choice"),
}
"""The pruning strategies, in the order the chapters show them: adding one is one entry."""


def check_strategies(names: Sequence[str]) -> tuple[str, ...]:
    """The strategy names, validated: one line naming an unknown one."""
    bad = [s for s in names if s not in STRATEGIES]
    if bad:
        raise CompanionError(f"unknown pruning strategy {bad[0]!r}: use any of "
                             f"{', '.join(STRATEGIES)}")
    if not names:
        raise CompanionError(f"no pruning strategy given: use any of {', '.join(STRATEGIES)}")
    return tuple(dict.fromkeys(names))


@stage("strategies")
def strategy_layers(strategy: str, sizes: Sequence[int], n_layers: int, *,
                    speech_scores: "RedundancyResult | None" = None,
                    model: "SpeechLLM | None" = None, dev: "FeatureSet | None" = None,
                    batch_size: int = 8, seed: int = 0,
                    precision: str = "fp32") -> dict[int, list[int]]:
    """``{n: layers}`` for every cut size, by one strategy of :data:`STRATEGIES`.

    Args:
        speech_scores: chapter 2's scores on speech (``angular``, ``block-influence``).
        model, dev: the SpeechLLM and a dev subset (``sleb``, ``oracle``).
        seed: the ``random`` strategy's seed.
        precision: ``bf16`` runs the dev losses of ``sleb`` and ``oracle`` under autocast.
    """
    check_strategies([strategy])
    spec = STRATEGIES[strategy]
    if spec.needs == "scores":
        if speech_scores is None:
            raise CompanionError(f"strategy {strategy!r} needs redundancy scores on speech "
                                 "(chapter 2's lib.score.redundancy.score_speech)")
        if speech_scores.n_layers != n_layers:
            raise CompanionError(f"the scores are of a {speech_scores.n_layers}-layer decoder, "
                                 f"the model has {n_layers}: score this model")
    if spec.needs == "model" and (model is None or dev is None):
        raise CompanionError(f"strategy {strategy!r} needs the model and a dev subset")
    return spec.choose(PlanInputs(n_layers, speech_scores, model, dev, batch_size, seed,
                                  precision), sizes)
