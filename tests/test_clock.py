"""Where the time goes (lib/clock.py): stages charged by a fake clock whose readings are
set by hand, progress lines written and shown, the time table rendered from records, and the
CPU time other processes took (fake counters by hand; a real child process's seconds)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lib import clock
from lib.book.run import progress_lines
from lib.config.resolve import resolve
from lib.report import readme
from lib.report.results import publish_run, record_headline
from lib.report.rules import SHARED_MAX, machine_shared


class FakeTime:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class FakeCpu:
    """``cpu_counters`` by hand: (machine busy, steal, own) CPU seconds."""

    def __init__(self) -> None:
        self.busy, self.steal, self.own = 100.0, 1.0, 10.0

    def __call__(self) -> tuple[float, float, float]:
        return self.busy, self.steal, self.own


@pytest.fixture()
def fake(monkeypatch):
    t, cpu = FakeTime(), FakeCpu()
    monkeypatch.setattr(clock, "_now", t)
    monkeypatch.setattr(clock, "cpu_counters", cpu)
    monkeypatch.setattr(clock, "CLOCK", clock.Clock())
    t.cpu = cpu
    return t


def test_time_goes_to_the_innermost_stage_and_adds_up(fake):
    fake.t = 1.0
    clock.CLOCK.enter("decoding")    # other: 0 -> 1
    fake.t = 3.0
    clock.CLOCK.enter("training")    # decoding: 1 -> 3
    fake.t = 7.0
    clock.CLOCK.leave()              # training: 3 -> 7
    fake.t = 8.0
    clock.CLOCK.leave()              # decoding: 7 -> 8
    fake.t = 9.5                     # other: 8 -> 9.5
    s = clock.summary()
    assert s["wall_s"] == 9.5
    assert s["stages"] == {"training": 4.0, "decoding": 3.0, "other": 2.5}
    assert list(s["stages"]) == ["training", "decoding", "other"]  # largest first


def test_stage_as_decorator_and_nested(fake):
    """The stage entered last takes the time until it leaves: healing calls the training
    loop without a stage of its own, so its time stays healing's."""
    def loop(seconds: float) -> None:  # the training loop: no stage of its own
        fake.t += seconds

    @clock.stage("healing")
    def heal() -> None:
        fake.t += 1.0
        loop(5.0)
        with clock.stage("decoding"):
            fake.t += 0.5

    with clock.stage("training"):
        loop(2.0)
    heal()
    with clock.stage("training"):
        loop(3.0)
    s = clock.summary()
    assert s["stages"] == {"healing": 6.0, "training": 5.0, "decoding": 0.5}
    assert s["wall_s"] == 11.5


def test_reused_counts_per_stage(fake):
    with clock.stage("decoding"):
        clock.note_reused()
        clock.note_reused()
    clock.note_reused()
    assert clock.summary()["reused"] == {"decoding": 2, "other": 1}


def test_duration():
    assert clock.duration(8.2) == "8 s"
    assert clock.duration(75) == "1 min 15 s"
    assert clock.duration(3725) == "62 min 5 s"


def test_track_writes_progress_lines_at_most_every_30_s(fake, tmp_path, monkeypatch):
    log = tmp_path / "progress.log"
    monkeypatch.setenv(clock.PROGRESS_ENV, str(log))
    seen = []
    with clock.stage("decoding"):
        bar = clock.track(range(5), desc="decoding test", disable=True)  # as in a book run
        assert bar.disable
        for item in bar:
            seen.append(item)
            fake.t += 20.0
            if item == 3:
                bar.set_postfix(loss="1.234")
    assert seen == [0, 1, 2, 3, 4]
    # lines after item 2 (40 s), item 4 (80 s: 40 s after the last line), and the last
    assert log.read_text().splitlines() == [
        "[decoding] decoding test: 2/5, 40 s elapsed, about 1 min 0 s left",
        "[decoding] decoding test: 4/5, 1 min 20 s elapsed, about 20 s left, loss 1.234",
        "[decoding] decoding test: 5/5, 1 min 40 s elapsed, loss 1.234",
    ]


