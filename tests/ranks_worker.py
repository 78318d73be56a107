"""What each of two processes runs in tests/test_ranks.py (``torch.distributed.run``, gloo on
a CPU), and the same work done by one process, the reference the test compares with.

``python ranks_worker.py <folder>``: every process joins the group, does the work split
among them (:func:`lib.ranks.together`) and rank 0 saves what all of them got into
``<folder>/ranks.pt``; the shared cache is ``<folder>/cache``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

N_UTTS = 7  # uneven against two processes and against the batch sizes below
EVAL = dict(batch_size=2, max_new_tokens=6, precision="fp32")


def clips(folder: Path) -> list:
    """Seven clips of other lengths (written by the first process to come, the same)."""
    from lib.data.loaders import Utterance

    rng = np.random.default_rng(0)
    out = []
    for i in range(N_UTTS):
        wav, wave = folder / f"c{i}.wav", rng.normal(0, 0.1, 16000 + 900 * i)
        if not wav.exists():
            sf.write(wav, wave.astype(np.float32), 16000)
        out.append(Utterance(id=f"u{i}", audio=str(wav), text=f"word {i}",
                             duration=(16000 + 900 * i) / 16000, voice="v", split="test",
                             source="manifest"))
    return out


def tiny_models() -> None:
    from lib.build.components import build_encoder
    from lib.build.speechllm import build_speechllm
    from lib.config.sections import ModelConfig

    build_encoder("tiny-whisper")
    build_speechllm(ModelConfig(encoder="tiny-whisper", decoder="tiny-llama", lora_rank=0))


def work(folder: Path, shard_bytes: int | None, batch: int = 4) -> dict:
    """Features of the clips, a tiny SpeechLLM's CTC warm start, its transcripts, its scored
    test set and three training steps of ``batch`` clips per process.
    ``shard_bytes`` None: features held in memory (no cache); else cached in such shards."""
    from lib.build.components import build_encoder
    from lib.build.speechllm import build_speechllm
    from lib.config.sections import EvalConfig, ModelConfig, TrainConfig
    from lib.data.features import extract_features
    from lib.evaluate.decode import evaluate_asr, transcribe
    from lib.ranks import gather, share
    from lib.train.ctc import ctc_warm_start
    from lib.train.loop import train_speechllm

    utts = clips(folder)
    enc = build_encoder("tiny-whisper")
    fs = (extract_features(enc, utts, batch_size=2, use_cache=False) if shard_bytes is None
          else extract_features(enc, utts, batch_size=2, shard_bytes=shard_bytes))
    # no LoRA dropout: its masks are drawn per process, so only without it are two
    # processes' steps one process's
    model = build_speechllm(ModelConfig(encoder="tiny-whisper", decoder="tiny-llama",
                                        projector_hidden=32, lora_rank=4, lora_alpha=8,
                                        lora_dropout=0.0), seed=0)
    # the CTC warm start: every process its share of each batch (two steps of four clips)
    warm = ctc_warm_start(model, fs, TrainConfig(ctc_batch_size=4, ctc_epochs=1.2,
                                                 precision="fp32", seed=0),
                          folder / "warm", desc="warm start")
    projector = {k: v.clone() for k, v in model.projector.state_dict().items()}
    ev = EvalConfig(**EVAL)
    hyps = transcribe(model, fs, ev)
    scored = evaluate_asr(model, fs, folder / "run", "tiny:test", ev)
    # then three training steps of 4 clips: ``batch`` per process (DDP through accelerate)
    trained = train_speechllm(model, fs, TrainConfig(steps=3, batch_size=batch, warmup_steps=1,
                                                     precision="fp32", seed=0,
                                                     length_grouping=0),
                              folder / "trained", desc="training")
    return {"ids": [u.id for u in fs.utterances], "feats": [f.clone() for f in fs.feats],
            "projector": projector,
            "warm_log": warm.log,
            "trained": {k: v.clone() for k, v in model.trainable_state_dict().items()},
            "train_log": [r["loss"] for r in trained.log],
            "hyps": hyps, "wer": scored["wer"], "n": scored["n_utterances"],
            "roundtrip": gather([x * 10 for x in share(list(range(N_UTTS)))]),
            "shards": [p.name for p in getattr(fs.feats, "store", None).files]
            if shard_bytes is not None else []}


def main() -> None:
    import torch.distributed as dist

    from lib.ranks import rank_world, share, together

    folder = Path(sys.argv[1])
    os.environ["COMPANION_CACHE"] = str(folder / "cache")
    dist.init_process_group("gloo")
    for turn in range(2):  # the tiny models are made on first use: one process first
        if dist.get_rank() == turn:
            tiny_models()
            clips(folder)
        dist.barrier()
    alone = share(list(range(N_UTTS)))  # outside together(): a process alone takes all
    with together():
        out = work(folder, shard_bytes=3000, batch=2)
        out["rank_world"] = [None] * dist.get_world_size()
        dist.all_gather_object(out["rank_world"], rank_world())
    out["alone"] = alone
    if dist.get_rank() == 0:
        torch.save(out, folder / "ranks.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
