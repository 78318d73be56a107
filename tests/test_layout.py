"""The library's layout: no import cycle among its modules, and ``lib.book`` stays light.

The graph is read from the source with :mod:`ast`, not by importing: every ``import lib.x``
and ``from lib.x import ...`` counts, at module level or inside a function (a deferred
import still ties the two modules together); imports under ``if TYPE_CHECKING:`` do not,
since they never run.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

LIB = Path(__file__).resolve().parent.parent / "lib"


def _module_name(path: Path) -> str:
    parts = path.relative_to(LIB.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported(tree: ast.AST, modules: set[str], package: str) -> set[str]:
    """Library modules that ``tree`` imports (a package's own ``__init__`` excluded)."""
    found: set[str] = set()

    def target(name: str) -> str | None:
        # ``from lib.data import audio``: the submodule if there is one, else the package.
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("lib"):
                    found.add(target(alias.name) or alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + [node.module])
            if base.split(".")[0] == "lib":
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    found.add(sub if sub in modules else (target(base) or base))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the library modules it imports, for every module under ``lib/``."""
    files = {_module_name(p): p for p in LIB.rglob("*.py")}
    modules = set(files)
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = _imported(ast.parse(path.read_text()), modules, package)
        graph[name] = {d for d in deps if d != name and d != "lib"}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first == last), or None: a depth-first search."""
    state: dict[str, int] = {}  # 1 on the current path, 2 finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_sees_a_cycle() -> None:
    """The checker itself: a made-up graph with a known cycle, and one without."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_graph_reads_deferred_imports() -> None:
    """A function-level import counts; one under ``if TYPE_CHECKING:`` does not."""
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                     "    from lib.x import A\ndef f():\n    from lib.y import g\n")
    assert _imported(tree, {"lib.x", "lib.y"}, "lib") == {"lib.y"}


def test_library_has_no_import_cycle() -> None:
    graph = import_graph()
    assert len(graph) > 10  # the walk found the library
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_io_module_imports_nothing_of_the_library() -> None:
    assert import_graph()["lib.fileio"] == set()


def test_the_book_reads_presets_without_the_stages() -> None:
    """``lib.book`` needs the presets, the chapters' parameter names and where results are
    recorded (:mod:`lib.report.results`, itself light) and how a new record compares with
    the one it replaces (:mod:`lib.report.compare`, as light), nothing of the stages."""
    graph = import_graph()
    light = {"lib.report.results", "lib.report.compare"}
    assert all(floor(d) <= 1 or d in light for d in graph["lib.report.compare"])
    assert all(floor(d) <= 1 for d in graph["lib.report.results"])
    for name in ("lib.book.run", "lib.book.chapters", "lib.book.html",
                 "lib.config.presets"):
        assert all(floor(d) <= 1 or d.startswith("lib.book") or d in light
                   for d in graph[name]), name


def test_book_does_not_pull_the_audio_stack() -> None:
    """``lib.book`` needs the presets, not torch, audio decoding or the corpus."""
    heavy = ("torch", "soundfile", "lib.data.audio", "lib.data.corpus", "lib.build.speechllm",
             "lib.assets")
    code = (f"import sys, lib.book; print(','.join(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=LIB.parent, check=True)
    assert out.stdout.strip() == ""


def _layout_paths() -> set[str]:
    """The paths the README's Layout section lists: the ``lib/`` lines of its code blocks
    (paths separated by single spaces, the description after two or more)."""
    readme = (LIB.parent / "README.md").read_text()
    layout = readme[readme.index("## Layout"):readme.index("## How the book is built")]
    paths: set[str] = set()
    for line in layout.splitlines():
        if not line.startswith("lib/"):
            continue
        folder = ""
        for token in re.split(r"\s{2,}", line)[0].split():
            path = token if token.startswith("lib/") else folder + token
            folder = path if path.endswith("/") else path.rpartition("/")[0] + "/"
            paths.add(path)
    return paths


def test_every_module_says_its_stage_and_the_readme_lists_it() -> None:
    listed = _layout_paths()
    assert len(listed) > 20  # the parse found the list
    for path in sorted(LIB.rglob("*.py")):
        name = _module_name(path)
        if path.name in ("__init__.py", "__main__.py"):
            continue
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        assert "stage" in doc.lower(), f"{name}: its docstring names no pipeline stage"
        rel = path.relative_to(LIB.parent).as_posix()
        package = path.parent.relative_to(LIB.parent).as_posix() + "/"
        assert rel in listed or package in listed, \
            f"README's Layout section does not say where {rel} lives"


def test_the_readme_lists_nothing_that_is_not_there() -> None:
    for path in sorted(_layout_paths()):
        assert (LIB.parent / path).exists(), f"README's Layout section lists {path}: gone"


# Floors: a module may import only from its own floor or below (the most specific prefix
# decides). Within a floor anything goes, as long as there is no cycle.
FLOORS = [
    ("leaf", ("lib.errors", "lib.paths", "lib.fileio", "lib.params", "lib.device", "lib.clock",
              "lib.ranks", "lib.cache")),
    ("configuration", ("lib.config.defaults", "lib.config.presets", "lib.config.sections",
                       "lib.data.spec", "lib.tasks", "lib.assets")),
    # the stages, each importing only those before it: the model and its CTC head, data,
    # training, evaluation (decoding and scoring a model), redundancy scores, pruning
    # (whose curves decode), healing (which trains a pruned model)
    ("build", ("lib.build",)),
    ("data", ("lib.data",)),
    ("train", ("lib.train",)),
    ("evaluate", ("lib.evaluate",)),
    ("score", ("lib.score",)),
    ("prune", ("lib.prune",)),
    ("heal", ("lib.heal",)),
    ("report", ("lib.report",)),
    # what auto means on this machine: measured with the stages, read by the resolution
    ("machine", ("lib.machine",)),
    ("resolution", ("lib.config.resolve", "lib.config.checks")),
    ("recipes", ("lib.recipes",)),
    ("entry points", ("lib.experiment", "lib.book", "lib.setup")),
]


def floor(module: str) -> int:
    """The floor of ``module``: the most specific prefix in :data:`FLOORS` that names it."""
    best, rank = "", None
    for i, (_, prefixes) in enumerate(FLOORS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > len(best):
                best, rank = p, i
    assert rank is not None, f"{module} has no floor: add it to FLOORS"
    return rank


def test_floor_of_the_checker_itself() -> None:
    names = [name for name, _ in FLOORS]
    assert names[floor("lib.data.spec")] == "configuration"
    assert names[floor("lib.data.audio")] == "data"
    assert names[floor("lib.config.resolve")] == "resolution"
    assert names[floor("lib.config.sections")] == "configuration"
    assert floor("lib.build.ctc_head") < floor("lib.train.ctc") < floor("lib.evaluate.decode")


def test_no_module_imports_from_a_floor_above_its_own() -> None:
    graph = import_graph()
    bad = [f"{m} ({FLOORS[floor(m)][0]}) imports {d} ({FLOORS[floor(d)][0]})"
           for m, deps in graph.items() if m not in ("lib", "lib.book", "lib.config",
                                                     "lib.recipes")
           for d in deps if floor(d) > floor(m)]
    assert not bad, "; ".join(bad)


def test_the_defaults_import_nothing_of_the_library() -> None:
    assert import_graph()["lib.config.defaults"] == set()


def test_modules_and_functions_stay_short() -> None:
    """No module over 450 lines, no function over 80 lines of code (its docstring aside)."""
    for path in sorted(LIB.rglob("*.py")):
        text = path.read_text()
        rel = path.relative_to(LIB.parent)
        assert len(text.splitlines()) <= 450, f"{rel}: {len(text.splitlines())} lines"
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = node.end_lineno - node.lineno + 1
                first = node.body[0]
                if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                    size -= first.end_lineno - first.lineno + 1  # the docstring
                assert size <= 80, f"{rel}:{node.lineno} {node.name}: {size} lines of code"


def test_chapter_cells_only_call_display_and_glue() -> None:
    """Outside its parameters cell a chapter defines no function or class, runs no loop (a
    comprehension or generator expression is one) and types no fractional number (a
    threshold or target belongs in lib.report.rules)."""
    import json

    for nb in sorted((LIB.parent / "book").glob("[0-9][0-9]_*.ipynb")):
        for i, cell in enumerate(json.loads(nb.read_text())["cells"]):
            if cell["cell_type"] != "code" or "parameters" in cell["metadata"].get("tags", []):
                continue
            for node in ast.walk(ast.parse("".join(cell["source"]))):
                where = f"{nb.name} cell {i} line {getattr(node, 'lineno', '?')}"
                assert not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef,
                                             ast.ClassDef, ast.Lambda)), f"{where}: a definition"
                assert not isinstance(node, (ast.For, ast.While, ast.ListComp, ast.DictComp,
                                             ast.SetComp, ast.GeneratorExp)), f"{where}: a loop"
                assert not (isinstance(node, ast.Constant) and isinstance(node.value, float)
                            ), f"{where}: a typed number {node.value}"


def test_every_chapter_cell_has_its_own_id() -> None:
    """nbformat renames a repeated cell id on every read (and warns); glue and papermill's
    cell tags must name one cell."""
    import json

    for nb in sorted((LIB.parent / "book").glob("[0-9][0-9]_*.ipynb")):
        ids = [cell.get("id") for cell in json.loads(nb.read_text())["cells"]]
        twice = sorted({i for i in ids if ids.count(i) > 1})
        assert None not in ids and not twice, f"{nb.name}: cell ids used twice {twice}"


ENVIRONMENT = {"COMPANION_CACHE": "where the cache lives (a machine's, not a run's)",
               "COMPANION_RESULTS": "where records go (tests point it at a temporary folder)",
               "COMPANION_PROGRESS": "the file a kernel reports its progress to",
               "COMPANION_PIPER_VOICE": "a Piper voice file on this machine"}
"""The only COMPANION_* environment variables the library reads, each a fact of the machine
or the process, never of the run: the preset, a trial and a run's id are parameters of the
chapter (``preset``, ``record``: :class:`lib.config.sections.Run`)."""


def test_no_preset_trial_or_run_travels_by_environment_variable() -> None:
    import re

    found = {name: str(p.relative_to(LIB.parent)) for p in LIB.rglob("*.py")
             for name in re.findall(r"COMPANION_[A-Z_]+", p.read_text())}
    assert set(found) <= set(ENVIRONMENT), {k: v for k, v in found.items()
                                             if k not in ENVIRONMENT}
    text = "\n".join(p.read_text() for p in LIB.rglob("*.py"))
    assert not re.search(r"environ[^\n]*(PRESET|TRIAL|RUN_ID|_RUN\b)", text)
