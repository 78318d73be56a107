"""Each parameter's check: the value as the run holds it, or one line naming the parameter
and what to use (:func:`fail`). :data:`CHECKS` maps every parameter to its check;
:mod:`lib.config.resolve` applies them, then the checks across parameters.

The names a value may take come from the stage that knows them, imported when checked
(:data:`lib.prune.strategies.STRATEGIES`, :data:`lib.heal.healing.HEAL_VARIANTS`,
:data:`lib.train.loop.RECIPES`, :data:`lib.tasks.TASKS`, :data:`lib.data.spec.LEVERS`).

Stage: all (configuration). Explained in chapter 1 (book/01_building_a_speechllm.ipynb).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from lib.config.sections import MULTITASK_STARTS
from lib.data.spec import AUGMENTATIONS, CORPUS_RECIPES, lever_fields
from lib.device import PRECISIONS
from lib.errors import CompanionError


def fail(name: str, value: Any, what: str) -> None:
    raise CompanionError(f"parameter {name}={value!r}: {what}")


def _int(allow_zero: bool = False) -> Callable[[str, Any], int]:
    def check(name: str, v: Any) -> int:
        if not (isinstance(v, int) and not isinstance(v, bool) and (v >= 0 if allow_zero
                                                                     else v > 0)):
            fail(name, v, "use a " + ("non-negative" if allow_zero else "positive")
                  + " integer")
        return v
    return check


def _optional(check: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    return lambda name, v: None if v is None else check(name, v)


def _number(inside: Callable[[float], bool], what: str) -> Callable[[str, Any], float]:
    def check(name: str, v: Any) -> float:
        if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                and inside(v)):
            fail(name, v, what)
        return float(v)
    return check


_POSITIVE = _number(lambda v: v > 0, "use a positive number")
_NON_NEGATIVE = _number(lambda v: v >= 0, "use a number >= 0")
_SHARE = _number(lambda v: 0 < v <= 1, "use a number in (0, 1]")
_FRACTION = _number(lambda v: 0 <= v <= 1, "use a number in [0, 1]")


def _range(name: str, v: Any) -> tuple[float, float]:
    """A (low, high) pair of numbers; its limits are the corpus's (CorpusSpec checks them)."""
    if not (isinstance(v, (list, tuple)) and len(v) == 2 and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)):
        fail(name, v, "use two numbers [low, high]")
    return (float(v[0]), float(v[1]))


def _names(known: Callable[[], tuple[str, ...]] | None = None,
           allow_empty: bool = False) -> Callable[[str, Any], tuple]:
    """A list of names (one name is a list of one; empty only with ``allow_empty``), each
    one of ``known()``."""
    def check(name: str, v: Any) -> tuple[str, ...]:
        v = [v] if isinstance(v, str) else v
        if not (isinstance(v, (list, tuple)) and (v or allow_empty)
                and all(isinstance(x, str) and x.strip() for x in v)):
            fail(name, v, "use a list of names" if allow_empty else
                  "use a non-empty list of names")
        v = tuple(dict.fromkeys(x.strip() for x in v))
        if known is not None:
            bad = [x for x in v if x not in known()]
            if bad:
                fail(name, list(v), f"unknown {bad[0]!r}; use any of {', '.join(known())}")
        return v
    return check


def _levers(name: str, v: Any) -> tuple[str, ...]:
    """Lever names, each a name or ``name=amount`` (:func:`lib.data.spec.lever_fields`)."""
    v = _names(allow_empty=True)(name, v)
    for lever in v:
        try:
            lever_fields(lever)
        except CompanionError as err:
            fail(name, list(v), str(err))
    return tuple(lever.replace(" ", "") for lever in v)


def _one_of(known: Callable[[], tuple[str, ...]]) -> Callable[[str, Any], str]:
    def check(name: str, v: Any) -> str:
        if v not in known():
            fail(name, v, f"use one of {', '.join(known())}")
        return v
    return check


def _units(closed: bool) -> Callable[[str, Any], tuple[float, ...]]:
    """A non-empty list of numbers in [0, 1] (``closed``: weights, duplicates dropped) or
    (0, 1) (fractions), sorted; one number is a list of one."""
    def check(name: str, v: Any) -> tuple[float, ...]:
        v = [v] if isinstance(v, (int, float)) and not isinstance(v, bool) else v
        inside = (lambda x: 0 <= x <= 1) if closed else (lambda x: 0 < x < 1)
        if not (isinstance(v, (list, tuple)) and v and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and inside(x)
                for x in v)):
            what = ("weights in [0, 1], e.g. [0, 0.5, 1]" if closed else
                    "fractions in (0, 1), e.g. [0.25, 0.5]")
            fail(name, v, f"use a non-empty list of {what}")
        out = tuple(sorted(float(x) for x in v))
        return tuple(dict.fromkeys(out)) if closed else out
    return check


def _device(name: str, v: Any) -> str:
    if not (v in {"auto", "cpu", "cuda"} or str(v).startswith("cuda:")):
        fail(name, v, "use auto, cpu, cuda or cuda:N")
    return v


def _one_encoder(name: str, v: Any) -> str:
    names = _names()(name, v)
    if len(names) != 1:
        fail(name, v, "give one encoder")
    return names[0]


def _source(name: str, v: Any) -> str:
    if not (isinstance(v, str) and v):
        fail(name, v, "name one data source, e.g. synthetic:train")
    return v


def _recipes() -> tuple[str, ...]:
    from lib.train.loop import RECIPES

    return tuple(RECIPES)


def _strategies() -> tuple[str, ...]:
    from lib.prune.strategies import STRATEGIES

    return tuple(STRATEGIES)


