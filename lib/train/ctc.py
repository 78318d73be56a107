"""The CTC warm start: teach the projector the decoder's word pieces before the decoder reads it.

Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

A freshly initialised projector emits vectors the decoder has never seen, and SLAM-style
training then sits for a long time on a plateau at the language model's own text loss
(the decoder ignores the audio). On two CPU cores that plateau is longer than the budget.
The warm start trains the **same projector** first, with a CTC loss whose output layer is
the decoder's own input-embedding table:

.. math::

    \\operatorname{logits}_t = [\\, z_t^\\top b ;\\; z_t^\\top e_1 ;\\; \\dots ;\\; z_t^\\top e_V \\,]

where :math:`z_t` is the projector output at position ``t``, :math:`e_v` the decoder's
embedding of word piece ``v`` (only the pieces the training transcripts use) and
:math:`b` one learned "blank" vector. No decoder forward is needed, so an epoch costs
seconds. Afterwards the projector emits, at each 10 Hz position, a vector pointing at the
embedding of the word piece spoken there (or at the blank): the decoder reads audio
positions that already look like its own tokens. The CTC head alone is also a small ASR
system (greedy CTC decoding, no language model): chapter 1 reports it as a baseline.

Nothing is added to the SpeechLLM: the norm matching that follows is folded into the
projector's last layer, and the head is kept beside the run only for the baseline and for
joint CTC / attention decoding (:class:`lib.evaluate.decode.Rescoring`), which score with
:func:`lib.build.ctc_head.ctc_greedy` and :func:`lib.build.ctc_head.ctc_logprob`; the head
itself is the model's (:mod:`lib.build.ctc_head`).

Stage: training (the first half of the ``ctc-warmstart`` recipe; :mod:`lib.train` does the
rest).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from lib.cache import say_reused
from lib.clock import stage, track
from lib.config.sections import ModelConfig, TrainConfig
from lib.device import resolve_precision
from lib.errors import CompanionError
from lib.paths import cache_subdir, slug
from lib.ranks import agree, is_main, rank_world
from lib.fileio import (CorruptFile, config_hash, load_cached_json, load_tensors,
                         save_cached_json, save_tensors, set_aside)
from lib.data.features import FeatureSet
from lib.build.ctc_head import CTCHead, build_ctc_head, ctc_nll, ctc_targets
from lib.build.speechllm import SpeechLLM
from lib.train.loop import length_grouped_permutation

# Part of every training run's cache key: bump it when the warm start changes its result,
# so a run trained by an older warm start is not reused.
WARMSTART_VERSION = 2


def ctc_loss(model: SpeechLLM, head: CTCHead, feats: torch.Tensor, lengths: torch.Tensor,
             texts: Sequence[str], offset: int = 0) -> torch.Tensor:
    """Mean CTC loss per utterance of a batch (PyTorch's ``ctc_loss``, blank 0).

    Args:
        offset: drop the first ``offset`` encoder frames before stacking (augmentation:
            the projector sees each utterance stacked in another phase).
    """
    if offset:
        feats, lengths = feats[:, offset:], (lengths - offset).clamp(min=1)
    return ctc_nll(model, head, feats, lengths, ctc_targets(model, head, texts), "mean", True)


@torch.no_grad()
def match_embedding_norm(model: SpeechLLM, head: CTCHead, data: FeatureSet,
                         n: int = 64) -> float:
    """Scale the projector so its outputs have the norm of the decoder's token embeddings.

    After CTC training the projector's outputs are an order of magnitude longer than the
    embeddings the decoder reads (CTC only cares about their direction). The factor is
    folded into the projector's last linear layer, so the model is unchanged in form.
    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Returns:
        The factor applied (mean embedding norm / mean projector-output norm).
    """
    feats, lengths, _ = data.batch(list(range(min(n, len(data)))))
    z, z_len = model.projector(feats.to(model.device), lengths.to(model.device))
    valid = torch.arange(z.shape[1], device=z.device)[None] < z_len[:, None]
    target = head.embeddings.norm(dim=-1).mean() * head.embed_scale  # what the decoder reads
    factor = float(target / z[valid].norm(dim=-1).mean())
    last = model.projector.net[-1]
    last.weight.mul_(factor)
    last.bias.mul_(factor)
    head.input_scale.mul_(factor)
    return factor


def _check_feasible(model: SpeechLLM, head: CTCHead, data: FeatureSet, desc: str) -> None:
    """CTC needs an audio position per word piece (two for a repeated one): say how many
    utterances cannot be aligned, and refuse when none can."""
    stack = model.projector.stack
    bad = 0
    for text, frames in zip((u.text for u in data.utterances), data.frames()):
        target = ctc_targets(model, head, [text])[0]
        need = len(target) + sum(a == b for a, b in zip(target, target[1:]))
        bad += need > -(-frames // stack)
    if bad == len(data):
        raise CompanionError(
            f"{desc}: no training utterance has as many audio positions as word pieces at "
            f"projector_stack={stack}: lower projector_stack or use recipe plain")
    if bad:
        print(f"{desc}: {bad} of {len(data)} utterances have more word pieces than audio "
              f"positions (projector_stack={stack}); the CTC loss skips them")


@dataclass
class WarmStart:
    """What the CTC warm start produced (or reused).

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).
    """

    head: CTCHead
    log: list[dict[str, Any]]  # step, loss, elapsed_s
    norm_factor: float
    cached: bool
    wall_time_s: float


@stage("warm start")
def ctc_warm_start(model: SpeechLLM, train_set: FeatureSet, cfg: TrainConfig,
                   out_dir: Path, desc: str = "CTC warm start") -> WarmStart:
    """Train ``model.projector`` with the CTC head, then match the embedding norm.

    The projector and head are saved to ``out_dir`` (``projector.safetensors``,
    ``ctc_head.safetensors``, ``warmstart.json``) and reused when present: the stage takes
    a few minutes, so it restarts from its beginning when killed. Explained in chapter 1.

    ``cfg`` (chapter 1's training section) gives what the warm start reads:
    ``ctc_epochs`` (passes over ``train_set``, fractions allowed), ``ctc_learning_rate``
    (peak AdamW rate; one-cycle schedule: 10 % warm-up, cosine decay), ``ctc_batch_size``
    (utterances per CTC step), ``seed``, ``precision`` (bf16 runs the projector and the
    head's matmuls under autocast, the log-softmax and the CTC loss stay float32: 2x faster
    on a CPU with native bf16, as ``make bench`` measures) and ``length_grouping``
    (batches from pools of this many batches sorted by length,
    :func:`lib.train.loop.length_grouped_permutation`; 0 or 1: plain random batches).
    """
    out_dir = Path(out_dir)
    head = build_ctc_head(model, [u.text for u in train_set.utterances])
    reused = _reuse_warm_start(model, head, out_dir, desc)
    if agree(reused is not None):  # several processes: all read it, or all train it
        return reused or _reuse_warm_start(model, head, out_dir, desc)
    _check_feasible(model, head, train_set, desc)
    precision = resolve_precision(cfg.precision, str(model.device))
    t0 = time.perf_counter()
    log = _train_projector(model, head, train_set, cfg, precision, desc)
    factor = match_embedding_norm(model, head, train_set)
    wall = time.perf_counter() - t0
    rec = {"steps": len(log), "epochs": cfg.ctc_epochs, "learning_rate": cfg.ctc_learning_rate,
           "precision": precision, "length_grouping": cfg.length_grouping,
           "batch_size": cfg.ctc_batch_size, "norm_factor": factor,
           "wall_time_s": round(wall, 2), "token_ids": head.token_ids, "log": log,
           "processes": rank_world()[1]}
    if is_main():  # under several processes each trains the same one; the main one writes
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, state in (("projector", model.projector.state_dict()),
                            ("ctc_head", head.state_dict())):
            save_tensors(out_dir / f"{name}.safetensors",
                         {k: v.detach().cpu().contiguous() for k, v in state.items()})
        save_cached_json(out_dir / "warmstart.json", rec)  # last: the others are whole
    return WarmStart(head, log, factor, False, wall)


def _reuse_warm_start(model: SpeechLLM, head: CTCHead, out_dir: Path,
                      desc: str) -> WarmStart | None:
    """The finished warm start in ``out_dir`` loaded into ``model`` and ``head``, or None
    (none there, or one made for other word pieces)."""
    done = out_dir / "warmstart.json"
    rec = load_cached_json(done)  # a damaged record is set aside: the stage runs again
    if rec is None or rec.get("token_ids") != head.token_ids:
        return None
    try:
        proj = load_tensors(out_dir / "projector.safetensors", finite=True)
        blank = load_tensors(out_dir / "ctc_head.safetensors", finite=True)
    except CorruptFile as err:
        set_aside(done, f"{desc}: the cached warm start is damaged ({err})")
        return None
    model.projector.load_state_dict({k: v.to(model.device) for k, v in proj.items()})
    head.load_state_dict({k: v.to(model.device) for k, v in blank.items()})
    model.projector.eval()  # as a warm start just trained leaves it
    say_reused(desc, f"{out_dir.parent.name}/{out_dir.name}")  # the run's folder is its key
    return WarmStart(head, rec["log"], rec["norm_factor"], True, rec["wall_time_s"])


def _train_projector(model: SpeechLLM, head: CTCHead, train_set: FeatureSet,
                     cfg: TrainConfig, precision: str, desc: str) -> list[dict[str, Any]]:
    """The warm start's optimisation: AdamW on the projector and the blank, one-cycle rate,
    length-grouped batches at a random frame offset; its log (step, loss, elapsed_s).

    Under several processes working together (:func:`lib.ranks.together`) every process
    draws the same batches and takes its share of each; the gradients are summed over the
    processes (each share's mean loss weighted by its size: the batch's mean, as one process
    computes it), so every process makes the same step."""
    batch_size, learning_rate = cfg.ctc_batch_size, cfg.ctc_learning_rate
    steps = max(1, int(round(cfg.ctc_epochs * len(train_set) / batch_size)))
    params = list(model.projector.parameters()) + [head.blank]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(optimizer, learning_rate, total_steps=steps,
                                                pct_start=0.1)
    gen = torch.Generator().manual_seed(cfg.seed)
    rank, world = rank_world()
    if batch_size < world:
        raise CompanionError(f"{desc}: ctc_batch_size={batch_size} is smaller than the "
                             f"{world} processes sharing each batch: raise it")
    frames = train_set.frames()
    stack = model.projector.stack
    queue: list[int] = []
    log: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    model.projector.train()
    bar = track(range(steps), desc=desc)
    for step in bar:
        if len(queue) < batch_size:
            queue += length_grouped_permutation(frames, batch_size, cfg.length_grouping, gen)
        idx, queue = queue[:batch_size], queue[batch_size:]
        offset = int(torch.randint(0, stack, (1,), generator=gen))
        mine = idx[rank::world]
        feats, lengths, texts = train_set.batch(mine)
        with torch.autocast(model.device.type, dtype=torch.bfloat16,
                            enabled=precision == "bf16"):
            loss = ctc_loss(model, head, feats, lengths, texts, offset=offset)
        optimizer.zero_grad()
        (loss * (len(mine) / len(idx))).backward()
        loss = _summed(params, loss.detach() * (len(mine) / len(idx)), world)
        if not torch.isfinite(loss):
            raise CompanionError(f"{desc}: the CTC loss is {loss.item()} at step {step + 1}: "
                                 f"lower ctc_learning_rate (now {learning_rate:g})")
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        sched.step()
        log.append({"step": step + 1, "loss": round(loss.item(), 4),
                    "elapsed_s": round(time.perf_counter() - t0, 2)})
        if bar.disable and ((step + 1) % max(1, steps // 4) == 0 or step + 1 == steps):
            # no progress bar (a book run): say where we are
            print(f"{desc}: step {step + 1}/{steps}, CTC loss {loss.item():.3f}, "
                  f"{log[-1]['elapsed_s']:.0f} s", flush=True)
    optimizer.zero_grad(set_to_none=True)  # as a warm start read back: no gradient left
    model.projector.eval()
    return log


def _summed(params: list[Any], loss: torch.Tensor, world: int) -> torch.Tensor:
    """The gradients of ``params`` and ``loss`` summed over the ``world`` processes sharing
    the batch (as they are, for one process)."""
    if world == 1:
        return loss
    import torch.distributed as dist

    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
    dist.all_reduce(loss)
    return loss


WARMSTART_FIELDS = ("recipe", "seed", "ctc_epochs", "ctc_learning_rate", "ctc_batch_size",
                    "precision", "length_grouping")
"""The training settings a CTC warm start reads (:func:`lib.train.ctc.ctc_warm_start`); the
LLM stage's (steps, rates, batch, ``ctc_weight``) leave it as it was."""


def warmstart_settings(train: TrainConfig) -> dict[str, Any]:
    """The part of ``train`` that keys a warm start (:data:`WARMSTART_FIELDS`)."""
    return {f: getattr(train, f) for f in WARMSTART_FIELDS}


def warmstart_folder(mc: ModelConfig, train: TrainConfig, data: FeatureSet) -> Path:
    """The cache folder of one CTC warm start, keyed by what it reads: the model, the
    :func:`warmstart_settings` and its training features by content. A run that changes
    only the LLM stage, and a lever measured on the run's own corpus at the run's seed
    (:mod:`lib.recipes.levers`), read it back instead of training it again."""
    spec = {"model": mc, "ctc": warmstart_settings(train), "data": data.digest(),
            "version": WARMSTART_VERSION}
    return cache_subdir("warmstarts") / f"{slug(mc.decoder)}-{config_hash(spec)}"
