"""The one cache helper (lib.cache.cached): keyed by content, verified on read, provenance
stamped once, a reused result said with its key.

References: the key written out by hand (sha256 of the sorted JSON, first 12 hex digits), a
counter of how often the computation ran, the file's bytes edited by hand.
"""

from __future__ import annotations

import hashlib
import json

from lib import clock
from lib.cache import cached, file_label


def _by_hand(keyed: dict) -> str:
    return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:12]


def test_a_result_is_computed_once_then_reused_by_its_key(tmp_path, capsys):
    runs = []

    def compute(path):
        runs.append(path)
        (path.with_suffix(".rows.jsonl")).write_text("{}\n")  # a file beside it
        return {"wer": 0.25, "n": 4}

    keyed = {"data": "abc", "batch_size": 2}
    first = cached(tmp_path, "eval-t", keyed, compute, what="t score")
    key = _by_hand(keyed)
    assert runs == [tmp_path / f"eval-t-{key}.json"]
    assert first["key"] == key and first["wer"] == 0.25
    assert first["provenance"]["config"] == keyed  # what the key was made of
    assert "wall_time_s" in first["provenance"]
    capsys.readouterr()
    before = dict(clock.CLOCK.reused)
    again = cached(tmp_path, "eval-t", keyed, compute, what="t score")
    assert again == first and len(runs) == 1
    assert capsys.readouterr().out == f"t score: cached result reused (key {key})\n"
    assert sum(clock.CLOCK.reused.values()) == sum(before.values()) + 1
    # read again in the same process (a chapter resolving the recipe of record once more):
    # counted again, said once
    assert cached(tmp_path, "eval-t", keyed, compute, what="t score") == first
    assert capsys.readouterr().out == "" and len(runs) == 1
    assert sum(clock.CLOCK.reused.values()) == sum(before.values()) + 2
    other = cached(tmp_path, "eval-t", {**keyed, "batch_size": 3}, compute, what="t score")
    assert len(runs) == 2 and other["key"] == _by_hand({**keyed, "batch_size": 3})
    cached(tmp_path, "eval-t", keyed, compute, reuse=False)
    assert len(runs) == 3


def test_an_edited_result_is_set_aside_and_computed_again(tmp_path, capsys):
    runs = []

    def compute(_):
        runs.append(1)
        return {"wer": 0.25}

    first = cached(tmp_path, "x", {"a": 1}, compute, what="x")
    path = tmp_path / f"x-{first['key']}.json"
    rec = json.loads(path.read_text())
    rec["wer"] = 0.01  # by hand, the seal left as it was
    path.write_text(json.dumps(rec))
    capsys.readouterr()
    again = cached(tmp_path, "x", {"a": 1}, compute, what="x")
    out = capsys.readouterr().out
    assert len(runs) == 2 and again["wer"] == 0.25
    assert "set aside" in out and "cached result reused" not in out
    assert (tmp_path / f"{path.name}.corrupt").is_file()


def test_a_quiet_result_is_counted_but_not_said(tmp_path, capsys):
    cached(tmp_path, "p", {"a": 1}, lambda _: {"v": 1})
    capsys.readouterr()
    before = sum(clock.CLOCK.reused.values())
    cached(tmp_path, "p", {"a": 1}, lambda _: {"v": 2})
    assert capsys.readouterr().out == ""
    assert sum(clock.CLOCK.reused.values()) == before + 1


def test_file_labels_keep_the_names_cached_files_always_had():
    assert file_label("synthetic:test") == "synthetic-test"
    assert file_label("covost2/es-en:test") == "covost2_es-en-test"
