"""Validated configuration built from a chapter's papermill parameters.

A chapter's ``parameters`` cell holds literals only; the next cell calls
:func:`chapter1_config` (or a later chapter's builder), which checks every value, derives
what is derived, and fails with one line naming the parameter when something is off.
Presets are papermill parameter files in ``params/`` (``tiny``, ``default``, ``paper-*``).

Reading YAML and ``-p`` values is :mod:`lib.params`. Stage: all (configuration). Explained in
chapter 1 (book/01_building_a_speechllm.ipynb).
"""

from __future__ import annotations

import dataclasses

import hashlib
import json
import math
import os
import re
import warnings
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lib.chapter_params import (Chapter1Params, Chapter2Params, Chapter3Params, Chapter4Params,
                                param_names)
from lib.data.spec import CorpusSpec
from lib.errors import CompanionError
from lib.fileio import to_dict
from lib.params import load_yaml, reject_unknown
from lib.paths import REPO_ROOT


@dataclass(frozen=True)
class ModelConfig:
    """One SpeechLLM: which encoder, projector and decoder, and the LoRA on the decoder."""

    encoder: str = "whisper-base"  # offline alias, local folder or hub id
    decoder: str = "smollm2-135m"  # offline alias, local folder or hub id
    projector_stack: int = 5  # frames stacked: 50 Hz encoder -> 10 Hz LLM (paper)
    projector_hidden: int = 1024  # hidden width of the two-layer MLP
    lora_rank: int = 8  # 0 trains the projector alone
    lora_alpha: int = 16  # LoRA scale = alpha / rank
    lora_dropout: float = 0.05  # regularises the adapters on a small corpus
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")  # attention


@dataclass(frozen=True)
class TrainConfig:
    """How the projector and LoRA train."""

    steps: int = 100  # optimiser steps (a CPU budget; a GPU run wants thousands)
    batch_size: int = 8  # utterances per micro-batch (per device)
    grad_accum: int = 1  # micro-batches per optimiser step
    learning_rate: float = 2e-3  # peak AdamW learning rate
    warmup_steps: int = 10  # linear warm-up, then linear decay to 0
    weight_decay: float = 0.0  # the projector is small; no decay needed
    checkpoint_every: int = 25  # steps between resumable checkpoints
    seed: int = 0  # data order and initialisation
    recipe: str = "ctc-warmstart"  # "plain": projector and LoRA from scratch (the paper's)
    ctc_epochs: float = 4.0  # CTC warm-start passes over the training set (no LLM forward)
    ctc_learning_rate: float = 3e-3  # peak rate of the warm start (one-cycle schedule)
    ctc_batch_size: int = 64  # utterances per warm-start step (cheap: projector only)
    precision: str = "fp32"  # or "bf16" autocast: 2x faster on a CPU with native bf16
    dev_every: int = 100  # steps between WER checks on the dev subset (0: none)
    ctc_weight: float = 0.0  # the warm start's CTC loss, kept on while the LLM trains
    projector_learning_rate: float | None = None  # None: learning_rate
    # Batches drawn from pools of `length_grouping` batches sorted by length (HF Trainer's
    # group_by_length): less padding, same data per epoch. 0 or 1: plain random batches.
    length_grouping: int = 16


STRATEGIES = ("angular", "block-influence", "gromov", "sleb", "random", "oracle")
"""The pruning strategies (lib.strategies), in the order the chapters show them."""

HEAL_VARIANTS = ("none", "projector", "decoder", "both", "lora-all")
"""The healing variants (lib.heal)."""

RECIPES = ("ctc-warmstart", "plain")
"""Training recipes: see lib.ctc (warm start) and lib.train."""

PRECISIONS = ("auto", "bf16", "fp32")
"""``auto``: bf16 where the hardware runs it natively (a GPU, a CPU with AVX-512 BF16 or
AMX), else fp32."""


