"""Run the book's chapters with papermill into ``_build/<preset>/executed/``.

The chapters are the notebooks ``book/NN_name.ipynb``. Their sources stay free of outputs;
:func:`run_chapters` executes them with the parameters of a *preset*
(``params/<preset>.yaml``) and ``-p`` overrides; a chapter that fails or is interrupted never
replaces its last good executed copy. Building the HTML is :mod:`lib.book.html`, the
command line :mod:`lib.book.__main__`, which chapters run with which parameters
:mod:`lib.book.chapters`. Stage: the book.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lib.book.chapters import (chapter_parameters, declared_parameters,
                               list_chapters, preset_dir, select_chapters)
from lib.book.executed import show_parameters_once, source_cell
from lib.book.resume import resume_or_start, run_state
from lib.clock import PROGRESS_ENV
from lib.config.defaults import parameter_names
from lib.config.presets import load_preset, preset_label, preset_path
from lib.errors import CompanionError, disk_error, is_disk_error
from lib.paths import REPO_ROOT, check_folder, slug
from lib.report.compare import publish
from lib.report.results import new_run_id, results_root


KERNEL = "python3"  # the venv's ipykernel, whatever kernel a notebook's metadata names

# --------------------------------------------------------------------------- running


@contextlib.contextmanager
def _kernel_environment(progress: Path | None = None) -> Iterator[None]:
    """Environment the kernels inherit: ``import lib`` works, figures are not disabled,
    ``COMPANION_PROGRESS`` names the file the kernel's loops report their progress to
    (:func:`lib.clock.track`). The preset and what the run records are parameters of the
    chapter (``preset``, ``record``), never environment variables."""
    saved = dict(os.environ)
    os.environ.pop(PROGRESS_ENV, None)
    if progress is not None:
        os.environ[PROGRESS_ENV] = str(progress)
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


def one_line(text: str) -> str:
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


@contextlib.contextmanager
def progress_lines(path: Path, every_s: float = 2.0) -> Iterator[None]:
    """Print, as they arrive, the lines a kernel's loops write to ``path`` (stage, n of N,
    elapsed, what is left: :func:`lib.clock.track`), so a long stage shows it is moving in
    the terminal while the page keeps none of it. ``path`` is removed afterwards."""
    path.write_text("", encoding="utf-8")
    stop = threading.Event()

    def pump() -> None:
        with open(path, encoding="utf-8") as fh:
            pending = ""
            while True:
                finished = stop.wait(every_s)
                pending += fh.read()
                *lines, pending = pending.split("\n")
                for line in lines:
                    print(f"    ... {line}", flush=True)
                if finished:
                    return

    thread = threading.Thread(target=pump, name="progress-lines", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        path.unlink(missing_ok=True)


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
    notebooks = select_chapters(chapters, root)
    declared = {nb: declared_parameters(nb) for nb in list_chapters(root)}
    known = {*parameter_names(), *(n for names in declared.values() for n in names)}
    values = load_preset(preset, root, known=known)
    # the kernel runs in book/: a preset given as a path is passed as an absolute one
    name = str(preset_path(preset, root).resolve()) if preset.endswith((".yaml", ".yml")) \
        else preset
    trial = trial_name(notebooks, list_chapters(root), overrides)
    run_id = None if trial else new_run_id()
    params = chapter_parameters({nb: declared[nb] for nb in notebooks}, values, overrides,
                                preset_name=name,
                                record=f"trial:{trial}" if trial else f"run:{run_id}")
    out = Path(out) if out is not None else preset_dir(preset, root) / "executed"
    check_folder(out, create=True)
    label = preset_label(preset, root)
    if label != preset:  # a path; named like a shipped preset when its label is not its stem
        stem = Path(preset).stem
        print(f"preset file {preset}: its figures go under results/{label}/ and its pages "
              f"under _build/{label}/" + (f" (not params/{stem}.yaml, whose records stay)"
                                          if label != stem else ""), flush=True)
    if trial:
        print(f"a trial, not a full run of preset {label}: its figures are recorded under "
              f"results/{label}/trials/{trial}/, the numbers of record stay", flush=True)
    with preset_lock(check_folder(preset_dir(preset, root), create=True)):
        kept: list[Path] = []
        if run_id:  # a full run: resume a killed one that ran the same code and values
            state = run_state(root, {nb.name: params[nb] for nb in notebooks})
            run_id, kept = resume_or_start(results_root() / label, state, out, notebooks,
                                           run_id)
            for nb in notebooks:
                if "record" in params[nb]:
                    params[nb]["record"] = f"run:{run_id}"
        todo = [nb for nb in notebooks if nb not in kept]
        shown = {nb: _preset_shown(nb, declared[nb], params[nb], values) for nb in todo}
        _run_each(todo, out, params, overrides, label, shown)
        if run_id:
            publish(label, run_id)  # compared with the run it replaces, then published
        return [out / nb.name for nb in notebooks]


def trial_name(selected: list[Path], every: list[Path], overrides: dict | None) -> str | None:
    """None for a full run (every chapter, no override), else the name its figures are
    recorded under: the overrides (``train_steps-9``) or the chapters (``chapter-01``)."""
    if not overrides and selected == every:
        return None
    if overrides:
        return slug("-".join(f"{k}-{v}" for k, v in sorted(overrides.items())))[:80]
    return "chapter-" + "-".join(nb.stem[:2] for nb in selected)


@contextlib.contextmanager
def preset_lock(folder: Path) -> Iterator[None]:
    """One run of a preset at a time: an exclusive lock on ``<folder>/run.lock``.

    Raises:
        CompanionError: another run holds it (naming the lock and its process).
    """
    import fcntl

    lock = folder / "run.lock"
    with open(lock, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise CompanionError(f"another run of this preset holds {lock} ({holder}): wait "
                                 "for it to finish, or run another preset") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}\n")
        fh.flush()
        try:
            yield
        finally:
            fh.seek(0)
            fh.truncate()
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run_each(notebooks: list[Path], out: Path, params: dict[Path, dict[str, Any]],
              overrides: dict | None, preset: str,
              preset_shown: dict[Path, dict[str, Any]] | None = None) -> list[Path]:
    """Execute each chapter in turn (see :func:`run_chapters`); its page shows the values
    it ran with (:func:`lib.book.executed.show_parameters_once`: the ``-p`` values injected
    and, for a chapter that resolves its own values, the preset's values of its own
    parameters, which its kernel read from the same preset)."""
    done: list[Path] = []
    for nb in notebooks:
        target = out / nb.name
        running = out / f"{nb.stem}.running.ipynb"
        failed = out / f"{nb.stem}.failed.ipynb"
        running.unlink(missing_ok=True)  # left by a run that was killed outright
        reached = {**params[nb].get("overrides", {}), **params[nb]}
        changed = [f"{k}={v!r}" for k, v in (overrides or {}).items() if k in reached]
        shown = f"; {', '.join(changed)}" if changed else ""
        print(f"chapter {nb.stem} (preset {preset}{shown})", flush=True)
        start = time.perf_counter()
        _execute(nb, running, failed, target, params[nb])
        note = f"preset {preset}" + (f"; -p {', '.join(changed)}" if changed else "")
        try:
            show_parameters_once(running, note, (preset_shown or {}).get(nb))
        except Exception as err:  # cosmetic: the run itself succeeded, keep papermill's copy
            print(f"  note: parameters shown as papermill wrote them ({one_line(err)})")
        running.replace(target)
        failed.unlink(missing_ok=True)
        print(f"  done in {time.perf_counter() - start:.1f} s -> {target}", flush=True)
        done.append(target)
    return done


def _preset_shown(nb: Path, names: list[str], injected: dict[str, Any],
                  preset_values: dict[str, Any]) -> dict[str, Any]:
    """The preset's values of a self-resolving chapter's own parameters (its cell declares
    ``names``) that were not injected: shown on its page in their places, never passed to
    its kernel."""
    from lib.book.chapters import chapter_number, resolves_itself
    from lib.config.defaults import own_names

    if not resolves_itself(nb, names):
        return {}
    return {k: preset_values[k] for k in own_names(chapter_number(nb))
            if k in preset_values and k not in injected}


def _execute(nb: Path, running: Path, failed: Path, target: Path,
             params: dict[str, Any]) -> None:
    """Run one chapter with papermill into ``running``; a failure is one line, with the
    partial run kept as ``failed`` and ``target`` (the last good copy) untouched."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    progress = running.parent / f"{nb.stem}.progress.log"
    try:
        with _kernel_environment(progress), progress_lines(progress):
            _show_cell_output()
            papermill.execute_notebook(
                str(nb),
                str(running),
                parameters=params,
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
        cell = source_cell(running, err.cell_index)
        running.replace(failed)
        raise CompanionError(
            f"chapter {nb.stem[:2]} failed in cell {cell}: "
            f"{err.ename}: {_kernel_error(err.evalue)} (partial run kept at {failed})"
        ) from None
    except Exception as err:  # kernel died, could not start, ...
        kept = ""
        if running.exists():
            running.replace(failed)
            kept = f" (partial run kept at {failed})"
        raise CompanionError(
            f"chapter {nb.stem[:2]} failed: {type(err).__name__}: {one_line(err)}{kept}"
        ) from None


def _kernel_error(evalue: str) -> str:
    """A kernel's error in one line; a full or read-only disk as what to do about it
    (:func:`lib.errors.disk_error`), not the bare ``[Errno 28] ...``."""
    import re

    m = re.match(r"\[Errno (\d+)\] [^:]*: '(.*)'$", one_line(evalue))
    if m:
        err = OSError(int(m.group(1)), "", m.group(2))
        if is_disk_error(err):
            return disk_error(err)
    return one_line(evalue)


def _interrupted(nb: Path, running: Path, failed: Path, target: Path) -> str:
    """Keep an interrupted run as ``failed``; the one line that says so."""
    kept = "nothing was saved"
    if running.exists():
        running.replace(failed)
        kept = f"partial run kept at {failed}"
    last = (f"{target} is unchanged" if target.exists()
            else "there is no earlier executed copy")
    return f"interrupted: chapter {nb.stem[:2]} stopped; {kept}; {last}"


