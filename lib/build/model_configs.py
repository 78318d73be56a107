"""The paper's models as configs: shapes, parameter counts, no download needed.

The configs copy the published ``config.json`` fields that set the parameter count (hidden
size, layers, MLP width, heads, vocabulary, tied embeddings). Models are instantiated on the
``meta`` device, so counting the parameters of an 8B decoder costs no memory; the same
configs give randomly initialised models of the real shapes for GPU speed and memory
benchmarks.

Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

Stage: building the SpeechLLM (the paper's model shapes).
"""

from __future__ import annotations

from typing import Any

import torch

# Published configs (the fields that matter for size and speed), by hub id.
PAPER_DECODERS: dict[str, dict[str, Any]] = {
    "meta-llama/Llama-3.2-1B": dict(
        model_type="llama", hidden_size=2048, num_hidden_layers=16, intermediate_size=8192,
        num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
        tie_word_embeddings=True, head_dim=64),
    "meta-llama/Llama-3.2-3B": dict(
        model_type="llama", hidden_size=3072, num_hidden_layers=28, intermediate_size=8192,
        num_attention_heads=24, num_key_value_heads=8, vocab_size=128256,
        tie_word_embeddings=True, head_dim=128),
    "meta-llama/Llama-3.1-8B": dict(
        model_type="llama", hidden_size=4096, num_hidden_layers=32, intermediate_size=14336,
        num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
        tie_word_embeddings=False, head_dim=128),
    "Qwen/Qwen2.5-1.5B": dict(
        model_type="qwen2", hidden_size=1536, num_hidden_layers=28, intermediate_size=8960,
        num_attention_heads=12, num_key_value_heads=2, vocab_size=151936,
        tie_word_embeddings=True),
    "Qwen/Qwen2.5-3B": dict(
        model_type="qwen2", hidden_size=2048, num_hidden_layers=36, intermediate_size=11008,
        num_attention_heads=16, num_key_value_heads=2, vocab_size=151936,
        tie_word_embeddings=True),
    "Qwen/Qwen2.5-7B": dict(
        model_type="qwen2", hidden_size=3584, num_hidden_layers=28, intermediate_size=18944,
        num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
        tie_word_embeddings=False),
}

PAPER_ENCODERS: dict[str, dict[str, Any]] = {
    "microsoft/wavlm-large": dict(
        model_type="wavlm", hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
        intermediate_size=4096, feat_extract_norm="layer", do_stable_layer_norm=True,
        conv_bias=True),
    "openai/whisper-large-v3": dict(
        model_type="whisper", d_model=1280, encoder_layers=32, encoder_attention_heads=20,
        encoder_ffn_dim=5120, decoder_layers=32, decoder_attention_heads=20,
        decoder_ffn_dim=5120, num_mel_bins=128, vocab_size=51866),
}


def make_config(fields: dict[str, Any]) -> Any:
    """A transformers config from a dict with a ``model_type``."""
    from transformers import AutoConfig

    fields = dict(fields)
    return AutoConfig.for_model(fields.pop("model_type"), **fields)


def count_on_meta(config: Any, encoder_only: bool = False) -> int:
    """Parameter count of the model a config describes, instantiated on ``meta``.

    For Whisper with ``encoder_only`` only the encoder is counted (a SpeechLLM keeps just
    the encoder); tied input/output embeddings count once.
    """
    from transformers import AutoModel, AutoModelForCausalLM

    with torch.device("meta"):
        if config.model_type == "whisper":
            from transformers.models.whisper.modeling_whisper import WhisperEncoder

            model = WhisperEncoder(config) if encoder_only else AutoModel.from_config(config)
        elif config.model_type in {"wavlm", "wav2vec2", "hubert"}:
            model = AutoModel.from_config(config)
        else:
            model = AutoModelForCausalLM.from_config(config)
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def projector_parameters(enc_dim: int, dec_dim: int, stack: int = 5,
                         hidden: int = 1024) -> int:
    """Parameters of the projector: Linear(enc*k, hidden) + GELU + Linear(hidden, dec)."""
    return enc_dim * stack * hidden + hidden + hidden * dec_dim + dec_dim


def parameter_split(encoder: dict[str, Any], decoder: dict[str, Any], stack: int = 5,
                    hidden: int = 1024) -> dict[str, int]:
    """Encoder / projector / decoder parameter counts of a SpeechLLM built from configs.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).
    """
    enc_cfg, dec_cfg = make_config(encoder), make_config(decoder)
    from lib.build.components import encoder_width

    enc_dim = encoder_width(enc_cfg)
    return {
        "encoder": count_on_meta(enc_cfg, encoder_only=True),
        "projector": projector_parameters(enc_dim, dec_cfg.hidden_size, stack, hidden),
        "decoder": count_on_meta(dec_cfg),
    }


def _config_fields(name_or_path: str) -> dict[str, Any]:
    """Config fields of a paper hub id (no download) or of a local/offline model."""
    if name_or_path in PAPER_DECODERS:
        return PAPER_DECODERS[name_or_path]
    if name_or_path in PAPER_ENCODERS:
        return PAPER_ENCODERS[name_or_path]
    from transformers import AutoConfig

    from lib.assets import resolve_model

    cfg = AutoConfig.from_pretrained(resolve_model(name_or_path))
    return {"model_type": cfg.model_type, **cfg.to_diff_dict()}


def split_table(pairs: list[tuple[str, str]], stack: int = 5, hidden: int = 1024) -> Any:
    """Parameter split of SpeechLLMs given as (encoder, decoder) names, as a DataFrame.

    Names are paper hub ids (counted from their published configs, no download), offline
    aliases or local folders. Explained in chapter 1 (book/01_building_a_speechllm.ipynb).
    """
    import pandas as pd

    rows = []
    for enc, dec in pairs:
        split = parameter_split(_config_fields(enc), _config_fields(dec), stack, hidden)
        total = sum(split.values())
        rows.append({"model": f"{enc.split('/')[-1]} + {dec.split('/')[-1]}", **split,
                     "total": total, "decoder share (%)": 100 * split["decoder"] / total})
    return pd.DataFrame(rows)


# The paper's ASR SpeechLLMs: WavLM Large with each decoder (projector width: 2048).
PAPER_ASR_PAIRS = [("microsoft/wavlm-large", d) for d in PAPER_DECODERS]
