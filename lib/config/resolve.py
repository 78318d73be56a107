"""A chapter's parameters resolved once into its run (:class:`lib.config.sections.Run`).

One function, :func:`resolve`, everywhere (the book's runner, a notebook run by hand,
``python -m lib.experiment``, tests), in one order::

    defaults  <-  the preset  <-  the parameters cell (where it differs from the default)
              <-  changes (-p NAME VALUE)

Every value is checked (:mod:`lib.config.checks`), each failure one line naming the parameter. Each parameter
fills one field of one section, found by its name (:func:`field_of`), never by a
hand-written rename: ``heal_steps`` is ``heal.steps``, ``eval_batch_size`` is
``eval.batch_size``, ``chance_draws`` is ``score.chance_draws``. The names a value may take
come from the stage that knows them (:data:`lib.prune.strategies.STRATEGIES`,
:data:`lib.heal.healing.HEAL_VARIANTS`, :data:`lib.train.loop.RECIPES`,
:data:`lib.tasks.TASKS`).

Stage: all (configuration). Explained in chapter 1 (book/01_building_a_speechllm.ipynb).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lib.clock
import lib.machine
from lib.config.defaults import CHAPTER_PARAMS, defaults, own_names, param_names
from lib.config.presets import load_preset, preset_label
from lib.config.checks import CHECKS, fail
from lib.config.sections import SECTIONS, ModelConfig, Record, Run, section_fields
from lib.data.spec import AUGMENTATIONS, CorpusSpec, recipe_changes
from lib.device import resolve_precision
from lib.errors import CompanionError
from lib.params import reject_unknown
from lib.paths import REPO_ROOT

CHAPTER_SECTIONS = {1: ("models", "train", "eval"), 2: ("score",), 3: ("prune",),
                    4: ("heal",), 5: ("multitask",),
                    6: ("transfer", "backbone")}
"""The sections each chapter adds to the run (chapter N's run holds chapters 1..N's)."""

RUN_FIELDS = ("device", "dev_utterances", "train_data", "test_data", "levers", "lever_seeds",
              "corpus_recipe")
"""Parameters that are fields of the run itself."""

CORPUS_FIELDS = ("n_train", "n_test", "piper_fraction", "flite_fraction", "text_fraction",
                 "augment", "augment_prob", *AUGMENTATIONS.values())
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




def _across(v: dict[str, Any], chapter: int) -> None:
    """The checks that involve two parameters, each one line naming the one to change."""
    if v["warmup_steps"] >= v["train_steps"]:
        fail("warmup_steps", v["warmup_steps"], f"must be below train_steps={v['train_steps']}")
    if v["train_data"] == "synthetic:train" and v["dev_utterances"] >= v["n_train"]:
        fail("dev_utterances", v["dev_utterances"],
              f"leaves nothing to train on ({v['n_train']} synthetic training utterances, "
              "n_train): lower dev_utterances or raise n_train")
    set_by_hand = recipe_changes(v)
    if v["corpus_recipe"] == "rule" and v["train_data"] == "synthetic:train" and set_by_hand:
        shown = ", ".join(f"{f}={list(v[f]) if f == 'augment' else v[f]}" for f in set_by_hand)
        fail("corpus_recipe", "rule", f"chooses the training corpus by chapter 1's lever rule, "
             f"but {shown} sets it by hand: add -p corpus_recipe given to train on that "
             "corpus, or leave it and name the lever in levers")
    if chapter >= 5:
        if "asr" not in v["tasks"]:
            fail("tasks", list(v["tasks"]), "include asr: chapter 5 compares English ASR "
                  "with chapter 1's model")
        if v["multitask_corpus"]:
            from lib.tasks import TASKS, serves

            pairs = [x.rpartition("#")[2] for x in v["multitask_corpus"]]
            idle = [t for t in v["tasks"] if not any(serves(TASKS[t], p) for p in pairs)]
            if idle:
                fail("tasks", list(v["tasks"]), f"{', '.join(idle)} not served by the "
                      f"CoVoST 2 pairs {pairs} of multitask_corpus: add a pair or drop it")
        strays = [d for d in v["multitask_decoders"] if d not in v["decoders"]]
        if strays:
            fail("multitask_decoders", list(v["multitask_decoders"]),
                  f"names {', '.join(strays)}, not among decoders={list(v['decoders'])}: name "
                  "some of those, or [] for all of them")
        if chapter >= 6 and v["backbone_chosen_on"] not in ("pooled", *v["tasks"]):
            fail("backbone_chosen_on", v["backbone_chosen_on"],
                  f"is not a task the multi-task model was trained for (tasks="
                  f"{list(v['tasks'])}): name one of those, or pooled")
        if chapter >= 6 and v["transfer_decoder"] not in v["decoders"]:
            fail("transfer_decoder", v["transfer_decoder"],
                  f"is not among decoders={list(v['decoders'])}: name one of those")
        if v["warmup_steps"] >= v["multitask_steps"]:
            fail("multitask_steps", v["multitask_steps"],
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
    model = by_section["models"]
    sections["models"] = tuple(ModelConfig(**{**model, "decoder": d})
                               for d in values["decoders"])
    for attr, use in (("train", "training"), ("eval", "decoding")):
        by_section[attr]["precision"] = resolve_precision(
            by_section[attr]["precision"], device, functools.partial(
                lib.machine.machine_choice, use, sections["models"],
                by_section["train"]["batch_size"], by_section["eval"]["batch_size"]))
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