@dataclass(frozen=True)
class EvalConfig:
    """How the models are decoded and scored."""

    batch_size: int = 32  # utterances decoded together (amortises per-step overhead)
    max_new_tokens: int = 64  # greedy decoding stops at eos or here
    max_utterances: int | None = None  # cut each test set to N (a quick run, labelled)
    rescore_beams: int = 2  # beams re-ranked with the CTC head (0: no joint decoding)
    rescore_weights: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # tried on dev


@dataclass(frozen=True)
class Chapter1Config:
    """Everything chapter 1 needs, validated."""

    models: tuple[ModelConfig, ...]
    corpus: CorpusSpec
    train_data: str
    test_data: tuple[str, ...]
    train: TrainConfig
    eval: EvalConfig
    device: str = "auto"
    dev_utterances: int = 48  # held out from train_data: the learning curve's dev subset

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def config_hash(obj: Any, length: int = 12) -> str:
    """Short stable hash of a config, used to key cached results."""
    blob = json.dumps(to_dict(obj), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


# ----------------------------------------------------------------------------------------
# presets
# ----------------------------------------------------------------------------------------


def preset_names(root: Path = REPO_ROOT) -> list[str]:
    """The presets shipped in ``params/``."""
    return sorted(p.stem for p in (root / "params").glob("*.yaml"))


def load_preset(name: str, root: Path = REPO_ROOT,
                known: Collection[str] | None = None) -> dict[str, Any]:
    """Read a preset (a name in ``<root>/params/`` or a path to a YAML file) as a dict.

    The whole file is checked: its YAML, that it is a mapping, and that every key is a
    parameter of some chapter, so a misspelt name fails instead of being ignored.

    Args:
        name: a preset name (``tiny``) or the path of a ``.yaml`` file.
        root: the folder holding ``params/``.
        known: the valid parameter names; every chapter's (:func:`parameter_names`) by
            default.

    Raises:
        CompanionError: the preset does not exist, is not valid YAML, is not a mapping, or
            names an unknown parameter.
    """
    path = Path(name)
    if path.suffix not in {".yaml", ".yml"}:
        path = root / "params" / f"{name}.yaml"
    if not path.is_file():
        raise CompanionError(
            f"unknown preset '{name}': use one of {', '.join(preset_names(root)) or '(none)'}"
            " or a path to a .yaml file"
        )
    data = load_yaml(path.read_text(), f"preset {path}") or {}
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise CompanionError(f"preset {path} must hold NAME: VALUE lines")
    known = parameter_names() if known is None else known
    reject_unknown(data, known, f"unknown parameter {{names}} in preset {path}: fix or "
                   f"remove it; the chapters take {', '.join(sorted(known))}")
    return data


# ----------------------------------------------------------------------------------------
# validation helpers
# ----------------------------------------------------------------------------------------


def _check(cond: bool, name: str, value: Any, what: str) -> None:
    if not cond:
        raise CompanionError(f"parameter {name}={value!r}: {what}")


def _pos_int(params: dict, name: str, allow_zero: bool = False) -> int:
    v = params[name]
    ok = isinstance(v, int) and not isinstance(v, bool) and (v >= 0 if allow_zero else v > 0)
    _check(ok, name, v, "use a " + ("non-negative" if allow_zero else "positive") + " integer")
    return v


def _pos_float(params: dict, name: str) -> float:
    v = params[name]
    ok = (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
          and v > 0)
    _check(ok, name, v, "use a positive number")
    return float(v)


def _non_neg_float(params: dict, name: str) -> float:
    v = params[name]
    ok = (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
          and v >= 0)
    _check(ok, name, v, "use a number >= 0")
    return float(v)


def _share(params: dict, name: str) -> float:
    v = params[name]
    ok = (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
          and 0 < v <= 1)
    _check(ok, name, v, "use a number in (0, 1]")
    return float(v)


def _str_list(params: dict, name: str) -> tuple[str, ...]:
    v = params[name]
    if isinstance(v, str):
        v = [v]
    ok = isinstance(v, (list, tuple)) and len(v) > 0 and all(
        isinstance(x, str) and x.strip() for x in v)
    _check(ok, name, v, "use a non-empty list of names")
    return tuple(x.strip() for x in v)


# The names of a chapter's parameters cell, from its class in lib.chapter_params.
CHAPTER1_PARAMS = param_names(Chapter1Params)


def chapter1_config(**params: Any) -> Chapter1Config:
    """Build chapter 1's config from its papermill parameters (flat literals).

    Raises:
        CompanionError: one line naming the first bad or missing parameter.
    """
    reject_unknown(params, CHAPTER1_PARAMS, f"unknown parameter(s) {{names}}: chapter 1 takes "
                   f"{', '.join(CHAPTER1_PARAMS)}")
    missing = [k for k in CHAPTER1_PARAMS if k not in params]
    if missing:
        raise CompanionError(f"missing parameter(s) {', '.join(missing)} for chapter 1")
    encoder = _str_list(params, "encoder")
    _check(len(encoder) == 1, "encoder", params["encoder"], "give one encoder")
    decoders = _str_list(params, "decoders")
    lora_rank = _pos_int(params, "lora_rank", allow_zero=True)
    models = tuple(
        ModelConfig(
            encoder=encoder[0], decoder=d,
            projector_stack=_pos_int(params, "projector_stack"),
            projector_hidden=_pos_int(params, "projector_hidden"),
            lora_rank=lora_rank, lora_alpha=_pos_int(params, "lora_alpha"),
        )
        for d in decoders
    )
    steps = _pos_int(params, "train_steps")
    warmup = _pos_int(params, "warmup_steps", allow_zero=True)
    _check(warmup < steps, "warmup_steps", warmup, f"must be below train_steps={steps}")
    recipe = params["recipe"]
    _check(recipe in RECIPES, "recipe", recipe, f"use one of {', '.join(RECIPES)}")
    device = params["device"]
    _check(device in {"auto", "cpu", "cuda"} or str(device).startswith("cuda:"), "device",
           device, "use auto, cpu, cuda or cuda:N")
    precision = params["precision"]
    _check(precision in PRECISIONS, "precision", precision,
           f"use one of {', '.join(PRECISIONS)}")
    train = TrainConfig(
        steps=steps, batch_size=_pos_int(params, "batch_size"),
        grad_accum=_pos_int(params, "grad_accum"),
        learning_rate=_pos_float(params, "learning_rate"), warmup_steps=warmup,
        checkpoint_every=_pos_int(params, "checkpoint_every"),
        seed=_pos_int(params, "seed", allow_zero=True),
        recipe=recipe, ctc_epochs=_pos_float(params, "ctc_epochs"),
        ctc_learning_rate=_pos_float(params, "ctc_learning_rate"),
        ctc_batch_size=_pos_int(params, "ctc_batch_size"),
        precision=resolve_precision(precision, device),
        dev_every=_pos_int(params, "dev_every", allow_zero=True),
        ctc_weight=_non_neg_float(params, "ctc_weight"),
        projector_learning_rate=(None if params["projector_learning_rate"] is None
                                 else _pos_float(params, "projector_learning_rate")),
        length_grouping=_pos_int(params, "length_grouping", allow_zero=True),
    )
    dev = _pos_int(params, "dev_utterances", allow_zero=True)
    max_utt = params["max_test_utterances"]
    if max_utt is not None:
        max_utt = _pos_int(params, "max_test_utterances")
    evalc = EvalConfig(batch_size=_pos_int(params, "eval_batch_size"),
                       max_new_tokens=_pos_int(params, "max_new_tokens"),
                       max_utterances=max_utt,
                       rescore_beams=_pos_int(params, "rescore_beams", allow_zero=True),
                       rescore_weights=_weights(params, "rescore_weights"))
    # The corpus is a fixed data set: its own seed (0), not the training seed.
    corpus = CorpusSpec(n_train=_pos_int(params, "n_train"), n_test=_pos_int(params, "n_test"))
    train_data = params["train_data"]
    _check(isinstance(train_data, str) and bool(train_data), "train_data", train_data,
           "name one data source, e.g. synthetic:train")
    if train_data == "synthetic:train":  # its size is known now: fail before building it
        _check(dev < corpus.n_train, "dev_utterances", dev,
               f"leaves nothing to train on ({corpus.n_train} synthetic training utterances, "
               "n_train): lower dev_utterances or raise n_train")
    test_data = _str_list(params, "test_data")
    for test in shared_sources(train_data, test_data):
        warnings.warn(
            f"train_data {train_data!r} and test_data {test!r} share utterances: its scores "
            "measure memorisation, not transcription; test on data the training does not "
            "see (another source or split)",
            DataOverlapWarning, stacklevel=2)
    return Chapter1Config(models=models, corpus=corpus, train_data=train_data,
                          test_data=test_data, train=train, eval=evalc, device=device,
                          dev_utterances=dev)


class DataOverlapWarning(UserWarning):
    """The training data and a test set share utterances (one line naming both)."""


def _locations(source: str) -> set[str]:
    """Where a data source's utterances live, as normalised ``where#what`` strings.

    ``librispeech:<root>#a,b`` becomes one location per split folder, so that a root with
    ``#test-clean`` and the ``test-clean`` folder itself are the same location.
    """
    kind, _, rest = source.strip().partition(":")
    path, _, split = rest.partition("#")
    if kind not in {"librispeech", "manifest"} or not path:
        return {source.strip()}  # synthetic:train, synthetic:test, real, unknown forms
    full = os.path.abspath(os.path.expanduser(path))
    splits = [x.strip() for x in split.split(",") if x.strip()]
    if kind == "librispeech":
        return {os.path.join(full, x) for x in splits} if splits else {full}
    return {f"{full}#{x}" for x in splits} if splits else {full}


def _overlaps(a: str, b: str) -> bool:
    """Two locations share utterances: equal, one inside the other, or a whole manifest."""
    if a == b:
        return True
    a_file, b_file = a.split("#")[0], b.split("#")[0]
    if a_file == b_file and ("#" not in a or "#" not in b):  # a whole manifest and a split
        return True
    if "#" in a or "#" in b:
        return False
    return a.startswith(b.rstrip(os.sep) + os.sep) or b.startswith(a.rstrip(os.sep) + os.sep)


def shared_sources(train_data: str, test_data: Sequence[str]) -> list[str]:
    """The test sources that hold utterances of the training source.

    The same name twice (``real`` and ``real``), the same LibriSpeech split named as the
    root with ``#split`` or as its folder, a whole manifest and one of its splits.

    Args:
        train_data: the training data source (a :mod:`lib.data.sources` name).
        test_data: the test data sources.

    Returns:
        The overlapping test sources, in the order given.
    """
    train = _locations(train_data)
    return [test for test in test_data
            if any(_overlaps(a, b) for a in train for b in _locations(test))]


@dataclass(frozen=True)
class ScoreConfig:
    """How redundancy is scored (chapter 2)."""

    n_utterances: int = 64  # test utterances (and their transcripts) scored
    batch_size: int = 8  # sequences per forward pass
    ablation_block: int = 4  # block size n whose removal is checked directly
    ablation_utterances: int = 32  # utterances per removal in that check
    chance_draws: int = 1000  # shuffled surfaces behind each chance baseline
    agree_rho: float = 0.8  # per-n Spearman mean for "the same blocks" (lib.agreement)
    agree_overlap_gain: float = 0.5  # overlap gain over chance for "the same blocks"


@dataclass(frozen=True)
class Chapter2Config:
    """Chapter 2: the chapter 1 models (reused from the cache) and the scoring."""

    base: Chapter1Config
    score: ScoreConfig

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


CHAPTER2_PARAMS = param_names(Chapter2Params)  # chapter 1's, then the scoring ones


def parameter_names() -> tuple[str, ...]:
    """Every chapter's parameter names: the union of this module's ``CHAPTER<N>_PARAMS``.

    A new chapter's tuple counts as soon as it is defined here; presets are checked
    against this set (:func:`load_preset`).
    """
    groups = [value for key, value in sorted(globals().items())
              if re.fullmatch(r"CHAPTER\d+_PARAMS", key)]
    return tuple(dict.fromkeys(name for group in groups for name in group))


def _require(params: dict[str, Any], names: Sequence[str], chapter: int) -> None:
    """Exactly the chapter's parameters: one line naming an unknown or a missing one."""
    reject_unknown(params, names, f"unknown parameter(s) {{names}}: chapter {chapter} takes "
                   f"{', '.join(names)}")
    missing = [k for k in names if k not in params]
    if missing:
        raise CompanionError(f"missing parameter(s) {', '.join(missing)} for chapter {chapter}")


def chapter2_config(**params: Any) -> Chapter2Config:
    """Build chapter 2's config: chapter 1's parameters plus the scoring ones.

    Raises:
        CompanionError: one line naming the first bad, unknown or missing parameter.
    """
    _require(params, CHAPTER2_PARAMS, 2)
    base = chapter1_config(**{k: params[k] for k in CHAPTER1_PARAMS})
    score = ScoreConfig(
        n_utterances=_pos_int(params, "n_score_utterances"),
        batch_size=_pos_int(params, "score_batch_size"),
        ablation_block=_pos_int(params, "ablation_block"),
        ablation_utterances=_pos_int(params, "ablation_utterances"),
        chance_draws=_pos_int(params, "chance_draws"),
        agree_rho=_share(params, "agree_rho"),
        agree_overlap_gain=_share(params, "agree_overlap_gain"),
    )
    return Chapter2Config(base=base, score=score)


@dataclass(frozen=True)
class PruneConfig:
    """How the models are pruned and the curves measured (chapter 3)."""

    strategies: tuple[str, ...]
    fractions: tuple[float, ...]
    curve_utterances: int
    calibration_utterances: int
    threshold: float


@dataclass(frozen=True)
class HealConfig:
    """How the pruned models are healed (chapter 4)."""

    variants: tuple[str, ...]
    fraction: float
    curve_fractions: tuple[float, ...]
    lora_rank: int
    lora_alpha: int
    train: TrainConfig  # steps, batch, rate, warm-up of the healing runs
    cost_rounds: int = 3  # rounds of the speed and memory check


@dataclass(frozen=True)
class Chapter3Config:
    """Chapter 3: chapter 2's models and scores, and the pruning."""

    base: Chapter1Config
    score: ScoreConfig
    prune: PruneConfig

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


@dataclass(frozen=True)
class Chapter4Config(Chapter3Config):
    """Chapter 4: chapter 3's pruning, and the healing."""

    heal: HealConfig | None = None


CHAPTER3_PARAMS = param_names(Chapter3Params)
CHAPTER4_PARAMS = param_names(Chapter4Params)


def _unit_list(params: dict, name: str, closed: bool) -> tuple[float, ...]:
    """A non-empty list of numbers in [0, 1] (``closed``) or (0, 1), sorted; one number is
    a list of one."""
    v = params[name]
    v = [v] if isinstance(v, (int, float)) and not isinstance(v, bool) else v
    inside = (lambda x: 0 <= x <= 1) if closed else (lambda x: 0 < x < 1)
    ok = isinstance(v, (list, tuple)) and len(v) > 0 and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and inside(x) for x in v)
    what = ("weights in [0, 1], e.g. [0, 0.5, 1]" if closed else
            "fractions in (0, 1), e.g. [0.25, 0.5]")
    _check(ok, name, v, f"use a non-empty list of {what}")
    return tuple(sorted(float(x) for x in v))


