"""Validated configs built from a chapter's parameters: one line naming a bad value.

A chapter's notebook calls :func:`chapter_config` with its namespace: the preset it starts
from, the overrides of parameters it inherits, and its own parameters (the ``parameters``
cell). The values are resolved by :func:`lib.config.presets.chapter_values` and checked
here, each failure one line naming the parameter; the result is the chapter's config, made
of the typed sections of :mod:`lib.config.sections` that the stages take whole. The names a
value may take come from the stage that knows them: the pruning strategies from
:data:`lib.prune.strategies.STRATEGIES`, the healing variants from
:data:`lib.heal.healing.HEAL_VARIANTS`, the training recipes from
:data:`lib.train.loop.RECIPES`.

Stage: all (configuration). Explained in chapter 1 (book/01_building_a_speechllm.ipynb).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from lib.config.defaults import CHAPTER_PARAMS, own_names, param_names
from lib.config.presets import chapter_values
from lib.config.sections import (Chapter1Config, Chapter2Config, Chapter3Config,
                                 Chapter4Config, Chapter5Config, EvalConfig, HealConfig,
                                 MULTITASK_STARTS, ModelConfig, MultitaskConfig,
                                 PruneConfig, ScoreConfig, TrainConfig)
from lib.data.sources import DataOverlapWarning, shared_sources
from lib.data.spec import CorpusSpec
from lib.device import PRECISIONS, resolve_precision
from lib.errors import CompanionError
from lib.params import reject_unknown

CHAPTER1_PARAMS = param_names(CHAPTER_PARAMS[1])
CHAPTER2_PARAMS = param_names(CHAPTER_PARAMS[2])


def chapter_config(chapter: int, namespace: Mapping[str, Any]) -> Any:
    """The validated config of a chapter's notebook, read from its namespace.

    ``namespace`` (the notebook's ``globals()``) holds ``preset``, ``overrides`` and the
    chapter's own parameters (:func:`lib.config.defaults.own_names`); everything the
    chapter inherits comes from the preset and the overrides. ``cfg.summary()`` says
    where the values came from.

    Raises:
        CompanionError: one line naming a missing, unknown or bad parameter.
    """
    missing = [k for k in ("preset", *own_names(chapter)) if k not in namespace]
    if missing:
        raise CompanionError(f"missing parameter(s) {', '.join(missing)} for chapter "
                             f"{chapter}: the parameters cell sets them")
    overrides = namespace.get("overrides") or {}
    if not isinstance(overrides, Mapping):
        raise CompanionError(f"overrides={overrides!r}: use a mapping of parameter names to "
                             "values, e.g. {'train_steps': 50}")
    own = {k: namespace[k] for k in own_names(chapter)}
    values, source = chapter_values(chapter, str(namespace["preset"]), overrides, own)
    return BUILDERS[chapter](_source=source, **values)


def config_for(chapter: int, preset: str, changes: Mapping[str, Any] | None = None) -> Any:
    """A chapter's validated config from a preset and ``-p`` changes (own or inherited),
    for code outside a notebook (``python -m lib.experiment``, tests).

    Raises:
        CompanionError: one line naming an unknown or bad parameter.
    """
    changes = dict(changes or {})
    mine = own_names(chapter)
    own = {k: v for k, v in changes.items() if k in mine}
    values, source = chapter_values(chapter, preset,
                                    {k: v for k, v in changes.items() if k not in mine}, own)
    return BUILDERS[chapter](_source=source, **values)


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


def _number(params: dict, name: str, inside: Any, what: str) -> float:
    """A finite number (not a bool) for which ``inside`` holds, as a float."""
    v = params[name]
    ok = (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
          and inside(v))
    _check(ok, name, v, what)
    return float(v)


def _pos_float(params: dict, name: str) -> float:
    return _number(params, name, lambda v: v > 0, "use a positive number")


def _non_neg_float(params: dict, name: str) -> float:
    return _number(params, name, lambda v: v >= 0, "use a number >= 0")


def _share(params: dict, name: str) -> float:
    return _number(params, name, lambda v: 0 < v <= 1, "use a number in (0, 1]")


def _str_list(params: dict, name: str) -> tuple[str, ...]:
    v = params[name]
    if isinstance(v, str):
        v = [v]
    ok = isinstance(v, (list, tuple)) and len(v) > 0 and all(
        isinstance(x, str) and x.strip() for x in v)
    _check(ok, name, v, "use a non-empty list of names")
    return tuple(x.strip() for x in v)


def _require(params: dict[str, Any], names: Sequence[str], chapter: int) -> None:
    """Exactly the chapter's parameters: one line naming an unknown or a missing one."""
    reject_unknown(params, names, f"unknown parameter(s) {{names}}: chapter {chapter} takes "
                   f"{', '.join(names)}")
    missing = [k for k in names if k not in params]
    if missing:
        raise CompanionError(f"missing parameter(s) {', '.join(missing)} for chapter {chapter}")


def _earlier(params: dict[str, Any], chapter: int, _source: dict[str, Any] | None) -> Any:
    """Check that ``params`` are exactly chapter ``chapter``'s, then build the previous
    chapter's config from the ones it takes (each chapter's config extends the previous)."""
    _require(params, param_names(CHAPTER_PARAMS[chapter]), chapter)
    names = param_names(CHAPTER_PARAMS[chapter - 1])
    return BUILDERS[chapter - 1](_source, **{k: params[k] for k in names})


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


def _one_of(params: dict, name: str, known: Sequence[str]) -> str:
    v = params[name]
    _check(v in known, name, v, f"use one of {', '.join(known)}")
    return v


def _names(params: dict, name: str, known: Any) -> tuple[str, ...]:
    v = _str_list(params, name)
    bad = [x for x in v if x not in known]
    _check(not bad, name, v, f"unknown {bad[0] if bad else ''!r}; use any of "
           f"{', '.join(known)}")
    return tuple(dict.fromkeys(v))


# ----------------------------------------------------------------------------------------
# the chapters' configs
# ----------------------------------------------------------------------------------------


def chapter1_config(_source: dict[str, Any] | None = None, **params: Any) -> Chapter1Config:
    """Build chapter 1's config from every one of its parameters (flat values).

    Args:
        _source: where the values came from (:func:`lib.config.presets.chapter_values`).

    Raises:
        CompanionError: one line naming the first bad, unknown or missing parameter.
    """
    _require(params, CHAPTER1_PARAMS, 1)
    device = params["device"]
    _check(device in {"auto", "cpu", "cuda"} or str(device).startswith("cuda:"), "device",
           device, "use auto, cpu, cuda or cuda:N")
    models, train, evalc = _models(params), _train(params, device), _eval(params, device)
    dev = _pos_int(params, "dev_utterances", allow_zero=True)
    # The corpus is a fixed data set: its own seed (0), not the training seed.
    corpus = CorpusSpec(n_train=_pos_int(params, "n_train"), n_test=_pos_int(params, "n_test"))
    train_data, test_data = _data(params, dev, corpus)
    return Chapter1Config(models=models, corpus=corpus, train_data=train_data,
                          test_data=test_data, train=train, eval=evalc, device=device,
                          dev_utterances=dev, source=dict(_source or {}))


def _models(params: dict[str, Any]) -> tuple[ModelConfig, ...]:
    """One :class:`ModelConfig` per decoder, all on the one encoder."""
    encoder = _str_list(params, "encoder")
    _check(len(encoder) == 1, "encoder", params["encoder"], "give one encoder")
    lora_rank = _pos_int(params, "lora_rank", allow_zero=True)
    return tuple(
        ModelConfig(encoder=encoder[0], decoder=d,
                    projector_stack=_pos_int(params, "projector_stack"),
                    projector_hidden=_pos_int(params, "projector_hidden"),
                    lora_rank=lora_rank, lora_alpha=_pos_int(params, "lora_alpha"))
        for d in _str_list(params, "decoders"))


def _train(params: dict[str, Any], device: str) -> TrainConfig:
    """Chapter 1's training section, its precision resolved for ``device``."""
    from lib.train.loop import RECIPES

    steps = _pos_int(params, "train_steps")
    warmup = _pos_int(params, "warmup_steps", allow_zero=True)
    _check(warmup < steps, "warmup_steps", warmup, f"must be below train_steps={steps}")
    recipe = _one_of(params, "recipe", tuple(RECIPES))
    precision = params["precision"]
    _check(precision in PRECISIONS, "precision", precision,
           f"use one of {', '.join(PRECISIONS)}")
    return TrainConfig(
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


def _eval(params: dict[str, Any], device: str) -> EvalConfig:
    """Chapter 1's decoding section, its precision resolved for ``device``."""
    max_utt = params["max_test_utterances"]
    if max_utt is not None:
        max_utt = _pos_int(params, "max_test_utterances")
    precision = _one_of(params, "eval_precision", PRECISIONS)
    return EvalConfig(batch_size=_pos_int(params, "eval_batch_size"),
                      max_new_tokens=_pos_int(params, "max_new_tokens"),
                      precision=resolve_precision(precision, device),
                      max_utterances=max_utt,
                      rescore_beams=_pos_int(params, "rescore_beams", allow_zero=True),
                      rescore_weights=_weights(params, "rescore_weights"))


def _data(params: dict[str, Any], dev: int, corpus: CorpusSpec) -> tuple[str, tuple[str, ...]]:
    """The training and test sources; a test source that shares the training one's
    utterances is a :class:`DataOverlapWarning`."""
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
            DataOverlapWarning, stacklevel=4)
    return train_data, test_data


def chapter2_config(_source: dict[str, Any] | None = None, **params: Any) -> Chapter2Config:
    """Build chapter 2's config: chapter 1's parameters plus the scoring ones.

    Raises:
        CompanionError: one line naming the first bad, unknown or missing parameter.
    """
    base = _earlier(params, 2, _source)
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


def chapter3_config(_source: dict[str, Any] | None = None, **params: Any) -> Chapter3Config:
    """Build chapter 3's config: chapter 2's parameters plus the pruning ones.

    Raises:
        CompanionError: one line naming the first bad, unknown or missing parameter.
    """
    from lib.prune.strategies import STRATEGIES

    ch2 = _earlier(params, 3, _source)
    t = _number(params, "prune_threshold", lambda v: 0 < v < 1,
                "use a relative WER increase in (0, 1), e.g. 0.25")
    prune = PruneConfig(
        strategies=_names(params, "prune_strategies", tuple(STRATEGIES)),
        fractions=_fractions(params, "prune_fractions"),
        curve_utterances=_pos_int(params, "curve_utterances"),
        calibration_utterances=_pos_int(params, "calibration_utterances"),
        threshold=t)
    return Chapter3Config(base=ch2.base, score=ch2.score, prune=prune)


def chapter4_config(_source: dict[str, Any] | None = None, **params: Any) -> Chapter4Config:
    """Build chapter 4's config: chapter 3's parameters plus the healing ones.

    Raises:
        CompanionError: one line naming the first bad, unknown or missing parameter.
    """
    from lib.heal.healing import HEAL_VARIANTS

    ch3 = _earlier(params, 4, _source)
    fr = _number(params, "heal_fraction", lambda v: 0 < v < 1,
                 "use a fraction of the layers in (0, 1), e.g. 0.4")
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
        fraction=fr, curve_fractions=_fractions(params, "heal_curve_fractions"),
        lora_rank=_pos_int(params, "heal_lora_rank"),
        lora_alpha=_pos_int(params, "heal_lora_alpha"), train=train,
        cost_rounds=_pos_int(params, "cost_rounds"))
    return Chapter4Config(base=ch3.base, score=ch3.score, prune=ch3.prune, heal=heal)


