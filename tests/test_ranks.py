"""Two CPU processes (gloo) splitting the feature pass, the CTC warm start and decoding get
what one process gets: the same features, warm-start weights within float tolerance, the
same transcripts and WER, one set of files in the cache."""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
from pathlib import Path

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
    got = torch.load(two / "ranks.pt")
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
