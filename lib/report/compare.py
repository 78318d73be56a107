"""A refreshed run against the run it replaces: is each figure inside the interval stated before?

When a full ``make book`` publishes its records (:func:`lib.report.results.publish_run`),
every figure the previous run recorded with a 95 % interval (:func:`intervals`) is looked up
in the new records. The rule, fixed before any run: a new figure repeats the previous run
when it lies inside the previous run's interval (ends included, as the record check reads
a figure against its own interval: :func:`lib.report.results.inside`); a figure outside
it, or one the new run no longer records, is a finding, listed with both values so that
the page reports the difference instead of hiding it. The intervals
are over the choice of utterances (and seeds, where a record says so): the same code and
data give the same figures, so a figure outside says that something the run depends on has
changed (the code, a precision chosen by the machine, the data), not that the run was
unlucky. Kept in ``results/<preset>/compared.json`` and rendered on the page of the numbers
of record. Stage: report.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lib.fileio import load_json, save_json
from lib.errors import CompanionError
from lib.report.results import (_get, inside, intervals, is_number, measured_at, publish_run,
                                 read_record, records, results_root, staging)

COMPARED = "compared.json"
"""The comparison's file beside a preset's records."""

SHOWN = 12
"""Findings the page lists per chapter, farthest first (the file keeps them all)."""


def _run(recs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    first = next(iter(recs.values()), {})
    prov = first.get("provenance", {})
    return {"run_id": first.get("run_id"), "commit": (prov.get("git_hash") or "")[:7],
            "measured": measured_at(prov)}


def _distance(value: float, ci: list[float]) -> float:
    """How far ``value`` lies outside ``ci``, in widths of ``ci`` (0 inside)."""
    lo, hi = ci
    out = lo - value if value < lo else value - hi if value > hi else 0.0
    return out / (hi - lo) if hi > lo else math.inf if out > 0 else 0.0


def compare_runs(old: dict[str, dict[str, Any]],
                 new: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each chapter of ``old`` (records by chapter) against ``new``: ``figures`` (with an
    interval before), ``inside``, ``identical`` (the same number), ``outside`` (findings:
    ``figure``, ``previous``, ``previous_ci95``, ``now``, ``widths`` outside, farthest first)
    and ``not_recorded`` (figures the new run does not hold, or a chapter it did not run)."""
    chapters = {}
    for ch in sorted(old):
        rows = intervals(old[ch])
        within = identical = 0
        outside, missing = [], []
        for path, before, ci in rows:
            now = _get(new[ch], path) if ch in new else None
            if not is_number(now):
                missing.append(path)
                continue
            identical += now == before
            if inside(now, ci):
                within += 1
            else:
                outside.append({"figure": path, "previous": before, "previous_ci95": ci,
                                "now": float(now), "widths": _distance(float(now), ci)})
        outside.sort(key=lambda r: -r["widths"])
        chapters[ch] = {"figures": len(rows), "inside": within, "identical": identical,
                        "outside": outside, "not_recorded": missing}
    return {"previous": _run(old), "now": _run(new), "chapters": chapters}


def write_comparison(folder: Path, old: dict[str, dict[str, Any]],
                     new: dict[str, dict[str, Any]]) -> Path | None:
    """Write :func:`compare_runs` into ``folder/compared.json``; with no previous run, remove
    a comparison left there (it would describe records no longer in the folder)."""
    path = Path(folder) / COMPARED
    if not old:
        path.unlink(missing_ok=True)
        return None
    return save_json(path, compare_runs(old, new))


def publish(preset: str, run_id: str, root: Path | None = None) -> list[Path]:
    """Publish a completed full run (:func:`lib.report.results.publish_run`) after comparing
    the run it replaces with it (:func:`write_comparison`). Records that cannot be read as
    one run's are not compared: one line says why, and the new run is published."""
    folder = (root or results_root()) / preset
    new = {p.stem: read_record(p) for p in sorted(staging(folder, run_id).glob(
        "ch[0-9][0-9].json"))}
    if new:
        try:
            old = records(preset, root=root)
        except CompanionError as err:
            print(f"the records replaced are not compared with this run: {err}")
            old = {}
        write_comparison(folder, old, new)
    return publish_run(preset, run_id, root)


def chapter_sentence(ch: str, c: dict[str, Any]) -> str:
    """One chapter's verdict in words."""
    n, inside = c["figures"], c["inside"]
    if not n:
        return f"{ch}: no figure with an interval in the previous run"
    words = (f"{ch}: {inside} of {n} figures inside the previous run's interval "
             f"({c['identical']} the same number)")
    if not c["outside"] and not c["not_recorded"]:
        return words + ": the run repeats the previous one"
    if c["outside"]:
        words += f"; {len(c['outside'])} outside, each a finding"
    if c["not_recorded"]:
        words += f"; {len(c['not_recorded'])} not recorded by this run"
    return words


def _num(x: float) -> str:
    return f"{x:.3g}"


def render_compared(path: Path) -> str:
    """The page's block: what was compared, one verdict per chapter, and the findings."""
    if not Path(path).is_file():
        return "(no earlier run of this preset was replaced: nothing to compare with)\n"
    c = load_json(path)
    out = [f"This run ({c['now']['measured']}) against the run it replaced "
           f"({c['previous']['measured']}).", ""]
    out += [f"- {chapter_sentence(ch, v)}" for ch, v in c["chapters"].items()]
    for ch, v in c["chapters"].items():
        if not v["outside"]:
            continue
        out += ["", f"Findings of {ch} (farthest first"
                + (f", {SHOWN} of {len(v['outside'])}; every one is in `{COMPARED}`)"
                   if len(v["outside"]) > SHOWN else ")") + ":", "",
                "| figure | previous [95 % interval] | this run | widths outside |",
                "|---|---|---|---|"]
        out += [f"| `{r['figure']}` | {_num(r['previous'])} [{_num(r['previous_ci95'][0])}, "
                f"{_num(r['previous_ci95'][1])}] | {_num(r['now'])} | {r['widths']:.2f} |"
                for r in v["outside"][:SHOWN]]
    return "\n".join(out) + "\n"
