"""The numbers of record: each chapter's headline figures in ``results/<preset>/``.

The files are written with their provenance through :mod:`lib.fileio` (atomic writes,
git commit, versions, device); the README's tables are rendered from them
(:mod:`lib.report`). Stage: report. Explained in chapter 1 (book/01_building_a_speechllm.ipynb).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from lib.clock import summary
from lib.errors import CompanionError
from lib.fileio import figures_digest, provenance, save_json
from lib.paths import REPO_ROOT


def results_root() -> Path:
    """Where the numbers of record live: ``$COMPANION_RESULTS`` or ``<repo>/results``."""
    return Path(os.environ.get("COMPANION_RESULTS", REPO_ROOT / "results")).expanduser()


def check_record(rec: dict[str, Any], where: str) -> dict[str, Any]:
    """A results record the README may be rendered from: its digest matches its figures
    and every figure is consistent (a value inside its own 95 % interval, utterance counts
    positive whole numbers).

    Raises:
        CompanionError: naming ``where`` and the first field that fails.
    """
    if not isinstance(rec, dict):
        raise CompanionError(f"{where} holds a JSON {type(rec).__name__}, not a record: "
                             "restore it from git or run `make book` again")
    want = rec.get("digest")
    if want is None:
        raise CompanionError(f"{where} carries no digest of its figures: it was not written "
                             "by a book run; run `make book` to record it")
    if figures_digest(rec) != want:
        raise CompanionError(f"{where}: its figures do not match their digest (edited by "
                             "hand?): restore it from git or run `make book` again")
    for path, value in _leaves(rec):
        name = path.rsplit("/", 1)[-1]
        if not all(_finite(x) for x in (value if isinstance(value, list) else [value])):
            raise CompanionError(f"{where}: {path} = {value} is not a finite number: the run "
                                 "did not measure it; run `make book` again")
        if name == "n_utterances" and not (isinstance(value, int) and value > 0):
            raise CompanionError(f"{where}: {path} = {value} is not a positive count")
    for path, value, ci in intervals(rec):
        if not inside(value, ci):
            raise CompanionError(f"{where}: {path} = {value} lies outside its own 95 % "
                                 f"interval {ci}: the record is inconsistent")
    return rec


def is_number(x: Any) -> bool:
    """A plain number (an int or a float, not a bool)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def inside(value: float, ci: list[float], slack: float = 1e-9) -> bool:
    """``value`` within the interval ``ci``, ends included (``slack`` for float rounding)."""
    return ci[0] - slack <= value <= ci[1] + slack


def intervals(rec: dict[str, Any]) -> list[tuple[str, float, list[float]]]:
    """Every figure of ``rec`` that carries its 95 % interval: ``(path, value, [low,
    high])``. An interval is named after its figure: ``X_ci95`` beside ``X``; ``X ci95``
    beside ``X`` or ``X WER`` (the lever table's columns); a bare ``ci95`` beside ``delta``
    or ``WER``. A figure or interval written as null (undefined) is left out."""
    out = []
    for path, ci in _leaves(rec):
        parent, _, name = path.rpartition("/")
        if not (name.endswith("ci95") and isinstance(ci, list) and len(ci) == 2
                and all(is_number(x) for x in ci)):
            continue
        if name.endswith("_ci95") or name.endswith(" ci95"):
            bases = [name[:-5]] + ([name[:-5] + " WER"] if name.endswith(" ci95") else [])
        elif name == "ci95":
            bases = ["delta", "WER"]
        else:
            continue
        for base in bases:
            at = f"{parent}/{base}" if parent else base
            value = _get(rec, at)
            if is_number(value):
                out.append((at, float(value), [float(ci[0]), float(ci[1])]))
                break
    return out


