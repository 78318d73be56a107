"""Shared test settings: offline hub, and ``gpu`` tests skipped where there is no GPU."""

from __future__ import annotations

import os
import sys
import tempfile

import pytest

# No hub here: fail at once instead of retrying for ~25 s. Kernels started by tests inherit it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Book runs in the tests record their headline figures here, never in the repository's
# results/ (which holds the numbers of record of full runs).
os.environ["COMPANION_RESULTS"] = tempfile.mkdtemp(prefix="companion-results-")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``@pytest.mark.gpu`` tests when torch sees no CUDA device."""
    gpu_tests = [item for item in items if "gpu" in item.keywords]
    if not gpu_tests:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is false)")
    for item in gpu_tests:
        item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fresh_process(monkeypatch):
    """Each test starts as a new kernel would: no line said yet (:func:`lib.cache.say_once`),
    so a test sees the lines its own calls print, and no recipe of record chosen yet
    (:func:`lib.recipes.levers.training_corpus`)."""
    import lib.cache

    monkeypatch.setattr(lib.cache, "_SAID", set())
    levers = sys.modules.get("lib.recipes.levers")  # nothing chosen yet, if imported
    if levers is not None:
        monkeypatch.setattr(levers, "_CHOSEN", {})


@pytest.fixture(autouse=True)
def _no_machine_probe(monkeypatch):
    """In this process ``precision: auto`` on a CPU with native bf16 takes bf16 instead of
    probing the machine (:func:`lib.machine.machine_choice` would build the run's decoders,
    time them and write the choice into the cache): a test's precision stays the same on
    every machine. tests/test_machine.py tests the probe itself; the chapters a test runs in
    a kernel of their own probe for real, on their tiny decoders, in their own cache."""
    import lib.machine

    monkeypatch.setattr(lib.machine, "machine_choice", lambda use, *args: "bf16")


@pytest.fixture
def random_features():
    """A factory of small FeatureSets: random fp16 encoder features with short transcripts.

    ``make(n, dim, seed, split, base, step)``: utterance ``i`` has ``base + step * i`` frames.
    """
    import torch

    from lib.data.loaders import Utterance
    from lib.data.features import FeatureSet

    texts = ["one two three", "four five", "six seven eight nine", "ten", "red green",
             "blue sky"]

    def make(n: int = 5, dim: int = 64, seed: int = 0, split: str = "test", base: int = 12,
             step: int = 7) -> FeatureSet:
        g = torch.Generator().manual_seed(seed)
        utts = [Utterance(id=f"u{i}", audio=f"/nonexistent/u{i}.wav",
                          text=texts[i % len(texts)], duration=1.0, voice="v", split=split,
                          source="manifest")
                for i in range(n)]
        feats = [torch.randn(base + step * i, dim, generator=g).half() for i in range(n)]
        return FeatureSet(utts, feats)

    return make


@pytest.fixture
def tiny_speechllm():
    """A factory of tiny SpeechLLMs (tiny Whisper, tiny Llama, LoRA rank 4), seed 0:
    ``make(**fields)`` with any :class:`lib.config.sections.ModelConfig` field changed."""
    from lib.build.speechllm import build_speechllm
    from lib.config.sections import ModelConfig

    def make(**fields):
        mc = ModelConfig(**{"encoder": "tiny-whisper", "decoder": "tiny-llama",
                            "projector_hidden": 32, "lora_rank": 4, "lora_alpha": 8, **fields})
        return build_speechllm(mc, seed=0)
    return make


@pytest.fixture
def saved(tmp_path):
    """A tiny SpeechLLM with its layer 1 pruned, saved by ``save_speechllm`` into
    ``tmp_path/saved``."""
    from lib.build.checkpoint import save_speechllm
    from lib.build.speechllm import build_speechllm
    from lib.config.sections import ModelConfig
    from lib.prune.surgery import prune_speechllm

    m = build_speechllm(ModelConfig(encoder="tiny-whisper", decoder="tiny-llama",
                                    projector_hidden=16, lora_rank=0), seed=0)
    return save_speechllm(prune_speechllm(m, [1]), tmp_path / "saved")
