"""The book machinery: preset and parameter handling, failed chapters, and the built book.

The ``book`` tests run every chapter with the ``tiny`` preset into ``_build/tiny`` and build
the HTML with warnings as errors, once for the module. The others use a throwaway layout in
a temporary folder.
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pytest
import yaml

from lib.book import chapters, html as book_html, run
from lib.config.presets import load_preset
from lib.errors import CompanionError
from lib.paths import REPO_ROOT

# --------------------------------------------------------------------------- throwaway layout


def _notebook(path: Path, parameters: str, body: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Py"}
    nb.cells = [
        nbformat.v4.new_code_cell(parameters, metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(body),
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    """``book/`` with two chapters and ``params/`` with one preset."""
    _notebook(tmp_path / "book/01_first.ipynb", "steps = 1\nseed = 0", "print('steps', steps)")
    _notebook(tmp_path / "book/02_second.ipynb", "seed = 0\nlr = 0.1", "print(seed, lr)")
    (tmp_path / "params").mkdir()
    (tmp_path / "params/tiny.yaml").write_text("steps: 5\nseed: 7\n")
    return tmp_path


# --------------------------------------------------------------------------- unit tests


def test_parameters_are_filtered_per_chapter(layout: Path) -> None:
    declared = {nb: chapters.declared_parameters(nb) for nb in chapters.list_chapters(layout)}
    first, second = chapters.list_chapters(layout)
    assert declared == {first: ["steps", "seed"], second: ["seed", "lr"]}

    preset = load_preset("tiny", layout, known={"steps", "seed", "lr"})
    params = chapters.chapter_parameters(declared, preset, {"lr": 0.5})

    # A chapter gets only the preset names it declares (steps is not the second's); an
    # override reaches only the chapters that declare it.
    assert params == {first: {"steps": 5, "seed": 7}, second: {"seed": 7, "lr": 0.5}}


def test_a_chapter_that_starts_from_a_preset_gets_it_and_its_inherited_overrides(
        tmp_path: Path) -> None:
    """The book's chapters declare ``preset``, ``record`` and their own parameters and
    resolve their values in their kernels: each gets the preset's name, what the run
    records, and the command line's values of the parameters it takes (in ``overrides``,
    and its own as variables too, for its page), nothing of a later chapter (heal_steps)
    and nothing of the preset, which it reads itself, once."""
    from lib.config.defaults import defaults, own_names

    def cell(n: int, with_overrides: bool = True) -> str:
        own = "\n".join(f"{k} = {defaults(n)[k]!r}" for k in own_names(n))
        return ("preset = 'default'\nrecord = 'hand'\n"
                + ("overrides = {}\n" if with_overrides else "") + own)

    _notebook(tmp_path / "book/01_a.ipynb", cell(1, with_overrides=False), "")
    _notebook(tmp_path / "book/03_c.ipynb", cell(3), "")
    _notebook(tmp_path / "book/04_d.ipynb", cell(4), "")
    found = chapters.list_chapters(tmp_path)
    declared = {nb: chapters.declared_parameters(nb) for nb in found}
    preset = {"train_steps": 6, "heal_seeds": 2, "heal_steps": 3}
    params = chapters.chapter_parameters(
        declared, preset, {"train_steps": 9, "prune_threshold": 0.1}, preset_name="tiny",
        record="trial:x")
    one, three, four = found
    assert params[one] == {"preset": "tiny", "record": "trial:x", "train_steps": 9}
    assert params[three] == {"preset": "tiny", "record": "trial:x", "prune_threshold": 0.1,
                             "overrides": {"train_steps": 9, "prune_threshold": 0.1}}
    assert params[four] == {"preset": "tiny", "record": "trial:x",
                            "overrides": {"train_steps": 9, "prune_threshold": 0.1}}
    with pytest.raises(CompanionError, match="unknown parameter heal_stpes"):
        chapters.chapter_parameters(declared, preset, {"heal_stpes": 1}, preset_name="tiny")


def test_unknown_override_lists_the_parameters(layout: Path) -> None:
    with pytest.raises(CompanionError, match=r"unknown parameter stpes.*lr, seed, steps"):
        run.run_chapters("tiny", overrides={"stpes": 3}, root=layout)


def test_unknown_preset_lists_the_presets(layout: Path) -> None:
    with pytest.raises(CompanionError, match=r"unknown preset 'huge': use one of tiny"):
        run.run_chapters("huge", root=layout)


def test_unknown_chapter_lists_the_chapters(layout: Path) -> None:
    with pytest.raises(CompanionError, match=r"unknown chapter '07'.*01_first, 02_second"):
        run.run_chapters("tiny", chapters=["07"], root=layout)
    assert chapters.select_chapters(["2"], layout) == [layout / "book/02_second.ipynb"]


@pytest.mark.slow
def test_failed_chapter_keeps_the_last_good_copy(layout: Path, capsys) -> None:
    source = layout / "book/01_first.ipynb"
    out = layout / "executed"

    (good,) = run.run_chapters(
        "tiny", chapters=["01"], overrides={"steps": 42}, out=out, root=layout
    )
    assert "steps 42" in json.dumps(nbformat.read(good, 4).cells[-1].outputs)
    assert not any(c.get("outputs") for c in nbformat.read(source, 4).cells)  # source untouched
    before = good.read_bytes()

    _notebook(source, "steps = 1", "raise ValueError(f'bad\\nsteps {steps}')")
    with pytest.raises(CompanionError) as err:
        run.run_chapters("tiny", chapters=["01"], out=out, root=layout)

    # Cell 2 of the source (parameters, the raise); papermill's injected cell not counted.
    failed = out / "01_first.failed.ipynb"
    assert str(err.value) == f"chapter 01 failed in cell 2: ValueError: bad steps 5 " \
                             f"(partial run kept at {failed})"
    assert good.read_bytes() == before
    assert failed.is_file()
    assert not (out / "01_first.running.ipynb").exists()


# --------------------------------------------------------------------------- the real book


class _Assets(HTMLParser):
    """Scripts, stylesheets and images a page loads."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[str] = []
        self.styles: list[str] = []
        self.images: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "script" and a.get("src"):
            self.scripts.append(a["src"])
        elif tag == "link" and {"stylesheet", "preload"} & set(a.get("rel", "").split()):
            self.styles.append(a.get("href", ""))
        elif tag == "img":
            self.images.append(a.get("src", ""))