NEEDS: dict[str, tuple[str, ...]] = {
    "ch01": ("decoders/*/test_sets/*/wer", "decoders/*/test_sets/*/wer_ci95",
             "decoders/*/test_sets/*/n_utterances", "decoders/*/training/minutes",
             "decoders/*/training/llm_minutes", "decoders/*/training/steps",
             "decoders/*/training/recipe", "decoders/*/audio_reliance_gap"),
    "ch02": ("decoders/*/comparisons/*/spearman_per_n_mean",
             "decoders/*/comparisons/*/overlap_mean", "decoders/*/comparisons/*/verdict",
             "decoders/*/comparisons/*/chance/spearman_per_n_mean",
             "decoders/*/comparisons/*/chance/overlap_mean", "thresholds/agree_rho",
             "thresholds/agree_overlap_gain"),
    "ch03": ("decoders/*/strategies/*", "decoders/*/chosen/strategy",
             "decoders/*/chosen/n_removed", "decoders/*/chosen/removed_fraction",
             "settings/threshold"),
    "ch04": ("decoders/*/cut/n_removed", "decoders/*/cut/n_layers",
             "decoders/*/variants/*/trainable", "decoders/*/variants/*/wall_time_s",
             "decoders/*/variants/*/tests/*", "settings/heal_steps",
             "settings/heal_batch_size", "settings/heal_learning_rate",
             "settings/heal_lora_rank"),
    "ch05": ("decoders/*/tasks/*/metric", "decoders/*/tasks/*/floor",
             "decoders/*/tasks/*/vs_floor/verdict", "decoders/*/tasks/*/baselines",
             "decoders/*/tasks/*/learned", "decoders/*/removal/pairs", "competence_margin",
             "claim5"),
    "ch06": ("transfer_min", "cells/task", "cells/encoder", "checks/task", "checks/encoder",
             "encoders/*/wer", "encoders/*/reads_audio", "backbone", "sentences"),
}
"""Chapter -> the fields its README renderer (:mod:`lib.report.readme`) reads (``*``: every
key, at least one), which a record must hold, not null, before it is rendered
(:func:`check_needs`)."""


def check_needs(rec: dict[str, Any], chapter: str, where: str) -> None:
    """``rec`` holds every field of :data:`NEEDS` for ``chapter``.

    Raises:
        CompanionError: naming ``where`` and the first field missing or null (renamed, or
            written by another version of the book).
    """
    for pattern in NEEDS.get(chapter, ()):
        nodes: list[tuple[str, Any]] = [("", rec)]
        for part in pattern.split("/"):
            found = []
            for path, node in nodes:
                here = f"{path}/{part}" if path else part
                if not isinstance(node, dict):
                    raise CompanionError(f"{where}: {path} is not a mapping of fields: run "
                                         "`make book` to record it again")
                keys = list(node) if part == "*" else [part]
                if part == "*" and not keys:
                    raise CompanionError(f"{where}: {path} is empty: run `make book` to "
                                         "record it again")
                for k in keys:
                    if node.get(k) is None:
                        raise CompanionError(f"{where}: the field {here.replace('*', k)} is "
                                             "missing (renamed, or written by another version "
                                             "of the book): run `make book` to record it again")
                    found.append((here.replace("*", k), node[k]))
            nodes = found


def _undefined_as_null(obj: Any) -> Any:
    """``obj`` with every NaN or infinite number as None: a figure the run could not define
    (a share of nothing, a correlation of constants) is written as null, which the README
    shows as a dash, so that a non-finite number in a record always means damage."""
    if isinstance(obj, dict):
        return {k: _undefined_as_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_undefined_as_null(v) for v in obj]
    return obj if _finite(obj) else None


def _finite(x: Any) -> bool:
    """Not NaN or infinite (anything that is not a number passes)."""
    import numbers

    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        return True
    return math.isfinite(float(x))


def _leaves(obj: Any, path: str = "") -> list[tuple[str, Any]]:
    if isinstance(obj, dict):
        return [x for k, v in obj.items() if k != "provenance"
                for x in _leaves(v, f"{path}/{k}" if path else str(k))]
    if isinstance(obj, list) and not all(isinstance(x, (int, float)) for x in obj):
        return [x for i, v in enumerate(obj) for x in _leaves(v, f"{path}[{i}]")]
    return [(path, obj)]


