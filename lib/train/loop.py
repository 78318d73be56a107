"""Training the projector and the decoder's LoRA adapters, resumably.

AdamW, linear warm-up then linear decay, gradient accumulation weighted by target tokens,
bf16 autocast when ``precision`` is ``bf16`` (on a GPU, or on a CPU with native bf16), all
through ``accelerate``, so the same code runs under ``accelerate launch`` / ``torchrun`` on
several GPUs. An optional dev check (a WER every ``dev_every`` steps) draws the learning
curve, and an optional auxiliary loss (the warm start's CTC loss) is added to each step.

Every ``checkpoint_every`` steps the trainable weights (safetensors), the optimiser and
the scheduler are written atomically; a killed run restarts from the last checkpoint and
ends with the same weights as an uninterrupted one (data order and dropout are seeded by
step). A finished run is keyed by its config and reused.

Stage: training (projector + LoRA; :mod:`lib.train.ctc` holds the warm start before it).
Explained in chapter 1 (book/01_building_a_speechllm.ipynb).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from lib.build.speechllm import SpeechLLM
from lib.cache import say_reused
from lib.clock import track
from lib.config.sections import TrainConfig
from lib.data.features import FeatureSet
from lib.device import resolve_precision
from lib.errors import CompanionError
from lib.fileio import (CorruptFile, load_cached_json, load_tensors, provenance,
                        save_cached_json, save_tensors, set_aside, to_dict)
from lib.train.kernels import TrainingKernels


RECIPES: dict[str, str] = {
    "ctc-warmstart": "CTC warm start of the projector (lib.train.ctc), norm matching, then "
                     "projector + LoRA with the CTC loss kept on (the CPU default)",
    "plain": "projector + LoRA from scratch on the transcript cross-entropy (the paper's)",
}
"""The training recipes chapter 1 explains (``recipe``): adding one is one entry here and
its steps in :func:`lib.recipes.pipeline.train_and_evaluate`."""


@dataclass
class TrainRun:
    """What a training call produced.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).
    """

    run_dir: Path
    log: list[dict[str, Any]]  # one row per optimiser step: step, loss, lr, elapsed_s
    cached: bool  # True when a finished run with this config was reused
    resumed_from: int | None  # step of the checkpoint a killed run restarted from
    finished: bool  # False when stopped early on purpose (``stop_after``)
    result: dict[str, Any]  # the train_result.json record (with provenance)
    dev_log: list[dict[str, Any]] = field(default_factory=list)  # step, train_minutes, ...


def length_grouped_permutation(lengths: Sequence[int], batch: int, pool: int,
                               generator: torch.Generator) -> list[int]:
    """A random permutation of ``range(len(lengths))`` whose consecutive ``batch``-sized
    slices hold items of similar length.

    The permutation is cut into pools of ``pool * batch`` items, each pool is sorted by
    length (longest first) and cut into batches, and the batches are shuffled. Every item
    still appears once per epoch; a batch pads to a length close to its own items'
    (padding costs compute in every projector and decoder pass). ``pool <= 1``: a plain
    random permutation. The same idea as ``group_by_length`` in transformers' Trainer.
    """
    perm = torch.randperm(len(lengths), generator=generator).tolist()
    if pool <= 1 or batch <= 1:
        return perm
    size = pool * batch
    batches: list[list[int]] = []
    for start in range(0, len(perm), size):
        chunk = sorted(perm[start:start + size], key=lambda i: -lengths[i])
        batches += [chunk[k:k + batch] for k in range(0, len(chunk), batch)]
    order = torch.randperm(len(batches), generator=generator).tolist()
    return [i for b in order for i in batches[b]]


class _Order:
    """Deterministic data order: a fresh (length-grouped) permutation per epoch, sliced
    per process."""

    def __init__(self, n: int, batch: int, seed: int, world: int, rank: int,
                 lengths: Sequence[int] | None = None, pool: int = 0) -> None:
        self.n, self.batch, self.seed, self.world, self.rank = n, batch, seed, world, rank
        self.lengths, self.pool = lengths, pool
        self._perms: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
            if self.lengths is None:
                perm = torch.randperm(self.n, generator=g).tolist()
            else:  # global batches grouped by length, then split among processes
                perm = length_grouped_permutation(self.lengths, self.batch * self.world,
                                                  self.pool, g)
            self._perms = {epoch: perm}
        return self._perms[epoch]

    def micro_batch(self, k: int) -> list[int]:
        """Indices of this process's share of the ``k``-th global micro-batch."""
        gbs = self.batch * self.world
        pos, out = k * gbs, []
        while len(out) < gbs:
            epoch, off = divmod(pos + len(out), self.n)
            perm = self._perm(epoch)
            out += perm[off: off + gbs - len(out)]
        return out[self.rank * self.batch: (self.rank + 1) * self.batch]


