"""A chapter's parameters resolved once into its run (:class:`lib.config.sections.Run`).

One function, :func:`resolve`, everywhere (the book's runner, a notebook run by hand,
``python -m lib.experiment``, tests), in one order::

    defaults  <-  the preset  <-  the parameters cell (where it differs from the default)
              <-  changes (-p NAME VALUE)

Every value is checked here, each failure one line naming the parameter. Each parameter
fills one field of one section, found by its name (:func:`field_of`), never by a
hand-written rename: ``heal_steps`` is ``heal.steps``, ``eval_batch_size`` is
``eval.batch_size``, ``chance_draws`` is ``score.chance_draws``. The names a value may take
come from the stage that knows them (:data:`lib.prune.strategies.STRATEGIES`,
:data:`lib.heal.healing.HEAL_VARIANTS`, :data:`lib.train.loop.RECIPES`,
:data:`lib.tasks.TASKS`).

Stage: all (configuration). Explained in chapter 1 (book/01_building_a_speechllm.ipynb).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lib.clock
from lib.config.defaults import CHAPTER_PARAMS, defaults, own_names, param_names
from lib.config.presets import load_preset, preset_label
from lib.config.sections import (MULTITASK_STARTS, SECTIONS, ModelConfig, Record, Run,
                                 section_fields)
from lib.data.spec import CorpusSpec
from lib.device import PRECISIONS, resolve_precision
from lib.errors import CompanionError
from lib.params import reject_unknown
from lib.paths import REPO_ROOT

CHAPTER_SECTIONS = {1: ("models", "train", "eval"), 2: ("score",), 3: ("prune",),
                    4: ("heal",), 5: ("multitask",),
                    6: ("transfer", "backbone")}
"""The sections each chapter adds to the run (chapter N's run holds chapters 1..N's)."""

RUN_FIELDS = ("device", "dev_utterances", "train_data", "test_data")
"""Parameters that are fields of the run itself."""

CORPUS_FIELDS = ("n_train", "n_test")
"""Parameters that are fields of the synthetic corpus (:class:`lib.data.spec.CorpusSpec`)."""


def field_of(name: str) -> str:
    """Where parameter ``name`` lives in a run, as a dotted path (``heal.steps``).

    The rule, with no exceptions but ``decoders`` (one :class:`ModelConfig` per decoder):
    a field of the run or its corpus of the same name; else the first section (in the order
    of :data:`lib.config.sections.SECTIONS`) whose ``PREFIX`` the name starts with and which
    has the rest as a field; else the first section with a field of the same name.

    Raises:
        CompanionError: no section holds it.
    """
    if name in RUN_FIELDS:
        return name
    if name in CORPUS_FIELDS:
        return f"corpus.{name}"
    if name == "decoders":
        return "models[].decoder"
    for attr, section in SECTIONS.items():
        rest = name[len(section.PREFIX):]
        if section.PREFIX and name.startswith(section.PREFIX) and rest in section_fields(section):
            return f"{attr}.{rest}"
    for attr, section in SECTIONS.items():
        if name in section_fields(section):
            return f"{attr}.{name}"
    raise CompanionError(f"parameter {name} has no field in the run's sections")


# ----------------------------------------------------------------------------------------
# checks: one per parameter, each a one-line error naming it
# ----------------------------------------------------------------------------------------


def _fail(name: str, value: Any, what: str) -> None:
    raise CompanionError(f"parameter {name}={value!r}: {what}")


def _int(allow_zero: bool = False) -> Callable[[str, Any], int]:
    def check(name: str, v: Any) -> int:
        if not (isinstance(v, int) and not isinstance(v, bool) and (v >= 0 if allow_zero
                                                                     else v > 0)):
            _fail(name, v, "use a " + ("non-negative" if allow_zero else "positive")
                  + " integer")
        return v
    return check


def _optional(check: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    return lambda name, v: None if v is None else check(name, v)


def _number(inside: Callable[[float], bool], what: str) -> Callable[[str, Any], float]:
    def check(name: str, v: Any) -> float:
        if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                and inside(v)):
            _fail(name, v, what)
        return float(v)
    return check


_POSITIVE = _number(lambda v: v > 0, "use a positive number")
_NON_NEGATIVE = _number(lambda v: v >= 0, "use a number >= 0")
_SHARE = _number(lambda v: 0 < v <= 1, "use a number in (0, 1]")


def _names(known: Callable[[], tuple[str, ...]] | None = None,
           allow_empty: bool = False) -> Callable[[str, Any], tuple]:
    """A list of names (one name is a list of one; empty only with ``allow_empty``), each
    one of ``known()``."""
    def check(name: str, v: Any) -> tuple[str, ...]:
        v = [v] if isinstance(v, str) else v
        if not (isinstance(v, (list, tuple)) and (v or allow_empty)
                and all(isinstance(x, str) and x.strip() for x in v)):
            _fail(name, v, "use a list of names" if allow_empty else
                  "use a non-empty list of names")
        v = tuple(dict.fromkeys(x.strip() for x in v))
        if known is not None:
            bad = [x for x in v if x not in known()]
            if bad:
                _fail(name, list(v), f"unknown {bad[0]!r}; use any of {', '.join(known())}")
        return v
    return check


def _one_of(known: Callable[[], tuple[str, ...]]) -> Callable[[str, Any], str]:
    def check(name: str, v: Any) -> str:
        if v not in known():
            _fail(name, v, f"use one of {', '.join(known())}")
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
            _fail(name, v, f"use a non-empty list of {what}")
        out = tuple(sorted(float(x) for x in v))
        return tuple(dict.fromkeys(out)) if closed else out
    return check


def _device(name: str, v: Any) -> str:
    if not (v in {"auto", "cpu", "cuda"} or str(v).startswith("cuda:")):
        _fail(name, v, "use auto, cpu, cuda or cuda:N")
    return v


def _one_encoder(name: str, v: Any) -> str:
    names = _names()(name, v)
    if len(names) != 1:
        _fail(name, v, "give one encoder")
    return names[0]


def _source(name: str, v: Any) -> str:
    if not (isinstance(v, str) and v):
        _fail(name, v, "name one data source, e.g. synthetic:train")
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
        _fail(name, v, str(err).split(": ", 1)[-1])


def _covost_pair(name: str, v: str) -> None:
    kind, _, rest = v.partition(":")
    root, _, pair = rest.partition("#")
    src, sep, tgt = pair.partition("_")
    if kind != "covost2" or not (root and sep and src and tgt and ":" not in pair):
        _fail(name, v, "write each as covost2:<folder>#<src>_<tgt>, e.g. "
              "covost2:/data/cv/fr#fr_en (the splits are read from the folder)")


def _distinct(name: str, v: Any, each: Callable[[str, str], None]) -> tuple[str, ...]:
    """A non-empty list of names, none twice (a repeat is refused, not dropped)."""
    names = [v] if isinstance(v, str) else v
    if not (isinstance(names, (list, tuple)) and names
            and all(isinstance(x, str) and x.strip() for x in names)):
        _fail(name, v, "use a non-empty list of names")
    names = [x.strip() for x in names]
    twice = sorted({x for x in names if names.count(x) > 1})
    if twice:
        _fail(name, list(v), f"names {', '.join(twice)} twice: list each once")
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
    "backbone_chosen_on": lambda name, v: v if isinstance(v, str) and v else _fail(
        name, v, "name a task of tasks, or pooled"),
    "backbone_heal_variant": _one_of(_variants),
}
"""Parameter name -> its check, which returns the value as the run holds it (lists as
tuples, numbers as floats, precisions still unresolved)."""


def _across(v: dict[str, Any], chapter: int) -> None:
    """The checks that involve two parameters, each one line naming the one to change."""
    if v["warmup_steps"] >= v["train_steps"]:
        _fail("warmup_steps", v["warmup_steps"], f"must be below train_steps={v['train_steps']}")
    if v["train_data"] == "synthetic:train" and v["dev_utterances"] >= v["n_train"]:
        _fail("dev_utterances", v["dev_utterances"],
              f"leaves nothing to train on ({v['n_train']} synthetic training utterances, "
              "n_train): lower dev_utterances or raise n_train")
    if chapter >= 5:
        if "asr" not in v["tasks"]:
            _fail("tasks", list(v["tasks"]), "include asr: chapter 5 compares English ASR "
                  "with chapter 1's model")
        if v["multitask_corpus"]:
            from lib.tasks import TASKS, serves

            pairs = [x.rpartition("#")[2] for x in v["multitask_corpus"]]
            idle = [t for t in v["tasks"] if not any(serves(TASKS[t], p) for p in pairs)]
            if idle:
                _fail("tasks", list(v["tasks"]), f"{', '.join(idle)} not served by the "
                      f"CoVoST 2 pairs {pairs} of multitask_corpus: add a pair or drop it")
        strays = [d for d in v["multitask_decoders"] if d not in v["decoders"]]
        if strays:
            _fail("multitask_decoders", list(v["multitask_decoders"]),
                  f"names {', '.join(strays)}, not among decoders={list(v['decoders'])}: name "
                  "some of those, or [] for all of them")
        if chapter >= 6 and v["backbone_chosen_on"] not in ("pooled", *v["tasks"]):
            _fail("backbone_chosen_on", v["backbone_chosen_on"],
                  f"is not a task the multi-task model was trained for (tasks="
                  f"{list(v['tasks'])}): name one of those, or pooled")
        if chapter >= 6 and v["transfer_decoder"] not in v["decoders"]:
            _fail("transfer_decoder", v["transfer_decoder"],
                  f"is not among decoders={list(v['decoders'])}: name one of those")
        if v["warmup_steps"] >= v["multitask_steps"]:
            _fail("multitask_steps", v["multitask_steps"],
                  f"must be above warmup_steps={v['warmup_steps']}")


def _overlap(train_data: str, test_data: tuple[str, ...]) -> None:
    """A test source that shares the training source's utterances is a
    :class:`lib.data.sources.DataOverlapWarning`."""
    from lib.data.sources import DataOverlapWarning, shared_sources

    for test in shared_sources(train_data, test_data):
        warnings.warn(
            f"train_data {train_data!r} and test_data {test!r} share utterances: its scores "
            "measure memorisation, not transcription; test on data the training does not "
            "see (another source or split)", DataOverlapWarning, stacklevel=4)


# ----------------------------------------------------------------------------------------
# resolving
# ----------------------------------------------------------------------------------------


def resolve_values(chapter: int, preset: str = "default",
                   changes: Mapping[str, Any] | None = None,
                   cell: Mapping[str, Any] | None = None,
                   root: Path = REPO_ROOT) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every parameter of ``chapter``, checked: defaults, then ``preset``, then the ``cell``
    values that differ from their defaults, then ``changes``.

    Args:
        preset: a preset name or ``.yaml`` path.
        changes: values of any of the chapter's parameters (``-p``; ``overrides``).
        cell: the chapter's own parameters as its parameters cell holds them.

    Returns:
        ``(values, source)``: name -> checked value, and where they came from
        (``preset``, ``changes``, ``cell``: the cell's values that differ from the defaults,
        ``own_set``: the chapter's own parameters the preset or a change set,
        ``inherited``: the values of the parameters the chapter inherits, ``set``: those
        the preset or a change set).

    Raises:
        CompanionError: an unknown chapter, preset or parameter, or a bad value.
    """
    if chapter not in CHAPTER_PARAMS:
        raise CompanionError(f"no chapter {chapter}: the chapters are "
                             f"{', '.join(map(str, CHAPTER_PARAMS))}")
    names, mine = param_names(CHAPTER_PARAMS[chapter]), own_names(chapter)
    changes, cell = dict(changes or {}), dict(cell or {})
    reject_unknown(changes, names, f"unknown parameter(s) {{names}}: chapter {chapter} takes "
                   f"{', '.join(names)}")
    reject_unknown(cell, mine, f"unknown parameter(s) {{names}}: chapter {chapter}'s own "
                   f"parameters are {', '.join(mine)}")
    default = defaults(chapter)
    edited = {k: v for k, v in cell.items() if _plain(v) != _plain(default[k])}
    preset_values = {k: v for k, v in load_preset(preset, root).items() if k in names}
    raw = {**default, **preset_values, **edited, **changes}
    values = {k: CHECKS[k](k, raw[k]) for k in names}
    _across(values, chapter)
    _overlap(values["train_data"], values["test_data"])
    inherited = [k for k in names if k not in mine]
    source = {"preset": preset, "changes": changes,
              "cell": {k: v for k, v in edited.items() if k not in changes},
              "own_set": {k: raw[k] for k in mine
                          if (k in preset_values or k in changes) and k not in edited},
              "inherited": {k: raw[k] for k in inherited},
              "set": [k for k in inherited if k in preset_values or k in changes]}
    return values, source


