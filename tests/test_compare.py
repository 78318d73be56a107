"""A refreshed run against the run it replaces (lib.report.compare), checked by hand."""

from __future__ import annotations

import json

import pytest

from lib.errors import CompanionError
from lib.fileio import figures_digest
from lib.report.compare import (COMPARED, chapter_sentence, compare_runs, render_compared,
                                write_comparison)
from lib.report.results import check_record, intervals


def _rec(**figures):
    rec = {"chapter": "ch01", **figures, "run_id": figures.pop("run_id", "r1"),
           "provenance": {"git_hash": "abcdef1234", "date": "2026-12-01"}}
    rec["digest"] = figures_digest(rec)
    return rec


def test_every_naming_of_an_interval_pairs_with_its_figure():
    rec = {"a": {"wer": 0.3, "wer_ci95": [0.2, 0.4], "cer_ci95": None},
           "levers": [{"real WER": 0.5, "real ci95": [0.45, 0.55],
                       "real vs clean": -0.1, "real vs clean ci95": [-0.2, 0.0]}],
           "both_vs": {"delta": 0.02, "ci95": [-0.01, 0.05], "per_seed": [0.0, 0.1]},
           "pooled": {"WER": 0.6, "ci95": [0.5, 0.7], "utterances": 10},
           "orphan_ci95": [0.0, 1.0]}
    assert intervals(rec) == [
        ("a/wer", 0.3, [0.2, 0.4]), ("levers[0]/real WER", 0.5, [0.45, 0.55]),
        ("levers[0]/real vs clean", -0.1, [-0.2, 0.0]), ("both_vs/delta", 0.02, [-0.01, 0.05]),
        ("pooled/WER", 0.6, [0.5, 0.7])]


def test_a_record_whose_lever_lies_outside_its_own_interval_is_refused():
    """The check of a record reads every naming of an interval (a lever's WER too)."""
    check_record(_rec(levers=[{"real WER": 0.5, "real ci95": [0.45, 0.55]}]), "x.json")
    with pytest.raises(CompanionError, match=r"levers\[0\]/real WER = 0.6 lies outside"):
        check_record(_rec(levers=[{"real WER": 0.6, "real ci95": [0.45, 0.55]}]), "x.json")


def test_the_comparison_says_no_on_a_constructed_case():
    old = {"ch01": _rec(a={"wer": 0.30, "wer_ci95": [0.20, 0.40]},
                        b={"wer": 0.30, "wer_ci95": [0.20, 0.40]},
                        c={"wer": 0.30, "wer_ci95": [0.20, 0.40]},
                        d={"wer": 0.30, "wer_ci95": [0.20, 0.40]}),
           "ch02": _rec(e={"delta": 1.0, "ci95": [0.5, 1.5]}),
           "ch03": _rec(f={"wer": 0.1, "wer_ci95": [0.0, 0.2]})}
    new = {"ch01": _rec(run_id="r2", a={"wer": 0.30}, b={"wer": 0.40},  # same; on the end
                        c={"wer": 0.45},  # (0.45 - 0.40) / 0.20 = 0.25 widths outside
                        d={"wer_ci95": [0.2, 0.4]}),  # not recorded any more
           "ch02": _rec(run_id="r2", e={"delta": 0.9, "ci95": [0.4, 1.4]})}
    c = compare_runs(old, new)
    assert c["previous"]["run_id"] == "r1" and c["now"]["run_id"] == "r2"
    ch01 = c["chapters"]["ch01"]
    assert (ch01["figures"], ch01["inside"], ch01["identical"]) == (4, 2, 1)
    assert ch01["outside"] == [{"figure": "c/wer", "previous": 0.30, "previous_ci95": [0.2, 0.4],
                                "now": 0.45, "widths": pytest.approx(0.25)}]
    assert ch01["not_recorded"] == ["d/wer"]
    assert chapter_sentence("ch01", ch01) == (
        "ch01: 2 of 4 figures inside the previous run's interval (1 the same number); "
        "1 outside, each a finding; 1 not recorded by this run")
    assert chapter_sentence("ch02", c["chapters"]["ch02"]).endswith(
        "(0 the same number): the run repeats the previous one")
    assert c["chapters"]["ch03"]["not_recorded"] == ["f/wer"]  # a chapter not run again


def test_the_page_lists_the_findings_and_a_first_run_compares_nothing(tmp_path):
    old = {"ch01": _rec(a={"wer": 0.3, "wer_ci95": [0.2, 0.4]})}
    new = {"ch01": _rec(run_id="r2", a={"wer": 0.1})}
    path = write_comparison(tmp_path, old, new)
    assert json.loads(path.read_text())["chapters"]["ch01"]["outside"][0]["widths"] == \
        pytest.approx(0.5)
    text = render_compared(path)
    assert "| `a/wer` | 0.3 [0.2, 0.4] | 0.1 | 0.50 |" in text
    assert "at commit abcdef1 on 2026-12-01" in text
    assert write_comparison(tmp_path, {}, new) is None  # no run before: nothing stale kept
    assert not (tmp_path / COMPARED).exists()
    assert render_compared(tmp_path / COMPARED).startswith("(no earlier run")


def test_publishing_a_run_compares_it_with_the_run_it_replaces(tmp_path, monkeypatch):
    from lib.config.resolve import resolve
    from lib.report.compare import publish
    from lib.report.results import record_headline

    monkeypatch.setenv("COMPANION_RESULTS", str(tmp_path))
    fig = {"decoders": {"d": {"wer": 0.3, "wer_ci95": [0.2, 0.4]}}}
    record_headline(resolve(1, preset="tiny", record="run:run-1"), fig)
    publish("tiny", "run-1")
    assert not (tmp_path / "tiny" / COMPARED).exists()  # the first run: nothing replaced
    fig["decoders"]["d"].update(wer=0.5, wer_ci95=[0.45, 0.55])
    record_headline(resolve(1, preset="tiny", record="run:run-2"), fig)
    publish("tiny", "run-2")
    c = json.loads((tmp_path / "tiny" / COMPARED).read_text())
    assert (c["previous"]["run_id"], c["now"]["run_id"]) == ("run-1", "run-2")
    assert c["chapters"]["ch01"]["outside"][0]["figure"] == "decoders/d/wer"