def _get(rec: Any, path: str) -> Any:
    node = rec
    for part in path.replace("[", "/[").split("/"):
        if part.startswith("["):
            if not (part.endswith("]") and part[1:-1].isdigit()):
                return None  # e.g. the interval of a list's item: there is none
            idx = int(part[1:-1])
            node = node[idx] if isinstance(node, list) and idx < len(node) else None
        else:
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return None
    return node


def recorded_line(path: Path | None, run: Any) -> str:
    """The short line a chapter's page shows at its record: where its figures went and
    where its time went so far (the terminal showed the progress, the page keeps this)."""
    from lib.clock import duration, others_share

    t = _time(run)
    stages = ", ".join(f"{k} {100 * v / max(t['wall_s'], 1e-9):.0f} %"
                       for k, v in list(t["stages"].items())[:4])
    where = f"; this chapter's run so far: {duration(t['wall_s'])} ({stages})"
    share = others_share(t.get("cpu"), t["wall_s"])
    if share == share:  # measured (the time table judges it: lib.report.rules.machine_shared)
        where += f", other processes took {100 * share:.0f} % of the CPU"
    if path is None:
        return "headline figures not recorded (a quick run: test sets cut short)" + where
    try:  # as the reader knows it (results/...), not this machine's path
        shown = path.relative_to(results_root().parent)
    except ValueError:
        shown = Path(path.parent.name) / path.name
    if run.record.kind == "run":
        return (f"headline figures recorded for {shown}, where they go with every other "
                "chapter's when the whole run has finished" + where)
    return f"headline figures recorded in {shown}" + where


def records(preset: str, trial: str | None = None,
            root: Path | None = None) -> dict[str, dict[str, Any]]:
    """The records of a preset's last full run (or of ``trial``), by chapter, checked
    (:func:`check_record`)."""
    folder = (root or results_root()) / Path(preset).stem
    folder = folder / "trials" / trial if trial else folder
    recs = {p.stem: read_record(p) for p in sorted(folder.glob("ch[0-9][0-9].json"))}
    if not trial:
        check_one_run(recs, folder)
    return recs


def check_one_run(recs: dict[str, dict[str, Any]], folder: Path) -> None:
    """The records of ``folder`` come from one completed full run: they carry one run id
    (records written before run ids were kept carry none, and then none may carry one).

    Raises:
        CompanionError: a mixed set, naming each file and its run.
    """
    runs = {ch: rec.get("run_id") for ch, rec in recs.items()}
    if len(set(runs.values())) > 1:
        named = ", ".join(f"{ch}.json ({r or 'no run id'})" for ch, r in runs.items())
        raise CompanionError(f"{folder} mixes the records of different runs ({named}): run "
                             "`make book` for this preset again to record a complete set")


def read_record(path: Path) -> dict[str, Any]:
    """One results file, checked (:func:`check_record`).

    Raises:
        CompanionError: not valid JSON, or it fails its checks (naming the file).
    """
    from lib.fileio import load_json

    try:
        rec = load_json(path)
    except ValueError as err:
        raise CompanionError(f"{path} is not valid JSON ({err}): restore it from git or run "
                             "`make book` again") from None
    return check_record(rec, str(path))


def measured_at(prov: dict[str, Any]) -> str:
    """Where and when a record or a benchmark was measured, from its provenance: the
    commit (and whether it had uncommitted changes), the date, the machine, torch."""
    commit = (prov.get("git_hash") or "unknown")[:7]
    dirty = " (uncommitted changes)" if prov.get("git_dirty") else ""
    dev = prov.get("device", {})
    model = f" ({dev['cpu']}, " + ("native bf16" if dev.get("cpu_native_bf16") else
                                   "no native bf16: float32") + ")" if dev.get("cpu") else ""
    where = dev.get("gpu") or f"{dev.get('cpu_count', '?')} CPU cores{model}, no GPU"
    return (f"at commit {commit}{dirty} on {prov.get('date', '?')[:10]}, on {where}; torch "
            f"{prov.get('versions', {}).get('torch', '?')}")


