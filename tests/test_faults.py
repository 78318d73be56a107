"""Nothing half-done, tampered or misnamed reaches a record, a page or a student.

Each test is one fault a user met on a fresh clone: a full run killed halfway, a saved
model's weights damaged, a preset file kept elsewhere under a shipped preset's name, a
student's copy written over, and the faults that ended right but with a traceback or a
misleading line. The references are independent of the code: bytes compared before and
after, files listed by hand, errors counted in lines.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path

import nbformat
import pytest

from lib.errors import CompanionError
from lib.fileio import figures_digest, save_json
from lib.paths import REPO_ROOT


# ------------------------------------------------------------------ a killed full run


def _notebook(path: Path, parameters: str, body: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Py"}
    nb.cells = [nbformat.v4.new_code_cell(parameters, metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(body)]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


RECORDS = """from pathlib import Path
from types import SimpleNamespace
from lib.config.presets import preset_label
from lib.config.sections import Record
from lib.report.results import record_headline
run = SimpleNamespace(chapter={n}, preset=preset_label(preset, Path('..').resolve()),
                      record=Record.parse(record), quick=False, clock=None)
record_headline(run, {{'x': steps}})"""
PARAMS = "preset = 'tiny'\nrecord = 'hand'\nsteps = 1"  # the runner sets all three
KILLED = "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)"  # the kernel dies outright


@pytest.fixture
def book(tmp_path: Path, monkeypatch) -> Path:
    """Two chapters that record their figures, a shipped preset, results under tmp."""
    for n, name in (("01", "first"), ("02", "second")):
        _notebook(tmp_path / f"book/{n}_{name}.ipynb", PARAMS, RECORDS.format(n=int(n)))
    (tmp_path / "params").mkdir()
    (tmp_path / "params/tiny.yaml").write_text("steps: 5\n")
    monkeypatch.setenv("COMPANION_RESULTS", str(tmp_path / "results"))
    return tmp_path


def _bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("ch*.json"))}


def test_a_killed_full_run_leaves_the_last_complete_set(book: Path) -> None:
    from lib.book.run import run_chapters
    from lib.report.results import records

    results = book / "results" / "tiny"
    run_chapters("tiny", root=book)
    first = _bytes(results)
    assert sorted(first) == ["ch01.json", "ch02.json"]
    assert len({json.loads(b)["run_id"] for b in first.values()}) == 1

    _notebook(book / "book/02_second.ipynb", "steps = 1", KILLED)
    with pytest.raises(CompanionError, match="chapter 02 failed"):
        run_chapters("tiny", root=book)
    assert _bytes(results) == first  # chapter 1's new record waits in its staging folder
    assert records("tiny", root=book / "results")  # one run's set: renders

    _notebook(book / "book/02_second.ipynb", PARAMS, RECORDS.format(n=2))
    run_chapters("tiny", root=book)
    again = _bytes(results)
    assert sorted(again) == ["ch01.json", "ch02.json"] and again != first
    assert len({json.loads(b)["run_id"] for b in again.values()}) == 1
    assert not list(results.glob(".run-*"))  # the killed run's staging folder cleared


HELD = """
from pathlib import Path
import time
with open('../executions.txt', 'a') as fh:
    fh.write('{n}\\n')
if {n} == 2 and Path('../hold').exists():  # the test kills the run while 02 waits
    Path('../holding').write_text('{n}')
    time.sleep(300)
"""


def _killed_mid_chapter(book: Path) -> None:
    """Start a full run in a process of its own; kill it (and its kernel) outright while
    chapter 2 is running, as a killed `make book` would be."""
    import signal
    import subprocess
    import sys
    import time

    (book / "hold").touch()
    code = f"from pathlib import Path; from lib.book.run import run_chapters; " \
           f"run_chapters('tiny', root=Path({str(book)!r}))"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT,
                            start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (book / "holding").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the run never reached 02"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    (book / "hold").unlink()
    (book / "holding").unlink()


def _figures(folder: Path) -> dict[str, dict]:
    """Each record's figures, without what differs between two runs of the same code."""
    skip = {"run_id", "time", "provenance", "digest"}
    return {p.name: {k: v for k, v in json.loads(p.read_text()).items() if k not in skip}
            for p in sorted(folder.glob("ch*.json"))}


