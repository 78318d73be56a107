"""GPU tier: bf16 training and decoding on CUDA (skipped where no GPU is visible)."""

from __future__ import annotations

import math

import pytest
import torch

from lib.config.sections import ModelConfig, TrainConfig
from lib.data.loaders import Utterance
from lib.data.features import FeatureSet
from lib.build.speechllm import build_speechllm
from lib.train.loop import train_speechllm

pytestmark = pytest.mark.gpu


def test_bf16_training_and_decoding_on_cuda(tmp_path):
    model = build_speechllm(ModelConfig(encoder="tiny-whisper", decoder="tiny-llama",
                                        projector_hidden=32, lora_rank=4), device="cuda")
    # the frozen decoder is held in bf16, the trained weights stay fp32
    assert model.decoder.get_input_embeddings().weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    g = torch.Generator().manual_seed(0)
    utts = [Utterance(f"u{i}", "/x.wav", "one two three", 1.0, "v", "train", "manifest")
            for i in range(4)]
    data = FeatureSet(utts, [torch.randn(30, 64, generator=g).half() for _ in utts])
    run = train_speechllm(model, data, TrainConfig(steps=3, batch_size=2, warmup_steps=0, precision="bf16"),
                          tmp_path / "run")
    assert run.finished and all(math.isfinite(r["loss"]) for r in run.log)
    feats, lengths, _ = data.batch([0, 1])
    assert len(model.generate(feats, lengths, max_new_tokens=4)) == 2