def _time(run: Any) -> dict[str, Any]:
    """Where the run's chapter's time went so far: its clock's summary
    (:class:`lib.config.sections.Run`), or the process's when it carries none."""
    return run.clock.summary() if run.clock is not None else summary()


def record_path(run: Any) -> Path:
    """Where ``run`` (:class:`lib.config.sections.Run`) records its chapter: for a full run
    of the preset, ``results/<preset>/.run-<id>/chNN.json`` (moved to ``results/<preset>/``
    with the rest of the run by :func:`publish_run`); for a trial or a notebook run by hand,
    ``results/<preset>/trials/<name>/chNN.json``."""
    folder = results_root() / run.preset
    rec = run.record
    where = staging(folder, rec.name) if rec.kind == "run" else folder / "trials" / rec.name
    return where / f"ch{run.chapter:02d}.json"


def staging(folder: Path, run_id: str) -> Path:
    """Where a full run's records wait until the run completes."""
    return folder / f".run-{run_id}"


def new_run_id() -> str:
    """A full run's id: when it started (UTC) and its process."""
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + f"-{os.getpid()}"


def publish_run(preset: str, run_id: str, root: Path | None = None) -> list[Path]:
    """Move a completed full run's records from its staging folder into
    ``results/<preset>/`` together, replacing the previous run's (a chapter the new run did
    not record is removed too, so the folder never mixes two runs), and clear staging
    folders left by runs that were killed.

    A book run publishes through :func:`lib.report.compare.publish`, which first compares
    the run replaced with the new one.

    Returns:
        The records now in ``results/<preset>/``.
    """
    import shutil

    folder = (root or results_root()) / preset
    staged = staging(folder, run_id)
    new = sorted(staged.glob("ch[0-9][0-9].json")) if staged.is_dir() else []
    if new:
        for old in folder.glob("ch[0-9][0-9].json"):
            if not (staged / old.name).exists():
                old.unlink()
        for p in new:
            os.replace(p, folder / p.name)
    for left in folder.glob(".run-*"):
        shutil.rmtree(left, ignore_errors=True)
    return sorted(folder.glob("ch[0-9][0-9].json"))


def record_headline(run: Any, figures: dict[str, Any]) -> Path | None:
    """Keep a chapter's headline figures with their provenance and the digest of the figures
    (:func:`lib.fileio.figures_digest`, which the README renderer checks).

    ``run`` (:class:`lib.config.sections.Run`) says where: a full book run of a preset
    (every chapter, no ``-p`` change) writes the numbers of record,
    ``results/<preset>/chNN.json``, from which the README's tables are rendered
    (:mod:`lib.report.readme`), never typed: staged until the whole run has finished and
    then moved in together (:func:`publish_run`), stamped with the run's id. A trial, or a
    notebook run by hand, writes beside them, under ``results/<preset>/trials/<name>/``
    (:func:`record_path`), and says so. Explained in chapter 1
    (book/01_building_a_speechllm.ipynb).

    A figure the run could not define (NaN) is written as null (:func:`_undefined_as_null`).
    The record also carries where the chapter's time went (``time``: its wall time so far
    and the seconds of each stage, :func:`lib.clock.summary`), from which the README's time
    table is rendered.

    Returns:
        Where the record will be read (for a full run, where it goes when the run
        completes), or ``None`` for a quick run (test sets cut short: nothing recorded).
    """
    if run.quick:
        return None
    path = record_path(run)
    rec = {"chapter": f"ch{run.chapter:02d}", "preset": run.preset,
           **_undefined_as_null(figures), "time": _time(run)}
    if run.record.kind == "run":
        rec["run_id"] = run.record.name
    else:
        rec["trial"] = run.record.name
    rec["digest"] = figures_digest(rec)
    save_json(path, {**rec, "provenance": provenance(run)})
    return path if rec.get("trial") else path.parent.parent / path.name
