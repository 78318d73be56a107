"""What healing wins back, measured on every utterance's teacher-forced loss, and the
contrasts chapter 4 rules on.

The losses are chapter 3's (:class:`lib.prune.loss_curves.UtteranceLosses`: per utterance
the summed target-token loss, and its target tokens), so the same utterances are compared
with no extra forward pass:

- :func:`loss_recovery`: the share of the loss lost to pruning that healing won back,
  ``(L_pruned - L_healed) / (L_pruned - L_full)``, with its bootstrap interval;
- :func:`compare_seeded`: two healing variants, each healed with the same seeds, by the
  paired difference of their losses, its interval the wider of the utterance interval and
  the spread of the seeds (a difference a second seed can undo is not shown);
- :func:`repair_contrast`: what healing wins back on the pruned model minus what the same
  training gives the unpruned model (the control): does healing heal the cut, or just train
  the model?

The verdicts on these contrasts are :func:`lib.report.rules.seeded_verdict` and
:func:`lib.report.rules.repair_verdict`. Stage: heal. Explained in chapter 4
(book/04_healing.ipynb).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lib.errors import CompanionError
from lib.prune.loss_curves import (UtteranceLosses, check_same, interval95,
                                   resample_rows)


def seed_mean(healed: Sequence[UtteranceLosses]) -> UtteranceLosses:
    """The seeds' healings as one: every utterance's loss averaged over the seeds."""
    if not healed:
        raise CompanionError("no healing to average: heal with at least one seed")
    check_same(*healed)
    return UtteranceLosses(np.mean([h.sums for h in healed], axis=0), healed[0].tokens)


def loss_recovery(full: UtteranceLosses, pruned: UtteranceLosses, healed: UtteranceLosses,
                  draws: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The share of the loss pruning added that healing took away,
    ``(L_pruned - L_healed) / (L_pruned - L_full)`` (mean loss per token), with the 95 %
    interval of the bootstrap over utterances (the three resampled together). 1: back to
    the full model; 0: nothing won back; NaN where pruning cost nothing."""
    n = check_same(full, pruned, healed)
    idx = resample_rows(n, draws, seed)
    f, p, h = full.resampled(idx), pruned.resampled(idx), healed.resampled(idx)

    def share(f: Any, p: Any, h: Any) -> Any:
        lost = np.asarray(p - f, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(lost > 0, (p - h) / lost, np.nan)

    point = float(share(full.mean, pruned.mean, healed.mean))
    ci = interval95(share(f, p, h)) if np.isfinite(point) else [float("nan")] * 2
    return {"recovery": point, "recovery_ci95": ci, "loss": healed.mean,
            "lost": pruned.mean - full.mean}


def seeded_contrast(diffs: Sequence[np.ndarray], tokens: np.ndarray, draws: int = 1000,
                    seed: int = 0) -> dict[str, Any]:
    """A difference measured once per seed, as one estimate with an honest interval.

    Args:
        diffs: per seed, every utterance's difference of summed losses (nats), in one
            order of utterances; ``tokens``: their target tokens.

    Returns:
        ``delta``: the mean over seeds of each seed's difference per token;
        ``per_seed``; ``utterance_ci95``: the 95 % bootstrap interval over utterances of the
        seed-averaged difference; ``seed_range``: the lowest and highest seed's difference;
        ``ci95``: the wider of the two (``interval_from``: "utterances" or "seeds"), which a
        verdict reads.
    """
    if not diffs:
        raise CompanionError("no seed to compare: heal with at least one seed")
    d = np.stack([np.asarray(x, dtype=float) for x in diffs])
    tokens = np.asarray(tokens, dtype=float)
    if d.shape[1] != len(tokens):
        raise CompanionError("the differences and the tokens are not of the same utterances")
    per_seed = d.sum(1) / tokens.sum()
    idx = resample_rows(len(tokens), draws, seed)
    mean_d = d.mean(0)
    utt = interval95(mean_d[idx].sum(1) / tokens[idx].sum(1))
    rng = [float(per_seed.min()), float(per_seed.max())]
    seeds_wider = rng[1] - rng[0] > utt[1] - utt[0]
    return {"delta": float(per_seed.mean()), "per_seed": per_seed.tolist(),
            "utterance_ci95": utt, "seed_range": rng, "ci95": rng if seeds_wider else utt,
            "interval_from": "seeds" if seeds_wider else "utterances",
            "n_seeds": len(per_seed), "n_utterances": len(tokens)}


def compare_seeded(a: Sequence[UtteranceLosses], b: Sequence[UtteranceLosses],
                   draws: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Variant ``a``'s loss minus variant ``b``'s (nats per token; below zero: ``a`` lower),
    seed paired with seed (the same seed starts the same adapters and draws the same
    batches), by :func:`seeded_contrast`.

    Raises:
        CompanionError: not as many seeds on both sides, or other utterances.
    """
    if len(a) != len(b) or not a:
        raise CompanionError(f"compare healings of the same seeds: got {len(a)} and {len(b)}")
    check_same(*a, *b)
    return seeded_contrast([x.sums - y.sums for x, y in zip(a, b)], a[0].tokens, draws, seed)


def repair_contrast(full: UtteranceLosses, pruned: UtteranceLosses,
                    healed: Sequence[UtteranceLosses], control: Sequence[UtteranceLosses],
                    draws: int = 1000, seed: int = 0) -> dict[str, Any]:
    """What healing won back on the pruned model, ``L_pruned - L_healed``, minus what the same
    training gave the unpruned model, ``L_full - L_control`` (nats per token, seed paired
    with seed, :func:`seeded_contrast`). Above zero: healing repairs the cut beyond what it
    would teach any model; about zero: it mostly trains the model. ``gain_healed`` (with
    ``gain_healed_ci95``, by the same rule) and ``gain_control``: the two gains."""
    if len(healed) != len(control) or not healed:
        raise CompanionError(f"the control needs as many seeds as the healing: got "
                             f"{len(healed)} and {len(control)}")
    check_same(full, pruned, *healed, *control)
    out = seeded_contrast([(pruned.sums - h.sums) - (full.sums - c.sums)
                           for h, c in zip(healed, control)], full.tokens, draws, seed)
    gain = seeded_contrast([pruned.sums - h.sums for h in healed], full.tokens, draws, seed)
    out["gain_healed"], out["gain_healed_ci95"] = gain["delta"], gain["ci95"]
    out["gain_control"] = full.mean - seed_mean(control).mean
    return out
