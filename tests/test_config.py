"""Presets and parameter validation: one line naming the parameter, configs passed whole."""

from __future__ import annotations

import dataclasses

import pytest

from lib.config.build import BUILDERS, chapter1_config, chapter_config, config_for
from lib.config.defaults import CHAPTER_PARAMS, defaults, own_names
from lib.config.presets import chapter_values, load_preset, preset_names
from lib.config.sections import EvalConfig, TrainConfig
from lib.errors import CompanionError
from lib.device import resolve_precision
from lib.fileio import config_hash


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_builds_every_chapter_config(name):
    for n in CHAPTER_PARAMS:
        cfg = config_for(n, name)
        base = cfg if n == 1 else cfg.base
        assert base.models and base.source["preset"] == name


def _params(**over):
    p, _ = chapter_values(1, "tiny")
    p.update(over)
    return p


@pytest.mark.parametrize("over,match", [
    ({"train_steps": 0}, "train_steps=0"),
    ({"batch_size": "8"}, "batch_size='8'"),
    ({"learning_rate": -1}, "learning_rate=-1"),
    ({"warmup_steps": 100}, "warmup_steps=100"),
    ({"decoders": []}, "decoders"),
    ({"device": "tpu"}, "device='tpu'"),
    ({"max_test_utterances": 0}, "max_test_utterances=0"),
    ({"rescore_beams": -1}, "rescore_beams=-1"),
    ({"rescore_weights": [0.5, 1.5]}, r"rescore_weights=\[0.5, 1.5\].*weights in \[0, 1\]"),
    ({"rescore_weights": []}, "rescore_weights=\\[\\]"),
    ({"recipe": "fast"}, "recipe='fast'.*ctc-warmstart, plain"),
    ({"precision": "fp8"}, "precision='fp8'.*auto, bf16, fp32"),
])
def test_bad_values_name_the_parameter(over, match):
    with pytest.raises(CompanionError, match=match) as err:
        chapter1_config(**_params(**over))
    assert "\n" not in str(err.value)


def test_unknown_and_missing_parameters():
    with pytest.raises(CompanionError, match="unknown parameter.*trian_steps"):
        chapter1_config(**_params(), trian_steps=3)
    p = _params()
    del p["seed"]
    with pytest.raises(CompanionError, match="missing parameter.*seed"):
        chapter1_config(**p)


def test_unknown_preset():
    with pytest.raises(CompanionError, match="unknown preset 'nope'.*tiny"):
        load_preset("nope")


def test_config_hash_changes_with_config():
    a = chapter1_config(**_params())
    b = chapter1_config(**_params(train_steps=7))
    assert config_hash(a.train) != config_hash(b.train)
    assert config_hash(a.train) == config_hash(chapter1_config(**_params()).train)


@pytest.mark.parametrize("over,match", [
    ({"prune_strategies": ["angular", "magic"]}, "prune_strategies.*unknown 'magic'"),
    ({"prune_fractions": [0.2, 1.0]}, "prune_fractions"),
    ({"prune_fractions": []}, "prune_fractions"),
    ({"prune_threshold": 0}, "prune_threshold=0"),
    ({"prune_threshold": 1.5}, "prune_threshold=1.5"),
    ({"curve_utterances": 0}, "curve_utterances=0"),
    ({"heal_variants": ["both", "all"]}, "heal_variants.*unknown 'all'"),
    ({"heal_fraction": 0}, "heal_fraction=0"),
    ({"heal_steps": 0}, "heal_steps=0"),
    ({"heal_lora_rank": -1}, "heal_lora_rank=-1"),
])
def test_bad_pruning_and_healing_values_name_the_parameter(over, match):
    p, _ = chapter_values(4, "tiny")
    p.update(over)
    with pytest.raises(CompanionError, match=match) as err:
        BUILDERS[4](**p)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------ how values resolve


def _namespace(chapter: int, **over):
    """A notebook's namespace as its parameters cell leaves it, then ``over``."""
    ns = {"preset": "tiny", "overrides": {}}
    ns.update({k: v for k, v in defaults(chapter).items() if k in own_names(chapter)})
    ns.update(over)
    return ns


