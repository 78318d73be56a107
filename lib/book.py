"""Run the book's chapters with papermill and build the HTML from the executed copies.

The chapters are the notebooks ``book/NN_name.ipynb``. Their sources stay free of outputs;
:func:`run_chapters` executes them with the parameters of a *preset* (``params/<preset>.yaml``)
into ``_build/<preset>/executed/``, and :func:`build_book` renders those executed copies, with
execution off, into ``_build/<preset>/html/``. ``make book`` does both; from the command line::

    python -m lib.book run --preset tiny --chapter 01 -p train_steps 50
    python -m lib.book build --preset tiny
    python -m lib.book all --preset default

Which chapters run, with which parameters, is :mod:`lib.chapters`. Stage: the book.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from lib.chapters import (
    chapter_parameters,
    check_folder,
    declared_parameters,
    list_chapters,
    preset_dir,
    select_chapters,
)
from lib.config import load_preset, parameter_names
from lib.errors import CompanionError
from lib.params import add_parameter_option, parse_parameters
from lib.paths import REPO_ROOT


KERNEL = "python3"  # the venv's ipykernel, whatever kernel a notebook's metadata names
INJECTED = "injected-parameters"  # papermill's tag on the cell of values it injects
ERROR_MARKER = "papermill-error-cell-tag"  # papermill's notes in a failed copy

# Sphinx through jupyter-book's own entry point, so ``_config.yml`` means what it means for
# ``jupyter-book build``; called here only to choose the output folder (``html/``).
_SPHINX = """\
import sys
from pathlib import Path
from jupyter_book.sphinx import build_sphinx
src, html = Path(sys.argv[1]), Path(sys.argv[2])
result = build_sphinx(
    src, html, noconfig=True, path_config=str(src / "_config.yml"),
    confoverrides={
        "external_toc_path": str(src / "_toc.yml"),
        "latex_individualpages": False,
        "nitpicky": True,
    },
    doctreedir=html.parent / "doctrees", builder="html", freshenv=True,
    warningiserror=True, keep_going=True, quiet=True,
)
sys.exit(result if isinstance(result, int) else 1)
"""


# --------------------------------------------------------------------------- running


@contextlib.contextmanager
def _kernel_environment(preset: str) -> Iterator[None]:
    """Environment the kernels inherit: ``import lib`` works, figures are not disabled,
    and ``COMPANION_PRESET`` names the preset (chapters record their headline figures
    under ``results/<preset>/``, see :func:`lib.results.record_headline`)."""
    saved = dict(os.environ)
    os.environ["COMPANION_PRESET"] = Path(preset).stem
    paths = [str(REPO_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    os.environ.pop("MPLBACKEND", None)  # Agg here would drop every figure from the pages
    # Progress bars are for people watching a kernel; in executed pages they are noise.
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class _CellOutput(logging.Filter):
    """Keep the chapters' own output lines; drop papermill's per-cell bookkeeping."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage().strip()
        if msg.startswith("<") and msg.endswith(">"):  # reprs of figures, tables, audio
            return False
        return not msg.startswith(("Executing", "Ending Cell", "Input Notebook",
                                   "Output Notebook", "Working directory"))


class _Stdout(logging.StreamHandler):
    """A handler that writes to whatever ``sys.stdout`` is when a line arrives.

    A plain ``StreamHandler(sys.stdout)`` keeps the stream of its first run: a later
    :func:`main` with stdout redirected (tests, notebooks) would write to a closed stream.
    """

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stdout

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _show_cell_output() -> None:
    """Print what the chapter prints while it runs (papermill logs it at INFO)."""
    log = logging.getLogger("papermill")
    if not any(isinstance(f, _CellOutput) for h in log.handlers for f in h.filters):
        handler = _Stdout()
        handler.setFormatter(logging.Formatter("    %(message)s"))
        handler.addFilter(_CellOutput())
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def _tags(cell: Any) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def _source_cell(executed: Path, index: int) -> int:
    """Where cell ``index`` of papermill's run sits in the source notebook (from 1).

    Papermill numbers the cells of its copy, which has its injected parameters cell (and,
    after a failure, its error notes) on top of the source's cells.
    """
    import nbformat

    try:
        cells = [c for c in nbformat.read(executed, 4).cells if ERROR_MARKER not in _tags(c)]
    except (OSError, ValueError):  # unreadable copy: assume the usual injected cell
        return index
    return index + 1 - sum(INJECTED in _tags(c) for c in cells[:index])


