"""The SpeechLLM's components, each built on its own: speech encoder, projector, decoder.

Model builders (:func:`lib.build.speechllm.build_speechllm`) assemble them; later chapters work
on each one (the decoder's layers are a plain ``nn.ModuleList``, see
:func:`find_decoder_layers`). Stage: building the SpeechLLM. Explained in chapter 1
(book/01_building_a_speechllm.ipynb).
"""

from __future__ import annotations

import contextlib
import numbers
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from lib.assets import resolve_model
from lib.errors import CompanionError


# ----------------------------------------------------------------------------------------
# Encoder
# ----------------------------------------------------------------------------------------


class SpeechEncoder(nn.Module):
    """A transformers speech encoder that maps 16 kHz waveforms to frame features.

    Whisper encoders run without the 30 s padding of the stock forward (conv1 -> conv2 ->
    positions[:T] -> layers -> layer norm), which is ~6x faster on short clips and gives
    nearly the same features. WavLM, wav2vec2 and HuBERT go through their own forward with
    an attention mask. All of them produce 50 frames per second.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).
    """

    frame_rate_hz: float = 50.0

    def __init__(self, model: nn.Module, feature_extractor: Any, kind: str, name: str) -> None:
        super().__init__()
        self.model = model
        self.feature_extractor = feature_extractor
        self.kind = kind
        self.name = name

    @property
    def hidden_size(self) -> int:
        """Width of the features the encoder emits."""
        return encoder_width(self.model.config)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def forward(self, waves: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode a batch of mono 16 kHz waveforms.

        Args:
            waves: float32 arrays of any lengths.

        Returns:
            ``(features, lengths)``: ``[B, T, D]`` float features (padded) and the number of
            valid frames of each utterance.
        """
        if len(waves) == 0:
            raise CompanionError("encoder got an empty batch: pass at least one waveform")
        for w in waves:
            if len(w) == 0:
                raise CompanionError("encoder got a zero-length waveform: drop empty audio first")
        if self.kind == "whisper":
            return self._whisper_forward(waves)
        return self._ssl_forward(waves)

    def _whisper_forward(self, waves: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Whisper's encoder on short clips, each clip's features exactly its own.

        Every clip's log-mel is computed on its own, then the batch is padded with zeros,
        the padded conv1 outputs are zeroed again (so conv2 at a clip's last frame sees the
        same zero padding as a one-clip run), and attention is masked to each clip's frames.
        A clip's features therefore do not depend on the other clips of its batch.
        Clips longer than Whisper's 30 s window are encoded in 30 s chunks whose frames
        are concatenated (each chunk is encoded independently, as Whisper itself does).
        """
        fe = self.feature_extractor
        short = [len(w) for w in waves if len(w) < fe.n_fft]
        if short:
            raise CompanionError(
                f"a clip of {short[0]} samples is shorter than the encoder's "
                f"{fe.n_fft}-sample window: drop clips under 0.1 s")
        pieces, owner = [], []
        for i, w in enumerate(waves):
            for start in range(0, len(w), fe.n_samples):
                if start and len(w) - start < fe.n_fft:
                    break  # a tail under 25 ms past a 30 s window carries no speech
                pieces.append(w[start:start + fe.n_samples])
                owner.append(i)
        dtype = next(self.model.parameters()).dtype
        with torch.autocast("cpu", enabled=False):  # the log-mel stays float32
            mels = [fe(p, sampling_rate=fe.sampling_rate, return_tensors="pt",
                       padding="longest").input_features[0] for p in pieces]  # [n_mels, T]
        n_mel = torch.tensor([m.shape[1] for m in mels])
        feats = torch.zeros(len(mels), mels[0].shape[0], int(n_mel.max()))
        for j, m in enumerate(mels):
            feats[j, :, : m.shape[1]] = m
        feats = feats.to(self.device, dtype=dtype)
        enc = self.model
        x = nn.functional.gelu(enc.conv1(feats))
        frame = torch.arange(x.shape[2], device=x.device)
        x = x * (frame[None, :] < n_mel.to(x.device)[:, None])[:, None, :].to(x.dtype)
        x = nn.functional.gelu(enc.conv2(x)).permute(0, 2, 1)
        x = x + enc.embed_positions.weight[: x.shape[1]]
        lengths = torch.div(n_mel + 1, 2, rounding_mode="floor").clamp(max=x.shape[1])
        valid = torch.arange(x.shape[1])[None, :] < lengths[:, None]  # [B, T]
        mask = None
        if not bool(valid.all()):
            mask = torch.zeros(valid.shape, dtype=x.dtype)
            mask = mask.masked_fill(~valid, torch.finfo(x.dtype).min)
            mask = mask[:, None, None, :].to(x.device)  # [B, 1, 1, T], added to the scores
        for layer in enc.layers:
            out = layer(x, mask)
            x = out[0] if isinstance(out, tuple) else out
        x = enc.layer_norm(x)
        # Reassemble the chunks of each clip.
        per_clip: list[list[torch.Tensor]] = [[] for _ in waves]
        for j, i in enumerate(owner):
            per_clip[i].append(x[j, : int(lengths[j])])
        joined = [torch.cat(parts, 0) for parts in per_clip]
        out_len = torch.tensor([t.shape[0] for t in joined])
        out_x = x.new_zeros(len(joined), int(out_len.max()), x.shape[2])
        for i, t in enumerate(joined):
            out_x[i, : t.shape[0]] = t
        return out_x, out_len.to(x.device)

    def _ssl_forward(self, waves: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        fe = self.feature_extractor
        batch = fe(list(waves), sampling_rate=16000, return_tensors="pt", padding=True,
                   return_attention_mask=True)
        values = batch.input_values.to(self.device, dtype=next(self.model.parameters()).dtype)
        mask = batch.attention_mask.to(self.device)
        frames = self.model._get_feat_extract_output_lengths(torch.tensor([len(w) for w in waves]))
        if int(frames.min()) < 1:
            i = int(frames.argmin())
            raise CompanionError(
                f"a clip of {len(waves[i])} samples is shorter than one frame of the "
                f"encoder's convolutional front end ({self.name}): drop clips under 0.1 s")
        out = self.model(values, attention_mask=mask).last_hidden_state
        lengths = self.model._get_feat_extract_output_lengths(mask.sum(-1))
        return out, lengths.clamp(max=out.shape[1]).long()


SPEECH_ENCODERS = {"whisper": "whisper", "wavlm": "ssl", "wav2vec2": "ssl", "hubert": "ssl",
                   "data2vec-audio": "ssl"}  # model_type -> how SpeechEncoder runs it


def encoder_kind(name_or_path: str, config: Any) -> str:
    """``"whisper"`` or ``"ssl"`` for a speech encoder's config; one line for anything else.

    Raises:
        CompanionError: the checkpoint is not a Whisper / WavLM / wav2vec2 / HuBERT model
            (e.g. a text LLM given as the encoder).
    """
    model_type = getattr(config, "model_type", None)
    if model_type in SPEECH_ENCODERS:
        return SPEECH_ENCODERS[model_type]
    archs = getattr(config, "architectures", None) or []
    what = ("a text language model: name it in decoders"
            if any(a.endswith("ForCausalLM") for a in archs) else "not a speech encoder")
    raise CompanionError(
        f"encoder '{name_or_path}' is a {model_type} model, {what}; use a Whisper, WavLM, "
        "wav2vec2 or HuBERT checkpoint as the encoder (e.g. whisper-base)"
    )


ENCODER_VARIANTS = {
    "half": "the encoder's first half of blocks, then its final norm (a shallower encoder)",
    "random": "the encoder's architecture with seeded random frozen weights (the null: an "
              "encoder that learned nothing)",
}
"""What ``<encoder>@<variant>`` names (chapter 6 sets encoders beside each other)."""

RANDOM_ENCODER_SEED = 20260
"""The seed of an ``@random`` encoder's weights (part of its features' key by weights)."""


def encoder_variant(name: str) -> tuple[str, str | None]:
    """``("whisper-base", "half")`` for ``"whisper-base@half"``; ``(name, None)`` without
    ``@``.

    Raises:
        CompanionError: a variant that is not one of :data:`ENCODER_VARIANTS`.
    """
    base, at, variant = str(name).partition("@")
    if not at:
        return base, None
    if variant not in ENCODER_VARIANTS:
        raise CompanionError(f"encoder {name!r}: unknown variant @{variant}; use "
                             f"{', '.join('@' + v for v in ENCODER_VARIANTS)} or none")
    return base, variant


def _keep_first_half(model: nn.Module, kind: str) -> None:
    """Drop the second half of the encoder's blocks in place (its final norm is kept for
    Whisper, so the features stay on the scale the projector expects)."""
    owner = model if kind == "whisper" else model.encoder
    layers = owner.layers
    keep = max(1, len(layers) // 2)
    owner.layers = nn.ModuleList(list(layers)[:keep])
    if hasattr(model.config, "encoder_layers"):
        model.config.encoder_layers = keep
    if hasattr(model.config, "num_hidden_layers"):
        model.config.num_hidden_layers = keep


def build_encoder(name_or_path: str, freeze: bool = True) -> SpeechEncoder:
    """Load a speech encoder: an offline alias, a local folder or a hub id.

    Whisper checkpoints contribute only their encoder; WavLM / wav2vec2 / HuBERT load as
    base models. Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Args:
        name_or_path: e.g. ``"whisper-base"``, ``"microsoft/wavlm-large"``, a folder; with
            ``@half`` or ``@random`` a variant of it (:data:`ENCODER_VARIANTS`).
        freeze: stop gradients into the encoder (the paper keeps it frozen).

    Raises:
        CompanionError: the name is not a model, or the model is not a speech encoder.
    """
    from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

    base, variant = encoder_variant(name_or_path)
    path = resolve_model(base)
    config = AutoConfig.from_pretrained(path)
    kind = encoder_kind(base, config)  # before the feature extractor: an LLM has none
    feature_extractor = AutoFeatureExtractor.from_pretrained(path)
    if variant == "random":  # the architecture, seeded random weights: the null encoder
        with torch.random.fork_rng():
            torch.manual_seed(RANDOM_ENCODER_SEED)
            if kind == "whisper":
                from transformers import WhisperModel

                model = WhisperModel(config).get_encoder()
            else:
                model = AutoModel.from_config(config)
    elif kind == "whisper":
        from transformers import WhisperModel

        model = WhisperModel.from_pretrained(path).get_encoder()
    else:
        model = AutoModel.from_pretrained(path)
    if variant == "half":
        _keep_first_half(model, kind)
    model.eval()
    if freeze:
        model.requires_grad_(False)
    return SpeechEncoder(model, feature_extractor, kind, name_or_path)


# ----------------------------------------------------------------------------------------
# Projector
# ----------------------------------------------------------------------------------------


class Projector(nn.Module):
    """Stack ``k`` consecutive encoder frames, then a two-layer MLP (GELU) into the LLM width.

    With ``k = 5`` the 50 Hz encoder frames become 10 Hz LLM positions, as in the paper's
    SpeechBrain recipe. A tail shorter than ``k`` frames is zero-padded.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).
    """

    def __init__(self, in_dim: int, out_dim: int, stack: int = 5, hidden: int = 1024) -> None:
        super().__init__()
        for name, value, hint in (("projector_stack", stack, "paper: 5"),
                                  ("projector_hidden", hidden, "e.g. 1024")):
            if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
                    or value < 1):
                raise CompanionError(f"{name}={value!r}: use a positive integer ({hint})")
        stack, hidden = int(stack), int(hidden)
        self.stack = stack
        self.net = nn.Sequential(
            nn.Linear(in_dim * stack, hidden), nn.GELU(), nn.Linear(hidden, out_dim)
        )

    def forward(self, feats: torch.Tensor,
                lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Map ``[B, T, D]`` features to ``[B, ceil(T/k), out_dim]`` and their lengths."""
        b, t, d = feats.shape
        k = self.stack
        pad = (-t) % k
        if pad:
            feats = nn.functional.pad(feats, (0, 0, 0, pad))
        x = feats.reshape(b, (t + pad) // k, d * k)
        out_lengths = torch.div(lengths + k - 1, k, rounding_mode="floor")
        return self.net(x), out_lengths


# ----------------------------------------------------------------------------------------
# Decoder
# ----------------------------------------------------------------------------------------


def load_decoder(name_or_path: str, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, Any]:
    """Load any transformers causal LM and its tokenizer (alias, folder or hub id).

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Raises:
        CompanionError: the name is not a model (e.g. a folder without config.json), the
            model is a speech encoder, or a local folder has no tokenizer files.
    """
    from pathlib import Path

    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(name_or_path)
    model_type = AutoConfig.from_pretrained(path).model_type
    if model_type in SPEECH_ENCODERS:
        raise CompanionError(
            f"decoder '{name_or_path}' is a {model_type} speech model: use a causal LM as the "
            "decoder (smollm2-135m, gemma3-270m, a Llama / Qwen / Gemma folder or hub id)")
    tokenizer_files = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                       "vocab.json", "vocab.txt", "spiece.model")
    if Path(path).is_dir() and not any((Path(path) / f).is_file() for f in tokenizer_files):
        raise CompanionError(
            f"decoder folder '{name_or_path}' has no tokenizer files (e.g. tokenizer.json): "
            "save the tokenizer there too (tokenizer.save_pretrained(folder))")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return model, tokenizer


def base_model(model: nn.Module) -> nn.Module:
    """The causal LM under a peft wrapper (``get_base_model()``), else the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_body(model: nn.Module) -> nn.Module:
    """The transformer body of a causal LM (what holds ``.layers``), through a peft wrapper.

    The one lookup the library uses: ``get_base_model()`` when peft wraps the model, then
    ``get_decoder()`` (Llama, Qwen2, Gemma), else ``.model``, else the model itself (already
    a body). Explained in chapter 1 (book/01_building_a_speechllm.ipynb).
    """
    base = base_model(model)
    if hasattr(base, "get_decoder"):
        return base.get_decoder()
    return getattr(base, "model", base)


def encoder_width(config: Any) -> int:
    """Width of the features a speech encoder emits: ``d_model`` (Whisper) or
    ``hidden_size`` (WavLM, wav2vec 2.0, HuBERT), from its transformers config."""
    return int(getattr(config, "d_model", None) or config.hidden_size)


def find_decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ``nn.ModuleList`` of transformer blocks inside a causal LM (peft-wrapped or not).

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Raises:
        CompanionError: when no such list can be found (name the model class).
    """
    layers = getattr(decoder_body(model), "layers", None)
    if isinstance(layers, nn.ModuleList) and len(layers) > 0:
        return layers
    raise CompanionError(
        f"cannot find the decoder layers of {type(model).__name__}: expected "
        "model.get_decoder().layers (an nn.ModuleList) as in Llama, Qwen2, Gemma"
    )


@contextlib.contextmanager
def eval_mode(*modules: Any) -> Iterator[None]:
    """Run ``modules`` in eval mode (dropout off) and give back each submodule's own mode.

    The one switch every scoring and evaluation entry point uses (redundancy scores, the
    ablation, decoding, the audio-reliance check): peft creates its LoRA modules in training
    mode, so without it a score would carry dropout noise. Modes are restored per submodule,
    so a model whose parts were in mixed modes gets exactly those back, also on an error.
    ``None`` entries and non-modules (e.g. a tokenizer) are ignored. Explained in chapter 2
    (book/02_where_redundancy_lies.ipynb).
    """
    saved: dict[int, tuple[nn.Module, bool]] = {}
    for m in modules:
        if isinstance(m, nn.Module):
            for sub in m.modules():
                saved.setdefault(id(sub), (sub, sub.training))
    try:
        for m in modules:
            if isinstance(m, nn.Module):
                m.eval()
        yield
    finally:
        for sub, mode in saved.values():
            sub.training = mode


# ------------------------------------------------------------------ layers and configs


def layers_owner(decoder: nn.Module) -> nn.Module:
    """The module whose ``.layers`` attribute is the decoder's ModuleList."""
    layers = find_decoder_layers(decoder)
    inner = decoder_body(decoder)
    if getattr(inner, "layers", None) is not layers:
        raise CompanionError(f"cannot find the module holding the layers of "
                             f"{type(decoder).__name__}")
    return inner


def decoder_configs(decoder: nn.Module, owner: nn.Module) -> list[Any]:
    """The distinct configs of a decoder, of the module holding its layers, and of the
    model under its adapters: what layer surgery updates together."""
    out = []
    for m in (decoder, owner, getattr(decoder, "get_base_model", lambda: None)()):
        cfg = getattr(m, "config", None) if m is not None else None
        if cfg is not None and all(cfg is not c for c in out):
            out.append(cfg)
    return out


def pruned_layers(decoder: nn.Module) -> list[int]:
    """The original indices of the layers :func:`lib.prune.surgery.remove_layers` took out ([] if none)."""
    cfg = decoder_configs(decoder, layers_owner(decoder))[0]
    return list(getattr(cfg, "pruned_layers", None) or [])