def _write_checkpoint(ckpt: Path, model: SpeechLLM, optimizer: Any, scheduler: Any,
                      step: int) -> None:
    tmp = ckpt.with_name(ckpt.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_tensors(tmp / "trainable.safetensors", model.trainable_state_dict())
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
               tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step}))
    old = ckpt.with_name(ckpt.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if ckpt.exists():
        os.replace(ckpt, old)
    os.replace(tmp, ckpt)
    shutil.rmtree(old, ignore_errors=True)


def _micro(train_set: FeatureSet, idx: list[int], model: SpeechLLM) -> tuple:
    """One micro-batch: features, lengths, targets (what each utterance's task learns),
    the tasks (None: the model's own) and the transcripts (for an auxiliary CTC loss)."""
    feats, lengths, targets = train_set.batch(idx, target=model.task.target)
    tasks = train_set.tasks_of(idx)
    transcripts = ([train_set.utterances[i].text for i in idx]
                   if tasks is not None or model.task.target != "text" else targets)
    return feats, lengths, targets, tasks, transcripts


def _append(path: Path, row: dict[str, Any]) -> None:
    with path.open("a") as fh:
        fh.write(json.dumps(row) + "\n")


def _dev_row(ddp_model: Any, model: SpeechLLM, dev_check: Callable[[SpeechLLM], dict[str, Any]],
             row: dict[str, Any]) -> dict[str, Any]:
    """The dev check at this step, in eval mode, with the training minutes so far."""
    ddp_model.eval()
    out = {"step": row["step"], "train_minutes": round(row["elapsed_s"] / 60, 3),
           **dev_check(model)}
    ddp_model.train()
    return out


def _logs_upto(path: Path, step: int, rewrite: bool) -> list[dict[str, Any]]:
    """The log rows up to ``step`` (a resumed run's checkpoint); with ``rewrite`` (the main
    process) the rows written after it are dropped from the file too."""
    rows = _read_log(path, step)
    if rewrite:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def _read_log(path: Path, upto: int) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return [r for r in rows if r["step"] <= upto]


def _reuse_finished(model: SpeechLLM, cfg: TrainConfig, run_dir: Path,
                    desc: str) -> TrainRun | None:
    """The finished run in ``run_dir`` with its weights loaded into ``model``, or None."""
    final = run_dir / "final" / "trainable.safetensors"
    result_path = run_dir / "train_result.json"
    if not (final.is_file() and result_path.is_file()):
        return None
    try:
        weights = load_tensors(final, finite=True)
    except CorruptFile as err:
        set_aside(final, f"{desc}: the finished run's weights: {err}; training again from "
                         "the last checkpoint")
        return None
    result = load_cached_json(result_path)  # edited or damaged: set aside, trained again
    if result is None:
        return None
    model.load_trainable_state_dict(weights)
    say_reused(desc, run_dir.name)  # the run's folder is its key
    return TrainRun(run_dir, _read_log(run_dir / "train_log.jsonl", cfg.steps), True, None,
                    True, result, _read_log(run_dir / "dev_log.jsonl", cfg.steps))


def _optimiser(model: SpeechLLM, cfg: TrainConfig, desc: str) -> tuple[list, Any, Any]:
    """The trainable parameters, AdamW (the projector at its own rate) and the schedule."""
    from transformers import get_linear_schedule_with_warmup

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise CompanionError(f"{desc}: the model has no trainable parameters")
    # The projector may learn at its own rate (a warm-started projector wants a gentler one).
    proj_ids = {id(p) for p in model.projector.parameters()}
    groups = [{"params": [p for p in params if id(p) not in proj_ids]},
              {"params": [p for p in params if id(p) in proj_ids],
               "lr": cfg.projector_learning_rate or cfg.learning_rate}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.learning_rate,
                                  weight_decay=cfg.weight_decay)
    return params, optimizer, get_linear_schedule_with_warmup(optimizer, cfg.warmup_steps,
                                                              cfg.steps)


def _resume(model: SpeechLLM, optimizer: Any, scheduler: Any, ckpt: Path, cfg: TrainConfig,
            desc: str) -> int | None:
    """Load the last checkpoint of a killed run; its step, or None when there is none."""
    if not (ckpt / "state.json").is_file():
        return None
    try:
        start = json.loads((ckpt / "state.json").read_text())["step"]
        weights = load_tensors(ckpt / "trainable.safetensors", finite=True)
    except (CorruptFile, ValueError, KeyError, OSError) as err:
        set_aside(ckpt, f"{desc}: the checkpoint is damaged ({err}); training from step 0")
        return None
    model.load_trainable_state_dict(weights)
    states = torch.load(ckpt / "optimizer.pt", weights_only=True)
    optimizer.load_state_dict(states["optimizer"])
    scheduler.load_state_dict(states["scheduler"])
    print(f"{desc}: resuming from the checkpoint at step {start}/{cfg.steps}")
    return start


def _step_loss(acc: Any, ddp_model: Any, model: SpeechLLM, micro: list, params: list,
               optimizer: Any, scheduler: Any, cfg: TrainConfig, step: int, desc: str,
               aux_loss: Callable[..., torch.Tensor] | None) -> float:
    """One optimiser step over its micro-batches; the mean loss per target token.

    Tokens are weighted, not micro-batches: every micro-batch's summed loss is divided by
    the target tokens of the whole step (all micro-batches, all processes). DDP averages
    gradients over processes and accelerate's backward divides by ``grad_accum``, hence
    the factors ``num_processes`` and ``grad_accum``.
    """
    n_tok = torch.tensor(float(sum(len(model.target_ids(t)) for _, _, texts, _, _ in micro
                                   for t in texts)), device=model.device)
    n_tok = acc.reduce(n_tok, reduction="sum") if acc.num_processes > 1 else n_tok
    step_sum = 0.0
    for feats, lengths, texts, tasks, transcripts in micro:
        with acc.accumulate(ddp_model):
            loss_sum = ddp_model(feats, lengths, texts, reduction="sum", tasks=tasks)
            if not torch.isfinite(loss_sum):
                raise CompanionError(
                    f"{desc}: the loss is {loss_sum.item()} at step {step + 1}; nothing "
                    f"was cached. Lower learning_rate (now {cfg.learning_rate:g}) or "
                    "check the data")
            loss = loss_sum * (acc.num_processes * cfg.grad_accum) / n_tok
            if aux_loss is not None:  # e.g. the warm start's CTC loss, kept on
                # A per-micro-batch mean: accelerate's 1/grad_accum and DDP's average
                # over processes already make it the mean over the whole step.
                loss = loss + aux_loss(acc.unwrap_model(ddp_model), feats, lengths,
                                       transcripts)
            acc.backward(loss)
            if acc.sync_gradients:
                norm = acc.clip_grad_norm_(params, 1.0)
                if norm is not None and not torch.isfinite(torch.as_tensor(norm)):
                    raise CompanionError(
                        f"{desc}: the gradient is not finite at step {step + 1}; "
                        f"nothing was cached. Lower learning_rate (now "
                        f"{cfg.learning_rate:g})")
            optimizer.step()
            if acc.sync_gradients:
                scheduler.step()
            optimizer.zero_grad()
        step_sum += acc.gather(loss_sum.detach()).float().sum().item()
    return step_sum / float(n_tok)


def _save_final(model: SpeechLLM, run_dir: Path, train_set: FeatureSet, cfg: TrainConfig,
                log: list[dict[str, Any]], wall: float, resumed: int | None, world: int,
                ) -> dict[str, Any]:
    """Write the final weights and ``train_result.json`` (with provenance); the record."""
    final = run_dir / "final" / "trainable.safetensors"
    save_tensors(final, model.trainable_state_dict())
    n_utts = cfg.steps * cfg.grad_accum * cfg.batch_size * world
    total = log[-1]["elapsed_s"] if log else wall
    result = {
        "steps": cfg.steps, "final_loss": log[-1]["loss"] if log else None,
        "train_utterances_seen": n_utts, "train_set_size": len(train_set),
        "utterances_per_s": round(n_utts / max(total, 1e-9), 3),
        "train_config": to_dict(cfg), "resumed_from": resumed,
        "provenance": provenance(seed=cfg.seed, wall_time_s=total),
    }
    save_cached_json(run_dir / "train_result.json", result)
    return result


def _fresh_precision(mixed: str) -> None:
    """Let one process train at another precision than its last run (a notebook kernel, a
    test session): accelerate keeps one precision per process unless its state is reset;
    the process group (PartialState) is kept."""
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state and AcceleratorState().mixed_precision != mixed:
        AcceleratorState._reset_state(reset_partial_state=False)


@contextlib.contextmanager
def _prepared(acc: Any, model: SpeechLLM, optimizer: Any) -> Iterator[tuple[Any, Any]]:
    """accelerate's ``prepare`` of ``model`` and ``optimizer`` for the run, and the model as
    it came afterwards (also after an exception). Under mixed precision ``prepare`` wraps the
    model's ``forward`` in autocast on the model object itself, for good: in the process that
    trained it, every later call of a model trained in bf16 ran under bf16 autocast whatever
    precision it asked for (chapter 1's float32 rounds of its training-precision check did,
    so a run from nothing timed bf16 against bf16 where a run reusing the model timed float32
    against bf16), and a second ``prepare`` of the same model object was skipped."""
    ddp_model, optimizer = acc.prepare(model, optimizer)
    try:
        yield ddp_model, optimizer
    finally:
        for name in ("forward", "_original_forward", "_is_accelerate_prepared"):
            model.__dict__.pop(name, None)


def train_speechllm(
    model: SpeechLLM,
    train_set: FeatureSet,
    cfg: TrainConfig,
    run_dir: Path,
    stop_after: int | None = None,
    desc: str = "training",
    dev_check: Callable[[SpeechLLM], dict[str, Any]] | None = None,
    aux_loss: Callable[..., torch.Tensor] | None = None,
) -> TrainRun:
    """Train ``model``'s trainable parameters on ``train_set``; reuse or resume ``run_dir``.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Args:
        model: a SpeechLLM whose trainable parameters are the projector and LoRA.
        train_set: cached encoder features with transcripts.
        cfg: optimisation settings (``precision`` resolved by
            :func:`lib.device.resolve_precision`).
        run_dir: where checkpoints, the log and the final weights live (keyed by config).
        stop_after: stop (as if killed) after this many steps in this call: for tests
            and for splitting a long run into sessions.
        desc: progress-bar label.
        dev_check: called with the model (in eval mode) every ``cfg.dev_every`` steps and
            at the end; its dict (e.g. a dev WER) goes to ``dev_log.jsonl`` with the step
            and the training minutes so far (its own time is not training time).
        aux_loss: ``(model, feats, lengths, transcripts) -> loss`` added (already weighted)
            to each micro-batch's loss; it may only depend on the model's trainable weights.
            It gets the transcripts of the audio, whatever the task's target (in a
            multi-task mix, a translation is not what a CTC head can align).
    """
    from accelerate import Accelerator

    run_dir = Path(run_dir)
    reused = _reuse_finished(model, cfg, run_dir, desc)
    if reused is not None:
        return reused
    if len(train_set) == 0:
        raise CompanionError(f"{desc}: the training set is empty; check train_data")
    run_dir.mkdir(parents=True, exist_ok=True)

    cuda = torch.cuda.is_available() and model.device.type == "cuda"
    bf16 = resolve_precision(cfg.precision, str(model.device)) == "bf16"
    _fresh_precision("bf16" if bf16 else "no")
    acc = Accelerator(mixed_precision="bf16" if bf16 else "no", cpu=not cuda,
                      gradient_accumulation_steps=cfg.grad_accum)
    params, optimizer, scheduler = _optimiser(model, cfg, desc)
    ckpt = run_dir / "checkpoint"
    resumed = _resume(model, optimizer, scheduler, ckpt, cfg, desc)
    start = resumed or 0
    log_path, dev_path = run_dir / "train_log.jsonl", run_dir / "dev_log.jsonl"
    log, dev_log = (_logs_upto(p, start, acc.is_main_process) for p in (log_path, dev_path))

    # The scheduler stays unprepared: accelerate would step it once per process, while
    # cfg.steps counts global optimiser steps.
    with _prepared(acc, model, optimizer) as (ddp_model, optimizer):
        kernels = TrainingKernels(model, bf16)
        order = _Order(len(train_set), cfg.batch_size, cfg.seed, acc.num_processes,
                       acc.process_index, train_set.frames(),
                       cfg.length_grouping)
        end = cfg.steps if stop_after is None else min(cfg.steps, start + stop_after)
        ddp_model.train()
        t0 = time.perf_counter()
        elapsed0 = log[-1]["elapsed_s"] if log else 0.0
        # ``disable`` only where needed: TQDM_DISABLE (set for book runs) fills the default.
        quiet = {} if acc.is_main_process else {"disable": True}
        bar = track(range(start, end), desc=desc, total=end - start, **quiet)
        for step in bar:
            torch.manual_seed(cfg.seed * 7919 + step)  # dropout identical after a resume
            micro = [_micro(train_set, order.micro_batch(step * cfg.grad_accum + k), model)
                     for k in range(cfg.grad_accum)]
            with kernels:  # the step's kernels; the model as it came for anything else
                loss = _step_loss(acc, ddp_model, model, micro, params, optimizer, scheduler, cfg,
                                  step, desc, aux_loss)
            row = {"step": step + 1, "loss": loss, "lr": scheduler.get_last_lr()[0],
                   "elapsed_s": round(elapsed0 + time.perf_counter() - t0, 3)}
            log.append(row)
            bar.set_postfix(loss=f"{row['loss']:.3f}")
            if not acc.is_main_process:
                continue
            _append(log_path, row)
            if dev_check is not None and (
                    step + 1 == cfg.steps or (cfg.dev_every and (step + 1) % cfg.dev_every == 0)):
                t_dev = time.perf_counter()
                dev_log.append(_dev_row(ddp_model, acc.unwrap_model(ddp_model), dev_check, row))
                _append(dev_path, dev_log[-1])
                t0 += time.perf_counter() - t_dev  # the check's time is not training time
            if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == end:
                _write_checkpoint(ckpt, acc.unwrap_model(ddp_model), optimizer, scheduler,
                                  step + 1)
                if bar.disable:  # no progress bar (e.g. a book run): say where we are
                    print(f"{desc}: step {step + 1}/{cfg.steps}, loss {row['loss']:.3f}, "
                          f"{row['elapsed_s']:.0f} s, checkpoint saved", flush=True)
        ddp_model.eval()
        finished = end == cfg.steps
        result = _save_final(acc.unwrap_model(ddp_model), run_dir, train_set, cfg, log,
                             time.perf_counter() - t0, resumed, acc.num_processes
                             ) if finished and acc.is_main_process else {}
        return TrainRun(run_dir, log, False, resumed, finished, result, dev_log)
