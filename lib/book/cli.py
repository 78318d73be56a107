"""The command line of the book (``python -m lib.book``): run the chapters, build the HTML,
or both.

::

    python -m lib.book run --preset tiny --chapter 01 -p train_steps 50
    python -m lib.book build --preset tiny
    python -m lib.book all --preset default

Stage: the book (command line). Explained in the README (Re-running a chapter).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from lib.book.html import build_book
from lib.book.run import one_line, run_chapters
from lib.errors import CompanionError, exit_status
from lib.params import add_parameter_option, parse_parameters
from lib.paths import REPO_ROOT


def _where_the_time_went(preset: str, trial: str | None, chapters: list[str]) -> None:
    """Print, from the records the run just wrote, where each chapter's time went."""
    from lib.report.readme import render_time
    from lib.report.results import records

    try:
        recs = {c: r for c, r in records(preset, trial).items() if c in chapters}
    except CompanionError as err:
        print(f"where the time went: not shown ({one_line(err)})")
        return
    if recs:
        print("where the time went (from the records just written):")
        print(render_time(recs), end="")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lib.book", description="Run the book's chapters and build the HTML.")
    commands = parser.add_subparsers(dest="command", required=True)
    helps = {
        "run": "execute chapters into _build/<preset>/executed",
        "build": "render the executed chapters into _build/<preset>/html",
        "all": "run, then build",
        "student": "write the chapters without solutions or outputs into _build/student",
    }
    for name, text in helps.items():
        sub = commands.add_parser(name, help=text, description=text)
        if name == "student":
            continue
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

    def body() -> int:
        if args.command == "student":
            from lib.book.student import write_student_copies

            written = write_student_copies(root)
            print(f"{len(written)} student copies (no solutions, no outputs) in "
                  f"{written[0].parent if written else root}")
            return 0
        if args.command in ("run", "all"):
            overrides = parse_parameters(args.parameter)
            ran = run_chapters(args.preset, args.chapter, overrides, root=root)
            from lib.book.chapters import list_chapters
            from lib.book.run import trial_name
            from lib.config.presets import preset_label
            from lib.report.results import results_root

            # Only a full run of the repository's own book, recording into its results/,
            # writes new figures of record; trials and runs recording elsewhere leave the
            # README alone.
            trial = trial_name([root / "book" / p.name for p in ran], list_chapters(root),
                               overrides)
            label = preset_label(args.preset, root)
            full = trial is None and label == args.preset  # a shipped preset, run whole
            _where_the_time_went(label, trial, [f"ch{p.name[:2]}" for p in ran])
            if full and root == REPO_ROOT and results_root() == REPO_ROOT / "results":
                from lib.report.readme import update_readme

                if update_readme():
                    print("README.md: results tables re-rendered from results/")
        if args.command in ("build", "all"):
            index = build_book(args.preset, root=root)
            print(f"open {index}")
        return 0

    try:
        return exit_status(body)
    except KeyboardInterrupt as err:
        print(one_line(err) if str(err) else "interrupted", file=sys.stderr)
        return 130
