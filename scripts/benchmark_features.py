"""Peak memory of the feature stage against the number of utterances (bench-features).

The feature stage (:func:`lib.data.features.extract_features`) writes a set's features in
shards while it encodes them (:mod:`lib.data.store`), so its peak memory should not grow
with the number of utterances. This measures it: the stage runs on ``--utterances`` clips
and on ``--times`` as many, each with shards of ``--shard-mb`` and, as the control, with the
whole set in one shard (what the cache did before shards: every clip held until the end);
the peak resident memory of each run is read from ``/proc/self/status`` (``VmHWM``, reset
before the run through ``/proc/self/clear_refs``) minus the resident memory it started
from. The verdict compares the growth of the peak with the features added:
**flat** when the peak grew by less than ``FLAT_SHARE`` of the added features' bytes
(:func:`lib.report.bench.memory_flat`).

The encoder is a stand-in with the shapes of the paper's (``--dim``, WavLM Large's 1024, and
``--frames`` per clip, 600: 12 s at 50 Hz, LibriSpeech's mean) that returns random features
without computing: the stage's memory, not the encoder's, is what is measured. Linux only.

Usage::

    python scripts/benchmark_features.py                     # 40 and 400 clips, ~10 s
    python scripts/benchmark_features.py --utterances 8 --times 10 --dim 256 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lib.data.features import extract_features  # noqa: E402
from lib.data.loaders import Utterance  # noqa: E402
from lib.fileio import provenance  # noqa: E402
from lib.report.bench import FLAT_SHARE, memory_flat  # noqa: E402

class StandInEncoder:
    """The interface :func:`extract_features` uses, returning random features of ``frames`` x
    ``dim`` per clip (float32, as an encoder's output is, before the stage casts to fp16)."""

    kind = "stand-in"

    def __init__(self, dim: int, frames: int) -> None:
        self.hidden_size, self.frames = dim, frames
        self.model = torch.nn.Linear(1, 1)  # weights to fingerprint
        self.device = torch.device("cpu")
        self.gen = torch.Generator().manual_seed(0)

    def __call__(self, waves: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        out = torch.randn(len(waves), self.frames, self.hidden_size, generator=self.gen)
        return out, torch.full((len(waves),), self.frames)


def _status(field: str) -> int:
    """A ``/proc/self/status`` memory field in bytes."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"/proc/self/status has no {field}")


def peak_of(fn: Any) -> tuple[int, float]:
    """``(bytes, seconds)``: how far the resident memory rose above where it was while
    ``fn()`` ran, and its wall time."""
    with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
        fh.write("5")  # the peak (VmHWM) starts again from the current resident size
    base, t0 = _status("VmRSS"), time.perf_counter()
    fn()
    return _status("VmHWM") - base, time.perf_counter() - t0


def measure(n: int, times: int, dim: int, frames: int, shard_mb: float,
            root: Path) -> dict[str, Any]:
    """Each run (``n`` and ``n * times`` clips; sharded and one shard): its peak rise."""
    wav = root / "clip.wav"
    sf.write(wav, np.random.default_rng(0).normal(0, 0.1, 3200).astype(np.float32), 16000)
    clip_bytes = frames * dim * 2  # float16 on disk and in memory
    runs = []
    os.environ["COMPANION_CACHE"] = str(root / "cache-warm-up")  # one-time allocations
    extract_features(StandInEncoder(dim, frames), [Utterance(
        id="w", audio=str(wav), text="a", duration=1.0, voice="v", split="train",
        source="manifest")], desc="warm-up")
    for label, shard in (("sharded", int(shard_mb * 2**20)), ("one shard", 1 << 62)):
        for count in (n, n * times):
            os.environ["COMPANION_CACHE"] = str(root / f"cache-{label}-{count}")
            utts = [Utterance(id=f"u{i}", audio=str(wav), text="a", duration=1.0, voice="v",
                              split="train", source="manifest") for i in range(count)]
            enc = StandInEncoder(dim, frames)
            rise, secs = peak_of(lambda: extract_features(
                enc, utts, batch_size=4, desc=f"features {label} {count}",
                shard_bytes=shard))
            runs.append({"storage": label, "utterances": count, "shard_bytes": shard,
                         "feature_bytes": count * clip_bytes, "peak_rise_bytes": rise,
                         "seconds": round(secs, 2)})
    return {"runs": runs, "verdicts": memory_flat(runs)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--utterances", type=int, default=40)
    ap.add_argument("--times", type=int, default=10)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--frames", type=int, default=600)
    ap.add_argument("--shard-mb", type=float, default=8.0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(args.utterances, args.times, args.dim, args.frames, args.shard_mb,
                         Path(tmp))
    result["settings"] = vars(args) | {"json": None}
    result["flat_share"] = FLAT_SHARE
    result["provenance"] = provenance()
    for r in result["runs"]:
        print(f"{r['storage']:>9}, {r['utterances']:>5} clips "
              f"({r['feature_bytes'] / 2**20:7.1f} MiB of features): peak "
              f"+{r['peak_rise_bytes'] / 2**20:7.1f} MiB in {r['seconds']:.1f} s")
    for label, v in result["verdicts"].items():
        word = "flat" if v["flat"] else "not flat"
        print(f"{label}: the peak grew by {100 * v['growth_share']:.0f} % of the features "
              f"added: {word} (flat below {100 * FLAT_SHARE:.0f} %)")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
