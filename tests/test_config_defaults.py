"""One source of defaults: every chapter's parameters cell, every preset and the typed
sections are derived from lib/config/defaults.py or checked against it."""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from pathlib import Path

import pytest
import yaml

from lib.config import sections
from lib.config.defaults import (CHAPTER_PARAMS, Chapter1Params, Chapter2Params, defaults,
                                 own_names, param_names, parameter_names)
from lib.config.presets import load_preset, preset_names, preset_path
from lib.paths import REPO_ROOT

CHAPTERS = sorted((REPO_ROOT / "book").glob("[0-9][0-9]_*.ipynb"))


def _parameters_cell(nb: Path) -> tuple[dict[str, object], str]:
    """Name -> literal value of the cell tagged ``parameters`` (read with ast), and its text."""
    cells = [c for c in json.loads(nb.read_text())["cells"]
             if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"{nb.name}: one cell tagged parameters"
    source = "".join(cells[0]["source"])
    out = {}
    for node in ast.parse(source).body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1, nb.name
        out[node.targets[0].id] = ast.literal_eval(node.value)  # literals only
    return out, source


def test_every_chapter_has_a_parameters_class():
    numbers = [int(nb.name[:2]) for nb in CHAPTERS]
    assert numbers and sorted(CHAPTER_PARAMS) == numbers


@pytest.mark.parametrize("nb", CHAPTERS, ids=lambda p: p.stem)
def test_a_parameters_cell_holds_the_preset_and_the_chapters_own_defaults(nb: Path):
    """Its preset, what it records, its overrides (chapters that inherit), then its own
    parameters in the class's order with the class's defaults: nothing of another chapter."""
    n = int(nb.name[:2])
    cell, _ = _parameters_cell(nb)
    head = ["preset", "record"] + (["overrides"] if n > 1 else [])
    assert list(cell) == head + list(own_names(n))
    assert cell["preset"] == "default"
    assert cell.get("overrides", {}) == {} and cell["record"] == "hand"
    for name in own_names(n):
        assert cell[name] == defaults(n)[name], f"{nb.name}: {name}"


@pytest.mark.parametrize("nb", CHAPTERS, ids=lambda p: p.stem)
def test_papermill_reads_every_parameter_of_the_cell(nb: Path, capsys):
    """papermill declares exactly the cell's names (a comment it cannot parse, e.g. one
    holding "=", would hide a parameter from the book runner)."""
    import papermill

    cell, _ = _parameters_cell(nb)
    assert list(papermill.inspect_notebook(str(nb))) == list(cell)
    assert "Unable to parse" not in capsys.readouterr().err


def test_a_chapter_extends_the_previous_one():
    assert issubclass(Chapter2Params, Chapter1Params)
    assert param_names(Chapter2Params)[:len(param_names(Chapter1Params))] == param_names(
        Chapter1Params)
    assert own_names(2) == tuple(n for n in param_names(Chapter2Params)
                                 if n not in param_names(Chapter1Params))


def test_default_preset_sets_nothing():
    assert load_preset("default") == {}


@pytest.mark.parametrize("name", preset_names())
def test_a_preset_holds_only_what_differs_with_a_reason_each(name: str):
    values = load_preset(name)
    every = defaults(max(CHAPTER_PARAMS))
    same = [k for k, v in values.items() if v == every[k]]
    assert not same, f"params/{name}.yaml repeats defaults: {same}"
    lines = [ln for ln in preset_path(name).read_text().splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
    assert len(lines) == len(values)  # one line per value
    for ln in lines:
        assert "  # " in ln, f"params/{name}.yaml: no reason beside {ln.split(':')[0]}"
        assert yaml.safe_load(ln) is not None


def test_sections_take_their_defaults_from_the_parameters():
    """Every section field that holds a parameter (found by its name,
    :func:`lib.config.resolve.field_of`) defaults to that parameter's value."""
    from lib.config.resolve import field_of

    d = defaults(max(CHAPTER_PARAMS))
    checked = 0
    for name, value in d.items():
        where = field_of(name)
        attr, _, field = where.partition(".")
        if attr not in sections.SECTIONS:
            continue  # a field of the run or its corpus, or the list of decoders
        made = getattr(sections.SECTIONS[attr](), field)
        assert (list(made) if isinstance(made, tuple) else made) == value, name
        checked += 1
    assert checked > 50
    assert sections.ModelConfig().decoder == d["decoders"][0]


def test_sections_hold_no_default_of_their_own_for_a_parameter():
    """In lib/config/sections.py a field's default is a literal only where the field is
    not a parameter (and then it carries its reason)."""
    lines = (REPO_ROOT / "lib/config/sections.py").read_text().splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"\s+(\w+): [^=]+ = (.+)$", line)
        if m and "ClassVar[" not in line and not m.group(2).startswith(("P.", "field(")):
            assert m.group(1) not in parameter_names(), line
            assert "# not a parameter" in line + lines[i - 1], line


def test_parameters_cells_hold_literals_only():
    """A derived value in a parameters cell would not be recomputed by papermill."""
    for nb in CHAPTERS:
        _, source = _parameters_cell(nb)
        assert not re.search(r"^\s*(import|from|def|class)\b", source, re.M), nb.name


def test_every_field_has_a_reason():
    src = (REPO_ROOT / "lib/config/defaults.py").read_text()
    tree = ast.parse(src)
    lines = src.splitlines()
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        for st in cls.body:
            if isinstance(st, ast.AnnAssign):
                text = "\n".join(lines[st.lineno - 1:st.end_lineno + 1])
                assert "#" in text, f"{cls.name}.{st.target.id} has no reason"
    assert dataclasses.is_dataclass(Chapter1Params)
