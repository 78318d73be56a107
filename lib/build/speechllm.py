"""Building a SLAM-style SpeechLLM: speech encoder -> projector -> LLM decoder.

Explained in chapter 1 (book/01_building_a_speechllm.ipynb). Stage: building the SpeechLLM;
the component builders (encoder, projector, decoder) are in :mod:`lib.build.components`.

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
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch
from torch import nn

from lib.assets import resolve_model
from lib.clock import stage
from lib.build.components import (Projector, SpeechEncoder, build_encoder, decoder_body,
                                  encoder_kind, encoder_variant, encoder_width,
                                  find_decoder_layers,
                                  load_decoder)
from lib.errors import CompanionError
from lib.tasks import ASR, Prompt, Task

if TYPE_CHECKING:
    from lib.config.sections import ModelConfig


# ----------------------------------------------------------------------------------------
# The SpeechLLM
# ----------------------------------------------------------------------------------------


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
        prompt: Prompt | None = None,
        task: Task = ASR,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = projector
        self.decoder = decoder
        self.tokenizer = tokenizer
        self._suffixes: dict[str, list[int]] = {}  # marker + instruction -> token ids
        self.set_task(task, prompt)
        tok = tokenizer
        self.eos_id = int(tok.eos_token_id)
        self.pad_id = int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)

    def set_task(self, task: Task, prompt: Prompt | None = None) -> None:
        """Ask the model ``task`` from now on (its prompt, unless ``prompt`` is given)."""
        self.task = task  # what the model is asked (lib.tasks)
        self.prompt = prompt = task.prompt() if prompt is None else prompt
        self._prefix_ids = self.tokenizer(prompt.audio_start, add_special_tokens=True).input_ids
        self._suffix_ids = self._suffix(prompt.instruction)

    @contextlib.contextmanager
    def asking(self, task: Task) -> Iterator["SpeechLLM"]:
        """Ask ``task`` inside the block (a multi-task model's evaluation); the task the
        model had comes back afterwards."""
        before = (self.task, self.prompt)
        self.set_task(task, Prompt(self.prompt.audio_start, self.prompt.audio_end,
                                   task.instruction))
        try:
            yield self
        finally:
            self.set_task(*before)

    def _suffix(self, instruction: str) -> list[int]:
        """Token ids of the audio's closing marker and ``instruction`` (cached)."""
        text = self.prompt.audio_end + instruction
        if text not in self._suffixes:
            self._suffixes[text] = self.tokenizer(text, add_special_tokens=False).input_ids
        return self._suffixes[text]

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
        tasks: Sequence[Task] | None = None,
        audio: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Assemble ``inputs_embeds``, ``attention_mask`` and (with targets) ``labels``.

        Args:
            feats: encoder features ``[B, T, D]``.
            feat_lengths: valid frames per utterance.
            targets: transcripts to learn (training); ``None`` for generation.
            left_pad: pad on the left (generation) instead of the right (training).
            tasks: one task per utterance (a multi-task batch: each reads its own
                instruction); ``None``: every utterance reads the model's task.
            audio: embeddings ``[B, T, d]`` and lengths to put where the projected audio
                goes (text in place of speech); ``feats`` is then unused.

        Returns:
            A dict of decoder inputs; ``audio_mask`` marks the audio positions, ``text_mask``
            the prompt and target text positions (both exclude padding).
        """
        if audio is None:
            self._check_features(feats)
            audio, audio_lengths = self.projector(feats.to(self.device),
                                                  feat_lengths.to(self.device))
        else:
            audio, audio_lengths = audio
        emb_dtype = self.decoder.get_input_embeddings().weight.dtype
        audio = audio.to(emb_dtype)
        prefix = self._embed(self._prefix_ids)
        suffix_ids = ([self._suffix(t.instruction) for t in tasks] if tasks is not None
                      else [self._suffix_ids] * audio.shape[0])
        suffixes = {tuple(ids): self._embed(ids) for ids in suffix_ids}
        rows, labels, kinds = [], [], []
        for i in range(audio.shape[0]):
            a = audio[i, : int(audio_lengths[i])]
            sfx = suffix_ids[i]
            parts = [prefix, a, suffixes[tuple(sfx)]]
            lab = [-100] * (len(self._prefix_ids) + a.shape[0] + len(sfx))
            kind = [2] * len(self._prefix_ids) + [1] * a.shape[0] + [2] * len(sfx)
            if targets is not None:
                text = targets[i].strip()
                if not text:
                    raise CompanionError(
                        f"empty transcript in training batch (item {i}, {targets[i]!r}): "
                        "drop utterances without text"
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

    def _check_features(self, feats: Any) -> None:
        """Encoder features as the projector reads them: ``[batch, frames, width]`` floats
        of the encoder's width.

        Raises:
            CompanionError: another shape, width or dtype (one line with what was given).
        """
        width = self.projector.net[0].in_features // self.projector.stack
        if not isinstance(feats, torch.Tensor) or feats.dim() != 3:
            shape = tuple(feats.shape) if isinstance(feats, torch.Tensor) else type(feats)
            raise CompanionError(f"features of shape {shape}: the SpeechLLM reads a batch "
                                 f"[utterances, frames, {width}] (FeatureSet.batch builds one)")
        if not feats.is_floating_point():
            raise CompanionError(f"features of dtype {feats.dtype}: the SpeechLLM reads "
                                 "floating-point encoder features")
        if feats.shape[-1] != width:
            raise CompanionError(f"features of width {feats.shape[-1]}, but this projector "
                                 f"reads {width}: encode with the encoder the model was built "
                                 "with")

    # -- training and decoding ----------------------------------------------------------------

    def target_ids(self, text: str) -> list[int]:
        """The token ids the model learns for one transcript: `` text`` then eos."""
        return self.tokenizer(" " + text.strip(), add_special_tokens=False).input_ids + [
            self.eos_id]

    def forward(self, feats: torch.Tensor, feat_lengths: torch.Tensor,
                targets: Sequence[str], reduction: str = "mean",
                tasks: Sequence[Task] | None = None) -> torch.Tensor:
        """Training loss (see :meth:`loss`); ``forward`` so that DDP can wrap the model."""
        return self.loss(feats, feat_lengths, targets, reduction, tasks)

    def loss(self, feats: torch.Tensor, feat_lengths: torch.Tensor,
             targets: Sequence[str], reduction: str = "mean",
             tasks: Sequence[Task] | None = None) -> torch.Tensor:
        """Cross-entropy over target tokens (prompt and audio positions excluded).

        Logits are computed only where a label exists: a 262k-word vocabulary (Gemma) would
        otherwise dominate the step. No key/value cache is built (``use_cache=False``).

        Args:
            reduction: ``"mean"`` per target token, ``"sum"`` (training divides the sum
                by the target tokens of all its micro-batches, so that gradient
                accumulation weights tokens, not micro-batches), or ``"sequence"``: one
                summed loss per utterance, ``[B]`` (minus its log-likelihood; CTC
                rescoring compares candidate transcripts by it).
            tasks: one task per utterance (a multi-task batch), see :meth:`build_inputs`.
        """
        batch = self.build_inputs(feats, feat_lengths, targets, tasks=tasks)
        labels = batch["labels"]
        # Position t predicts token t+1: keep positions whose next label is a target.
        keep = torch.zeros_like(labels, dtype=torch.bool)
        keep[:, :-1] = labels[:, 1:] != -100
        body = decoder_body(self.decoder)
        out = body(inputs_embeds=batch["inputs_embeds"], attention_mask=batch["attention_mask"],
                   use_cache=False)
        hidden = out.last_hidden_state[keep]
        logits = self.decoder.get_output_embeddings()(hidden).float()
        softcap = getattr(self.decoder.config, "final_logit_softcapping", None)
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        target = labels[:, 1:][keep[:, :-1]]
        if reduction != "sequence":
            return nn.functional.cross_entropy(logits, target, reduction=reduction)
        per_token = nn.functional.cross_entropy(logits, target, reduction="none")
        rows = keep.nonzero()[:, 0]
        return torch.zeros(labels.shape[0], device=per_token.device).index_add_(0, rows,
                                                                                per_token)

    @torch.no_grad()
    def generate(self, feats: torch.Tensor, feat_lengths: torch.Tensor,
                 max_new_tokens: int = 64, num_beams: int = 1,
                 caps: Sequence[int] | None = None, min_new_tokens: int = 0) -> list[str]:
        """Batched decoding with the KV cache (transformers ``generate``): greedy, or with
        ``num_beams > 1`` beam search returning every beam's text, ``num_beams`` per
        utterance in a row (best first). ``caps``: greedy, each utterance's text cut to its
        own number of word pieces (the batch stops at the largest): what a decode of it
        alone stopped at its cap writes, since greedy decoding is causal.
        ``min_new_tokens``: no end of text before that many (a speed probe's fixed length)."""
        batch = self.build_inputs(feats, feat_lengths, None, left_pad=True)
        if caps is None:
            return self._generate(batch, max_new_tokens, num_beams, min_new_tokens=min_new_tokens)
        return self._generate(batch, min(max_new_tokens, max(caps)), 1, caps)

    @torch.no_grad()
    def generate_from_text(self, texts: Sequence[str], max_new_tokens: int = 64) -> list[str]:
        """Greedy decoding with each text's token embeddings where the audio goes: the same
        prompt, the same decoder, text instead of speech (chapter 5's text cascade)."""
        ids = [self.tokenizer(" " + t.strip(), add_special_tokens=False).input_ids or
               [self.eos_id] for t in texts]
        lengths = torch.tensor([len(x) for x in ids])
        emb = torch.zeros(len(ids), int(lengths.max()), self.decoder.config.hidden_size,
                          device=self.device,
                          dtype=self.decoder.get_input_embeddings().weight.dtype)
        for i, x in enumerate(ids):
            emb[i, :len(x)] = self._embed(x)
        batch = self.build_inputs(None, lengths, None, left_pad=True, audio=(emb, lengths))
        return self._generate(batch, max_new_tokens, 1)

    def _generate(self, batch: dict[str, torch.Tensor], max_new_tokens: int,
                  num_beams: int, caps: Sequence[int] | None = None,
                  min_new_tokens: int = 0) -> list[str]:
        out = self.decoder.generate(
            inputs_embeds=batch["inputs_embeds"],
            attention_mask=batch["attention_mask"],
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens,
            do_sample=False,
            num_beams=num_beams,
            num_return_sequences=num_beams,
            eos_token_id=self.eos_id,
            pad_token_id=self.pad_id,
        )
        if caps is not None:
            out = [row[:cap] for row, cap in zip(out, caps)]
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


@stage("loading")
def build_speechllm(cfg: "ModelConfig", device: str = "cpu", with_encoder: bool = False,
                    encoder: SpeechEncoder | None = None, seed: int = 0,
                    task: Task = ASR) -> SpeechLLM:
    """Build a SpeechLLM from a :class:`lib.config.sections.ModelConfig` (a named preset's model).

    The projector is freshly initialised (seeded); LoRA is added when ``lora_rank > 0``.
    On a GPU the frozen decoder is held in bf16; trainable weights stay fp32.
    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Args:
        cfg: which encoder/decoder and projector/LoRA sizes.
        device: ``cpu`` or ``cuda[:N]``.
        with_encoder: also load the encoder (not needed when features are cached).
        encoder: an encoder already loaded (shared across decoders).
        seed: initialisation seed of projector and LoRA.
        task: what the model is asked (:mod:`lib.tasks`); ASR, the book's task, by default.
    """
    from transformers import AutoConfig

    dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    if encoder is None and with_encoder:
        encoder = build_encoder(cfg.encoder)
    enc_cfg = AutoConfig.from_pretrained(resolve_model(encoder_variant(cfg.encoder)[0]))
    encoder_kind(cfg.encoder, enc_cfg)  # an LLM as encoder fails here, in one line
    enc_dim = encoder_width(enc_cfg)
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
    model = SpeechLLM(encoder, projector, decoder, tokenizer, task=task)
    model.projector.to(device)
    model.decoder.to(device)
    if encoder is not None:
        encoder.to(device)
    return model
