"""Presets and parameter validation; the notebooks' defaults are the `default` preset."""

from __future__ import annotations

from pathlib import Path

import papermill
import pytest

from lib.config import CHAPTER1_PARAMS, chapter1_config, config_hash, load_preset, preset_names
from lib.errors import CompanionError
from lib.paths import REPO_ROOT

CHAPTERS = sorted((REPO_ROOT / "book").glob("[0-9][0-9]_*.ipynb"))


def test_presets_exist_and_validate():
    assert {"tiny", "default"} <= set(preset_names())
    assert any(n.startswith("paper-") for n in preset_names())
    for name in preset_names():
        params = load_preset(name)
        cfg = chapter1_config(**{k: params[k] for k in CHAPTER1_PARAMS})
        assert cfg.models


@pytest.mark.parametrize("nb", CHAPTERS, ids=lambda p: p.stem)
def test_notebook_defaults_are_the_default_preset(nb: Path):
    declared = papermill.inspect_notebook(str(nb))
    default = load_preset("default")
    for name, spec in declared.items():
        assert name in default, f"{nb.name} declares {name}, missing from params/default.yaml"
        value = eval(spec["default"])  # literals only in parameters cells
        assert value == default[name], f"{nb.name}: {name}={value!r} vs preset {default[name]!r}"


@pytest.mark.parametrize("name", ["tiny", "default"])
def test_presets_declare_the_same_parameters(name):
    assert set(load_preset(name)) == set(load_preset("default"))


def _params(**over):
    p = load_preset("tiny")
    p.update(over)
    return {k: p[k] for k in CHAPTER1_PARAMS}


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
])
def test_bad_values_name_the_parameter(over, match):
    with pytest.raises(CompanionError, match=match):
        chapter1_config(**_params(**over))


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
    assert config_hash(a) != config_hash(b)
    assert config_hash(a) == config_hash(chapter1_config(**_params()))


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
    from lib.config import CHAPTER4_PARAMS, chapter4_config

    p = load_preset("tiny")
    p.update(over)
    with pytest.raises(CompanionError, match=match) as err:
        chapter4_config(**{k: p[k] for k in CHAPTER4_PARAMS})
    assert "\n" not in str(err.value)
