"""Two CPU processes (gloo) splitting the feature pass, the CTC warm start and decoding get
what one process gets: the same features, warm-start weights within float tolerance, the
same transcripts and WER, one set of files in the cache."""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lib.fileio import load_json

WORKER = Path(__file__).resolve().parent / "ranks_worker.py"


def _worker():
    spec = importlib.util.spec_from_file_location("ranks_worker", WORKER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_split_features_warm_start_and_decoding_and_agree_with_one(tmp_path,
                                                                              monkeypatch):
    worker = _worker()
    two, one = tmp_path / "two", tmp_path / "one"
    two.mkdir()
    one.mkdir()
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(WORKER),
         str(two)], capture_output=True, text=True, timeout=600,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    got = torch.load(two / "ranks.pt", weights_only=True)  # tensors, lists, strings
    # the reference: one process, features held in memory (never cached), its own cache
    monkeypatch.setenv("COMPANION_CACHE", str(one / "cache"))
    ref = worker.work(one, shard_bytes=None)
    assert got["rank_world"] == [(0, 2), (1, 2)] and got["alone"] == list(range(7))
    assert got["roundtrip"] == [10 * i for i in range(7)]
    assert got["ids"] == ref["ids"]
    for a, b in zip(got["feats"], ref["feats"]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # the warm start's steps: the same losses and weights within float tolerance
    assert [r["step"] for r in got["warm_log"]] == [r["step"] for r in ref["warm_log"]]
    for a, b in zip(got["warm_log"], ref["warm_log"]):
        assert abs(a["loss"] - b["loss"]) <= 1e-3 * abs(b["loss"]) + 1e-4
    assert load_json(two / "warm" / "warmstart.json")["processes"] == 2  # it was split
    for k, v in ref["projector"].items():
        torch.testing.assert_close(got["projector"][k], v, rtol=1e-4, atol=1e-5)
    # training (DDP) with batches of 2 on each process: one process's batches of 4
    assert got["train_log"] == pytest.approx(ref["train_log"], rel=1e-4)
    for k, v in ref["trained"].items():
        torch.testing.assert_close(got["trained"][k], v, rtol=1e-3, atol=1e-6)
    assert got["hyps"] == ref["hyps"]
    assert (got["wer"], got["n"]) == (ref["wer"], ref["n"])
    # one set of shards: the first one naming both processes' shares
    names = got["shards"]
    assert any(".r0-" in n for n in names) and any(".r1-" in n for n in names)
    cached = sorted(p.name for p in (two / "cache" / "features").glob("*.safetensors"))
    assert cached == sorted(names)
    # one score and one hypotheses file, whole
    assert len(list((two / "run").glob("eval-*.json"))) == 1
    assert len(list((two / "run").glob("*.hyps.jsonl"))) == 1
    assert not list((two / "run").glob(".*tmp*"))


def _experiment(cache, processes, batch):
    """``python -m lib.experiment`` on the tiny preset (one decoder, the corpus as given,
    float32) with ``processes`` gloo processes of ``batch`` utterances each; its output."""
    import os

    args = ["--preset", "tiny", "-p", "decoders", "[tiny-llama]", "-p", "corpus_recipe",
            "given", "-p", "batch_size", str(batch), "-p", "precision", "fp32",
            "-p", "eval_precision", "fp32", "-p", "test_data", "[synthetic:test]",
            "-p", "rescore_beams", "0"]
    launch = ([sys.executable, "-m", "lib.experiment"] if processes == 1 else
              [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
               str(processes), "--master_addr", "127.0.0.1", "--master_port",
               str(_free_port()), "-m", "lib.experiment"])
    run = subprocess.run(launch + args, capture_output=True, text=True, timeout=900,
                         cwd=Path(__file__).resolve().parent.parent,
                         env={**os.environ, "COMPANION_CACHE": str(cache),
                              "OMP_NUM_THREADS": str(2 // processes)})
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


def test_the_tiny_experiment_on_two_processes_trains_and_scores_as_one(tmp_path):
    """Chapter 1's pipeline (``python -m lib.experiment``) on two processes with batches of
    2 each against one process with batches of 4: the same global batches, so the same
    features bit for bit, the same number of utterances trained on, and the same WER.
    (Trained weights are compared where LoRA dropout is off, in the test above: its masks
    are drawn per process.)"""
    from lib.data.store import FeatureStore

    outs = {n: _experiment(tmp_path / f"cache{n}", n, 4 // n) for n in (2, 1)}
    wers = {n: sorted(line for line in out.splitlines() if ": WER " in line)
            for n, out in outs.items()}
    assert wers[1] and wers[2] == wers[1]
    assert "trained on 2 process(es)" in outs[2] and "trained on 1 process(es)" in outs[1]
    firsts = {n: sorted(p for p in (tmp_path / f"cache{n}" / "features").glob("*.safetensors")
                        if p.name.count(".") == 1) for n in (1, 2)}
    assert [p.name for p in firsts[2]] == [p.name for p in firsts[1]]  # the same keys
    for a, b in zip(firsts[2], firsts[1]):
        sa, sb = FeatureStore(a), FeatureStore(b)
        assert sa.indices() == sb.indices()
        assert all(torch.equal(sa.get(i), sb.get(i)) for i in sa.indices())
    done = {n: load_json(next((tmp_path / f"cache{n}" / "runs").glob(
        "tiny-llama-*/train_result.json"))) for n in (1, 2)}
    assert done[2]["steps"] == done[1]["steps"] == 6
    assert done[2]["train_utterances_seen"] == done[1]["train_utterances_seen"] == 24