def _assets(page: Path) -> _Assets:
    parser = _Assets()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


def _toc() -> tuple[str, list[str]]:
    """The root page and the chapter pages of ``_toc.yml``, as HTML paths."""
    toc = yaml.safe_load((REPO_ROOT / "_toc.yml").read_text())
    return f"{toc['root']}.html", [f"{e['file']}.html" for e in toc.get("chapters", [])]


@pytest.fixture(scope="module")
def built() -> tuple[list[Path], Path]:
    """Every chapter run with the tiny preset into _build/tiny, then the book built."""
    executed = run.run_chapters("tiny")
    return executed, book_html.build_book("tiny")


@pytest.mark.book
def test_every_chapter_runs_cleanly_and_draws(built) -> None:
    executed, _ = built
    assert [p.name for p in executed] == [p.name for p in chapters.list_chapters()]
    for path in executed:
        outputs = [o for c in nbformat.read(path, 4).cells for o in c.get("outputs", [])]
        errors = [o for o in outputs if o.output_type == "error"]
        assert not errors, f"{path.name}: {errors[0].ename}: {errors[0].evalue}"
        images = [o for o in outputs if any(k.startswith("image/") for k in o.get("data", {}))]
        assert images, f"{path.name} draws no figure"


@pytest.mark.book
def test_the_book_is_complete_and_offline(built) -> None:
    _, index = built
    html = index.parent
    assert index.is_file()
    assert (html / "search.html").is_file() and (html / "searchindex.js").is_file()

    root, chapters = _toc()
    pages = {
        p.relative_to(html).as_posix()
        for p in html.rglob("*.html")
        if not p.relative_to(html).parts[0].startswith("_")
    }
    # Sphinx's own pages, plus jupyter-book's redirect from index.html to the root page.
    assert pages - {"index.html", "genindex.html", "search.html"} == {root, *chapters}

    remote = re.compile(r"^(https?:)?//")
    for name in sorted(pages):
        text = (html / name).read_text(encoding="utf-8")
        found = _assets(html / name)
        assert not [s for s in found.scripts + found.styles if remote.match(s)], name
        if 'class="math' in text:
            assert any("_static/mathjax/" in s for s in found.scripts), f"{name}: no MathJax"
    assert list((html / "_static/mathjax").glob("tex-chtml*.js")), "MathJax is not local"

    notebooks = [c for c in chapters if (REPO_ROOT / c).with_suffix(".ipynb").is_file()]
    pages_md = {"book/course.html", "book/records.html", "book/cpu.html"}
    assert pages_md <= set(chapters) and len(notebooks) == len(chapters) - len(pages_md)
    for name in notebooks:
        page = html / name
        # Every exercise with its solution, hidden until clicked (sphinx-exercise's dropdown)
        text = page.read_text(encoding="utf-8")
        assert text.count('class="exercise admonition"') >= 1, name
        assert text.count('class="solution dropdown admonition"') == text.count(
            'class="exercise admonition"'), name
        # the page's download is the executed notebook, outputs and all
        nb = nbformat.read(html / "_sources" / Path(name).with_suffix(".ipynb"), 4)
        assert any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), name
        # Rendered from the executed copy (papermill's cell), not from the output-free source,
        # and the values shown once: the source's parameters cell is gone.
        text = page.read_text(encoding="utf-8")
        assert "tag_injected-parameters" in text and "tag_parameters" not in text, name
        assert "Parameters this page was run with (preset tiny)" in text, name
        if name.startswith("04"):  # tiny.yaml's heal_steps (3), not the cell's default (50)
            cell = next(c.source for c in nb.cells if "injected-parameters" in c.metadata.get(
                "tags", []))
            assert "heal_steps = 3" in cell and "heal_steps = 50" not in cell
            assert 'record = "run:' in cell or "record = 'run:" in cell
        images = [s for s in _assets(page).images if "_images/" in s]
        assert images, f"{name} shows no figure"
        assert all((page.parent / s).resolve().is_file() for s in images), name


