"""Student copies (lib/book/student.py): the solutions and outputs go, everything else stays,
and a copy runs; the exercises' solutions themselves run in every chapter's tiny run."""

from __future__ import annotations

import json

import pytest

from lib.book.chapters import list_chapters
from lib.book.student import END, START, strip_solutions, write_student_copies
from lib.errors import CompanionError
from lib.paths import REPO_ROOT


def _md(text):
    return {"cell_type": "markdown", "metadata": {}, "source": text}


def _code(text, outputs=()):
    return {"cell_type": "code", "metadata": {}, "source": text, "outputs": list(outputs),
            "execution_count": 3 if outputs else None}


def test_a_solution_goes_from_its_start_to_its_end_cell():
    out = [{"output_type": "stream", "name": "stdout", "text": "42\n"}]
    nb = {"cells": [_md("```{exercise}\n:label: e\nWhat?\n```"),
                    _md("```{solution-start} e\n:class: dropdown\n```"),
                    _code("answer()", out), _md("It is 42.\n\n```{solution-end}\n```"),
                    _code("after()", out)], "metadata": {}, "nbformat": 4}
    kept = strip_solutions(nb)["cells"]
    assert [c["source"] for c in kept] == ["```{exercise}\n:label: e\nWhat?\n```", "after()"]
    assert kept[1]["outputs"] == [] and kept[1]["execution_count"] is None
    assert nb["cells"][4]["outputs"] == out  # the source is not touched


@pytest.mark.parametrize("cells, match", [
    ([_md(f"```{START} e\n```"), _code("x")], "opened at cell 1 is never closed"),
    ([_md(f"```{END}\n```")], "cell 1 closes a solution that was never opened"),
    ([_md(f"```{START} a\n```"), _md(f"```{START} b\n```")], "cell 2 opens a solution inside"),
])
def test_a_broken_solution_is_one_line_naming_the_cell(cells, match):
    with pytest.raises(CompanionError, match=match):
        strip_solutions({"cells": cells}, "ch.ipynb")


def test_every_chapter_has_exercises_and_its_copy_keeps_all_but_the_solutions(tmp_path):
    written = write_student_copies(REPO_ROOT, tmp_path)
    assert [p.name for p in written] == [p.name for p in list_chapters(REPO_ROOT)]
    for src, copy in zip(list_chapters(REPO_ROOT), written):
        a = json.loads(src.read_text())["cells"]
        b = json.loads(copy.read_text())["cells"]
        text = ["".join(c["source"]) for c in a]
        n_ex = sum("{exercise}" in t for t in text)
        n_sol = sum(START in t for t in text)
        assert n_ex >= 1 and n_sol == n_ex, f"{src.name}: every exercise has a solution"
        body = ["".join(c["source"]) for c in b]
        assert not any(START in t or END in t for t in body)
        assert sum("{exercise}" in t for t in body) == n_ex
        assert all(c.get("outputs", []) == [] for c in b)
        # the copy is the source with the solutions' cells taken out, in order
        inside, expected = False, []
        for t in text:
            inside = inside or START in t
            if not inside:
                expected.append(t)
            if END in t:
                inside = False
        assert body == expected
    assert (tmp_path / "params" / "tiny.yaml").is_file()


def test_a_student_copy_runs_with_the_tiny_preset(tmp_path):
    from lib.book.run import run_chapters

    write_student_copies(REPO_ROOT, tmp_path)
    (done,) = run_chapters("tiny", ["01"], root=tmp_path, out=tmp_path / "executed")
    cells = json.loads(done.read_text())["cells"]
    assert not any(START in "".join(c["source"]) for c in cells)
    assert any(c.get("outputs") for c in cells if c["cell_type"] == "code")