def _weights(params: dict, name: str) -> tuple[float, ...]:
    return tuple(dict.fromkeys(_unit_list(params, name, closed=True)))


def _fractions(params: dict, name: str) -> tuple[float, ...]:
    return _unit_list(params, name, closed=False)


def _names(params: dict, name: str, known: Any) -> tuple[str, ...]:
    v = _str_list(params, name)
    bad = [x for x in v if x not in known]
    _check(not bad, name, v, f"unknown {bad[0] if bad else ''!r}; use any of "
           f"{', '.join(known)}")
    return tuple(dict.fromkeys(v))


def chapter3_config(**params: Any) -> Chapter3Config:
    """Build chapter 3's config: chapter 2's parameters plus the pruning ones.

    Raises:
        CompanionError: one line naming the first bad, unknown or missing parameter.
    """
    _require(params, CHAPTER3_PARAMS, 3)
    ch2 = chapter2_config(**{k: params[k] for k in CHAPTER2_PARAMS})
    t = params["prune_threshold"]
    _check(isinstance(t, (int, float)) and not isinstance(t, bool) and 0 < t < 1,
           "prune_threshold", t, "use a relative WER increase in (0, 1), e.g. 0.25")
    prune = PruneConfig(
        strategies=_names(params, "prune_strategies", STRATEGIES),
        fractions=_fractions(params, "prune_fractions"),
        curve_utterances=_pos_int(params, "curve_utterances"),
        calibration_utterances=_pos_int(params, "calibration_utterances"),
        threshold=float(t))
    return Chapter3Config(base=ch2.base, score=ch2.score, prune=prune)


