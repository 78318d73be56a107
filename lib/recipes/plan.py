"""What a run will cost, said before it starts: ``python -m lib.experiment --plan``.

Explained in the README (Models and data of your own). Stage: the pipeline (command line).

Before a long run (a paper preset on LibriSpeech 960 h, on GPUs) a user should know what
they start: how many training and test utterances and hours, how large the cached
features grow on disk, and how long the encoding pass, one epoch and the run's steps take.
Sizes come from the data (LibriSpeech's flac headers, a manifest's durations; the synthetic
corpus is spoken first when it is not cached, as the run would); speeds from
a short probe on this machine: a sample of training utterances encoded as the run encodes
them, then a few training steps of each decoder timed as the loop runs them
(:func:`lib.train.precision.step_timer`). Nothing is written to the cache: the probe's
features and models are dropped. The figures are estimates from one probe (a first step
on a GPU, a busy machine): they say whether a run takes hours or weeks, not its minute.
"""

from __future__ import annotations

import math
import random
import time
from typing import Any

import torch

from lib.build.components import build_encoder
from lib.build.speechllm import build_speechllm
from lib.clock import duration
from lib.config.sections import Run
from lib.data.features import extract_features
from lib.data.sources import load_source
from lib.device import resolve_device
from lib.paths import slug
from lib.train.precision import step_timer

PROBE_STEPS = 3
"""Training steps timed per decoder (after an untimed one that allocates)."""


def _hours(utts: list[Any]) -> float:
    return sum(u.duration for u in utts) / 3600


def _span(hours: float) -> str:
    """``0.02`` -> ``1 min 12 s``; ``5.25`` -> ``5.2 h``; ``100`` -> ``4.2 days``."""
    if hours < 1:
        return duration(hours * 3600)
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} days"


def _size(gb: float) -> str:
    return f"{gb:.1f} GB" if gb >= 1 else f"{gb * 1000:.1f} MB"


def plan_run(cfg: Run, probe_steps: int = PROBE_STEPS, processes: int = 1) -> dict[str, Any]:
    """The sizes and the estimated times of chapter 1's run of ``cfg`` (see the module).

    Args:
        probe_steps: training steps timed per decoder, on as many batches of a random
            sample of the training set (encoded first; its first batch also warms up).
        processes: data-parallel processes the run will use (an epoch's optimiser steps
            are divided among them).

    Returns:
        ``train`` and ``tests`` (``utterances``, ``hours``), ``feature_gb`` (training and
        test features on disk), ``encode_hours`` (the one encoding pass), per decoder in
        ``models`` its ``step_s`` (one optimiser step: ``grad_accum`` micro-batches),
        ``steps_per_epoch``, ``epoch_hours`` and ``run_hours`` (``train_steps`` steps),
        and ``probe`` (what was measured: utterances, audio seconds, device, precision).
    """
    tr = cfg.train
    train = load_source(cfg.train_data, cfg.corpus)
    tests = {name: load_source(name, cfg.corpus) for name in cfg.test_data}
    device = resolve_device(cfg.device)
    precision = tr.precision  # resolved for the device when the run was resolved
    sample = random.Random(tr.seed).sample(train, min(len(train), tr.batch_size * probe_steps))
    encoder = build_encoder(cfg.models[0].encoder).to(device)
    extract_features(encoder, sample[:tr.batch_size], batch_size=tr.batch_size,
                     desc="plan: warming up the encoder", use_cache=False, precision=precision)
    t0 = time.perf_counter()
    feats = extract_features(encoder, sample, batch_size=tr.batch_size,
                             desc="plan: encoding a sample", use_cache=False,
                             precision=precision)
    encode_s = time.perf_counter() - t0
    audio_s = sum(u.duration for u in feats.utterances)
    per_audio_s = sum(f.numel() * f.element_size() for f in feats.feats) / audio_s
    del encoder
    all_hours = _hours(train) + sum(_hours(t) for t in tests.values())
    out: dict[str, Any] = {
        "train": {"utterances": len(train), "hours": _hours(train)},
        "tests": {name: {"utterances": len(t), "hours": _hours(t)} for name, t in tests.items()},
        "feature_gb": per_audio_s * all_hours * 3600 / 1e9,
        "encode_hours": encode_s / audio_s * all_hours,
        "probe": {"utterances": len(feats), "audio_s": audio_s, "device": device,
                  "precision": precision, "steps": probe_steps, "processes": processes},
        "models": {}}
    per_step = tr.batch_size * tr.grad_accum * processes
    steps_per_epoch = math.ceil(len(train) / per_step)
    for mc in cfg.models:
        model = build_speechllm(mc, device=device, seed=tr.seed)
        warm, _ = step_timer(model, feats, tr.batch_size, 1)
        timed, _ = step_timer(model, feats, tr.batch_size, probe_steps)
        with torch.random.fork_rng(devices=[]):
            model.train()
            warm(precision == "bf16")  # the first step allocates and picks kernels
            step_s = timed(precision == "bf16") * tr.grad_accum
        out["models"][slug(mc.decoder)] = {
            "step_s": step_s, "steps_per_epoch": steps_per_epoch,
            "epoch_hours": steps_per_epoch * step_s / 3600,
            "run_hours": tr.steps * step_s / 3600}
        del model
    return out


def plan_text(plan: dict[str, Any], cfg: Run) -> str:
    """The plan in a few lines, as ``--plan`` prints it."""
    p, tr = plan["probe"], cfg.train
    lines = [f"training data {cfg.train_data}: {plan['train']['utterances']} utterances, "
             f"{_span(plan['train']['hours'])} of audio"]
    lines += [f"test data {name}: {t['utterances']} utterances, {_span(t['hours'])} of audio"
              for name, t in plan["tests"].items()]
    lines.append(f"features on disk: {_size(plan['feature_gb'])} (training and test sets, "
                 f"encoded once in {_span(plan['encode_hours'])})")
    for name, m in plan["models"].items():
        lines.append(f"{name}: {m['step_s']:.2f} s per step ({tr.batch_size} x {tr.grad_accum} "
                     f"utterances), {m['steps_per_epoch']} steps per epoch "
                     f"({_span(m['epoch_hours'])}), {tr.steps} steps: {_span(m['run_hours'])}")
    lines.append(f"from a probe on {p['device']} ({p['precision']}, {p['processes']} "
                 f"process(es)): {p['utterances']} utterances ({p['audio_s']:.0f} s of audio) "
                 f"encoded, {p['steps']} steps timed per decoder; estimates, not a schedule")
    if cfg.corpus_recipe == "rule" and cfg.train_data == "synthetic:train":
        lines.append("the corpus counted is the one set; chapter 1's rule may first measure "
                     "its levers (minutes each) and train on another")
    if tr.recipe == "ctc-warmstart":
        lines.append(f"not counted: the CTC warm start ({tr.ctc_epochs:g} epoch(s) of the "
                     "projector and its head) before the steps")
    return "\n".join(lines)