def _held_book(book: Path) -> None:
    for n, name in (("01", "first"), ("02", "second")):
        _notebook(book / f"book/{n}_{name}.ipynb", PARAMS,
                  HELD.format(n=int(n)) + RECORDS.format(n=int(n)))


def test_a_killed_make_book_resumes_keeping_the_chapters_it_finished(book: Path,
                                                                     capsys) -> None:
    from lib.book.run import run_chapters

    _held_book(book)
    results = book / "results" / "tiny"
    run_chapters("tiny", root=book)  # the uninterrupted run, for reference
    reference = _figures(results)
    (book / "executions.txt").unlink()

    _killed_mid_chapter(book)
    assert (book / "executions.txt").read_text().split() == ["1", "2"]
    (staged,) = results.glob(".run-*")
    assert sorted(p.name for p in staged.glob("ch*.json")) == ["ch01.json"]
    assert _figures(results) == reference  # the last complete set is still in place
    killed_id = staged.name.removeprefix(".run-")

    capsys.readouterr()
    run_chapters("tiny", root=book)
    said = capsys.readouterr().out
    assert f"resuming the interrupted run {killed_id}" in said and "kept: 01" in said
    # chapter 1 was not run again; chapter 2 ran to its end this time
    assert (book / "executions.txt").read_text().split() == ["1", "2", "2"]
    assert _figures(results) == reference
    ids = {json.loads(p.read_text())["run_id"] for p in results.glob("ch*.json")}
    assert ids == {killed_id}
    assert not list(results.glob(".run-*"))


def test_a_resume_after_the_values_changed_says_so_and_runs_every_chapter(book: Path,
                                                                          capsys) -> None:
    from lib.book.run import run_chapters

    _held_book(book)
    _killed_mid_chapter(book)
    (book / "params/tiny.yaml").write_text("steps: 6\n")
    capsys.readouterr()
    run_chapters("tiny", root=book)
    said = capsys.readouterr().out
    assert "ran other code or values" in said and "every chapter runs again" in said
    assert "resuming" not in said
    assert (book / "executions.txt").read_text().split() == ["1", "2", "1", "2"]
    figures = _figures(book / "results" / "tiny")
    assert [f["x"] for f in figures.values()] == [6, 6]
    assert not list((book / "results" / "tiny").glob(".run-*"))


def test_the_renderer_refuses_records_of_two_runs_naming_them(tmp_path: Path) -> None:
    from lib.report.readme import render

    for ch, run in (("ch01", "run-a"), ("ch02", "run-b")):
        rec = {"chapter": ch, "preset": "demo", "run_id": run, "x": 1}
        save_json(tmp_path / "demo" / f"{ch}.json", {**rec, "digest": figures_digest(rec)})
    block = "<!-- results: demo/time -->\nx\n<!-- end results -->\n"
    with pytest.raises(CompanionError, match=r"mixes the records of different runs "
                                             r"\(ch01.json \(run-a\), ch02.json \(run-b\)\)"):
        render(block, tmp_path)


# ------------------------------------------------------------------ a saved SpeechLLM


def _damage(path: Path, data: bytes) -> None:
    blob = bytearray(path.read_bytes())
    mid = len(blob) // 2
    blob[mid:mid + len(data)] = data
    path.write_bytes(bytes(blob))


@pytest.mark.parametrize("data", [bytes(64), b"\xff\xff\xc0\x7f" * 16],
                         ids=["64 bytes flipped", "NaN bytes"])
def test_damaged_decoder_weights_are_refused(saved: Path, data: bytes) -> None:
    from lib.build.checkpoint import load_speechllm

    weights = saved / "decoder" / "model.safetensors"
    _damage(weights, data)
    with pytest.raises(CompanionError, match=r"decoder/model.safetensors does not match the "
                                             "digest saved with it"):
        load_speechllm(saved)


def test_a_file_added_to_or_missing_from_a_saved_model_is_refused(saved: Path) -> None:
    from lib.build.checkpoint import load_speechllm

    (saved / "decoder" / "extra.bin").write_bytes(b"x")
    with pytest.raises(CompanionError, match="decoder/extra.bin was not saved with the model"):
        load_speechllm(saved)
    (saved / "decoder" / "extra.bin").unlink()
    (saved / "decoder" / "tokenizer.json").unlink()
    with pytest.raises(CompanionError, match="decoder/tokenizer.json is missing"):
        load_speechllm(saved)


