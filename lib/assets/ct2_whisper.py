"""Convert a CTranslate2 Whisper ``model.bin`` into a transformers checkpoint.

The only Whisper weights that can be had offline ship as a CTranslate2 file (see
``shared/ASSETS.md``). transformers cannot read it: :mod:`lib.assets.ct2_format` parses the
binary layout and this module maps every variable onto
:class:`transformers.WhisperForConditionalGeneration`. Attention q/k/v (self-attention) and
k/v (cross-attention) are fused along the output dimension; Whisper's k projections have no
bias, so CTranslate2 stores zeros there.

Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

Stage: building the SpeechLLM (offline assets).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from lib.assets.ct2_format import dequantize, read_ct2_model
from lib.errors import CompanionError

# Scalar settings stored as variables; they describe the architecture, not weights.
_METADATA = re.compile(
    r"^(encoder|decoder)/("
    r"activation|alibi|alibi_use_positive_positions|scale_alibi|"
    r"alignment_heads|alignment_layer|num_heads|pre_norm|"
    r"scale_embeddings|start_from_zero_embedding|layernorm_embedding|"
    r"rms_norm|multi_query_attention|rotary_.*|parallel_residual|shared_layer_norm"
    r")$"
)


def _count_layers(variables: dict[str, torch.Tensor], side: str) -> int:
    """Number of ``{side}/layer_N`` blocks."""
    pattern = re.compile(rf"^{side}/layer_(\d+)/")
    found = {int(m.group(1)) for n in variables if (m := pattern.match(n))}
    return len(found)


def _scalar(variables: dict[str, torch.Tensor], name: str, default: int) -> int:
    """An integer setting stored as a scalar variable."""
    value = variables.get(name)
    return int(value.item()) if value is not None else default


def whisper_config_kwargs(
    variables: dict[str, torch.Tensor], ct2_config: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Derive :class:`transformers.WhisperConfig` arguments from the weight shapes.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Args:
        variables: Output of :func:`read_ct2_model`.
        ct2_config: The ``config.json`` shipped next to ``model.bin`` (suppress ids).

    Returns:
        Keyword arguments for ``WhisperConfig``.
    """
    ct2_config = ct2_config or {}
    emb = variables["decoder/embeddings/weight"]
    vocab, d_model = emb.shape
    # Whisper: <|endoftext|> is the last base token, <|startoftranscript|> follows.
    # (multilingual 50257, English-only 50256; tiny test models: vocab - 2).
    eot = 50257 if vocab >= 51865 else 50256 if vocab == 51864 else max(vocab - 2, 0)
    kwargs: dict[str, Any] = {
        "vocab_size": int(vocab),
        "d_model": int(d_model),
        "num_mel_bins": int(variables["encoder/conv1/weight"].shape[1]),
        "encoder_layers": _count_layers(variables, "encoder"),
        "decoder_layers": _count_layers(variables, "decoder"),
        "encoder_attention_heads": _scalar(variables, "encoder/num_heads", 8),
        "decoder_attention_heads": _scalar(variables, "decoder/num_heads", 8),
        "encoder_ffn_dim": int(
            variables["encoder/layer_0/ffn/linear_0/weight"].shape[0]
        ),
        "decoder_ffn_dim": int(
            variables["decoder/layer_0/ffn/linear_0/weight"].shape[0]
        ),
        "max_source_positions": int(
            variables["encoder/position_encodings/encodings"].shape[0]
        ),
        "max_target_positions": int(
            variables["decoder/position_encodings/encodings"].shape[0]
        ),
        "activation_function": "gelu",
        "scale_embedding": False,
        "tie_word_embeddings": True,
        "pad_token_id": eot,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "decoder_start_token_id": eot + 1,
    }
    # Mirror the hub's config.json (WhisperConfig's default begin list is English-only).
    begin = ct2_config.get("suppress_ids_begin", [220, eot])
    kwargs["begin_suppress_tokens"] = [int(i) for i in begin if i < vocab]
    if "suppress_ids" in ct2_config:
        suppress = ct2_config["suppress_ids"]
        kwargs["suppress_tokens"] = [int(i) for i in suppress if i < vocab]
    return kwargs


def _split(t: torch.Tensor, parts: int) -> list[torch.Tensor]:
    """Split a fused projection along the output dimension."""
    return list(torch.chunk(t, parts, dim=0))


