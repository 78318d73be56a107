"""GGUF -> transformers: a quantised llama.cpp checkpoint turned into a plain folder.

Stage: building the SpeechLLM (offline assets). Explained in chapter 1
(book/01_building_a_speechllm.ipynb).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from lib.errors import CompanionError


# ------------------------------------------------------------------------ converters


def _no_init() -> contextlib.AbstractContextManager[Any]:
    """Skip random weight init when building a model that is loaded right after."""
    try:
        from transformers.initialization import no_init_weights

        return no_init_weights()
    except ImportError:  # pragma: no cover - older transformers
        return contextlib.nullcontext()


def convert_gguf(src_dir: Path, gguf_name: str, out_dir: Path) -> dict[str, Any]:
    """Turn a GGUF causal LM into a plain fp32 transformers folder.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    A GGUF-loaded model refuses ``save_pretrained``; dropping its
    ``quantization_config``, building the class from that config and loading the
    dequantised state dict gives a model that saves as safetensors.

    Args:
        src_dir: Folder holding the ``.gguf`` file.
        gguf_name: Its file name.
        out_dir: Folder to write (model, tokenizer, generation config).

    Returns:
        A summary (class, parameter count, layers).

    Raises:
        CompanionError: If the state dict does not match the rebuilt model.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quant = AutoModelForCausalLM.from_pretrained(
        src_dir, gguf_file=gguf_name, dtype=torch.float32
    )
    config = quant.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with _no_init():
        model = type(quant)(config)
    state = quant.state_dict()
    result = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise CompanionError(
            f"GGUF conversion of {gguf_name} mismatched: missing {missing[:5]}, "
            f"unexpected {list(result.unexpected_keys)[:5]}."
        )
    model.tie_weights()
    model.generation_config = quant.generation_config
    model = model.float().eval()
    del quant, state
    model.save_pretrained(out_dir)
    tok = AutoTokenizer.from_pretrained(src_dir, gguf_file=gguf_name)
    tok.save_pretrained(out_dir)
    return {
        "class": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "layers": config.num_hidden_layers,
        "hidden_size": config.hidden_size,
    }
