"""Building a SLAM-style SpeechLLM: speech encoder -> projector -> LLM decoder.

Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

The three parts stay separate modules so that later chapters can operate on each one:
``model.encoder`` (frozen by default, its features cacheable), ``model.projector`` (frame
stacking + a two-layer MLP) and ``model.decoder`` (any transformers causal LM, optionally
wrapped by peft LoRA). ``model.decoder_layers`` is the plain ``nn.ModuleList`` of decoder
blocks: pruning (a later chapter) is visible surgery on that list.

Sequence layout fed to the decoder, per utterance::

    [prefix: "<audio>"] [projected audio frames] [suffix: "</audio> " + instruction] [target + eos]

The loss covers only the target tokens (and the closing eos).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from lib.assets import resolve_model
from lib.errors import CompanionError

if TYPE_CHECKING:
    from lib.config import ModelConfig

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
        cfg = self.model.config
        return int(getattr(cfg, "d_model", None) or cfg.hidden_size)

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
        fe = self.feature_extractor
        max_samples = fe.n_samples
        waves = [w[:max_samples] for w in waves]
        longest = max(len(w) for w in waves)
        # Pad to the longest clip (not 30 s); hop 160 -> 100 mel frames/s, convs halve it.
        padded = math.ceil(longest / fe.hop_length) * fe.hop_length
        feats = fe(
            list(waves), sampling_rate=fe.sampling_rate, return_tensors="pt",
            padding="max_length", max_length=padded, truncation=True,
        ).input_features.to(self.device, dtype=next(self.model.parameters()).dtype)
        enc = self.model
        x = nn.functional.gelu(enc.conv1(feats))
        x = nn.functional.gelu(enc.conv2(x)).permute(0, 2, 1)
        x = x + enc.embed_positions.weight[: x.shape[1]]
        for layer in enc.layers:
            out = layer(x, None)
            x = out[0] if isinstance(out, tuple) else out
        x = enc.layer_norm(x)
        n_mel = torch.tensor([math.ceil(len(w) / fe.hop_length) for w in waves])
        lengths = torch.div(n_mel + 1, 2, rounding_mode="floor").clamp(max=x.shape[1])
        return x, lengths.to(x.device)

    def _ssl_forward(self, waves: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        fe = self.feature_extractor
        batch = fe(list(waves), sampling_rate=16000, return_tensors="pt", padding=True,
                   return_attention_mask=True)
        values = batch.input_values.to(self.device, dtype=next(self.model.parameters()).dtype)
        mask = batch.attention_mask.to(self.device)
        out = self.model(values, attention_mask=mask).last_hidden_state
        lengths = self.model._get_feat_extract_output_lengths(mask.sum(-1))
        return out, lengths.clamp(max=out.shape[1]).long()


def build_encoder(name_or_path: str, freeze: bool = True) -> SpeechEncoder:
    """Load a speech encoder: an offline alias, a local folder or a hub id.

    Whisper checkpoints contribute only their encoder; WavLM / wav2vec2 / HuBERT load as
    base models. Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Args:
        name_or_path: e.g. ``"whisper-base"``, ``"microsoft/wavlm-large"``, a folder.
        freeze: stop gradients into the encoder (the paper keeps it frozen).
    """
    from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

    path = resolve_model(name_or_path)
    config = AutoConfig.from_pretrained(path)
    feature_extractor = AutoFeatureExtractor.from_pretrained(path)
    if config.model_type == "whisper":
        from transformers import WhisperModel

        model = WhisperModel.from_pretrained(path).get_encoder()
        kind = "whisper"
    elif config.model_type in {"wavlm", "wav2vec2", "hubert", "data2vec-audio"}:
        model = AutoModel.from_pretrained(path)
        kind = "ssl"
    else:
        raise CompanionError(
            f"encoder '{name_or_path}' is a {config.model_type} model: use a Whisper, WavLM, "
            "wav2vec2 or HuBERT checkpoint"
        )
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
        if stack < 1:
            raise CompanionError(f"projector_stack={stack}: use a positive integer (paper: 5)")
        self.stack = stack
        self.net = nn.Sequential(
            nn.Linear(in_dim * stack, hidden), nn.GELU(), nn.Linear(hidden, out_dim)
        )

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return model, tokenizer


def find_decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ``nn.ModuleList`` of transformer blocks inside a causal LM (peft-wrapped or not).

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Raises:
        CompanionError: when no such list can be found (name the model class).
    """
    base = model
    if hasattr(base, "get_base_model"):
        base = base.get_base_model()
    inner = base.get_decoder() if hasattr(base, "get_decoder") else getattr(base, "model", None)
    layers = getattr(inner, "layers", None)
    if isinstance(layers, nn.ModuleList) and len(layers) > 0:
        return layers
    raise CompanionError(
        f"cannot find the decoder layers of {type(model).__name__}: expected "
        "model.get_decoder().layers (an nn.ModuleList) as in Llama, Qwen2, Gemma"
    )