def test_a_chapter_inherits_from_the_preset_and_its_cell_wins_for_its_own():
    """Chapter 3 inherits chapter 1's training from tiny.yaml (6 steps, not the default
    300); its own prune_threshold comes from the cell; an override reaches an inherited one."""
    cfg = chapter_config(3, _namespace(3, prune_threshold=0.1,
                                       overrides={"train_steps": 4}))
    assert cfg.prune.threshold == 0.1
    assert cfg.base.train.steps == 4  # override over tiny's 6
    assert cfg.base.train.batch_size == 4  # tiny's, not the default's 8
    assert cfg.base.models[0].decoder == "tiny-llama"
    summary = cfg.summary()
    assert "preset tiny" in summary and "train_steps=4" in summary
    assert "inherited, set by the preset or an override: " in summary
    assert "batch_size=4" in summary.split("inherited defaults")[0]  # tiny's
    assert "grad_accum=1" in summary.split("inherited defaults")[1]  # the default's
    assert "prune_threshold" not in summary.split("inherited")[1].split("the parameters")[0]


def test_the_summary_says_when_the_cell_wins_over_the_preset():
    """tiny.yaml sets prune_fractions; a cell holding the default ones wins, visibly."""
    cfg = chapter_config(3, _namespace(3))
    assert cfg.prune.fractions == tuple(defaults(3)["prune_fractions"])
    assert "the parameters cell wins over the preset for: prune_fractions" in " ".join(
        cfg.summary().split())


@pytest.mark.parametrize("ns,match", [
    ({"overrides": {"prune_threshold": 0.1}}, "prune_threshold is chapter 3's own"),
    ({"overrides": {"heal_steps": 3}}, "unknown parameter.*heal_steps.*in overrides"),
    ({"overrides": [1]}, "overrides=\\[1\\]: use a mapping"),
    ({"preset": "nope"}, "unknown preset 'nope'"),
])
def test_bad_namespaces_are_one_line(ns, match):
    with pytest.raises(CompanionError, match=match) as err:
        chapter_config(3, _namespace(3, **ns))
    assert "\n" not in str(err.value)


def test_a_missing_own_parameter_is_named():
    ns = _namespace(3)
    del ns["curve_utterances"]
    with pytest.raises(CompanionError, match="missing parameter.*curve_utterances"):
        chapter_config(3, ns)


def test_the_stages_take_their_sections_whole():
    """A section built without arguments is the default preset's (its defaults are the
    parameters'), and the chapter config is made of exactly those sections."""
    cfg = config_for(1, "default")
    d = defaults(1)
    # the built train and eval sections hold the resolved precisions; every other field is
    # the default
    assert cfg.eval.precision == resolve_precision("auto", "cpu")
    evalc = dataclasses.replace(cfg.eval, precision=d["eval_precision"])
    assert evalc == EvalConfig(
        batch_size=d["eval_batch_size"], max_new_tokens=d["max_new_tokens"],
        precision=d["eval_precision"], max_utterances=d["max_test_utterances"],
        rescore_beams=d["rescore_beams"], rescore_weights=tuple(d["rescore_weights"]))
    assert evalc == EvalConfig()
    assert dataclasses.replace(cfg.train, precision="auto") == TrainConfig()


@pytest.mark.parametrize("over,match", [
    ({"tasks": ["asr", "summarise"]}, "tasks.*unknown 'summarise'; use any of asr, asr-es"),
    ({"tasks": ["asr-es", "st-es-en"]}, "tasks=.*include asr"),
    ({"n_parallel_train": 0}, "n_parallel_train=0"),
    ({"multitask_steps": 1}, "multitask_steps=1: must be above warmup_steps=1"),
])
def test_bad_multitask_values_name_the_parameter(over, match):
    p, _ = chapter_values(5, "tiny")
    p.update(over)
    with pytest.raises(CompanionError, match=match) as err:
        BUILDERS[5](**p)
    assert "\n" not in str(err.value)