def _show_parameters_once(executed: Path, note: str) -> None:
    """Let the executed copy show its parameter values in one cell, marked as such.

    Papermill keeps the source's ``parameters`` cell (the defaults, with comments that
    explain them) and adds its ``injected-parameters`` cell below it. Here the injected
    cell takes the source cell's text with the values it injected in place of the defaults,
    under a first line saying so, and the source cell goes: the page lists each value once,
    as it was in effect, and the cells keep the source notebook's numbering. Nothing changes
    when nothing was injected. Only the copy's text changes: both cells ran.

    Args:
        executed: the executed notebook, rewritten in place.
        note: what to say about the run, e.g. ``preset tiny``.
    """
    import nbformat

    nb = nbformat.read(executed, 4)
    injected = next((c for c in nb.cells if INJECTED in _tags(c)), None)
    if injected is None:
        return
    defaults = next((c for c in nb.cells if "parameters" in _tags(c)), None)
    lines = injected.source.splitlines()
    if lines and lines[0].strip() == "# Parameters":  # papermill's own heading
        lines = lines[1:]
    head = f"# Parameters this page was run with ({note})"
    merged = None if defaults is None else _with_values(defaults.source, injected.source)
    if merged is not None:
        nb.cells = [c for c in nb.cells if c is not defaults]
        injected.source = f"{head}\n{merged}"
    elif defaults is not None:
        injected.source = "\n".join([f"{head}; the cell above has the defaults", *lines])
    else:
        injected.source = "\n".join([head, *lines])
    nbformat.write(nb, executed)


def _with_values(defaults: str, injected: str) -> str | None:
    """``defaults`` (a parameters cell) with each value ``injected`` sets put in its place.

    Comments and layout stay. Returns None when a cell is not plain ``name = value`` lines
    or the injected cell sets a name the defaults do not.
    """
    import ast

    def assignments(text: str) -> list[tuple[str, ast.expr]] | None:
        try:
            tree = ast.parse(text)
        except SyntaxError:
            return None
        out = []
        for node in tree.body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target, value = node.targets[0], node.value
            elif isinstance(node, ast.AnnAssign):
                target, value = node.target, node.value
            else:
                return None
            if value is None or not isinstance(target, ast.Name):
                return None
            out.append((target.id, value))
        return out

    old, new = assignments(defaults), assignments(injected)
    if old is None or new is None:
        return None
    values = {name: ast.get_source_segment(injected, value) for name, value in new}
    if not set(values) <= {name for name, _ in old}:
        return None
    # ast offsets count UTF-8 bytes within a line: edit the bytes, from the end.
    raw = defaults.encode()
    starts = [0]
    for line in raw.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    for name, value in reversed(old):
        if name in values:
            a = starts[value.lineno - 1] + value.col_offset
            b = starts[value.end_lineno - 1] + value.end_col_offset
            raw = raw[:a] + values[name].encode() + raw[b:]
    return raw.decode()