class _Mapping:
    """CTranslate2 variables taken one by one into a transformers state dict (``sd``),
    each name remembered in ``used`` so that nothing is left behind unseen."""

    def __init__(self, variables: dict[str, torch.Tensor]) -> None:
        self.v, self.used, self.sd = variables, set(), {}

    def take(self, name: str) -> torch.Tensor:
        self.used.add(name)
        return self.v[name]

    def norm(self, src: str, dst: str) -> None:
        self.sd[f"{dst}.weight"] = self.take(f"{src}/gamma")
        self.sd[f"{dst}.bias"] = self.take(f"{src}/beta")

    def linear(self, src: str, dst: str) -> None:
        self.sd[f"{dst}.weight"] = self.take(f"{src}/weight")
        self.sd[f"{dst}.bias"] = self.take(f"{src}/bias")

    def ffn(self, src: str, dst: str) -> None:
        self.norm(f"{src}/layer_norm", f"{dst}.final_layer_norm")
        self.linear(f"{src}/linear_0", f"{dst}.fc1")
        self.linear(f"{src}/linear_1", f"{dst}.fc2")

    def self_attn(self, src: str, dst: str, norm_dst: str) -> None:
        """Fused q/k/v split in three (k has no bias in Whisper)."""
        sd = self.sd
        self.norm(f"{src}/layer_norm", norm_dst)
        q, k, val = _split(self.take(f"{src}/linear_0/weight"), 3)
        qb, _kb, vb = _split(self.take(f"{src}/linear_0/bias"), 3)
        sd[f"{dst}.q_proj.weight"], sd[f"{dst}.q_proj.bias"] = q, qb
        sd[f"{dst}.k_proj.weight"] = k
        sd[f"{dst}.v_proj.weight"], sd[f"{dst}.v_proj.bias"] = val, vb
        self.linear(f"{src}/linear_1", f"{dst}.out_proj")

    def cross_attn(self, src: str, dst: str, norm_dst: str) -> None:
        """q on its own, fused k/v split in two."""
        sd = self.sd
        self.norm(f"{src}/layer_norm", norm_dst)
        self.linear(f"{src}/linear_0", f"{dst}.q_proj")
        k, val = _split(self.take(f"{src}/linear_1/weight"), 2)
        _kb, vb = _split(self.take(f"{src}/linear_1/bias"), 2)
        sd[f"{dst}.k_proj.weight"] = k
        sd[f"{dst}.v_proj.weight"], sd[f"{dst}.v_proj.bias"] = val, vb
        self.linear(f"{src}/linear_2", f"{dst}.out_proj")