def test_non_finite_weights_saved_as_such_are_refused(tmp_path: Path) -> None:
    import torch

    from lib.build.checkpoint import load_speechllm, save_speechllm
    from lib.build.speechllm import build_speechllm
    from lib.config.sections import ModelConfig

    m = build_speechllm(ModelConfig(encoder="tiny-whisper", decoder="tiny-llama",
                                    projector_hidden=16, lora_rank=0), seed=0)
    with torch.no_grad():
        m.decoder.model.layers[0].mlp.up_proj.weight[0, 0] = float("nan")
    folder = save_speechllm(m, tmp_path / "nan")  # the digests match what was written
    with pytest.raises(CompanionError, match=r"layers.0.mlp.up_proj.weight holds NaN"):
        load_speechllm(folder)


def test_a_damaged_cached_export_is_set_aside_and_saved_again(saved: Path, capsys) -> None:
    from lib.build.checkpoint import reuse_saved

    assert reuse_saved(saved)
    _damage(saved / "decoder" / "model.safetensors", b"\xff\xff\xc0\x7f" * 16)
    assert not reuse_saved(saved)
    assert not saved.exists() and (saved.parent / "saved.corrupt").is_dir()
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "set aside as saved.corrupt and saved again" in out[0]


def test_saving_onto_a_full_disk_is_one_line_and_leaves_the_old_copy(saved: Path,
                                                                     monkeypatch) -> None:
    import transformers.modeling_utils as mu
    from safetensors import SafetensorError

    from lib.build.checkpoint import load_speechllm, save_speechllm

    before = {p: p.read_bytes() for p in saved.rglob("*") if p.is_file()}
    model = load_speechllm(saved)

    def full(*args, **kwargs):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: '
                              'StorageFull, message: "No space left on device" })')

    monkeypatch.setattr(mu, "safe_save_file", full)
    with pytest.raises(CompanionError, match=r"could not save the SpeechLLM into .*saved "
                                             r"\(no space left on the device\)"):
        save_speechllm(model, saved, overwrite=True)
    assert not (saved.parent / "saved.tmp").exists()
    assert {p: p.read_bytes() for p in saved.rglob("*") if p.is_file()} == before


# ------------------------------------------------------------------ a preset file elsewhere


def test_a_preset_file_elsewhere_never_writes_a_shipped_presets_records(book: Path,
                                                                       tmp_path: Path,
                                                                       capsys) -> None:
    from lib.book.run import run_chapters

    run_chapters("tiny", root=book)
    shipped = _bytes(book / "results" / "tiny")
    other = tmp_path / "elsewhere" / "tiny.yaml"
    other.parent.mkdir()
    other.write_text("steps: 6\n")
    label = "tiny-" + hashlib.sha256(other.read_bytes()).hexdigest()[:8]
    capsys.readouterr()
    run_chapters(str(other), root=book)
    assert _bytes(book / "results" / "tiny") == shipped
    recs = _bytes(book / "results" / label)
    assert sorted(recs) == ["ch01.json", "ch02.json"]
    assert json.loads(recs["ch01.json"])["x"] == 6 and \
        json.loads(recs["ch01.json"])["preset"] == label
    assert (book / "_build" / label / "executed" / "01_first.ipynb").is_file()
    said = capsys.readouterr().out
    assert f"its figures go under results/{label}/" in said
    assert "not params/tiny.yaml, whose records stay" in said


def test_the_shipped_presets_own_file_keeps_its_name(book: Path) -> None:
    from lib.config.presets import preset_label

    assert preset_label("tiny", book) == "tiny"
    assert preset_label(str(book / "params" / "tiny.yaml"), book) == "tiny"
    mine = book / "mine.yaml"
    mine.write_text("steps: 2\n")
    assert preset_label(str(mine), book) == "mine"


# ------------------------------------------------------------------ a student's copy