def build_run(chapter: int, values: Mapping[str, Any], preset: str = "default",
              record: Record | None = None, source: dict[str, Any] | None = None) -> Run:
    """The run of checked ``values`` (:func:`resolve_values`): each parameter put in its
    field (:func:`field_of`), the precisions resolved for the device."""
    sections: dict[str, Any] = {}
    by_section: dict[str, dict[str, Any]] = {}
    for name, value in values.items():
        where = field_of(name)
        if "." in where and not where.startswith(("models[]", "corpus.")):
            attr, f = where.split(".")
            by_section.setdefault(attr, {})[f] = value
    device = values["device"]
    for attr in ("train", "eval"):
        by_section[attr]["precision"] = resolve_precision(by_section[attr]["precision"], device)
    model = by_section["models"]
    sections["models"] = tuple(ModelConfig(**{**model, "decoder": d})
                               for d in values["decoders"])
    for c in range(1, chapter + 1):
        for attr in CHAPTER_SECTIONS[c]:
            if attr != "models":
                sections[attr] = SECTIONS[attr](**by_section[attr])
    # The corpus is a fixed data set: its own seed (0), not the training seed.
    corpus = CorpusSpec(**{k: values[k] for k in CORPUS_FIELDS})
    return Run(chapter=chapter, preset=preset, record=record or Record(), corpus=corpus,
               **{k: values[k] for k in RUN_FIELDS}, **sections, source=dict(source or {}),
               clock=lib.clock.CLOCK)  # the kernel's clock, read when the run is made