def run_chapters(
    preset: str = "default",
    chapters: list[str] | None = None,
    overrides: dict | None = None,
    out: Path | None = None,
    *,
    root: Path = REPO_ROOT,
) -> list[Path]:
    """Execute chapters with papermill; the source notebooks are left untouched.

    Each chapter gets the preset's values (and then ``overrides``) for the parameters it
    declares, runs with ``book/`` as working folder, and is written to
    ``out/<name>.ipynb`` only when it finishes, so a failed or interrupted run never
    replaces the last good copy; the partial run is kept as ``out/<name>.failed.ipynb``.
    The executed copy shows the values it ran with once, in papermill's injected cell.

    Args:
        preset: a name in ``params/`` (``tiny``, ``default``, ``paper-...``) or a YAML path.
        chapters: chapter numbers or names to run; all of them when ``None``.
        overrides: parameter values that win over the preset, e.g. ``{"train_steps": 50}``.
        out: folder for the executed notebooks; ``_build/<preset>/executed`` by default.
        root: the folder holding ``book/`` and ``params/`` (the repository).

    Returns:
        The executed notebooks, in chapter order.

    Raises:
        CompanionError: unknown preset, chapter or parameter, a preset key no chapter
            takes, a file where the output folder goes, or a chapter that failed (named
            with its cell, counted from 1 as in the source notebook).
        KeyboardInterrupt: Ctrl-C; its message says where the partial run was kept.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    notebooks = select_chapters(chapters, root)
    declared = {nb: declared_parameters(nb) for nb in list_chapters(root)}
    known = {*parameter_names(), *(n for names in declared.values() for n in names)}
    values = load_preset(preset, root, known=known)
    params = chapter_parameters({nb: declared[nb] for nb in notebooks}, values, overrides)
    out = Path(out) if out is not None else preset_dir(preset, root) / "executed"
    check_folder(out, create=True)

    done: list[Path] = []
    for nb in notebooks:
        target = out / nb.name
        running = out / f"{nb.stem}.running.ipynb"
        failed = out / f"{nb.stem}.failed.ipynb"
        running.unlink(missing_ok=True)  # left by a run that was killed outright
        changed = [f"{k}={v!r}" for k, v in (overrides or {}).items() if k in params[nb]]
        shown = f"; {', '.join(changed)}" if changed else ""
        print(f"chapter {nb.stem} (preset {preset}{shown})", flush=True)
        start = time.perf_counter()
        try:
            with _kernel_environment(preset):
                _show_cell_output()
                papermill.execute_notebook(
                    str(nb),
                    str(running),
                    parameters=params[nb],
                    kernel_name=KERNEL,
                    language="python",
                    cwd=str(nb.parent),
                    progress_bar=False,
                    log_output=True,  # the chapter's own lines (steps, checkpoints) live
                    # quiet the kernel's start-up chatter (a TCP warning on every start)
                    extra_arguments=["--IPKernelApp.log_level=CRITICAL"],
                )
        except KeyboardInterrupt:
            raise KeyboardInterrupt(_interrupted(nb, running, failed, target)) from None
        except PapermillExecutionError as err:
            if err.ename == "KeyboardInterrupt":  # Ctrl-C reached the kernel too
                raise KeyboardInterrupt(_interrupted(nb, running, failed, target)) from None
            cell = _source_cell(running, err.cell_index)
            running.replace(failed)
            raise CompanionError(
                f"chapter {nb.stem[:2]} failed in cell {cell}: "
                f"{err.ename}: {_one_line(err.evalue)} (partial run kept at {failed})"
            ) from None
        except Exception as err:  # kernel died, could not start, ...
            kept = ""
            if running.exists():
                running.replace(failed)
                kept = f" (partial run kept at {failed})"
            raise CompanionError(
                f"chapter {nb.stem[:2]} failed: {type(err).__name__}: {_one_line(err)}{kept}"
            ) from None
        note = f"preset {preset}" + (f"; -p {', '.join(changed)}" if changed else "")
        try:
            _show_parameters_once(running, note)
        except Exception as err:  # cosmetic: the run itself succeeded, keep papermill's copy
            print(f"  note: parameters shown as papermill wrote them ({_one_line(err)})")
        running.replace(target)
        failed.unlink(missing_ok=True)
        print(f"  done in {time.perf_counter() - start:.1f} s -> {target}", flush=True)
        done.append(target)
    return done


def _interrupted(nb: Path, running: Path, failed: Path, target: Path) -> str:
    """Keep an interrupted run as ``failed``; the one line that says so."""
    kept = "nothing was saved"
    if running.exists():
        running.replace(failed)
        kept = f"partial run kept at {failed}"
    last = (f"{target} is unchanged" if target.exists()
            else "there is no earlier executed copy")
    return f"interrupted: chapter {nb.stem[:2]} stopped; {kept}; {last}"


# --------------------------------------------------------------------------- building


def _stage(preset: str, root: Path) -> Path:
    """Copy the book's text and the executed chapters into ``_build/<preset>/src``."""
    base = check_folder(preset_dir(preset, root))
    executed = check_folder(base / "executed")
    src = check_folder(base / "src")
    check_folder(base / "html")
    missing = [nb.name for nb in list_chapters(root) if not (executed / nb.name).is_file()]
    if missing:
        raise CompanionError(
            f"not run yet for preset {preset!r}: {', '.join(missing)}; "
            f"run them first: make chapter PRESET={preset}"
        )
    shutil.rmtree(src, ignore_errors=True)
    shutil.copytree(
        root / "book",
        src / "book",
        ignore=shutil.ignore_patterns("*.ipynb", ".*", "__pycache__"),
    )
    for name in ("_config.yml", "_toc.yml", "references.bib"):
        if (root / name).is_file():
            shutil.copy2(root / name, src / name)
    for nb in list_chapters(root):
        copy = executed / nb.name
        if nb.stat().st_mtime > copy.stat().st_mtime:
            print(f"note: book/{nb.name} changed since it was run; the page shows the old run")
        shutil.copy2(copy, src / "book" / nb.name)
    return src