def test_a_second_make_student_keeps_a_students_work(tmp_path: Path, capsys) -> None:
    from lib.book.student import write_student_copies

    _notebook(tmp_path / "book/01_first.ipynb", "steps = 1", "print(steps)")
    (tmp_path / "params").mkdir()
    (tmp_path / "params/tiny.yaml").write_text("steps: 5\n")
    (copy,) = write_student_copies(tmp_path)
    nb = nbformat.read(copy, 4)
    nb.cells.append(nbformat.v4.new_code_cell("my_answer = 42"))
    nbformat.write(nb, copy)
    mine = copy.read_bytes()
    capsys.readouterr()
    (beside,) = write_student_copies(tmp_path)
    assert copy.read_bytes() == mine
    assert beside.name == "01_first.new.ipynb" and "my_answer" not in beside.read_text()
    said = capsys.readouterr().out.strip().splitlines()
    assert len(said) == 1 and str(copy) in said[0] and "01_first.new.ipynb" in said[0]
    # an untouched copy follows its chapter
    _notebook(tmp_path / "book/02_second.ipynb", "seed = 0", "print(seed)")
    write_student_copies(tmp_path)
    second = tmp_path / "_build/student/book/02_second.ipynb"
    _notebook(tmp_path / "book/02_second.ipynb", "seed = 1", "print(seed)")
    write_student_copies(tmp_path)
    assert "seed = 1" in second.read_text()


# ------------------------------------------------------------------ one line, not a traceback


def test_a_cache_that_is_a_file_is_one_line_in_setup(tmp_path: Path, monkeypatch,
                                                     capsys) -> None:
    from lib import setup

    (tmp_path / "cache").write_text("")
    monkeypatch.setenv("COMPANION_CACHE", str(tmp_path / "cache"))
    assert setup.main() == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a file, not a folder" in err[0]


@pytest.mark.parametrize("code,said", [(errno.ENOSPC, "is full"),
                                       (errno.EROFS, "is read-only")])
def test_a_full_or_read_only_cache_is_one_line(tmp_path: Path, monkeypatch, capsys,
                                              code: int, said: str) -> None:
    from lib.errors import exit_status

    monkeypatch.setenv("COMPANION_CACHE", str(tmp_path))
    target = tmp_path / "features" / "x.safetensors"

    def write() -> int:
        raise OSError(code, os.strerror(code), str(target))

    assert exit_status(write) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"the cache {tmp_path} {said} (writing {target})" in err[0]
    assert "set COMPANION_CACHE to a writable folder" in err[0]


def test_a_full_cache_inside_a_chapter_is_one_line(book: Path, monkeypatch) -> None:
    from lib.book.run import run_chapters

    cache = book / "cache"
    monkeypatch.setenv("COMPANION_CACHE", str(cache))
    _notebook(book / "book/01_first.ipynb", "steps = 1",
              "from lib.recipes.notebook import setup\nsetup()\n"
              f"raise OSError(28, 'No space left on device', '{cache}/features/x.pt')")
    with pytest.raises(CompanionError, match=rf"chapter 01 failed in cell 2: OSError: the "
                                             rf"cache {cache} is full"):
        run_chapters("tiny", chapters=["01"], root=book)
    failed = nbformat.read(book / "_build/tiny/executed/01_first.failed.ipynb", 4)
    (error,) = [o for o in failed.cells[-1].outputs if o.output_type == "error"]
    assert len(error.traceback) == 1 and "is full" in error.traceback[0]


def test_another_chapters_parameter_names_that_chapter(tmp_path: Path) -> None:
    from lib.book.run import run_chapters

    with pytest.raises(CompanionError) as err:
        run_chapters("tiny", chapters=["01"], overrides={"heal_variants": ["none"]},
                     out=tmp_path, root=REPO_ROOT)
    assert str(err.value) == ("-p heal_variants: a parameter of chapter 4, which this run does "
                              "not include (chapters 01): add --chapter 04, or leave -p "
                              "heal_variants out")


# ------------------------------------------------------------------ records the README renders


def _ch01(tmp_path: Path, edit=None) -> Path:
    rec = {"chapter": "ch01", "preset": "demo", "decoders": {"d": {"test_sets": {"real": {
        "wer": 0.43, "wer_ci95": [0.378, 0.483], "n_utterances": 10, "baselines": {}}},
        "training": {"recipe": "plain", "steps": 1, "ctc_minutes": 0, "llm_minutes": 1,
                     "minutes": 1}, "audio_reliance_gap": 2.0}}}
    if edit:
        edit(rec)
    rec["digest"] = figures_digest(rec)  # a record that passes its digest
    path = tmp_path / "demo" / "ch01.json"
    save_json(path, {**rec, "provenance": {"date": "2026-12-01"}})
    return path