def test_the_book_builds_from_the_chapters_that_have_run(tmp_path: Path, capsys) -> None:
    """One chapter run: its page and the introduction are built; the chapters not run and
    the course page (which speaks of every chapter) are not, and the run says so."""
    import shutil

    for name in ("_config.yml", "_toc.yml", "references.bib"):
        if (REPO_ROOT / name).is_file():
            shutil.copy2(REPO_ROOT / name, tmp_path / name)
    shutil.copytree(REPO_ROOT / "book", tmp_path / "book",
                    ignore=shutil.ignore_patterns("*.ipynb", ".*"))
    for nb in chapters.list_chapters(REPO_ROOT):
        _notebook(tmp_path / "book" / nb.name, "steps = 1", "print(steps)")
    (tmp_path / "params").mkdir()
    for preset in ("tiny", "other"):
        (tmp_path / "params" / f"{preset}.yaml").write_text("steps: 2\n")
    first = chapters.list_chapters(tmp_path)[0]
    executed = tmp_path / "_build" / "tiny" / "executed"
    executed.mkdir(parents=True)
    nb = nbformat.read(first, 4)
    nb.cells.insert(0, nbformat.v4.new_markdown_cell("# The first chapter"))
    nbformat.write(nb, executed / first.name)
    with pytest.raises(CompanionError, match="no chapter has run yet for preset 'other'"):
        book_html.build_book("other", root=tmp_path)
    index = book_html.build_book("tiny", root=tmp_path)
    html = index.parent
    assert (html / "book" / f"{first.stem}.html").is_file()
    assert "The first chapter" in (html / "book" / f"{first.stem}.html").read_text()
    built = sorted(p.stem for p in (html / "book").glob("0*.html"))
    assert built == [first.stem] and not (html / "book" / "course.html").exists()
    said = capsys.readouterr().out
    others = [nb.name for nb in chapters.list_chapters(tmp_path)[1:]]
    assert f"a partial book: {', '.join(others)} not run yet" in said