def build_book(preset: str = "default", *, root: Path = REPO_ROOT) -> Path:
    """Build the HTML book from the executed chapters of a preset, with execution off.

    Sphinx runs with warnings as errors (``-W -n --keep-going``): a broken reference or a
    missing figure fails the build. Only the pages listed in ``_toc.yml`` are built.

    Args:
        preset: the preset whose executed chapters to render (see :func:`run_chapters`).
        root: the folder holding ``_config.yml``, ``_toc.yml`` and ``book/``.

    Returns:
        The built ``index.html``.

    Raises:
        CompanionError: a chapter was not run yet, a file stands where a folder of
            ``_build/<preset>`` goes, or Sphinx reported a warning.
    """
    src = _stage(preset, root)
    html = preset_dir(preset, root) / "html"
    print(f"building the book from {src} ...", flush=True)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", _SPHINX, str(src), str(html)])
    if result.returncode != 0:
        raise CompanionError("the book build failed (warnings count as errors): see above")
    index = html / "index.html"
    if not index.is_file():
        raise CompanionError(f"the build finished but wrote no {index}")
    print(f"built in {time.perf_counter() - start:.1f} s: {index}", flush=True)
    return index


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lib.book", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    helps = {
        "run": "execute chapters into _build/<preset>/executed",
        "build": "render the executed chapters into _build/<preset>/html",
        "all": "run, then build",
    }
    for name, text in helps.items():
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("--preset", default="default", help="params/<preset>.yaml or a .yaml path")
        if name == "build":
            continue
        sub.add_argument(
            "--chapter", action="append", metavar="NN", help="run only this chapter (repeatable)"
        )
        add_parameter_option(sub)
    return parser


def main(argv: Sequence[str] | None = None, *, root: Path = REPO_ROOT) -> int:
    """Command-line entry point; returns the exit status.

    A problem is one line on stderr (``error: ...``) and status 1; Ctrl-C is one line
    (``interrupted: ...``) and status 130, with the partial run kept and the last good copy
    untouched.

    Args:
        argv: the arguments (``sys.argv[1:]`` when None).
        root: the repository (``book/``, ``params/``, ``_build/``); for tests.
    """
    args = _parser().parse_args(argv)
    try:
        if args.command in ("run", "all"):
            overrides = parse_parameters(args.parameter)
            run_chapters(args.preset, args.chapter, overrides, root=root)
            if root == REPO_ROOT:  # a full run may have recorded new figures of record
                from lib.report import update_readme

                if update_readme():
                    print("README.md: results tables re-rendered from results/")
        if args.command in ("build", "all"):
            index = build_book(args.preset, root=root)
            print(f"open {index}")
    except CompanionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:
        print(_one_line(err) if str(err) else "interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
