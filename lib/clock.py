"""Where a chapter's time goes: wall time per stage, and progress lines for the terminal.

A chapter runs in one kernel. The library functions that do the work mark their stage
(:func:`stage`: ``corpus``, ``features``, ``warm start``, ``training``, ``decoding``,
``baselines``, ``scoring``, ``strategies``, ``healing``, ``timing``, ``loading``); time is
charged to the innermost open stage, so the stages of a run add up to its wall time, and
what no stage claims is ``other``. :func:`summary` is what every result of record carries
(:func:`lib.report.results.record_headline`); the README's time table and ``make
bench-book`` are rendered from it (:mod:`lib.report.readme`), never typed.

Whether the times are the machine's: on two cores a second job (even a niced one) slows
every barrier-synchronised step of the chapter's, so the clock also counts the CPU seconds
the machine spent on anything but this kernel while the chapter ran (``cpu`` of
:func:`summary`: the machine's busy time from ``/proc/stat``, host steal included, minus the
kernel's own and its children's from ``getrusage``), and
:func:`lib.report.rules.machine_shared` says whether the chapter had the machine to itself.

Progress: :func:`track` is a tqdm bar in a notebook or a terminal. In a book run, where bars
are off (they are noise on a page), ``$COMPANION_PROGRESS`` names a file, and :func:`track`
writes a line there at most every :data:`EVERY_S` seconds and at the end of a loop that
took :data:`QUIET_S` or more (stage, n of N, elapsed, an estimate of what is left), which
``make book`` prints in the terminal as it runs (:mod:`lib.book.run`); the executed page
keeps only the chapter's own short lines.

Imports nothing of the library. Stage: all (timing). Explained in chapter 1
(book/01_building_a_speechllm.ipynb).
"""

from __future__ import annotations

import contextlib
import os
import resource
import time
from collections.abc import Iterable, Iterator
from typing import Any

PROGRESS_ENV = "COMPANION_PROGRESS"
EVERY_S = 30.0  # seconds between two progress lines of one loop
QUIET_S = 10.0  # a loop over sooner than this writes no line at all
OTHER = "other"

_now = time.perf_counter  # replaced by the tests' fake clock
PROC_STAT = "/proc/stat"  # the machine's CPU counters (Linux)


_ELSEWHERE = [0.0]
"""CPU seconds of this process's own work that ran in processes which are not its children
(:func:`count_elsewhere`)."""


def count_elsewhere(seconds: float) -> None:
    """Count ``seconds`` of CPU as this process's own: work it ran in a process that is not
    its child, which ``getrusage`` never sees (a child of multiprocessing's forkserver,
    :func:`lib.prune.cost.run_isolated`: the forkserver is its parent). Uncounted, the
    chapter's clock booked that work as other processes' (chapter 4's memory check: about
    200 CPU-seconds, which labelled a chapter alone on its machine "shared")."""
    _ELSEWHERE[0] += max(float(seconds), 0.0)


def own_cpu_s(children: bool = True) -> float:
    """This process's CPU seconds so far (user + system), with its reaped children's when
    ``children``."""
    who = (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN) if children else (resource.RUSAGE_SELF,)
    return sum(r.ru_utime + r.ru_stime for r in map(resource.getrusage, who))


def cpu_counters() -> tuple[float, float, float] | None:
    """``(busy, steal, own)`` CPU seconds so far: the machine's busy time over all its cores
    (user, nice, system, irq, softirq and steal of :data:`PROC_STAT`'s ``cpu`` line), the
    host's steal alone, and this process's with its reaped children (user + system) and the
    work it ran elsewhere (:func:`count_elsewhere`); None
    where the machine's counters cannot be read (not Linux)."""
    try:
        with open(PROC_STAT, encoding="ascii") as fh:
            fields = fh.readline().split()
        ticks = [int(x) for x in fields[1:9]]
    except (OSError, ValueError):
        return None
    if len(ticks) < 8 or fields[0] != "cpu":
        return None
    hz = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
    own = own_cpu_s() + _ELSEWHERE[0]
    return (user + nice + system + irq + softirq + steal) / hz, steal / hz, own


