"""Every chapter's parameters cell, every preset and the parameter classes stay in step."""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from pathlib import Path

import pytest

from lib import config
from lib.chapter_params import CHAPTER_PARAMS, Chapter1Params, Chapter2Params, param_names
from lib.config import load_preset, parameter_names, preset_names
from lib.paths import REPO_ROOT

CHAPTERS = sorted((REPO_ROOT / "book").glob("[0-9][0-9]_*.ipynb"))


def _parameters_cell(nb: Path) -> dict[str, object]:
    """Name -> literal value of the cell tagged ``parameters``, read with ast (no kernel)."""
    cells = [c for c in json.loads(nb.read_text())["cells"]
             if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"{nb.name}: one cell tagged parameters"
    out = {}
    for node in ast.parse("".join(cells[0]["source"])).body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1, nb.name
        out[node.targets[0].id] = ast.literal_eval(node.value)  # literals only
    return out


def _plain(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value


def test_every_chapter_has_a_parameters_class():
    numbers = [int(nb.name[:2]) for nb in CHAPTERS]
    assert numbers and sorted(CHAPTER_PARAMS) == numbers


@pytest.mark.parametrize("nb", CHAPTERS, ids=lambda p: p.stem)
def test_parameters_cell_is_its_class(nb: Path):
    """Same names in the same order, and the class defaults are the cell's values."""
    cell = _parameters_cell(nb)
    params = CHAPTER_PARAMS[int(nb.name[:2])]
    assert tuple(cell) == param_names(params)
    for f in dataclasses.fields(params):
        assert cell[f.name] == _plain(f.default), f"{nb.name}: {f.name}"


def test_a_chapter_extends_the_previous_one():
    assert issubclass(Chapter2Params, Chapter1Params)
    assert param_names(Chapter2Params)[:len(param_names(Chapter1Params))] == param_names(
        Chapter1Params)


def test_config_names_come_from_the_classes():
    for n, params in CHAPTER_PARAMS.items():
        assert getattr(config, f"CHAPTER{n}_PARAMS") == param_names(params)
    assert set(parameter_names()) == {name for params in CHAPTER_PARAMS.values()
                                      for name in param_names(params)}


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_names_every_parameter(name: str):
    assert set(load_preset(name)) == set(parameter_names())


def test_default_preset_is_the_class_defaults():
    default = load_preset("default")
    for f in dataclasses.fields(CHAPTER_PARAMS[max(CHAPTER_PARAMS)]):
        assert default[f.name] == _plain(f.default), f.name


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_builds_every_chapter_config(name: str):
    values = load_preset(name)
    for n in CHAPTER_PARAMS:
        build = getattr(config, f"chapter{n}_config")
        names = getattr(config, f"CHAPTER{n}_PARAMS")
        assert build(**{k: values[k] for k in names}) is not None


def test_parameters_cells_hold_literals_only():
    """A derived value in a parameters cell would not be recomputed by papermill."""
    for nb in CHAPTERS:
        source = "".join(next(c for c in json.loads(nb.read_text())["cells"]
                              if "parameters" in c.get("metadata", {}).get("tags", []))
                         ["source"])
        assert not re.search(r"^\s*(import|from|def|class)\b", source, re.M), nb.name
