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
import numbers
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


def build_encoder(name_or_path: str, freeze: bool = True) -> SpeechEncoder:
    """Load a speech encoder: an offline alias, a local folder or a hub id.

    Whisper checkpoints contribute only their encoder; WavLM / wav2vec2 / HuBERT load as
    base models. Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Args:
        name_or_path: e.g. ``"whisper-base"``, ``"microsoft/wavlm-large"``, a folder.
        freeze: stop gradients into the encoder (the paper keeps it frozen).

    Raises:
        CompanionError: the name is not a model, or the model is not a speech encoder.
    """
    from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

    path = resolve_model(name_or_path)
    config = AutoConfig.from_pretrained(path)
    kind = encoder_kind(name_or_path, config)  # before the feature extractor: an LLM has none
    feature_extractor = AutoFeatureExtractor.from_pretrained(path)
    if kind == "whisper":
        from transformers import WhisperModel

        model = WhisperModel.from_pretrained(path).get_encoder()
    else:
        model = AutoModel.from_pretrained(path)
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
                tid = self.target_ids(text)
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

    def target_ids(self, text: str) -> list[int]:
        """The token ids the model learns for one transcript: `` text`` then eos."""
        return self.tokenizer(" " + text.strip(), add_special_tokens=False).input_ids + [
            self.eos_id]

    def forward(self, feats: torch.Tensor, feat_lengths: torch.Tensor,
                targets: Sequence[str], reduction: str = "mean") -> torch.Tensor:
        """Training loss (see :meth:`loss`); ``forward`` so that DDP can wrap the model."""
        return self.loss(feats, feat_lengths, targets, reduction)

    def loss(self, feats: torch.Tensor, feat_lengths: torch.Tensor,
             targets: Sequence[str], reduction: str = "mean") -> torch.Tensor:
        """Cross-entropy over target tokens (prompt and audio positions excluded).

        Logits are computed only where a label exists: a 262k-word vocabulary (Gemma) would
        otherwise dominate the step. No key/value cache is built (``use_cache=False``).

        Args:
            reduction: ``"mean"`` per target token, or ``"sum"`` (training divides the sum
                by the target tokens of all its micro-batches, so that gradient
                accumulation weights tokens, not micro-batches).
        """
        batch = self.build_inputs(feats, feat_lengths, targets)
        labels = batch["labels"]
        # Position t predicts token t+1: keep positions whose next label is a target.
        keep = torch.zeros_like(labels, dtype=torch.bool)
        keep[:, :-1] = labels[:, 1:] != -100
        body = self.decoder.get_decoder() if hasattr(self.decoder, "get_decoder") else None
        out = body(inputs_embeds=batch["inputs_embeds"], attention_mask=batch["attention_mask"],
                   use_cache=False)
        hidden = out.last_hidden_state[keep]
        logits = self.decoder.get_output_embeddings()(hidden).float()
        softcap = getattr(self.decoder.config, "final_logit_softcapping", None)
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        return nn.functional.cross_entropy(logits, labels[:, 1:][keep[:, :-1]],
                                           reduction=reduction)

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
    encoder_kind(cfg.encoder, enc_cfg)  # an LLM as encoder fails here, in one line
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