def chapter4_config(**params: Any) -> Chapter4Config:
    """Build chapter 4's config: chapter 3's parameters plus the healing ones.

    Raises:
        CompanionError: one line naming the first bad, unknown or missing parameter.
    """
    _require(params, CHAPTER4_PARAMS, 4)
    ch3 = chapter3_config(**{k: params[k] for k in CHAPTER3_PARAMS})
    fr = params["heal_fraction"]
    _check(isinstance(fr, (int, float)) and not isinstance(fr, bool) and 0 < fr < 1,
           "heal_fraction", fr, "use a fraction of the layers in (0, 1), e.g. 0.4")
    b = ch3.base.train
    train = dataclasses.replace(
        b, steps=_pos_int(params, "heal_steps"), batch_size=_pos_int(params, "heal_batch_size"),
        grad_accum=1, learning_rate=_pos_float(params, "heal_learning_rate"),
        warmup_steps=_pos_int(params, "heal_warmup_steps", allow_zero=True),
        weight_decay=0.0, checkpoint_every=max(1, min(b.checkpoint_every,
                                                      params["heal_steps"])),
        recipe="plain", dev_every=0, ctc_weight=0.0, projector_learning_rate=None)
    heal = HealConfig(
        variants=_names(params, "heal_variants", tuple(HEAL_VARIANTS)),
        fraction=float(fr), curve_fractions=_fractions(params, "heal_curve_fractions"),
        lora_rank=_pos_int(params, "heal_lora_rank"),
        lora_alpha=_pos_int(params, "heal_lora_alpha"), train=train,
        cost_rounds=_pos_int(params, "cost_rounds"))
    return Chapter4Config(base=ch3.base, score=ch3.score, prune=ch3.prune, heal=heal)


def resolve_precision(precision: str, device: str = "auto") -> str:
    """``auto`` -> ``bf16`` where it runs natively (a GPU, or a CPU with AVX-512 BF16 /
    AMX, where bf16 autocast is about 2x faster than fp32), else ``fp32``.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).
    """
    import torch

    if precision != "auto":
        return precision
    if str(device).startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        return "bf16"
    return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``."""
    import os

    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"  # one GPU per process
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CompanionError(f"device={device!r} but no GPU is visible: use device='cpu'")
    return device


__all__ = [
    "ModelConfig", "TrainConfig", "EvalConfig", "Chapter1Config", "chapter1_config",
    "ScoreConfig", "Chapter2Config", "chapter2_config", "CHAPTER1_PARAMS", "CHAPTER2_PARAMS",
    "load_preset", "preset_names", "config_hash", "to_dict", "resolve_device",
    "parameter_names", "PruneConfig", "HealConfig", "Chapter3Config", "Chapter4Config",
    "chapter3_config", "chapter4_config", "CHAPTER3_PARAMS", "CHAPTER4_PARAMS",
    "DataOverlapWarning", "shared_sources",
]
