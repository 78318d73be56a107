"""The functional profile of a decoder: what removing each contiguous block of layers costs,
on every utterance, and whether two inputs' profiles agree beyond what any input gives.

Distance surfaces say where hidden states change little; a profile says what removing a
block actually costs. :func:`block_profile` removes every block ``[l, l+n)`` in turn and
keeps every utterance's loss (:class:`lib.prune.loss_curves.LossMeter`), so split halves and
bootstrap resamples cost no forward pass. :func:`profile_agreement` compares two profiles
(Spearman's rho over the blocks, and the overlap of their ``k`` cheapest blocks);
:func:`split_half_rho` is the ceiling a profile reaches against itself, and
:func:`specificity` places an agreement between a null's and that ceiling,

    (rho - rho_null) / (rho_ceiling - rho_null),

with a bootstrap interval over utterances: 0 means any input (the null) agrees as much, 1
as much as the input agrees with itself. Stage: prune. Explained in chapter 2
(book/02_where_redundancy_lies.ipynb).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lib.build.autocast import bf16_autocast
from lib.build.components import eval_mode, find_decoder_layers
from lib.clock import track
from lib.errors import CompanionError
from lib.prune.loss_curves import (MIN_UTTERANCES, LossMeter, UtteranceLosses, interval95,
                                   keep_prefix_of, losses_without, resample_rows)
from lib.prune.surgery import block_layers
from lib.score.agreement import spearman_rho

if TYPE_CHECKING:
    from lib.build.speechllm import SpeechLLM


class TextLossMeter:
    """Every transcript's language-model loss through the SpeechLLM's decoder alone (no
    prompt, no audio): the summed loss of `` text`` and eos after the tokenizer's bos, for
    the decoder as it is when called. The same interface as
    :class:`lib.prune.loss_curves.LossMeter`, so a profile is measured on text as on
    speech; run it inside :func:`lib.build.adapters.pretrained_decoder` for the pretrained
    LLM."""

    def __init__(self, model: "SpeechLLM", texts: Sequence[str], batch_size: int = 8,
                 precision: str = "fp32") -> None:
        if len(texts) < MIN_UTTERANCES:
            raise CompanionError(f"a profile needs at least {MIN_UTTERANCES} transcripts for "
                                 f"its bootstrap, got {len(texts)}: score more")
        if batch_size < 1:
            raise CompanionError(f"batch_size={batch_size}: use a positive integer")
        self.model, self.precision, self.batch_size = model, precision, batch_size
        start = model.tokenizer.bos_token_id
        start = model.eos_id if start is None else start
        self.ids = [[start] + model.target_ids(t) for t in texts]
        self.kept: list[list[torch.Tensor]] | None = None  # see keep_prefix
        self.kept_without: list[int] = []
        self.tokens = np.array([len(x) - 1 for x in self.ids], dtype=float)

    @torch.no_grad()
    def __call__(self) -> UtteranceLosses:
        dev = self.model.device
        amp = bf16_autocast(self.model.decoder, dev.type, enabled=self.precision == "bf16")
        sums = []
        with eval_mode(self.model), amp:
            for s in range(0, len(self.ids), self.batch_size):
                part = self.ids[s:s + self.batch_size]
                width = max(len(x) for x in part)
                ids = torch.full((len(part), width), self.model.pad_id, dtype=torch.long)
                mask = torch.zeros((len(part), width), dtype=torch.long)
                for i, x in enumerate(part):
                    ids[i, :len(x)], mask[i, :len(x)] = torch.tensor(x), 1
                ids, mask = ids.to(dev), mask.to(dev)
                logits = self.model.decoder(input_ids=ids, attention_mask=mask,
                                            use_cache=False).logits[:, :-1].float()
                per = torch.nn.functional.cross_entropy(
                    logits.transpose(1, 2), ids[:, 1:], reduction="none") * mask[:, 1:]
                sums.append(per.sum(1).cpu().numpy())
        return UtteranceLosses(np.concatenate(sums).astype(float), self.tokens)

    def without(self, layers: Sequence[int]) -> UtteranceLosses:
        """As :meth:`lib.prune.loss_curves.LossMeter.without`."""
        return losses_without(self, layers)

    def keep_prefix(self, without: Sequence[int] = ()) -> UtteranceLosses:
        """As :meth:`lib.prune.loss_curves.LossMeter.keep_prefix`."""
        return keep_prefix_of(self, without)


def random_weights(model: "SpeechLLM", seed: int = 0) -> "SpeechLLM":
    """A copy of ``model`` whose decoder has the same configuration and seeded random
    weights (every matrix drawn from N(0, initializer_range), as the architecture
    initialises them; norms and biases kept): the architecture null of a profile, a
    decoder that learned nothing. The projector is the trained one."""
    other = copy.deepcopy(model)
    std = float(getattr(other.decoder.config, "initializer_range", 0.02))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(other.decoder.named_parameters()):
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return other


@dataclass(frozen=True)
class BlockProfile:
    """Every block ``[l, l+n)`` of one decoder removed in turn, on one set of utterances:
    the full model's losses and each block's (``sums[b, u]`` nats, ``tokens[u]``)."""

    n: int
    starts: np.ndarray  # [B]
    full: UtteranceLosses
    sums: np.ndarray  # [B, U]

    def increase(self, idx: np.ndarray | None = None) -> np.ndarray:
        """The loss increase per token of each block's removal (``[B]``), or per resample
        for rows of utterance indices ``idx`` (``[draws, B]``)."""
        t, f = self.full.tokens, self.full.sums
        if idx is None:
            return (self.sums.sum(1) - f.sum()) / t.sum()
        return (self.sums[:, idx].sum(-1) - f[idx].sum(-1)).T / t[idx].sum(-1)[:, None]

    def frame(self) -> Any:
        """The profile as a table (``start, end, block_size, loss, delta, n_tokens``; the full
        model the row with start -1), so its
        summary (:func:`lib.prune.losses.ablation_summary`) reads it."""
        import pandas as pd

        tokens = float(self.full.tokens.sum())
        full = self.full.mean
        rows = [(-1, -1, 0, full, 0.0, tokens)] + [
            (int(s), int(s) + self.n, self.n, float(self.sums[b].sum() / tokens),
             float(self.sums[b].sum() / tokens - full), tokens)
            for b, s in enumerate(self.starts)]
        return pd.DataFrame(rows, columns=["start", "end", "block_size", "loss", "delta",
                                           "n_tokens"])


def block_profile(meter: LossMeter | TextLossMeter, n: int, reuse_prefix: bool = True,
                  desc: str = "blocks removed") -> BlockProfile:
    """Remove every block of ``n`` layers in turn and keep every utterance's loss.

    With ``reuse_prefix`` the layers before a block are not run again
    (:meth:`lib.prune.loss_curves.LossMeter.keep_prefix`): about half the work, the same
    losses (a test checks them against the plain removal).

    Raises:
        CompanionError: a block size outside ``1 .. L - 1``.
    """
    big_l = len(find_decoder_layers(meter.model.decoder))
    if not 1 <= int(n) < big_l:
        raise CompanionError(f"block size n={n} out of range: use 1 <= n < {big_l} for this "
                             f"{big_l}-layer decoder")
    n = int(n)
    starts = np.arange(big_l - n + 1)
    full = meter.keep_prefix() if reuse_prefix else meter()
    try:
        blocks = [meter.without(block_layers(int(s), n, big_l)).sums
                  for s in track(starts, desc=desc)]
    finally:
        meter.kept = None
    return BlockProfile(n, starts, full, np.stack(blocks))


def top_k_overlap(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """The share of the ``k`` cheapest blocks of ``a`` that are among ``b``'s ``k``
    cheapest (ties broken by the earlier block)."""
    if not 1 <= k <= len(a) or len(a) != len(b):
        raise CompanionError(f"top-k overlap of k={k} over {len(a)} and {len(b)} blocks: use "
                             "profiles of the same blocks and 1 <= k <= their number")
    first = set(np.argsort(a, kind="stable")[:k].tolist())
    second = set(np.argsort(b, kind="stable")[:k].tolist())
    return len(first & second) / k


def profile_agreement(a: BlockProfile, b: BlockProfile, k: int = 3) -> dict[str, float]:
    """Spearman's rho of two profiles' increases over the same blocks, and the overlap of
    their ``k`` cheapest blocks.

    Raises:
        CompanionError: profiles of different blocks.
    """
    if a.n != b.n or not np.array_equal(a.starts, b.starts):
        raise CompanionError(f"profiles of blocks of {a.n} and {b.n} layers: compare profiles "
                             "of the same decoder and block size")
    x, y = a.increase(), b.increase()
    return {"rho": spearman_rho(x, y), "top_k_overlap": top_k_overlap(x, y, min(k, len(x))),
            "k": min(k, len(x))}


def _halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    return order[: n // 2], order[n // 2:]


def split_half_rho(p: BlockProfile, seed: int = 0) -> float:
    """The ceiling: rho between the profiles of two random halves of the utterances."""
    if len(p.full.sums) < 4:
        raise CompanionError(f"a split half needs at least 4 utterances, got "
                             f"{len(p.full.sums)}: score more")
    h1, h2 = _halves(len(p.full.sums), seed)
    return spearman_rho(p.increase(h1[None])[0], p.increase(h2[None])[0])


def specificity_index(rho: Any, rho_null: Any, rho_ceiling: Any) -> Any:
    """``(rho - rho_null) / (rho_ceiling - rho_null)``; 0 where the null agrees as much as
    the ceiling (no agreement is left that the inputs could own), NaN where a rho is."""
    rho, null, ceil = (np.asarray(x, dtype=float) for x in (rho, rho_null, rho_ceiling))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ceil > null, (rho - null) / (ceil - null),
                        np.where(np.isnan(rho + null + ceil), np.nan, 0.0))


def specificity(a: BlockProfile, b: BlockProfile, null: BlockProfile, draws: int = 1000,
                seed: int = 0) -> dict[str, Any]:
    """How specific ``a``'s agreement with ``b`` is: rho(a, b) placed between rho(a, null)
    and ``a``'s split-half ceiling, with a bootstrap interval (the utterances of the three
    profiles resampled together: they must be the same utterances).

    Raises:
        CompanionError: profiles of other blocks or other utterances.
    """
    for other in (b, null):
        profile_agreement(a, other)  # the same blocks, or one line
        if not np.array_equal(other.full.tokens, a.full.tokens):
            raise CompanionError("the profiles compared are not of the same utterances: "
                                 "score them on one set")
    rho, rho_null = profile_agreement(a, b)["rho"], profile_agreement(a, null)["rho"]
    ceiling = split_half_rho(a, seed)
    idx = resample_rows(len(a.full.sums), draws, seed)
    xa, xb, xn = a.increase(idx), b.increase(idx), null.increase(idx)
    h1, h2 = _halves(idx.shape[1], seed)
    xa1, xa2 = a.increase(idx[:, h1]), a.increase(idx[:, h2])
    boot = np.array([specificity_index(spearman_rho(xa[i], xb[i]), spearman_rho(xa[i], xn[i]),
                                       spearman_rho(xa1[i], xa2[i])) for i in range(len(idx))])
    return {"rho": rho, "rho_null": rho_null, "rho_ceiling": ceiling,
            "index": float(specificity_index(rho, rho_null, ceiling)),
            "index_ci95": interval95(boot)}


def _cross(a: BlockProfile, b: BlockProfile, na: BlockProfile, nb: BlockProfile,
           ia: np.ndarray, ib: np.ndarray) -> tuple[float, float, float]:
    """Across, ceiling and null rho from halves of the rows ``ia`` (of ``a``'s utterances)
    and ``ib`` (of ``b``'s), both split by the same rule: every rho is between two disjoint
    halves, so each uses as many utterances as the others (and, for two tasks on the same
    verses in the same order, ``a``'s half and ``b``'s other half share no verse)."""
    a1, a2 = (ia[h] for h in _halves(len(ia), 0))
    b1, b2 = (ib[h] for h in _halves(len(ib), 0))
    x = {k: p.increase(i[None])[0] for k, p, i in (
        ("a1", a, a1), ("a2", a, a2), ("b1", b, b1), ("b2", b, b2), ("na2", na, a2),
        ("nb2", nb, b2))}
    across = (spearman_rho(x["a1"], x["b2"]) + spearman_rho(x["a2"], x["b1"])) / 2
    ceiling = (spearman_rho(x["a1"], x["a2"]) + spearman_rho(x["b1"], x["b2"])) / 2
    null = (spearman_rho(x["a1"], x["na2"]) + spearman_rho(x["b1"], x["nb2"])) / 2
    return across, ceiling, null


def cross_specificity(a: BlockProfile, b: BlockProfile, null_a: BlockProfile,
                      null_b: BlockProfile, draws: int = 1000, seed: int = 0
                      ) -> dict[str, Any]:
    """How alike the profiles of two tasks are, on utterances (or targets) of their own.

    Every rho is between disjoint halves, so the comparison and its two references use as
    many utterances each: ``rho`` (task ``a``'s half against ``b``'s, both ways), the ceiling
    (each task's halves against each other) and the null (each task's half against the other
    half of its null input: the same utterances with noise for audio). The index
    (:func:`specificity_index`) is 1 when the two tasks agree as much as each agrees with
    itself, 0 when no more than with a null input; its 95 % interval resamples each task's
    utterances (and its null's with them; two tasks with as many items are taken to be on
    the same verses in the same order, as chapter 5's test sets are, and are resampled
    together). ``rho_full`` and ``top_k_overlap`` describe the whole profiles.

    Raises:
        CompanionError: profiles of other blocks, a null not of its task's utterances, or
            fewer than 4 utterances.
    """
    for task, null in ((a, null_a), (b, null_b)):
        profile_agreement(a, task)
        profile_agreement(a, null)
        if not np.array_equal(null.full.tokens, task.full.tokens):
            raise CompanionError("a task's null profile is not of the task's utterances: "
                                 "score the null on the same set")
        if len(task.full.sums) < 4:
            raise CompanionError(f"a split half needs at least 4 utterances, got "
                                 f"{len(task.full.sums)}: score more")
    rng = np.random.default_rng(seed)
    ua, ub = len(a.full.sums), len(b.full.sums)
    rho, ceiling, null_rho = _cross(a, b, null_a, null_b, np.arange(ua), np.arange(ub))
    boot = []
    for _ in range(draws):
        ia = rng.integers(0, ua, ua)
        ib = ia if ub == ua else rng.integers(0, ub, ub)  # item i of both: one verse
        x = _cross(a, b, null_a, null_b, ia, ib)
        boot.append(float(specificity_index(x[0], x[2], x[1])))
    whole = profile_agreement(a, b)
    return {"rho": rho, "rho_ceiling": ceiling, "rho_null": null_rho,
            "rho_full": whole["rho"], "top_k_overlap": whole["top_k_overlap"], "k": whole["k"],
            "index": float(specificity_index(rho, null_rho, ceiling)),
            "index_ci95": interval95(np.array(boot))}


PROFILE_VERSION = 1
"""Part of every kept profile's key: bump it when measuring a profile changes."""


def kept_profile(meter: LossMeter | TextLossMeter, n: int, folder: Any, name: str,
                 keyed: dict[str, Any], desc: str = "blocks removed") -> BlockProfile:
    """:func:`block_profile`, kept as ``folder/profile-<name>-<key>.json`` and read back the
    next time (chapters 5 and 6 remove the same blocks of the same model on the same items).

    Args:
        folder: the folder of the weights measured (a training run's).
        keyed: everything else that changes the losses: the items, the prompt, the
            precision.
    """
    from pathlib import Path

    from lib.cache import cached, file_label

    def compute(_: Any) -> dict[str, Any]:
        p = block_profile(meter, n, desc=desc)
        return {"n": p.n, "starts": p.starts.tolist(), "full_sums": p.full.sums.tolist(),
                "tokens": p.full.tokens.tolist(), "sums": p.sums.tolist()}

    rec = cached(Path(folder) / "profiles", file_label(name),
                 {**keyed, "n": int(n), "version": PROFILE_VERSION}, compute, what=desc)
    return BlockProfile(int(rec["n"]), np.array(rec["starts"]),
                        UtteranceLosses(np.array(rec["full_sums"], dtype=float),
                                        np.array(rec["tokens"], dtype=float)),
                        np.array(rec["sums"], dtype=float))