BLOCK = "<!-- results: demo/ch01 -->\nx\n<!-- end results -->\n"


def _rename(rec):
    d = rec["decoders"]["d"]
    d["test_sets"]["real"]["word_error_rate"] = d["test_sets"]["real"].pop("wer")


def _older(rec):
    del rec["decoders"]["d"]["training"]


def _nan(rec):
    rec["decoders"]["d"]["test_sets"]["real"].update(wer=float("nan"),
                                                     wer_ci95=[float("nan")] * 2)


@pytest.mark.parametrize("edit,match", [
    (_rename, r"the field decoders/d/test_sets/real/wer is missing \(renamed"),
    (_older, r"the field decoders/d/training is missing"),
    (_nan, r"decoders/d/test_sets/real/wer = nan is not a finite number"),
], ids=["renamed", "older", "NaN"])
def test_a_record_the_readme_cannot_render_is_refused_naming_the_field(tmp_path, edit, match):
    from lib.report.readme import render

    assert "43.0 [37.8, 48.3]" in render(BLOCK, tmp_path / "ok" if _ch01(tmp_path / "ok")
                                         else None)
    _ch01(tmp_path, edit)
    with pytest.raises(CompanionError, match=match):
        render(BLOCK, tmp_path)


def test_a_record_that_is_a_json_list_is_one_line(tmp_path: Path, monkeypatch,
                                                 capsys) -> None:
    from lib.report import readme

    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "ch01.json").write_text("[1, 2]")
    monkeypatch.setenv("COMPANION_RESULTS", str(tmp_path))
    target = tmp_path / "README.md"
    target.write_text(BLOCK)
    assert readme.main(target) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ch01.json holds a JSON list, not a record" in err[0]
    assert target.read_text() == BLOCK


def test_a_figure_the_run_could_not_define_is_written_as_null(tmp_path, monkeypatch):
    """A NaN the run produced (a null share of nothing) is recorded as null, which the
    renderer accepts and shows as a dash; a NaN in a record means damage."""
    import numpy as np

    from lib.report.readme import render
    from types import SimpleNamespace

    from lib.config.sections import Record
    from lib.report.results import publish_run, record_headline

    monkeypatch.setenv("COMPANION_RESULTS", str(tmp_path))
    run = SimpleNamespace(chapter=2, preset="demo", record=Record("run", "run-1"), quick=False,
                          clock=None)
    comparison = {"spearman_per_n_mean": 0.7, "overlap_mean": 1.0, "verdict": "x",
                  "chance": {"spearman_per_n_mean": 0.0, "overlap_mean": 0.6},
                  "null_share": float("nan"), "spread": [np.float32("nan"), 1.0]}
    record_headline(run, {"decoders": {"d": {"comparisons": {"c": comparison}}},
                          "thresholds": {"agree_rho": 0.8, "agree_overlap_gain": 0.5}})
    publish_run("demo", "run-1")
    rec = json.loads((tmp_path / "demo" / "ch02.json").read_text())
    c = rec["decoders"]["d"]["comparisons"]["c"]
    assert c["null_share"] is None and c["spread"] == [None, 1.0]
    out = render("<!-- results: demo/ch02 -->\nx\n<!-- end results -->\n", tmp_path)
    assert "| d | c | 0.70 (0.00) | 1.00 (0.60) | x | – |" in out


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_value_is_found_in_any_slice_of_a_weight(bad):
    """The check reads a weight a slice at a time (no full-size copy): a bad value in the
    first slice, at a slice's edge or in the very last value is found, in a tensor of any
    float type; finite tensors and integer ones pass."""
    import torch

    from lib.fileio import FINITE_SLICE, first_nonfinite

    n = 2 * FINITE_SLICE + 7
    for where in (0, FINITE_SLICE - 1, FINITE_SLICE, n - 1):
        for dtype in (torch.float32, torch.bfloat16):
            w = torch.zeros(n, dtype=dtype)
            w[where] = bad
            named = [("ok", torch.ones(3)), ("ids", torch.arange(4)), ("w", w.reshape(-1, 1))]
            assert first_nonfinite(named) == "w", (where, dtype)
    assert first_nonfinite([("ok", torch.ones(n)), ("ids", torch.arange(4))]) is None
