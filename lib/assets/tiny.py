"""Tiny random models (a few layers, a character tokenizer) for tests and the tiny preset.

Built with no download, once per version, under ``<cache>/models/<alias>/``. Stage:
building the SpeechLLM. Explained in chapter 1 (book/01_building_a_speechllm.ipynb).
"""

from __future__ import annotations

import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lib.assets.folders import atomic_folder, read_manifest, write_manifest
from lib.assets.registry import TINY_MODELS, TINY_VERSION
from lib.errors import CompanionError
from lib.paths import cache_subdir


# ------------------------------------------------------------------------ tiny models

TINY_CHARS = string.ascii_letters + string.digits + string.punctuation + " \n"
TINY_SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")


def build_char_tokenizer() -> Any:
    """A character-level ``PreTrainedTokenizerFast`` built with no download.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Vocabulary: ``<pad> <s> </s> <unk>`` then letters, digits, punctuation, space
    and newline (100 tokens). Encoding adds no special tokens, so
    ``decode(encode(text)) == text`` for English text.

    Returns:
        The tokenizer (bos ``<s>``, eos ``</s>``, pad ``<pad>``, unk ``<unk>``).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(TINY_SPECIALS + tuple(TINY_CHARS))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        clean_up_tokenization_spaces=False,
        model_max_length=512,
    )


def _save_causal_lm(model: Any, tok: Any, out: Path) -> None:
    """Save a tiny causal LM with its tokenizer; generation uses the tokenizer's ids."""
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model.save_pretrained(out)
    tok.save_pretrained(out)


def _tiny_llama(out: Path) -> None:
    """Random 4-layer Llama with the char tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_char_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128,
        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    _save_causal_lm(LlamaForCausalLM(config), tok, out)


def _tiny_gemma(out: Path) -> None:
    """Random 4-layer Gemma 3 text model (3 sliding + 1 full attention)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tok = build_char_tokenizer()
    config = Gemma3TextConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128,
        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=1,
        head_dim=16, query_pre_attn_scalar=16, sliding_window=32,
        layer_types=["sliding_attention"] * 3 + ["full_attention"],
        max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    _save_causal_lm(Gemma3ForCausalLM(config), tok, out)


def _tiny_whisper(out: Path) -> None:
    """Random 2+2-layer Whisper (80 mel bins) plus its feature extractor."""
    from transformers import (
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
    )

    config = WhisperConfig(
        vocab_size=128, d_model=64, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=80,
        max_source_positions=1500, max_target_positions=64,
        pad_token_id=2, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
    )
    WhisperForConditionalGeneration(config).save_pretrained(out)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(out)


def _tiny_wavlm(out: Path) -> None:
    """Random 2-layer WavLM plus its feature extractor."""
    from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMModel

    config = WavLMConfig(
        vocab_size=32, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, conv_dim=(32,) * 7,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
        num_buckets=32, max_bucket_distance=100,
    )
    WavLMModel(config).save_pretrained(out)
    Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0,
        do_normalize=True, return_attention_mask=True,
    ).save_pretrained(out)


_TINY_BUILDERS: dict[str, Callable[[Path], None]] = {
    "tiny-llama": _tiny_llama,
    "tiny-gemma": _tiny_gemma,
    "tiny-whisper": _tiny_whisper,
    "tiny-wavlm": _tiny_wavlm,
}


def ensure_tiny(alias: str) -> Path:
    """Create (once) a tiny random stand-in model saved with ``save_pretrained``.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    The tiny models take the same ``from_pretrained`` path as real ones, so tests
    and the ``tiny`` preset exercise the real code. Weights come from a fixed seed
    (the global RNG is left untouched), so every machine builds the same model.

    Args:
        alias: A key of :data:`TINY_MODELS`.

    Returns:
        The folder ``<cache>/models/<alias>/``.

    Raises:
        CompanionError: For an unknown alias.
    """
    import torch

    builder = _TINY_BUILDERS.get(alias)
    if builder is None:
        raise CompanionError(
            f"Unknown tiny model {alias!r}; known: {', '.join(TINY_MODELS)}."
        )
    final = cache_subdir("models") / alias
    man = read_manifest(final)
    if man and man.get("tiny_version") == TINY_VERSION and man.get("alias") == alias:
        return final
    with atomic_folder(final) as tmp, torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        builder(tmp / "out")
        write_manifest(
            tmp / "out",
            {
                "alias": alias,
                "description": TINY_MODELS[alias],
                "tiny_version": TINY_VERSION,
                "seed": 0,
            },
        )
    return final