def ct2_to_hf_state_dict(
    variables: dict[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Map CTranslate2 Whisper variables onto ``WhisperForConditionalGeneration`` keys.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Every non-metadata variable must be used exactly once; anything left over is an
    error, so a layout change cannot silently drop weights.

    Args:
        variables: Output of :func:`read_ct2_model`.

    Returns:
        A state dict for ``WhisperForConditionalGeneration`` (float32).

    Raises:
        CompanionError: If a variable cannot be mapped.
    """
    v = dequantize(variables)
    m = _Mapping(v)
    enc, dec = "model.encoder", "model.decoder"
    for i in (1, 2):
        m.linear(f"encoder/conv{i}", f"{enc}.conv{i}")
    m.sd[f"{enc}.embed_positions.weight"] = m.take("encoder/position_encodings/encodings")
    for i in range(_count_layers(v, "encoder")):
        src, dst = f"encoder/layer_{i}", f"{enc}.layers.{i}"
        m.self_attn(f"{src}/self_attention", f"{dst}.self_attn", f"{dst}.self_attn_layer_norm")
        m.ffn(f"{src}/ffn", dst)
    m.norm("encoder/layer_norm", f"{enc}.layer_norm")

    m.sd[f"{dec}.embed_tokens.weight"] = m.take("decoder/embeddings/weight")
    m.sd[f"{dec}.embed_positions.weight"] = m.take("decoder/position_encodings/encodings")
    for i in range(_count_layers(v, "decoder")):
        src, dst = f"decoder/layer_{i}", f"{dec}.layers.{i}"
        m.self_attn(f"{src}/self_attention", f"{dst}.self_attn", f"{dst}.self_attn_layer_norm")
        m.cross_attn(f"{src}/attention", f"{dst}.encoder_attn",
                     f"{dst}.encoder_attn_layer_norm")
        m.ffn(f"{src}/ffn", dst)
    m.norm("decoder/layer_norm", f"{dec}.layer_norm")
    # The output projection is tied to the embeddings (an alias in the file).
    proj = v.get("decoder/projection/weight")
    if proj is not None:
        m.used.add("decoder/projection/weight")
        if not torch.equal(proj, v["decoder/embeddings/weight"]):
            raise CompanionError(
                "CTranslate2 Whisper has an untied output projection; not supported."
            )
    used, sd = m.used, m.sd
    left = sorted(n for n in v if n not in used and not _METADATA.match(n))
    if left:
        raise CompanionError(
            f"CTranslate2 variables not mapped to Whisper: {', '.join(left[:5])}"
            + (" ..." if len(left) > 5 else "")
        )
    return {k: t.float().contiguous() for k, t in sd.items()}


def build_whisper_model(
    variables: dict[str, torch.Tensor], ct2_config: dict[str, Any] | None = None
) -> Any:
    """Build a ``WhisperForConditionalGeneration`` holding the CTranslate2 weights.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Args:
        variables: Output of :func:`read_ct2_model`.
        ct2_config: The ``config.json`` shipped next to ``model.bin``.

    Returns:
        The model in eval mode, float32, with all keys checked.

    Raises:
        CompanionError: If any key is missing or unexpected.
    """
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    config = WhisperConfig(**whisper_config_kwargs(variables, ct2_config))
    state = ct2_to_hf_state_dict(variables)
    model = WhisperForConditionalGeneration(config)
    result = model.load_state_dict(state, strict=False)
    # proj_out is tied to embed_tokens, so it may be reported missing; nothing else.
    missing = [k for k in result.missing_keys if k != "proj_out.weight"]
    if missing or result.unexpected_keys:
        raise CompanionError(
            f"Whisper conversion mismatch: missing {missing[:5]}, "
            f"unexpected {list(result.unexpected_keys)[:5]}."
        )
    model.tie_weights()
    embed = model.model.decoder.embed_tokens.weight
    if model.proj_out.weight.data_ptr() != embed.data_ptr():
        model.proj_out.weight = embed
    return model.eval()


def whisper_generation_config(
    model_config: Any, tokenizer_json: dict[str, Any], ct2_config: dict[str, Any]
) -> Any:
    """A generation config for ``generate(..., language="en", task="transcribe")``.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Args:
        model_config: The ``WhisperConfig`` of the converted model.
        tokenizer_json: The parsed ``tokenizer.json`` shipped with the model.
        ct2_config: The CTranslate2 ``config.json`` (language ids, suppress ids,
            alignment heads).

    Returns:
        A ``transformers.GenerationConfig``.
    """
    from transformers import GenerationConfig

    ids = {t["content"]: t["id"] for t in tokenizer_json.get("added_tokens", [])}
    id_to_tok = {i: c for c, i in ids.items()}
    lang_ids = ct2_config.get("lang_ids", [])
    lang_to_id = {id_to_tok[i]: i for i in lang_ids if i in id_to_tok}
    eot = ids.get("<|endoftext|>", model_config.eos_token_id)
    gen = GenerationConfig(
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        decoder_start_token_id=ids.get(
            "<|startoftranscript|>", model_config.decoder_start_token_id
        ),
        max_length=model_config.max_target_positions,
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin", [220, eot])),
        suppress_tokens=list(ct2_config.get("suppress_ids", [])),
        alignment_heads=[list(h) for h in ct2_config.get("alignment_heads", [])],
        is_multilingual=len(lang_to_id) > 1,
        lang_to_id=lang_to_id,
        task_to_id={
            "transcribe": ids.get("<|transcribe|>"),
            "translate": ids.get("<|translate|>"),
        },
        no_timestamps_token_id=ids.get("<|notimestamps|>"),
        prev_sot_token_id=ids.get("<|startofprev|>"),
        max_initial_timestamp_index=50,
        return_timestamps=False,
    )
    return gen


def convert_ct2_whisper(
    model_parts: list[Path],
    ct2_config_path: Path,
    tokenizer_json_path: Path,
    out_dir: Path,
) -> dict[str, Any]:
    """Convert a (possibly split) CTranslate2 Whisper into a transformers folder.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Writes ``model.safetensors``, ``config.json``, ``generation_config.json`` and the
    ``WhisperProcessor`` files (80-bin feature extractor, the shipped tokenizer.json).

    Args:
        model_parts: The ``model.bin`` parts, in order.
        ct2_config_path: The CTranslate2 ``config.json``.
        tokenizer_json_path: The ``tokenizer.json`` shipped with the model.
        out_dir: Folder to write (created; should be a temporary folder that the
            caller renames into place).

    Returns:
        A summary: parameter count and the config dimensions.
    """
    from transformers import WhisperFeatureExtractor, WhisperProcessor, WhisperTokenizer

    spec, variables = read_ct2_model(model_parts)
    if spec != "WhisperSpec":
        raise CompanionError(f"Expected a CTranslate2 WhisperSpec, found {spec!r}.")
    ct2_config = json.loads(Path(ct2_config_path).read_text())
    tokenizer_json = json.loads(Path(tokenizer_json_path).read_text())
    model = build_whisper_model(variables, ct2_config)
    model.generation_config = whisper_generation_config(
        model.config, tokenizer_json, ct2_config
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    feature_extractor = WhisperFeatureExtractor(
        feature_size=model.config.num_mel_bins
    )
    tokenizer = WhisperTokenizer(
        tokenizer_file=str(tokenizer_json_path),
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=model.config.max_target_positions,
    )
    WhisperProcessor(
        feature_extractor=feature_extractor, tokenizer=tokenizer
    ).save_pretrained(out_dir)
    cfg = model.config
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "encoder_layers": cfg.encoder_layers,
        "decoder_layers": cfg.decoder_layers,
        "d_model": cfg.d_model,
        "vocab_size": cfg.vocab_size,
    }
