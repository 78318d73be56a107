"""The real offline models, converted by lib.assets, behave like the pretrained networks.

Each model is loaded once per module. Run with ``pytest -m real``; the first run converts
the assets into the cache (minutes), later runs take well under two minutes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    WhisperForConditionalGeneration,
    WhisperProcessor,
)

from lib import assets
from lib.data import audio as data_audio
from lib.data.real import load_real
from lib.evaluate.metrics import score_asr

pytestmark = pytest.mark.real

# Plain English prose written for this test (no copyright), ~130 words.
PARAGRAPH = (
    "The village stood at the edge of a wide valley, where the river turned slowly "
    "towards the sea. In the spring the fields were green with young wheat, and the "
    "farmers rose early to walk along the hedges and count their sheep. The old church "
    "had a square tower of grey stone, and its bell could be heard for miles on a quiet "
    "morning. Children went to the small school beside the green, and in the afternoons "
    "they ran down to the water to watch the boats come in. Nobody in the village was "
    "rich, but few were poor, and most people were content with the life they had "
    "always known. When travellers asked the way to the town, the old men on the bench "
    "by the inn would point along the road and tell them it was a pleasant walk."
)

# Perplexity bounds: measured on 2026-11-22 with the fp32 conversions of the GGUF files
# (transformers 5.23.0, torch 2.13.0 CPU): SmolLM2-135M 21.96, Gemma-3-270M 16.68
# (155-157 tokens).
# Bound = measured * 1.5: a broken conversion gives hundreds or thousands.
PPL_BOUNDS = {"smollm2-135m": 21.96 * 1.5, "gemma3-270m": 16.68 * 1.5}

# Measured WER of Whisper-base (stock 30 s padded path, greedy) on the 10 real
# utterances: 0.130 on 2026-11-22. The bound is the one the book relies on.
WER_BOUND = 0.2


@pytest.fixture(scope="module")
def whisper() -> tuple[WhisperForConditionalGeneration, WhisperProcessor]:
    """Whisper-base converted from CTranslate2, loaded once."""
    folder = assets.ensure_model("whisper-base")
    model = WhisperForConditionalGeneration.from_pretrained(folder).eval()
    processor = WhisperProcessor.from_pretrained(folder)
    return model, processor


@pytest.fixture(scope="module", params=["smollm2-135m", "gemma3-270m"])
def llm(request: pytest.FixtureRequest) -> tuple[str, Any, Any]:
    """Each converted LLM, loaded once (one at a time to bound memory)."""
    alias = request.param
    folder = assets.ensure_model(alias)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    yield alias, tokenizer, model
    del model


def test_whisper_transcribes_real_speech(
    whisper: tuple[WhisperForConditionalGeneration, WhisperProcessor],
) -> None:
    """Whisper-base with its own decoder: WER <= 0.2 on every source of the real set."""
    model, processor = whisper
    cfg = model.config
    assert (cfg.encoder_layers, cfg.decoder_layers, cfg.d_model) == (6, 6, 512)
    utts = load_real("real")
    assert len(utts) == 78
    hyps = []
    for start in range(0, len(utts), 16):
        audio = [data_audio.read_audio(u.audio) for u in utts[start:start + 16]]
        feats = processor(audio, sampling_rate=16000, return_tensors="pt").input_features
        with torch.inference_mode():
            ids = model.generate(feats, language="en", task="transcribe")
        hyps += processor.batch_decode(ids, skip_special_tokens=True)
    for source in ("pocketsphinx", "asterisk", "alsa"):
        mine = [i for i, u in enumerate(utts) if u.source == source]
        wer = score_asr([utts[i].text for i in mine], [hyps[i] for i in mine])["wer"]
        print(f"whisper-base WER on real:{source}: {wer:.3f} ({len(mine)} utterances)")
        assert wer <= WER_BOUND, source


def test_llm_perplexity_on_english(llm: tuple[str, Any, Any]) -> None:
    """Each LLM predicts plain English well: perplexity below the measured bound."""
    alias, tokenizer, model = llm
    enc = tokenizer(PARAGRAPH, return_tensors="pt")
    assert enc.input_ids.shape[1] > 100
    with torch.inference_mode():
        loss = model(**enc, labels=enc.input_ids).loss
    ppl = math.exp(loss.item())
    print(f"{alias}: perplexity {ppl:.2f} on {enc.input_ids.shape[1]} tokens")
    assert ppl < PPL_BOUNDS[alias]


def test_llm_folder_is_plain_checkpoint(llm: tuple[str, Any, Any]) -> None:
    """The converted folder has no quantisation left and a generation config."""
    alias, tokenizer, model = llm
    folder = Path(assets.ensure_model(alias))
    assert (folder / "model.safetensors").is_file()
    assert (folder / "generation_config.json").is_file()
    assert getattr(model.config, "quantization_config", None) is None
    assert model.config.num_hidden_layers == assets.OFFLINE_MODELS[alias].facts["layers"]
    assert tokenizer.decode(tokenizer("Hello world").input_ids, skip_special_tokens=True)