def _variants() -> tuple[str, ...]:
    from lib.heal.healing import HEAL_VARIANTS

    return tuple(HEAL_VARIANTS)


def _tasks() -> tuple[str, ...]:
    from lib.tasks import TASKS

    return tuple(TASKS)


def _encoder_variant(name: str, v: str) -> None:
    from lib.build.components import encoder_variant

    try:
        encoder_variant(v)
    except CompanionError as err:
        fail(name, v, str(err).split(": ", 1)[-1])


def _covost_pair(name: str, v: str) -> None:
    kind, _, rest = v.partition(":")
    root, _, pair = rest.partition("#")
    src, sep, tgt = pair.partition("_")
    if kind != "covost2" or not (root and sep and src and tgt and ":" not in pair):
        fail(name, v, "write each as covost2:<folder>#<src>_<tgt>, e.g. "
              "covost2:/data/cv/fr#fr_en (the splits are read from the folder)")


def _distinct(name: str, v: Any, each: Callable[[str, str], None]) -> tuple[str, ...]:
    """A non-empty list of names, none twice (a repeat is refused, not dropped)."""
    names = [v] if isinstance(v, str) else v
    if not (isinstance(names, (list, tuple)) and names
            and all(isinstance(x, str) and x.strip() for x in names)):
        fail(name, v, "use a non-empty list of names")
    names = [x.strip() for x in names]
    twice = sorted({x for x in names if names.count(x) > 1})
    if twice:
        fail(name, list(v), f"names {', '.join(twice)} twice: list each once")
    for x in names:
        each(name, x)
    return tuple(names)


_POS, _NON_NEG = _int(), _int(allow_zero=True)
_PRECISION = _one_of(lambda: PRECISIONS)

CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "encoder": _one_encoder, "decoders": _names(), "train_data": _source,
    "test_data": _names(), "n_train": _POS, "n_test": _POS, "projector_stack": _POS,
    "projector_hidden": _POS, "lora_rank": _NON_NEG, "lora_alpha": _POS, "train_steps": _POS,
    "batch_size": _POS, "grad_accum": _POS, "learning_rate": _POSITIVE,
    "warmup_steps": _NON_NEG, "checkpoint_every": _POS, "eval_batch_size": _POS,
    "max_new_tokens": _POS, "eval_precision": _PRECISION,
    "max_test_utterances": _optional(_POS), "seed": _NON_NEG, "device": _device,
    "recipe": _one_of(_recipes), "ctc_epochs": _POSITIVE, "ctc_learning_rate": _POSITIVE,
    "ctc_batch_size": _POS, "precision": _PRECISION, "dev_utterances": _NON_NEG,
    "dev_every": _NON_NEG, "ctc_weight": _NON_NEGATIVE,
    "projector_learning_rate": _optional(_POSITIVE), "length_grouping": _NON_NEG,
    "rescore_beams": _NON_NEG, "rescore_weights": _units(closed=True),
    "piper_fraction": _FRACTION, "flite_fraction": _FRACTION, "text_fraction": _FRACTION,
    "augment_prob": _SHARE,
    "augment": _names(lambda: tuple(AUGMENTATIONS), allow_empty=True),
    **{name: _range for name in AUGMENTATIONS.values()},
    "levers": _levers, "lever_seeds": _POS,
    "corpus_recipe": _one_of(lambda: CORPUS_RECIPES),
    # chapter 2
    "n_score_utterances": _POS, "score_batch_size": _POS,
    "profile_fractions": _units(closed=False), "profile_utterances": _POS, "chance_draws": _POS, "agree_rho": _SHARE,
    "agree_overlap_gain": _SHARE, "specific_min": _SHARE,
    # chapter 3
    "prune_strategies": _names(_strategies), "prune_fractions": _units(closed=False),
    "calibration_utterances": _POS,
    "prune_loss_threshold": _number(lambda v: 0 < v < 1, "use a share of the range between "
                                    "the full model and the floor in (0, 1), e.g. 0.1"),
    "prune_threshold": _number(lambda v: 0 < v < 1,
                               "use a relative WER increase in (0, 1), e.g. 0.25"),
    # chapter 4
    "heal_variants": _names(_variants),
    "heal_fraction": _number(lambda v: 0 < v < 1,
                             "use a fraction of the layers in (0, 1), e.g. 0.4"),
    "heal_seeds": _POS, "heal_steps": _POS,
    "heal_batch_size": _POS, "heal_learning_rate": _POSITIVE, "heal_warmup_steps": _NON_NEG,
    "heal_lora_rank": _POS, "heal_lora_alpha": _POS, "cost_rounds": _POS,
    # chapter 5
    "tasks": _names(_tasks), "multitask_decoders": _names(allow_empty=True),
    "n_parallel_train": _POS, "n_parallel_test": _POS,
    "multitask_start": _one_of(lambda: MULTITASK_STARTS), "multitask_steps": _POS,
    "task_dev_utterances": _NON_NEG,
    "multitask_corpus": lambda name, v: _distinct(name, v, _covost_pair) if v else (),
    # chapter 6
    "transfer_encoders": lambda name, v: _distinct(name, v, _encoder_variant),
    "transfer_decoder": _one_encoder,
    "backbone_chosen_on": lambda name, v: v if isinstance(v, str) and v else fail(
        name, v, "name a task of tasks, or pooled"),
    "backbone_heal_variant": _one_of(_variants),
}
"""Parameter name -> its check, which returns the value as the run holds it (lists as
tuples, numbers as floats, precisions still unresolved)."""
