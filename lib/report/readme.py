"""The README's tables of results, rendered from ``results/<preset>/<chapter>.json``.

The numbers of record of a full book run are the small JSON files the chapters write
(:func:`lib.report.results.record_headline`). The README never types a figure: each block between

    <!-- results: default/ch01 -->
    ...
    <!-- end results -->

is replaced by the rendering of that file. ``python -m lib.report`` (and every
``make book``) re-renders them; a test checks that the README matches its JSON files.

Stage: report (the README's tables).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

from lib.errors import CompanionError
from lib.fileio import atomic_write_text
from lib.paths import REPO_ROOT
from lib.report.bench import render_bench
from lib.report.blocks import (render_ch01, render_ch02, render_ch03,
                               render_ch04, render_ch05, render_ch06)
from lib.report.compare import COMPARED, render_compared
from lib.report.results import check_needs, records, results_root
from lib.report.summary import render_summary

BLOCK = re.compile(r"(<!-- results: ([\w.-]+)/(\w+) -->\n)(.*?)(<!-- end results -->)", re.S)


def render_time(recs: dict[str, dict[str, Any]], min_share: float = 0.01) -> str:
    """Where each chapter's time went, stage by stage, from the records' ``time``
    (:func:`lib.clock.summary`): the chapter's wall time, each stage's minutes and share
    (stages under ``min_share`` folded into ``other``), what was reused from the cache
    instead of computed (nothing: a first run), and the share of the machine's CPU time other
    processes took meanwhile, judged by :func:`lib.report.rules.machine_shared` (a shared
    machine's times overstate the chapter's). Also what ``make bench-book`` prints."""
    from lib.clock import OTHER, duration
    from lib.report.rules import SHARED_MAX, machine_shared

    if not recs:
        return "(no full run recorded yet: `make book`)\n"
    rows = ["| chapter | wall time | where it went (share of the chapter) | reused from the "
            "cache | others' CPU |", "|---|---|---|---|---|"]
    total, timed, runs, shared = 0.0, [], {}, {}
    for ch, rec in recs.items():
        t = rec.get("time")
        prov = rec.get("provenance", {})
        commit = (prov.get("git_hash") or "unknown")[:7]
        runs.setdefault(commit + (" (uncommitted changes)" if prov.get("git_dirty") else ""),
                        prov.get("date", "?")[:10])
        if not t:
            rows.append(f"| {int(ch[2:])} | not recorded | (this record predates the stage "
                        "times) | – | – |")
            continue
        wall, stages = t["wall_s"], dict(t["stages"])
        total += wall
        timed.append(int(ch[2:]))
        small = sum(v for k, v in stages.items() if v < min_share * wall and k != OTHER)
        shown = {k: v for k, v in stages.items() if v >= min_share * wall and k != OTHER}
        if stages.get(OTHER, 0.0) + small > 0:
            shown[OTHER] = stages.get(OTHER, 0.0) + small
        where = " · ".join(f"{k} {duration(v)} ({100 * v / max(wall, 1e-9):.0f} %)"
                           for k, v in shown.items())
        reused = ", ".join(f"{k} x{n}" for k, n in t.get("reused", {}).items()) or \
            "nothing (a first run)"
        verdict, share = machine_shared(t.get("cpu"), wall)
        shared.setdefault(verdict, []).append((int(ch[2:]), share))
        others = "not measured" if share != share else f"{100 * share:.0f} %"
        rows.append(f"| {int(ch[2:])} | {duration(wall)} | {where} | {reused} | {others} |")
    if len(timed) > 1:
        rows.append(f"| {timed[0]}-{timed[-1]} | **{duration(total)}** | the chapters' "
                    "wall times added (the kernels' start-up not counted) | | |")
    when = "; ".join(f"commit {c} on {d}" for c, d in runs.items())
    return ("\n".join(rows) + f"\n\nMeasured by the run itself ({when}). "
            + shared_sentence(shared, SHARED_MAX) + "\n")


def shared_sentence(shared: dict[str, list[tuple[int, float]]], limit: float) -> str:
    """What the time table's last column says, from :func:`render_time`'s chapters by
    :func:`lib.report.rules.machine_shared` verdict (``limit``: its threshold)."""
    def chapters(verdict: str) -> str:
        found = [str(ch) for ch, _ in shared.get(verdict, [])]
        return ("Chapter " if len(found) == 1 else "Chapters ") + ", ".join(found)

    out = []
    if shared.get("shared"):
        worst = max(s for _, s in shared["shared"])
        out.append(f"{chapters('shared')} shared the machine: other processes took up to "
                   f"{100 * worst:.0f} % of its CPU time (more than {100 * limit:.0f} %), so "
                   "the times overstate what the chapters need.")
    if shared.get("to itself"):
        one = len(shared["to itself"]) == 1
        out.append(f"{chapters('to itself')} had the machine to "
                   f"{'itself' if one else 'themselves'} (others took at most "
                   f"{100 * limit:.0f} % of its CPU time).")
    if shared.get("not measured"):
        out.append(f"{chapters('not measured')}: the CPU time others took was not measured "
                   "(a record before the counters).")
    return " ".join(out)


def render_record(chapter: str, rec: dict[str, Any], where: str) -> str:
    """Chapter ``chapter``'s block from its checked record; a field the renderer needs and
    the record lacks is one line naming it (:func:`check_needs`), never a traceback."""
    check_needs(rec, chapter, where)
    try:
        return RENDERERS[chapter](rec)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as err:
        raise CompanionError(f"{where} does not hold what the README renders "
                             f"({type(err).__name__}: {' '.join(str(err).split())[:60]}): run "
                             "`make book` to record it again") from None


RENDERERS: dict[str, Callable[[dict[str, Any]], str]] = {
    "ch01": render_ch01, "ch02": render_ch02, "ch03": render_ch03, "ch04": render_ch04,
    "ch05": render_ch05, "ch06": render_ch06}
"""Chapter -> the function that renders its results file as Markdown."""


def render(text: str, root: Path | None = None) -> str:
    """``text`` (the README) with every results block re-rendered from its JSON file.

    A block whose file does not exist yet says so instead of showing a number.
    """
    root = root or results_root()
    runs: dict[str, dict[str, dict[str, Any]]] = {}

    def one(m: re.Match) -> str:
        preset, chapter = m.group(2), m.group(3)
        if preset == "bench":  # a benchmark's own output, not a run's record
            return m.group(1) + render_bench(chapter, root) + m.group(5)
        if preset not in runs:  # every record of the preset, checked as one run's
            runs[preset] = records(preset, root=root)
        if chapter == "compared":  # the run replaced, against this one
            return m.group(1) + render_compared(root / preset / COMPARED) + m.group(5)
        if chapter == "time":
            body = render_time(runs[preset])
        elif chapter == "summary":
            body = render_summary(runs[preset], preset)
        elif chapter not in RENDERERS:
            body = f"(no renderer for {chapter})\n"
        elif chapter not in runs[preset]:
            body = f"(no full `{preset}` run recorded yet: `make book PRESET={preset}`)\n"
        else:
            body = render_record(chapter, runs[preset][chapter],
                                 str(root / preset / f"{chapter}.json"))
        return m.group(1) + body + m.group(5)

    return BLOCK.sub(one, text)


RENDERED = ("README.md", "book/course.md", "book/cpu.md", "book/records.md")
"""The files whose results blocks are rendered from ``results/``: the README, the course
page's table of times, the page on running on a CPU (stage times and the benchmarks) and
the page of the numbers of record."""


def update_readme(readme: Path = REPO_ROOT / "README.md") -> bool:
    """Re-render the results blocks of the README (and, beside the repository's own README,
    of the other :data:`RENDERED` files); returns whether anything changed. Every file is
    rendered before any is written: a bad results file leaves them all as they were."""
    paths = [readme] + ([REPO_ROOT / p for p in RENDERED[1:]]
                        if readme == REPO_ROOT / "README.md" else [])
    texts = {p: p.read_text(encoding="utf-8") for p in paths if p.is_file()}
    rendered = {p: render(t) for p, t in texts.items()}
    changed = [p for p in texts if rendered[p] != texts[p]]
    for p in changed:
        atomic_write_text(p, rendered[p])
    return bool(changed)


def main(readme: Path = REPO_ROOT / "README.md", argv: list[str] | None = None) -> int:
    """``python -m lib.report``: re-render the README's results blocks; a results file that
    fails its checks (:func:`lib.report.results.check_record`) is one line, status 1, and
    the README is left as it was. ``--time [--preset P] [--trial T]`` prints where the
    recorded run's time went instead (``make bench-book``)."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m lib.report", description=main.__doc__)
    ap.add_argument("--time", action="store_true",
                    help="print where the recorded run's time went, stage by stage")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--trial", default=None, help="a trial's name (results/<preset>/trials/)")
    args = ap.parse_args(argv or [])
    try:
        if args.time:
            print(render_time(records(args.preset, args.trial)), end="")
            return 0
        changed = update_readme(readme)
    except CompanionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{', '.join(RENDERED)}: results " + ("re-rendered" if changed else
                                                 "already up to date"))
    return 0