# ----------------------------------------------------------------------------------------
# The SpeechLLM
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prompt:
    """The text around the audio embeddings.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).
    """

    audio_start: str = "<audio>"  # boundary marker before the audio embeddings
    audio_end: str = "</audio>"  # boundary marker after them
    instruction: str = " Transcribe the audio:"  # the task, read after the audio


class SpeechLLM(nn.Module):
    """Encoder -> projector -> decoder, with the prompt and the loss on target tokens only.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).
    """

    def __init__(
        self,
        encoder: SpeechEncoder | None,
        projector: Projector,
        decoder: nn.Module,
        tokenizer: Any,
        prompt: Prompt = Prompt(),
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = projector
        self.decoder = decoder
        self.tokenizer = tokenizer
        self.prompt = prompt
        tok = tokenizer
        self._prefix_ids = tok(prompt.audio_start, add_special_tokens=True).input_ids
        self._suffix_ids = tok(prompt.audio_end + prompt.instruction,
                               add_special_tokens=False).input_ids
        self.eos_id = int(tok.eos_token_id)
        self.pad_id = int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)

    @property
    def decoder_layers(self) -> nn.ModuleList:
        """The decoder's transformer blocks, as a plain ``nn.ModuleList``."""
        return find_decoder_layers(self.decoder)

    @property
    def device(self) -> torch.device:
        return next(self.projector.parameters()).device

    # -- building the decoder input ---------------------------------------------------------

    def _embed(self, ids: list[int]) -> torch.Tensor:
        table = self.decoder.get_input_embeddings()
        return table(torch.tensor(ids, device=self.device, dtype=torch.long))

    def build_inputs(
        self,
        feats: torch.Tensor,
        feat_lengths: torch.Tensor,
        targets: Sequence[str] | None = None,
        left_pad: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Assemble ``inputs_embeds``, ``attention_mask`` and (with targets) ``labels``.

        Args:
            feats: encoder features ``[B, T, D]``.
            feat_lengths: valid frames per utterance.
            targets: transcripts to learn (training); ``None`` for generation.
            left_pad: pad on the left (generation) instead of the right (training).

        Returns:
            A dict of decoder inputs; ``audio_mask`` marks the audio positions, ``text_mask``
            the prompt and target text positions (both exclude padding).
        """
        audio, audio_lengths = self.projector(feats.to(self.device), feat_lengths.to(self.device))
        emb_dtype = self.decoder.get_input_embeddings().weight.dtype
        audio = audio.to(emb_dtype)
        prefix = self._embed(self._prefix_ids)
        suffix = self._embed(self._suffix_ids)
        rows, labels, kinds = [], [], []
        for i in range(audio.shape[0]):
            a = audio[i, : int(audio_lengths[i])]
            parts = [prefix, a, suffix]
            lab = [-100] * (len(self._prefix_ids) + a.shape[0] + len(self._suffix_ids))
            kind = [2] * len(self._prefix_ids) + [1] * a.shape[0] + [2] * len(self._suffix_ids)
            if targets is not None:
                text = targets[i].strip()
                if not text:
                    raise CompanionError(
                        f"empty transcript in training batch (item {i}): drop utterances "
                        "without text"
                    )
                tid = self.tokenizer(" " + text, add_special_tokens=False).input_ids
                tid = tid + [self.eos_id]
                parts.append(self._embed(tid))
                lab += tid
                kind += [2] * len(tid)
            rows.append(torch.cat(parts, 0))
            labels.append(lab)
            kinds.append(kind)
        longest = max(r.shape[0] for r in rows)
        dim = rows[0].shape[1]
        embeds = torch.zeros(len(rows), longest, dim, device=self.device, dtype=emb_dtype)
        mask = torch.zeros(len(rows), longest, device=self.device, dtype=torch.long)
        lab_t = torch.full((len(rows), longest), -100, device=self.device, dtype=torch.long)
        kind_t = torch.zeros(len(rows), longest, device=self.device, dtype=torch.long)
        for i, (r, lab, kind) in enumerate(zip(rows, labels, kinds)):
            n = r.shape[0]
            sl = slice(longest - n, longest) if left_pad else slice(0, n)
            embeds[i, sl] = r
            mask[i, sl] = 1
            lab_t[i, sl] = torch.tensor(lab, device=self.device)
            kind_t[i, sl] = torch.tensor(kind, device=self.device)
        out = {
            "inputs_embeds": embeds,
            "attention_mask": mask,
            "audio_mask": kind_t == 1,
            "text_mask": kind_t == 2,
        }
        if targets is not None:
            out["labels"] = lab_t
        return out

    # -- training and decoding ----------------------------------------------------------------

    def forward(self, feats: torch.Tensor, feat_lengths: torch.Tensor,
                targets: Sequence[str]) -> torch.Tensor:
        """Training loss (see :meth:`loss`); ``forward`` so that DDP can wrap the model."""
        return self.loss(feats, feat_lengths, targets)

    def loss(self, feats: torch.Tensor, feat_lengths: torch.Tensor,
             targets: Sequence[str]) -> torch.Tensor:
        """Mean cross-entropy over target tokens (prompt and audio positions excluded).

        Logits are computed only where a label exists: a 262k-word vocabulary (Gemma) would
        otherwise dominate the step.
        """
        batch = self.build_inputs(feats, feat_lengths, targets)
        labels = batch["labels"]
        # Position t predicts token t+1: keep positions whose next label is a target.
        keep = torch.zeros_like(labels, dtype=torch.bool)
        keep[:, :-1] = labels[:, 1:] != -100
        body = self.decoder.get_decoder() if hasattr(self.decoder, "get_decoder") else None
        out = body(inputs_embeds=batch["inputs_embeds"], attention_mask=batch["attention_mask"])
        hidden = out.last_hidden_state[keep]
        logits = self.decoder.get_output_embeddings()(hidden).float()
        softcap = getattr(self.decoder.config, "final_logit_softcapping", None)
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        return nn.functional.cross_entropy(logits, labels[:, 1:][keep[:, :-1]])

    @torch.no_grad()
    def generate(self, feats: torch.Tensor, feat_lengths: torch.Tensor,
                 max_new_tokens: int = 64) -> list[str]:
        """Batched greedy decoding with the KV cache (transformers ``generate``)."""
        batch = self.build_inputs(feats, feat_lengths, None, left_pad=True)
        out = self.decoder.generate(
            inputs_embeds=batch["inputs_embeds"],
            attention_mask=batch["attention_mask"],
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=self.eos_id,
            pad_token_id=self.pad_id,
        )
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]

    # -- trainable state ------------------------------------------------------------------------

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the parameters that train (projector, LoRA): what checkpoints store."""
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()
                if k in names}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load what :meth:`trainable_state_dict` saved; every key must match."""
        own = dict(self.named_parameters())
        missing = [k for k, p in own.items() if p.requires_grad and k not in state]
        unknown = [k for k in state if k not in own]
        if missing or unknown:
            raise CompanionError(
                f"checkpoint does not fit this model ({len(missing)} missing, {len(unknown)} "
                "unexpected tensors): it was trained with another configuration; delete it "
                "or point to the matching run"
            )
        with torch.no_grad():
            for k, v in state.items():
                own[k].copy_(v.to(own[k].device, own[k].dtype))


def add_lora(decoder: nn.Module, rank: int, alpha: int, dropout: float,
             target_modules: Sequence[str]) -> nn.Module:
    """Wrap a decoder with peft LoRA adapters; the base weights are frozen.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).
    """
    from peft import LoraConfig, get_peft_model

    if rank <= 0:
        decoder.requires_grad_(False)
        return decoder
    cfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout,
                     target_modules=list(target_modules), bias="none")
    return get_peft_model(decoder, cfg)


@contextlib.contextmanager
def pretrained_decoder(model: SpeechLLM) -> Iterator[SpeechLLM]:
    """Inside the block, ``model``'s decoder runs as the pretrained LLM (LoRA switched off).

    The same weights, device and dtype: no second copy of the decoder is loaded.
    Explained in chapter 2 (book/02_where_redundancy_lies.ipynb).
    """
    if hasattr(model.decoder, "disable_adapter"):
        with model.decoder.disable_adapter():
            yield model
    else:  # no adapters: the decoder is the pretrained LLM
        yield model


def lora_update_norms(model: SpeechLLM) -> pd.DataFrame:
    """How far training moved each LoRA-adapted weight: ``||scale * B A||_F / ||W||_F``.

    One row per adapted linear layer: ``layer`` (decoder layer index, -1 if outside the
    layers), ``module`` (e.g. ``q_proj``), ``relative_update``. Empty when the decoder has
    no adapters. Explained in chapter 2 (book/02_where_redundancy_lies.ipynb).
    """
    import re

    rows = []
    for name, mod in model.decoder.named_modules():
        lora_a, lora_b = getattr(mod, "lora_A", None), getattr(mod, "lora_B", None)
        base = getattr(mod, "base_layer", None)
        if not isinstance(lora_a, nn.ModuleDict) or base is None:
            continue
        w = base.weight.detach().float()
        for key in lora_a:
            delta = (lora_b[key].weight.detach().float() @ lora_a[key].weight.detach().float()
                     * float(mod.scaling[key]))
            m = re.search(r"\.layers\.(\d+)\.", name)
            rows.append({"layer": int(m.group(1)) if m else -1,
                         "module": name.rsplit(".", 1)[-1],
                         "relative_update": float(delta.norm() / w.norm())})
    return pd.DataFrame(rows, columns=["layer", "module", "relative_update"])


def count_parameters(model: SpeechLLM) -> dict[str, int]:
    """Parameters of encoder, projector and decoder (LoRA adapters counted apart).

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).
    """
    def n(module: nn.Module | None, pred=lambda name: True) -> int:
        if module is None:
            return 0
        return sum(p.numel() for name, p in module.named_parameters() if pred(name))

    return {
        "encoder": n(model.encoder),
        "projector": n(model.projector),
        "decoder": n(model.decoder, lambda name: "lora_" not in name),
        "lora": n(model.decoder, lambda name: "lora_" in name),
    }


def build_speechllm(cfg: "ModelConfig", device: str = "cpu", with_encoder: bool = False,
                    encoder: SpeechEncoder | None = None, seed: int = 0) -> SpeechLLM:
    """Build a SpeechLLM from a :class:`lib.config.ModelConfig` (a named preset's model).

    The projector is freshly initialised (seeded); LoRA is added when ``lora_rank > 0``.
    On a GPU the frozen decoder is held in bf16; trainable weights stay fp32.
    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Args:
        cfg: which encoder/decoder and projector/LoRA sizes.
        device: ``cpu`` or ``cuda[:N]``.
        with_encoder: also load the encoder (not needed when features are cached).
        encoder: an encoder already loaded (shared across decoders).
        seed: initialisation seed of projector and LoRA.
    """
    from transformers import AutoConfig

    dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    if encoder is None and with_encoder:
        encoder = build_encoder(cfg.encoder)
    enc_cfg = AutoConfig.from_pretrained(resolve_model(cfg.encoder))
    enc_dim = int(getattr(enc_cfg, "d_model", None) or enc_cfg.hidden_size)
    decoder, tokenizer = load_decoder(cfg.decoder, dtype=dtype)
    decoder.requires_grad_(False)
    torch.manual_seed(seed)
    projector = Projector(enc_dim, decoder.config.hidden_size, cfg.projector_stack,
                          cfg.projector_hidden)
    if cfg.lora_rank > 0:
        missing = [t for t in cfg.lora_targets
                   if not any(n.endswith(t) for n, _ in decoder.named_modules())]
        if missing:
            raise CompanionError(
                f"lora target(s) {missing} not found in decoder '{cfg.decoder}': name "
                "linear layers it has (e.g. q_proj, v_proj)")
        decoder = add_lora(decoder, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout,
                           cfg.lora_targets)
    model = SpeechLLM(encoder, projector, decoder, tokenizer)
    model.projector.to(device)
    model.decoder.to(device)
    if encoder is not None:
        encoder.to(device)
    return model