def test_track_without_a_progress_file_writes_nothing(fake, tmp_path, monkeypatch):
    monkeypatch.delenv(clock.PROGRESS_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert list(clock.track(iter([1, 2]), desc="x", total=2, disable=True)) == [1, 2]
    assert list(tmp_path.iterdir()) == []


def test_progress_lines_are_printed_as_they_come(tmp_path, capsys):
    path = tmp_path / "ch.progress.log"
    with progress_lines(path, every_s=0.01):
        with open(path, "a") as fh:
            fh.write("[training] step 10/100\n[training] step 2")
        with open(path, "a") as fh:
            fh.write("0/100\n")
    out = capsys.readouterr().out.splitlines()
    assert out == ["    ... [training] step 10/100", "    ... [training] step 20/100"]
    assert not path.exists()


def _timed(wall: float, stages: dict[str, float], reused: dict[str, int] | None = None,
           commit: str = "abcdef1234", others: float | None = None) -> dict:
    cpu = None if others is None else {"cores": 2, "own_s": 1.0, "others_s": others,
                                       "steal_s": 0.0}
    return {"time": {"wall_s": wall, "stages": stages, "reused": reused or {}, "cpu": cpu},
            "provenance": {"git_hash": commit, "date": "2026-12-02T10:00:00+00:00"}}


def test_time_table_by_hand():
    text = readme.render_time({
        "ch01": _timed(600.0, {"training": 480.0, "decoding": 90.0, "loading": 3.0,
                               "other": 27.0}, others=36.0),
        "ch02": _timed(300.0, {"scoring": 300.0}, {"training": 2}),
        "ch03": {"provenance": {"git_hash": "abcdef1234", "date": "2026-12-02"}},
    })
    rows = text.splitlines()
    # loading (0.5 %) is under the 1 % floor: folded into other (27 + 3 = 30 s)
    assert rows[2] == ("| 1 | 10 min 0 s | training 8 min 0 s (80 %) · decoding 1 min 30 s "
                       "(15 %) · other 30 s (5 %) | nothing (a first run) | 3 % |")
    assert rows[3] == ("| 2 | 5 min 0 s | scoring 5 min 0 s (100 %) | training x2 | "
                       "not measured |")
    assert rows[4].startswith("| 3 | not recorded |")
    assert rows[5].startswith("| 1-2 | **15 min 0 s** |")
    assert "commit abcdef1 on 2026-12-02" in text
    # 36 s of 600 s x 2 cores = 3 %: within the 5 % of SHARED_MAX
    assert "Chapter 1 had the machine to itself (others took at most 5 %" in text
    assert "Chapter 2: the CPU time others took was not measured" in text


def test_records_carry_their_time_and_bench_book_prints_it(fake, tmp_path, monkeypatch,
                                                             capsys):
    monkeypatch.setenv("COMPANION_RESULTS", str(tmp_path))
    with clock.stage("training"):
        fake.t = 90.0
    fake.t = 120.0
    path = record_headline(resolve(1, preset="tiny", record="run:run-1"), {"decoders": {}})
    publish_run("tiny", "run-1")
    rec = json.loads(path.read_text())
    assert rec["time"] == {"wall_s": 120.0, "stages": {"training": 90.0, "other": 30.0},
                           "reused": {}, "cpu": {"cores": clock.os.cpu_count(), "own_s": 0.0,
                                                 "others_s": 0.0, "steal_s": 0.0}}
    assert readme.main(argv=["--time", "--preset", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "| 1 | 2 min 0 s | training 1 min 30 s (75 %) · other 30 s (25 %) |" in out


# --------------------------------------------------------------------------- others' CPU


def test_cpu_others_by_hand(fake):
    """Others' seconds = the machine's busy seconds minus the kernel's own (steal counted
    among the busy ones), since the restart; never below zero."""
    fake.cpu.busy, fake.cpu.steal, fake.cpu.own = 160.0, 4.0, 30.0  # +60 busy, +3 steal, +20
    fake.t = 30.0
    assert clock.summary()["cpu"] == {"cores": clock.os.cpu_count(), "own_s": 20.0,
                                      "others_s": 40.0, "steal_s": 3.0}
    fake.cpu.own = 90.0  # a child reaped: its seconds are the kernel's, none left to others
    assert clock.summary()["cpu"]["others_s"] == 0.0


def test_cpu_not_measured_without_counters(monkeypatch, tmp_path):
    monkeypatch.setattr(clock, "PROC_STAT", str(tmp_path / "missing"))
    assert clock.cpu_counters() is None
    assert clock.Clock().summary()["cpu"] is None
    (tmp_path / "stat").write_text("intr 1 2 3\n")
    monkeypatch.setattr(clock, "PROC_STAT", str(tmp_path / "stat"))
    assert clock.Clock().summary()["cpu"] is None


def test_machine_shared_says_no_on_a_constructed_case():
    """A chapter of 100 s on 2 cores: others took 4 s (2 %) -> to itself; 30 s (15 %) ->
    shared; no counters -> not measured."""
    cpu = {"cores": 2, "own_s": 150.0, "others_s": 4.0, "steal_s": 0.0}
    assert machine_shared(cpu, 100.0) == ("to itself", 0.02)
    verdict, share = machine_shared({**cpu, "others_s": 30.0}, 100.0)
    assert (verdict, share) == ("shared", 0.15) and share > SHARED_MAX
    verdict, share = machine_shared(None, 100.0)
    assert verdict == "not measured" and share != share
    text = readme.render_time({"ch01": _timed(100.0, {"training": 100.0}, others=30.0),
                               "ch02": _timed(100.0, {"training": 100.0}, others=20.0)})
    assert "Chapters 1, 2 shared the machine: other processes took up to 15 % of its CPU" in text
    assert "| 15 % |" in text and "| 10 % |" in text


@pytest.mark.skipif(not Path(clock.PROC_STAT).is_file(), reason="no /proc/stat here")
def test_a_busy_process_beside_the_kernel_is_counted_as_others():
    """A real second process that spins for 1 s of CPU: while it is not reaped its seconds
    are others' (at least 0.8 s of them, whatever else the machine did); once reaped
    (``wait``), they are the kernel's own (``RUSAGE_CHILDREN``)."""
    c = clock.Clock()
    child = subprocess.Popen([sys.executable, "-c", "import time\nt = time.process_time()\n"
                              "while time.process_time() - t < 1.0: pass"])
    status = Path(f"/proc/{child.pid}/stat")
    deadline = time.monotonic() + 30
    while status.read_text().split(") ")[-1][0] != "Z" and time.monotonic() < deadline:
        time.sleep(0.05)  # until it has finished, not yet reaped (a zombie)
    before = c.cpu()
    child.wait()
    after = c.cpu()
    assert before["others_s"] >= 0.8
    assert after["own_s"] - before["own_s"] >= 0.8


def test_the_page_line_carries_the_share_others_took(fake):
    """The chapter page's line at its record carries the share others took."""
    from lib.report.results import recorded_line

    cores = clock.os.cpu_count()
    fake.t = 100.0
    fake.cpu.busy += 0.3 * 100.0 * cores + 50.0
    fake.cpu.own += 50.0
    line = recorded_line(None, resolve(1, preset="tiny"))
    assert line.endswith("other processes took 30 % of the CPU")
    fake.cpu.own += 0.28 * 100.0 * cores  # the same busy time, now nearly all the kernel's
    assert recorded_line(None, resolve(1, preset="tiny")).endswith(
        "other processes took 2 % of the CPU")
