"""Nothing untrusted reaches a page (issue 23): verified caches, results of record only from
full runs, a renderer that checks what it renders, strict reloads, transcripts with words,
one line for each bad input, one run of a preset at a time, and writes that a kill cannot
half-do."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from lib.errors import CompanionError
from lib.fileio import figures_digest, load_tensors, save_json, save_tensors
from lib.paths import REPO_ROOT

# ------------------------------------------------------------------ verified caches


def _encode(utts):
    from lib.build.components import build_encoder
    from lib.data.features import extract_features

    return extract_features(build_encoder("tiny-whisper"), utts, desc="features t")


@pytest.fixture
def clips():
    from lib.data.real import load_real

    return load_real("real:pocketsphinx")[:2]


@pytest.mark.parametrize("damage", ["bytes", "truncate", "nan"])
def test_a_damaged_features_cache_is_set_aside_and_rebuilt(clips, damage, capsys,
                                                          monkeypatch, tmp_path):
    monkeypatch.setenv("COMPANION_CACHE", str(tmp_path))
    first = _encode(clips)
    (path,) = (tmp_path / "features").glob("*.safetensors")
    raw = bytearray(path.read_bytes())
    if damage == "bytes":  # flip bytes inside the tensor data, keep the header
        raw[-64:-32] = bytes(32)
        path.write_bytes(bytes(raw))
    elif damage == "truncate":
        path.write_bytes(bytes(raw[: len(raw) // 2]))
    else:  # a NaN written with a valid digest: only the finite check can catch it
        tensors = load_tensors(path)
        tensors["0"] = tensors["0"].clone()
        tensors["0"][0, 0] = float("nan")
        save_tensors(path, tensors)
    capsys.readouterr()
    again = _encode(clips)
    out = capsys.readouterr().out
    assert "set aside as" in out and "rebuilt" in out and "\n" not in out.strip()
    assert (tmp_path / "features" / (path.name + ".corrupt")).is_file()
    for a, b in zip(first.feats, again.feats):
        assert torch.equal(a, b)


def test_a_damaged_finished_run_trains_again(tmp_path, random_features, capsys):
    from lib.build.speechllm import build_speechllm
    from lib.config.sections import ModelConfig, TrainConfig
    from lib.train.loop import train_speechllm

    mc = ModelConfig(encoder="tiny-whisper", decoder="tiny-llama", projector_hidden=16,
                     lora_rank=0)
    data = random_features(2, dim=64, split="train")
    cfg = TrainConfig(steps=2, batch_size=2, warmup_steps=0, checkpoint_every=1,
                      precision="fp32")
    train_speechllm(build_speechllm(mc, seed=0), data, cfg, tmp_path / "run")
    final = tmp_path / "run" / "final" / "trainable.safetensors"
    final.write_bytes(final.read_bytes()[:40])
    capsys.readouterr()
    run = train_speechllm(build_speechllm(mc, seed=0), data, cfg, tmp_path / "run")
    assert not run.cached and "set aside" in capsys.readouterr().out


@pytest.mark.parametrize("edit", ["value", "seal removed", "not json"])
def test_an_edited_cached_result_is_set_aside_and_computed_again(tmp_path, random_features,
                                                                 capsys, edit):
    """A cached score whose content is not what was written (a WER changed by hand, its
    seal deleted, bytes that are no longer JSON) is never reused: one line, set aside,
    decoded again to the same score as the first time."""
    from lib.build.speechllm import build_speechllm
    from lib.config.sections import EvalConfig, ModelConfig
    from lib.evaluate.decode import evaluate_asr

    model = build_speechllm(ModelConfig(encoder="tiny-whisper", decoder="tiny-llama",
                                        projector_hidden=16, lora_rank=0), seed=0).eval()
    data, ev = random_features(3, dim=64), EvalConfig(batch_size=2, max_new_tokens=3)
    first = evaluate_asr(model, data, tmp_path, "t", ev)
    (path,) = tmp_path.glob("eval-t-*.json")
    rec = json.loads(path.read_text())
    if edit == "value":
        rec["wer"] = 0.03
    elif edit == "seal removed":
        rec = {k: v for k, v in rec.items() if k != "sha256"}
    path.write_text(json.dumps(rec) if edit != "not json" else path.read_text()[:-9])
    capsys.readouterr()
    again = evaluate_asr(model, data, tmp_path, "t", ev)
    out = capsys.readouterr().out
    assert "set aside" in out and path.name in out and "cached result reused" not in out
    assert again["wer"] == first["wer"] and again["key"] == first["key"]
    assert (path.parent / (path.name + ".corrupt")).is_file()


def test_a_sealed_result_reads_back_as_written(tmp_path):
    from lib.fileio import load_cached_json, save_cached_json

    obj = {"wer": 0.25, "ci": (0.1, 0.4), "n": 3, "nan": float("nan"), "path": Path("a/b")}
    save_cached_json(tmp_path / "r.json", obj)
    back = load_cached_json(tmp_path / "r.json")
    assert back["ci"] == [0.1, 0.4] and back["path"] == "a/b" and back["n"] == 3
    assert back["nan"] != back["nan"] and "sha256" not in back


# ------------------------------------------------------------------ results of record


def test_only_a_full_run_records_the_numbers_of_record(tmp_path, monkeypatch):
    from lib.book.run import trial_name
    from lib.config.resolve import resolve
    from lib.report.results import publish_run, record_headline

    every = [Path("book/01_a.ipynb"), Path("book/02_b.ipynb")]
    assert trial_name(every, every, {}) is None
    assert trial_name(every[:1], every, None) == "chapter-01"
    assert trial_name(every, every, {"train_steps": 9}) == "train-steps-9"
    monkeypatch.setenv("COMPANION_RESULTS", str(tmp_path))
    trial = record_headline(resolve(1, preset="tiny", record="trial:train-steps-9"), {"x": 1})
    assert trial == tmp_path / "tiny" / "trials" / "train-steps-9" / "ch01.json"
    assert not (tmp_path / "tiny" / "ch01.json").exists()
    by_hand = record_headline(resolve(1, preset="tiny"), {"x": 1})  # a notebook by hand
    assert by_hand == tmp_path / "tiny" / "trials" / "by-hand" / "ch01.json"
    quick = resolve(1, preset="tiny", changes={"max_test_utterances": 2})
    assert record_headline(quick, {"x": 1}) is None  # a quick run records nothing
    full = record_headline(resolve(1, preset="tiny", record="run:run-a"), {"x": 1})
    assert full == tmp_path / "tiny" / "ch01.json" and not full.exists()  # staged
    publish_run("tiny", "run-a")
    rec = json.loads(full.read_text())
    assert rec["digest"] == figures_digest(rec) and rec["run_id"] == "run-a"


def _record(tmp_path: Path, **change) -> Path:
    rec = {"chapter": "ch01", "preset": "demo", "decoders": {"d": {"test_sets": {"real": {
        "wer": 0.43, "wer_ci95": [0.378, 0.483], "cer": 0.2, "n_utterances": 10,
        "baselines": {}}}, "training": {"recipe": "plain", "steps": 1, "ctc_minutes": 0,
        "llm_minutes": 1, "minutes": 1}, "audio_reliance_gap": 2.0}}}
    rec["decoders"]["d"]["test_sets"]["real"].update(change)
    rec["digest"] = figures_digest(rec)
    path = tmp_path / "demo" / "ch01.json"
    save_json(path, {**rec, "provenance": {"date": "2026-12-01"}})
    return path


def test_the_renderer_refuses_a_hand_edited_or_inconsistent_record(tmp_path):
    from lib.report.readme import render

    block = "<!-- results: demo/ch01 -->\nx\n<!-- end results -->\n"
    path = _record(tmp_path)
    assert "43.0 [37.8, 48.3]" in render(block, tmp_path)
    rec = json.loads(path.read_text())
    rec["decoders"]["d"]["test_sets"]["real"]["wer"] = 0.030  # edited by hand
    path.write_text(json.dumps(rec))
    with pytest.raises(CompanionError, match=r"ch01.json: its figures do not match their "
                                             "digest"):
        render(block, tmp_path)
    _record(tmp_path, wer=0.030)  # a consistent digest, an inconsistent figure
    with pytest.raises(CompanionError, match=r"decoders/d/test_sets/real/wer = 0.03 lies "
                                             r"outside its own 95 % interval"):
        render(block, tmp_path)
    _record(tmp_path, n_utterances=0)
    with pytest.raises(CompanionError, match="n_utterances = 0 is not a positive count"):
        render(block, tmp_path)


def test_the_report_command_is_one_line_and_leaves_the_readme(tmp_path, monkeypatch, capsys):
    from lib.report import readme

    _record(tmp_path, wer=0.9)
    monkeypatch.setenv("COMPANION_RESULTS", str(tmp_path))
    target = tmp_path / "README.md"
    target.write_text("<!-- results: demo/ch01 -->\nkept\n<!-- end results -->\n")
    assert readme.main(target) == 1
    assert "outside its own 95 % interval" in capsys.readouterr().err
    assert "kept" in target.read_text()


# ------------------------------------------------------------------ strict reloads


def _edit(path: Path, **fields) -> None:
    cfg = json.loads(path.read_text())
    for k, v in fields.items():
        if isinstance(v, dict):
            cfg[k].update(v)
        else:
            cfg[k] = v
    path.write_text(json.dumps(cfg))


@pytest.mark.parametrize("edit,match", [
    ({"num_hidden_layers": 4}, "missing keys, first model.layers"),
    ({"hidden_size": 48}, "does not load as its config.json describes"),
])
def test_an_edited_decoder_config_is_refused(saved, edit, match):
    from lib.build.checkpoint import load_speechllm

    load_speechllm(saved)  # as saved: fine
    _edit(saved / "decoder" / "config.json", **edit)
    with pytest.raises(CompanionError, match="config.json does not match the digest"):
        load_speechllm(saved)
    # with its digest written anew too, the edit is still refused, by the strict load
    digests = {p.relative_to(saved).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
               for p in saved.rglob("*") if p.is_file() and p.name != "speechllm.json"}
    _edit(saved / "speechllm.json", files=digests)
    with pytest.raises(CompanionError, match=match) as err:
        load_speechllm(saved)
    assert str(saved / "decoder") in str(err.value) and "\n" not in str(err.value)


def test_an_edited_projector_shape_is_refused(saved):
    from lib.build.checkpoint import load_speechllm

    _edit(saved / "speechllm.json", projector={"stack": 2})
    with pytest.raises(CompanionError, match="projector's weights do not fit speechllm.json "
                                             r"\(first mismatch: net.0.weight\)"):
        load_speechllm(saved)


def test_saving_into_a_file_is_one_line(saved, tmp_path):
    from lib.build.checkpoint import load_speechllm, save_speechllm

    file = tmp_path / "a-file"
    file.write_text("x")
    with pytest.raises(CompanionError, match="a-file is a file, not a folder"):
        save_speechllm(load_speechllm(saved), file)
    assert file.read_text() == "x"


# ------------------------------------------------------------------ transcripts and inputs


def _manifest(tmp_path: Path, rows: list[dict]) -> Path:
    wav = tmp_path / "a.wav"
    import numpy as np

    from lib.data.audio import write_wav

    write_wav(wav, (np.ones(1600) * 100).astype("int16"), 16000)
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps({"audio": str(wav), **r}) + "\n" for r in rows))
    return path


def test_a_transcript_of_punctuation_only_is_skipped_by_its_id(tmp_path):
    from lib.data.audio import DataWarning
    from lib.data.loaders import load_manifest

    path = _manifest(tmp_path, [{"id": "ok", "text": "hello"},
                                {"id": "dots", "text": "... !!! ?", "source": "mine"}])
    with pytest.warns(DataWarning, match=r"id dots, source mine\): the transcript '\.\.\. "
                                         r"!!! \?' has no words"):
        utts = load_manifest(path)
    assert [u.id for u in utts] == ["ok"]


def test_the_same_id_twice_is_refused_naming_both_lines(tmp_path):
    from lib.data.loaders import load_manifest

    path = _manifest(tmp_path, [{"id": "a", "text": "one"}, {"id": "b", "text": "two"},
                                {"id": "a", "text": "three"}])
    with pytest.raises(CompanionError, match="id 'a' is on lines 1 and 3"):
        load_manifest(path)


@pytest.mark.parametrize("feats,match", [
    (torch.zeros(1, 10, 7), "features of width 7, but this projector reads 64"),
    (torch.zeros(10, 64), r"features of shape \(10, 64\)"),
    (torch.zeros(1, 10, 64, dtype=torch.long), "features of dtype torch.int64"),
])
def test_features_the_projector_cannot_read_are_one_line(feats, match):
    from lib.build.speechllm import build_speechllm
    from lib.config.sections import ModelConfig

    m = build_speechllm(ModelConfig(encoder="tiny-whisper", decoder="tiny-llama",
                                    projector_hidden=8, lora_rank=0))
    with pytest.raises(CompanionError, match=match):
        m.build_inputs(feats, torch.tensor([10] * len(feats)))


def test_a_cache_that_is_a_file_is_one_line(tmp_path, monkeypatch):
    from lib.paths import cache_dir

    file = tmp_path / "cache"
    file.write_text("")
    monkeypatch.setenv("COMPANION_CACHE", str(file))
    with pytest.raises(CompanionError, match=r"COMPANION_CACHE=.*cache is a file, not a folder"):
        cache_dir()


def test_make_works_from_another_folder(tmp_path):
    out = subprocess.run(["make", "-n", "-f", str(REPO_ROOT / "Makefile"), "test"],
                         cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert f'cd "{REPO_ROOT}"' in out.stdout


# ------------------------------------------------------------------ one run at a time


def test_a_second_run_of_the_same_preset_is_refused_naming_the_lock(tmp_path):
    from lib.book.run import preset_lock

    with preset_lock(tmp_path):
        with pytest.raises(CompanionError, match=r"another run of this preset holds .*run.lock "
                                                 rf"\(pid {os.getpid()}\)"):
            with preset_lock(tmp_path):
                pass
    with preset_lock(tmp_path):  # released: the next run goes
        pass


def test_a_write_killed_halfway_leaves_the_previous_file(tmp_path, monkeypatch):
    import lib.fileio as fileio

    path = save_json(tmp_path / "r.json", {"wer": 0.4})

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fileio.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        save_json(path, {"wer": 0.1})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"wer": 0.4}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary left
