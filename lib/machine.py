"""What ``precision: auto`` chooses on this machine: measured once, kept in the cache.

On a GPU ``auto`` is bf16 and where the CPU emulates bf16 it is float32 (:mod:`lib.device`).
On a CPU that runs bf16 natively it depends on the machine, the use and the decoder: on
one Xeon with AMX, chapter 1's check on the trained SmolLM2 measured bf16 training at
1.10-1.31 times float32 in earlier runs and 1.04 in the record of 2026-12-05, while this
probe of the fresh decoders measured about 1.6 for each the same day; bf16 decoding 1.10
(SmolLM2) and 1.45 (Gemma-3) in that record. So the first run that needs ``auto`` there
measures it: a short probe of the run's own decoders, in both precisions, alternating rounds
(:func:`probe_precision`), and bf16 is chosen for a use (training, decoding) only where it
*pays* by :func:`lib.report.rules.bf16_verdict`; where it buys nothing, or the rounds cannot
tell, float32. A probe while other processes took a share of the CPU is measured again
(:func:`probe_quietly`), and by the next run when it stays shared. The choice is stored in
the cache per CPU model, torch version
and decoders (:func:`choice_path`), so every later run on the machine resolves ``auto``
alike and its cache keys stay put; a record names the choice and what it was measured on
(chapter 1, section 1.6, which also measures it again on the trained models). Delete the
file to measure again; ``-p precision=...`` / ``-p eval_precision=...`` still set either
use by hand.

Stage: resolution (what ``auto`` means here; it builds and times the stages' models, so it
sits above them and below :mod:`lib.config.resolve`). Explained in chapter 1 (section 1.6).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Sequence

PROBE_ROUNDS = 5
"""Alternating rounds (float32, then bf16, for every decoder) per use."""

PROBE_SECONDS = 4.0
"""Seconds of audio in each probe utterance (the synthetic corpus's are 2-6 s)."""

PROBE_TOKENS = 16
"""Word pieces decoded per utterance in the decoding probe."""

PROBE_TEXT = "the quick brown fox jumps over the lazy dog while the small bird sings"
"""Each probe utterance's transcript (the training step's target)."""

PROBE_ATTEMPTS = 2
"""Probes at most, when other processes took more than
:data:`lib.report.rules.SHARED_MAX` of the CPU during one (a second job on two cores bends
the alternating rounds: a test run beside the probe once made training "undecided")."""

USES = ("training", "decoding")


def machine_key() -> str:
    """This machine as the stored choice names it: CPU model and torch version."""
    import torch

    from lib.fileio import cpu_model
    from lib.paths import slug

    return f"{slug(cpu_model() or 'unknown-cpu')}-torch{torch.__version__.split('+')[0]}"


def choice_path(decoders: Sequence[str]) -> Path:
    """Where the choice for ``decoders`` on this machine is kept (``<cache>/machine/``)."""
    from lib.paths import cache_dir

    tag = hashlib.sha1("|".join(decoders).encode()).hexdigest()[:10]
    return cache_dir() / "machine" / f"precision-{machine_key()}-{tag}.json"


def probe_features(dim: int, n: int, seed: int = 0) -> Any:
    """``n`` utterances of random features (:data:`PROBE_SECONDS` at Whisper's 50 frames a
    second, ``dim`` wide) with :data:`PROBE_TEXT`: the shapes a training batch has."""
    import torch

    from lib.data.features import FeatureSet
    from lib.data.loaders import Utterance

    g = torch.Generator().manual_seed(seed)
    frames = int(PROBE_SECONDS * 50)
    utts = [Utterance(id=f"probe{i}", audio="", text=PROBE_TEXT, duration=PROBE_SECONDS,
                      voice="probe", split="probe", source="manifest") for i in range(n)]
    return FeatureSet(utts, [torch.randn(frames, dim, generator=g).half() for _ in range(n)])


def probe_precision(models: Sequence[Any], batch_size: int, eval_batch_size: int,
                    rounds: int = PROBE_ROUNDS, seed: int = 0) -> dict[str, Any]:
    """Each use's speed in float32 and under bf16 autocast, measured on the run's decoders.

    Every decoder of ``models`` (:class:`lib.config.sections.ModelConfig`) is built as the
    run builds it (projector and LoRA freshly initialised) and timed on random features of
    a training batch's shape (:func:`probe_features`): one training step of ``batch_size``
    utterances as the loop takes it (:func:`lib.train.precision.step_timer`) and a greedy
    decoding of ``eval_batch_size`` utterances, :data:`PROBE_TOKENS` word pieces each
    (:func:`lib.evaluate.decode.decode_timer`), in alternating rounds
    (:func:`lib.train.precision.alternate`); a round's ratio is the run's time for that use
    (the decoders summed) in float32 over bf16, so each decoder weighs by its share.

    Returns:
        per use, ``fp32_s`` and ``bf16_s`` (median seconds per round), ``speedup`` (median of
        the rounds' ratios) and ``round_speedups``; ``decoders``, ``rounds``.
    """
    import torch

    from lib.build.speechllm import build_speechllm
    from lib.evaluate.decode import decode_timer
    from lib.train.precision import alternate, step_timer

    timers: dict[str, list[Any]] = {use: [] for use in USES}
    with torch.random.fork_rng(devices=[]):
        for mc in models:
            model = build_speechllm(mc, seed=seed).train()  # decoding times in eval mode
            proj = model.projector
            data = probe_features(proj.net[0].in_features // proj.stack,
                                  max(batch_size, eval_batch_size), seed)
            timers["training"].append(step_timer(model, data, batch_size, 1)[0])
            timers["decoding"].append(decode_timer(model, data, eval_batch_size, PROBE_TOKENS))
        found = {use: alternate(timed, rounds) for use, timed in timers.items()}
    return {"decoders": [mc.decoder for mc in models], "rounds": rounds, **found}


def decide(measured: dict[str, Any]) -> dict[str, Any]:
    """``measured`` with each use's ``verdict`` (:func:`lib.report.rules.bf16_verdict`) and
    ``chose``: ``bf16`` only where it pays, else ``fp32``."""
    from lib.report.rules import bf16_verdict

    out = dict(measured)
    for use in USES:
        m = measured[use]
        verdict = bf16_verdict(m["speedup"], rounds=m["round_speedups"])
        out[use] = {**m, "verdict": verdict, "chose": "bf16" if verdict == "pays" else "fp32"}
    return out


def probe_quietly(models: Sequence[Any], batch_size: int,
                  eval_batch_size: int) -> dict[str, Any]:
    """:func:`decide` on :func:`probe_precision`, measured again (up to
    :data:`PROBE_ATTEMPTS` probes) while other processes took more than
    :data:`lib.report.rules.SHARED_MAX` of the machine's CPU during it
    (:func:`lib.report.rules.machine_shared` on :mod:`lib.clock`'s counters). The result
    carries ``machine`` (that verdict on the last probe) and ``others_share``."""
    from lib.clock import Clock
    from lib.report.rules import machine_shared

    for attempt in range(1, PROBE_ATTEMPTS + 1):
        window = Clock()
        found = decide(probe_precision(models, batch_size, eval_batch_size))
        took = window.summary()
        verdict, share = machine_shared(took["cpu"], took["wall_s"])
        found.update(machine=verdict, others_share=None if share != share else round(share, 3))
        if verdict != "shared":
            break
        print(f"precision auto: other processes took {100 * share:.0f} % of the CPU during "
              "the probe" + (", measuring again" if attempt < PROBE_ATTEMPTS else ""),
              flush=True)
    return found


def stored_choice(decoders: Sequence[str]) -> dict[str, Any] | None:
    """The choice kept for ``decoders`` on this machine, or None when none was measured.

    Raises:
        CompanionError: the file is not a choice (names it, and to delete it).
    """
    from lib.errors import CompanionError
    from lib.fileio import load_json

    path = choice_path(decoders)
    if not path.exists():
        return None
    try:
        found = load_json(path)
        if all(found[use]["chose"] in ("bf16", "fp32") for use in USES):
            return found
    except (ValueError, KeyError, TypeError):
        pass
    raise CompanionError(f"{path} is not a precision choice: delete it and the next run "
                         "measures this machine again")


_MEASURED_HERE: dict[Path, dict[str, Any]] = {}
"""Choices this process measured, by file: a run resolves ``auto`` several times (each use,
each resolution) and measures once, even when its probe found the machine shared."""


def machine_choice(use: str, models: Sequence[Any], batch_size: int,
                   eval_batch_size: int) -> str:
    """``bf16`` or ``fp32`` for ``use`` on this CPU with native bf16: the stored choice for
    the run's decoders, else measured now (:func:`probe_quietly`, about a minute per
    decoder on two cores), stored and said in one line. A choice measured while the machine
    was shared is taken by this process (and section 1.6 says so) but measured again by the
    next one."""
    from lib.fileio import provenance, save_json

    decoders = [mc.decoder for mc in models]
    path = choice_path(decoders)
    found = _MEASURED_HERE.get(path) or stored_choice(decoders)
    if found is None or (found.get("machine") == "shared" and path not in _MEASURED_HERE):
        print(f"precision auto: measuring what bf16 buys on this machine ({', '.join(decoders)}"
              f", {PROBE_ROUNDS} rounds); kept in {path}", flush=True)
        found = probe_quietly(models, batch_size, eval_batch_size)
        found["provenance"] = provenance()
        save_json(path, found)
        _MEASURED_HERE[path] = found
        print("precision auto: " + ", ".join(
            f"{u} {found[u]['chose']} (bf16 {found[u]['speedup']:.2f}x, {found[u]['verdict']})"
            for u in USES) + ("" if found["machine"] != "shared" else
                              "; the next run measures again"), flush=True)
    return found[use]["chose"]
