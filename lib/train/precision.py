"""What bf16 buys in training on this machine: the same training steps timed in float32 and
under bf16 autocast, in one process.

``precision: auto`` trains in bf16 where the CPU runs it natively (:mod:`lib.device`); this
is the measurement behind that choice, made by the run itself and kept in its record with
the CPU it ran on. The steps are those of the training loop (the SpeechLLM's loss summed over
the target tokens of real training batches, backward into the trainable weights); no
optimiser step is taken and the gradients are dropped, so the model leaves as it came, and
the random state is forked, so nothing later in the run draws other numbers because of it.
Each precision runs the step as the loop trains in it (:class:`lib.train.kernels.TrainingKernels`).
Rounds alternate the two precisions; the ratio is the median of the per-round ratios.
Stage: training. Explained in chapter 1 (section 1.6).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import torch

from lib.build.speechllm import SpeechLLM
from lib.data.features import FeatureSet
from lib.train.kernels import TrainingKernels


def step_timer(model: SpeechLLM, data: FeatureSet, batch_size: int,
               steps: int) -> tuple[Callable[[bool], float], int]:
    """``(timed, batches)``: ``timed(bf16)`` runs the loop's training step (loss summed over
    the target tokens, backward into the trainable weights, no optimiser step, gradients
    dropped) on the first ``steps`` batches of ``batch_size`` of ``data`` (``batches`` of
    them), in float32 or under bf16 autocast as the loop trains in it
    (:class:`TrainingKernels`), and returns the seconds per step. The caller sets the
    model's mode and guards the random state."""
    n = min(len(data), steps * batch_size)
    batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    params = [p for p in model.parameters() if p.requires_grad]
    device = model.device.type
    kernels = {False: TrainingKernels(model, False), True: TrainingKernels(model, True)}

    def timed(bf16: bool) -> float:
        t0 = time.perf_counter()
        for idx in batches:
            feats, lengths, texts = data.batch(idx, target=model.task.target)
            with kernels[bf16]:
                with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                    loss = model(feats.to(model.device), lengths.to(model.device), texts,
                                 reduction="sum")
                loss.backward()
            for p in params:
                p.grad = None
        return (time.perf_counter() - t0) / len(batches)

    return timed, len(batches)


def training_speedup(model: SpeechLLM, data: FeatureSet, batch_size: int, rounds: int = 7,
                     steps: int = 2) -> dict[str, Any]:
    """Seconds per training step in float32 and under bf16 autocast, and their ratio.

    Args:
        model: a SpeechLLM with trainable weights (left unchanged).
        data: training features; the first ``steps`` batches of ``batch_size`` are timed.
        rounds: alternating rounds (float32 then bf16); medians are reported.

    Returns:
        ``fp32_s`` and ``bf16_s`` (median seconds per step), ``speedup`` (median of the
        per-round ratios float32 / bf16), ``round_speedups`` (each round's ratio: the noise
        :func:`lib.report.rules.bf16_verdict` weighs), ``rounds``, ``steps``, ``batch_size``.
        Seven rounds: three gave 1.10, 1.23 and 1.31 in three runs on one Xeon.
    """
    was_training = model.training
    timed, n_batches = step_timer(model, data, batch_size, steps)
    with torch.random.fork_rng(devices=[]):
        model.train()
        try:
            found = alternate([timed], rounds)
        finally:
            model.train(was_training)
    return {**found, "rounds": rounds, "steps": n_batches, "batch_size": batch_size}


def alternate(timers: Sequence[Callable[[bool], float]], rounds: int) -> dict[str, Any]:
    """Float32 against bf16 over alternating rounds: every ``timed(bf16)`` of ``timers`` is
    called once each way to warm up (the first calls allocate and pick kernels), then in
    each of ``rounds`` rounds every timer runs in float32, then in bf16; a round's time in a
    precision is its timers' sum (a run's decoders together).

    Returns:
        ``fp32_s`` and ``bf16_s`` (median round times), ``speedup`` (median of the rounds'
        ratios float32 / bf16) and ``round_speedups`` (each round's ratio).
    """
    for timed in timers:
        timed(False), timed(True)
    pairs = []
    for _ in range(rounds):
        fp32 = bf16 = 0.0
        for timed in timers:
            fp32, bf16 = fp32 + timed(False), bf16 + timed(True)
        pairs.append((fp32, bf16))
    mid = rounds // 2
    return {"fp32_s": sorted(a for a, _ in pairs)[mid],
            "bf16_s": sorted(b for _, b in pairs)[mid],
            "speedup": sorted(a / b for a, b in pairs)[mid],
            "round_speedups": [round(a / b, 3) for a, b in pairs]}