def resolve(chapter: int, namespace: Mapping[str, Any] | None = None, *,
            preset: str = "default", record: str | None = None,
            changes: Mapping[str, Any] | None = None, root: Path = REPO_ROOT,
            **cell: Any) -> Run:
    """A chapter's run, its parameters resolved once.

    In a notebook, ``resolve(4, globals())`` reads exactly the names of its parameters
    cell: ``preset``, ``record`` (set by the book's runner; ``hand`` by hand), ``overrides``
    (the ``-p`` changes) and the chapter's own parameters. Elsewhere, pass them by keyword.

    Raises:
        CompanionError: one line naming a missing, unknown or bad parameter.
    """
    if namespace is not None:
        missing = [k for k in ("preset", *own_names(chapter)) if k not in namespace]
        if missing:
            raise CompanionError(f"missing parameter(s) {', '.join(missing)} for chapter "
                                 f"{chapter}: the parameters cell sets them")
        preset, record = str(namespace["preset"]), namespace.get("record")
        changes = namespace.get("overrides") or {}
        cell = {k: namespace[k] for k in own_names(chapter)}
    if not isinstance(changes or {}, Mapping):
        raise CompanionError(f"overrides={changes!r}: use a mapping of parameter names to "
                             "values, e.g. {'train_steps': 50}")
    rec = Record.parse(record)
    values, source = resolve_values(chapter, preset, changes, cell, root)
    return build_run(chapter, values, preset_label(preset, root), rec, source)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
