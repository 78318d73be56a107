"""Where the time goes (lib/clock.py): stages charged by a fake clock whose readings are
set by hand, progress lines written and shown, and the time table rendered from records."""

from __future__ import annotations

import json

import pytest

from lib import clock
from lib.book.run import progress_lines
from lib.config.resolve import resolve
from lib.report import readme
from lib.report.results import publish_run, record_headline


class FakeTime:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture()
def fake(monkeypatch):
    t = FakeTime()
    monkeypatch.setattr(clock, "_now", t)
    monkeypatch.setattr(clock, "CLOCK", clock.Clock())
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
           commit: str = "abcdef1234") -> dict:
    return {"time": {"wall_s": wall, "stages": stages, "reused": reused or {}},
            "provenance": {"git_hash": commit, "date": "2026-12-02T10:00:00+00:00"}}


def test_time_table_by_hand():
    text = readme.render_time({
        "ch01": _timed(600.0, {"training": 480.0, "decoding": 90.0, "loading": 3.0,
                               "other": 27.0}),
        "ch02": _timed(300.0, {"scoring": 300.0}, {"training": 2}),
        "ch03": {"provenance": {"git_hash": "abcdef1234", "date": "2026-12-02"}},
    })
    rows = text.splitlines()
    # loading (0.5 %) is under the 1 % floor: folded into other (27 + 3 = 30 s)
    assert rows[2] == ("| 1 | 10 min 0 s | training 8 min 0 s (80 %) · decoding 1 min 30 s "
                       "(15 %) · other 30 s (5 %) | nothing (a first run) |")
    assert rows[3] == "| 2 | 5 min 0 s | scoring 5 min 0 s (100 %) | training x2 |"
    assert rows[4].startswith("| 3 | not recorded |")
    assert rows[5].startswith("| 1-2 | **15 min 0 s** |")
    assert "commit abcdef1 on 2026-12-02" in text


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
                           "reused": {}}
    assert readme.main(argv=["--time", "--preset", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "| 1 | 2 min 0 s | training 1 min 30 s (75 %) · other 30 s (25 %) |" in out