class Clock:
    """Wall seconds per stage since :meth:`restart`; the innermost open stage is charged."""

    def __init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        self.start = self.mark = _now()
        self.stack: list[str] = []
        self.seconds: dict[str, float] = {}
        self.reused: dict[str, int] = {}
        self.cpu_start = cpu_counters()

    def _charge(self) -> None:
        now = _now()
        top = self.stack[-1] if self.stack else OTHER
        self.seconds[top] = self.seconds.get(top, 0.0) + (now - self.mark)
        self.mark = now

    def enter(self, name: str) -> None:
        self._charge()
        self.stack.append(name)

    def leave(self) -> None:
        self._charge()
        self.stack.pop()

    @property
    def current(self) -> str:
        return self.stack[-1] if self.stack else OTHER

    def summary(self) -> dict[str, Any]:
        """``wall_s`` since the restart, ``stages`` (seconds, largest first, summing to
        ``wall_s``), ``reused`` (cached results taken per stage instead of computed) and
        ``cpu`` (:meth:`cpu`)."""
        self._charge()
        stages = sorted(self.seconds.items(), key=lambda kv: -kv[1])
        return {"wall_s": round(self.mark - self.start, 1),
                "stages": {k: round(v, 1) for k, v in stages if v >= 0.05},
                "reused": dict(self.reused), "cpu": self.cpu()}

    def cpu(self) -> dict[str, Any] | None:
        """CPU seconds since the restart: ``own_s`` (this kernel and its reaped children),
        ``others_s`` (the machine's busy seconds on all its ``cores`` that were not this
        kernel's: other processes and the host's steal), ``steal_s`` (the steal alone); None
        where :func:`cpu_counters` cannot read them."""
        now = cpu_counters()
        if now is None or self.cpu_start is None:
            return None
        busy, steal, own = (b - a for a, b in zip(self.cpu_start, now))
        return {"cores": os.cpu_count() or 1, "own_s": round(own, 1),
                "others_s": round(max(busy - own, 0.0), 1), "steal_s": round(steal, 1)}


CLOCK = Clock()
"""The process's clock, started when the library is first imported: one chapter per kernel."""


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Charge the time inside to stage ``name`` (also a decorator); a stage entered inside
    another takes the time until it leaves."""
    CLOCK.enter(name)
    try:
        yield
    finally:
        CLOCK.leave()


def note_reused() -> None:
    """Count a cached result taken instead of computed, in the current stage."""
    CLOCK.reused[CLOCK.current] = CLOCK.reused.get(CLOCK.current, 0) + 1


def summary() -> dict[str, Any]:
    return CLOCK.summary()


def others_share(cpu: dict[str, Any] | None, wall_s: float) -> float:
    """The share of the machine's CPU time (``wall_s`` times its cores) that others took,
    from a summary's ``cpu``; NaN where it was not measured."""
    if not cpu or wall_s <= 0:
        return float("nan")
    return cpu["others_s"] / (wall_s * cpu["cores"])


def duration(seconds: float) -> str:
    """``75`` -> ``1 min 15 s``; ``3725`` -> ``62 min 5 s``; ``8.2`` -> ``8 s``."""
    s = int(round(seconds))
    return f"{s // 60} min {s % 60} s" if s >= 60 else f"{s} s"


class track:
    """``tqdm(iterable, desc=..., total=...)`` that also reports to the progress file.

    Iterating it yields the items; ``set_postfix`` and ``disable`` work as on the bar.
    """

    def __init__(self, iterable: Iterable[Any], desc: str, total: int | None = None,
                 **bar: Any) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(iterable, desc=desc, total=total, **bar)
        self.desc = desc
        self.total = total if total is not None else (
            len(iterable) if hasattr(iterable, "__len__") else None)  # type: ignore[arg-type]
        self.path = os.environ.get(PROGRESS_ENV)
        self.postfix = ""

    @property
    def disable(self) -> bool:
        return bool(self.bar.disable)

    def set_postfix(self, **values: Any) -> None:
        self.bar.set_postfix(**values)
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def __iter__(self) -> Iterator[Any]:
        t0 = last = _now()
        n = 0
        for item in self.bar:
            yield item
            n += 1
            now = _now()
            if self.path and (now - last >= EVERY_S or
                              (n == self.total and now - t0 >= QUIET_S)):
                self._line(n, now - t0)
                last = now

    def _line(self, n: int, elapsed: float) -> None:
        of = f"{n}/{self.total}" if self.total else f"{n}"
        left = ""
        if self.total and n < self.total:
            left = f", about {duration(elapsed / n * (self.total - n))} left"
        extra = f", {self.postfix}" if self.postfix else ""
        line = (f"[{CLOCK.current}] {self.desc}: {of}, {duration(elapsed)} elapsed"
                f"{left}{extra}")
        try:
            with open(self.path, "a", encoding="utf-8") as fh:  # type: ignore[arg-type]
                fh.write(line + "\n")
        except OSError:  # progress is a courtesy: never fail the work for it
            self.path = None