def chapter5_config(_source: dict[str, Any] | None = None, **params: Any) -> Chapter5Config:
    """Build chapter 5's config: chapter 4's parameters plus the multi-task ones.

    Raises:
        CompanionError: one line naming the first bad, unknown or missing parameter.
    """
    from lib.tasks import TASKS

    ch4 = _earlier(params, 5, _source)
    tasks = _names(params, "tasks", tuple(TASKS))
    _check("asr" in tasks, "tasks", list(tasks), "include asr: chapter 5 compares English "
           "ASR with chapter 1's model")
    steps = _pos_int(params, "multitask_steps")
    b = ch4.base.train
    _check(b.warmup_steps < steps, "multitask_steps", steps,
           f"must be above warmup_steps={b.warmup_steps}")
    mt = MultitaskConfig(
        tasks=tasks, n_train=_pos_int(params, "n_parallel_train"),
        n_test=_pos_int(params, "n_parallel_test"),
        dev_per_task=_pos_int(params, "task_dev_utterances", allow_zero=True),
        start=_one_of(params, "multitask_start", MULTITASK_STARTS),
        train=dataclasses.replace(b, steps=steps,
                                  checkpoint_every=max(1, min(b.checkpoint_every, steps))))
    return Chapter5Config(base=ch4.base, score=ch4.score, prune=ch4.prune, heal=ch4.heal,
                          multitask=mt)


BUILDERS = {1: chapter1_config, 2: chapter2_config, 3: chapter3_config, 4: chapter4_config,
            5: chapter5_config}
"""Chapter number -> its config builder (a new chapter adds one line)."""
