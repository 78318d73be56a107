"""How redundant is each block of decoder layers? Angular distance, Block Influence, CKA.

Explained in chapter 2 (the redundancy of decoder layers). Stage: redundancy scores; the
ablation that checks them by removing blocks is pruning, in :mod:`lib.prune`; the distances
and their streamed statistics are in :mod:`lib.score.stats`.

Conventions (tested in ``tests/test_redundancy.py``)
-----------------------------------------------------
* A decoder with ``L`` layers has ``L + 1`` hidden states. ``h_l`` (0-based) is the INPUT of
  decoder layer ``l``: ``h_0`` is the embedding output (what enters layer 0) and ``h_L`` is the
  output of the last layer BEFORE the final norm. ``h_0 .. h_{L-1}`` are captured with
  forward pre-hooks on the layers, ``h_L`` with a forward hook on the last layer.
  transformers' ``output_hidden_states`` gives ``hidden_states[l] == h_l`` for ``l < L``, but
  its ``hidden_states[L]`` is taken AFTER the final norm (Llama, Gemma in transformers 5): it
  is not our ``h_L``.
* Angular distance ``d(l, n) = arccos(cos(h_l, h_{l+n})) / pi`` (cosine clamped into
  ``[-1, 1]``) for ``0 <= l <= L - n`` and ``1 <= n <= L``: removing block ``[l, l+n)`` joins
  ``h_l`` directly to layer ``l + n``. It is computed per token and AVERAGED (never summed)
  over the counted tokens, in two variants: ``"last"``, the last counted position of each
  sequence (Gromov et al.; with ``positions="all"`` the last non-padded token), and
  ``"all"``, every counted position.
* Counted positions: ``positions="all"`` (every non-padded token), ``"audio"`` (the projected
  audio frames), ``"text"`` (prompt and target text) or ``"transcript"`` (the transcript's
  own tokens, without the prompt and without the closing ``<eos>``, read from the layout
  :meth:`lib.build.speechllm.SpeechLLM.build_inputs` returns; see :func:`speech_positions`).
  Plain text inputs have ``"all"`` / ``"text"`` (the same set) and ``"transcript"`` (the
  text's own tokens, without the tokenizer's special tokens such as ``<bos>``): so
  ``"transcript"`` counts comparable positions for text and for speech, and its last
  position is the transcript's last token in both. Padding is never counted.
* Block Influence ``BI_l = 1 - mean cos(h_l, h_{l+1})`` over the counted tokens (ShortGPT),
  ``0 <= l < L``.
* Linear CKA between layers ``i`` and ``j`` over the counted tokens of the whole set:
  ``||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)`` with ``X``, ``Y`` column-centred. It is
  streamed from sums and ``d x d`` cross-products, never an ``N x N`` token matrix, and only
  for the requested layer pairs: memory ``(P + K) * d^2 * 8`` bytes (float64) for ``P`` pairs
  over ``K`` distinct layers, e.g. ~12 GiB for the default pairs of a 32-layer, d=4096 model.
  ``cka_pairs=None`` skips it; ``"default"`` means ``(l, l+1)`` and ``(0, l)``.
* Degenerate tokens: where ``h_l`` or ``h_{l+n}`` is a zero (or non-finite) vector the cosine is
  undefined; that token is skipped for that ``(l, n)`` and counted in ``n_undefined``
  (comparisons over the ``"all"`` variant); no NaN is ever averaged in.
* Streaming: every ``(l, n)`` comes from ONE forward pass per batch. Per batch only the
  counted tokens of the ``L + 1`` states are kept, in the model's dtype, in one
  ``(L+1) x N_batch x d`` buffer that the hooks fill in place; they are reduced to sums and
  counts in float64 chunks of ``chunk_tokens`` tokens, then dropped. All ``(l, n)`` pairs for
  every token need all ``L + 1`` states of that token at once, so this buffer is the floor;
  nothing is kept across batches and no ``N x N`` token matrix is built.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from lib.clock import stage
from lib.score.agreement import spearman_rho, surface_agreement
from lib.build.components import decoder_body, eval_mode, find_decoder_layers
from lib.errors import CompanionError, check_texts
from lib.score.stats import RedundancyAccumulator, RedundancyResult, last_flat_index

if TYPE_CHECKING:
    from lib.data.features import FeatureSet
    from lib.build.speechllm import SpeechLLM


# Hidden-state capture
# ----------------------------------------------------------------------------------------


def _first(x: Any) -> torch.Tensor:
    return x[0] if isinstance(x, (tuple, list)) else x


@contextlib.contextmanager
def capture_hidden_states(decoder: nn.Module, sink: Any = None
                          ) -> Iterator[dict[int, torch.Tensor]]:
    """Hooks that record ``h_0 .. h_L`` (see the module docstring) of the next forward passes.

    Yields a dict ``{l: detached [B, T, D] state}`` refilled on every forward. With ``sink``,
    ``sink(l, h)`` is called instead and nothing is stored. Hooks are removed on exit.
    """
    layers = find_decoder_layers(decoder)
    store: dict[int, torch.Tensor] = {}

    def put(idx: int, h: torch.Tensor) -> None:
        if sink is not None:
            sink(idx, h)
        else:
            store[idx] = h.detach()

    handles = []

    def pre(idx: int):
        def hook(module, args, kwargs):
            h = args[0] if args else kwargs.get("hidden_states")
            if h is None:
                raise CompanionError(f"cannot read the input of decoder layer {idx} "
                                     f"({type(module).__name__}): no hidden_states argument")
            put(idx, h)
        return hook

    def post(module, args, output):
        put(len(layers), _first(output))

    try:
        for i, layer in enumerate(layers):
            handles.append(layer.register_forward_pre_hook(pre(i), with_kwargs=True))
        handles.append(layers[-1].register_forward_hook(post))
        yield store
    finally:
        for h in handles:
            h.remove()


def is_speechllm(x: Any) -> bool:
    return hasattr(x, "build_inputs") and hasattr(x, "decoder") and hasattr(x, "tokenizer")


def _score_batch(decoder: nn.Module,
                 jobs: Sequence[tuple[RedundancyAccumulator, torch.Tensor]],
                 **forward_kwargs: Any) -> None:
    """One forward pass; hooks copy the counted tokens of every state into one buffer.

    ``jobs`` pairs accumulators with their counted positions ``[B, T]``: several position
    selections (e.g. the transcript and the audio positions) are scored from the same pass.
    The buffer is ``[L + 1, N, D]`` in the model's dtype over the union of the selections
    (the only per-batch cost that grows with ``L``); each accumulator then works through its
    own tokens in float64 chunks.
    """
    jobs = [(acc, counted.bool()) for acc, counted in jobs]
    for _, counted in jobs:
        if not counted.any():
            raise CompanionError("a batch has no counted tokens (only padding, or no position "
                                 "of the requested kind): check the inputs and `positions`")
    union = torch.stack([c for _, c in jobs]).any(0)
    big_l = jobs[0][0].n_layers
    flat = union.reshape(-1).nonzero().squeeze(1)
    buf: list[torch.Tensor] = []
    seen: set[int] = set()

    def gather(idx: int, h: torch.Tensor) -> None:
        h = h.detach()
        if not buf:
            buf.append(torch.empty(big_l + 1, flat.numel(), h.shape[-1], dtype=h.dtype,
                                   device=h.device))
        torch.index_select(h.reshape(-1, h.shape[-1]), 0, flat.to(h.device), out=buf[0][idx])
        seen.add(idx)

    with capture_hidden_states(decoder, sink=gather):
        decoder_body(decoder)(use_cache=False, **forward_kwargs)
    missing = [l for l in range(big_l + 1) if l not in seen]
    if missing:
        raise CompanionError(f"hidden states {missing} were not seen in the forward pass: "
                             "the decoder skipped some of its layers")
    for acc, counted in jobs:
        # The union keeps the row-major order, so a selection's tokens come out in its own
        # flat order and last_flat_index(counted) still points at each row's last token.
        tokens = buf[0] if len(jobs) == 1 else buf[0][:, counted.reshape(-1)[flat]]
        acc.update_tokens(tokens, last_flat_index(counted), n_sequences=counted.shape[0])
    buf.clear()


# ----------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------


@torch.no_grad()
@stage("scoring")
def score_text(model_or_decoder: Any, tokenizer: Any, texts: Sequence[str], batch_size: int = 8,
               max_length: int = 128, positions: str = "all", cka_pairs: Any = None
               ) -> RedundancyResult:
    """Redundancy scores of plain text through the decoder alone (right padding).

    Args:
        model_or_decoder: a SpeechLLM (its ``.decoder`` and ``.tokenizer`` are used) or a
            transformers causal LM (peft-wrapped or not).
        tokenizer: the decoder's tokenizer (ignored for a SpeechLLM; may be None there).
        texts: the inputs; none may be empty.
        batch_size: texts per forward pass.
        max_length: truncation length in tokens.
        positions: ``"all"`` or ``"text"`` (the same set for text), or ``"transcript"``
            (without special tokens such as ``<bos>``: the positions
            ``score_speech(..., positions="transcript")`` counts).
        cka_pairs: None (skip CKA), ``"default"`` or a list of ``(i, j)``.

    Raises:
        CompanionError: texts is not a list of non-empty strings (e.g. one string), the
            model is not a causal LM or SpeechLLM, or the tokenizer is missing.
    """
    texts = check_texts(texts, "texts", "score_text")
    if is_speechllm(model_or_decoder):
        decoder, tokenizer = model_or_decoder.decoder, model_or_decoder.tokenizer
    else:
        decoder = model_or_decoder
    if not isinstance(decoder, nn.Module):
        raise CompanionError(f"score_text needs a causal LM or a SpeechLLM, got "
                             f"{type(decoder).__name__}")
    layers = find_decoder_layers(decoder)
    if positions not in ("all", "text", "transcript"):
        raise CompanionError(f"positions={positions!r} for text inputs: use 'all', 'text' or "
                             "'transcript'")
    if tokenizer is None:
        raise CompanionError("score_text needs the decoder's tokenizer")
    if not texts:
        raise CompanionError("score_text got an empty list of texts: pass at least one")
    for i, t in enumerate(texts):
        if not t.strip():
            raise CompanionError(f"text {i} is empty: drop empty texts before scoring")
    if batch_size < 1 or max_length < 1:
        raise CompanionError(f"batch_size={batch_size}, max_length={max_length}: use positive "
                             "integers")
    device = next(decoder.parameters()).device
    acc = RedundancyAccumulator(len(layers), cka_pairs)
    pad_side = getattr(tokenizer, "padding_side", "right")
    if getattr(tokenizer, "pad_token_id", None) is None:
        raise CompanionError("the tokenizer has no pad token: set tokenizer.pad_token first")
    try:
        tokenizer.padding_side = "right"
        with eval_mode(model_or_decoder):
            for start in range(0, len(texts), batch_size):
                chunk = texts[start: start + batch_size]
                enc = tokenizer(chunk, return_tensors="pt", padding=True, truncation=True,
                                max_length=max_length, return_special_tokens_mask=True)
                mask = enc["attention_mask"].to(device)
                counted = mask.bool()
                if positions == "transcript":
                    counted = counted & (enc["special_tokens_mask"].to(device) == 0)
                for k, row in enumerate(counted):
                    if not row.any():
                        raise CompanionError(f"text {start + k} gives no tokens: drop it")
                _score_batch(decoder, [(acc, counted)], input_ids=enc["input_ids"].to(device),
                             attention_mask=mask)
    finally:
        tokenizer.padding_side = pad_side
    return acc.result("text", positions)


def check_features(data: "FeatureSet", indices: Sequence[int]) -> None:
    frames = data.frames()
    for i in indices:
        if frames[i] == 0:
            raise CompanionError(f"utterance {data.utterances[i].id!r} has zero-length audio "
                                 "features: drop empty audio first")


SPEECH_POSITIONS = ("all", "audio", "text", "transcript")
"""The position selections of speech inputs (see the module docstring)."""


def speech_positions(batch: dict[str, torch.Tensor], positions: str) -> torch.Tensor:
    """The counted positions ``[B, T]`` of a batch built by ``SpeechLLM.build_inputs``.

    The layout of each row is ``prompt start | audio | prompt end | transcript <eos> |
    padding``: ``"all"`` is every non-padded position, ``"audio"`` the audio span, ``"text"``
    both prompt parts and the transcript with its ``<eos>``, ``"transcript"`` the positions
    whose label is a transcript token (``labels != -100``) except the closing ``<eos>`` (the
    last labelled position of each row). Explained in chapter 2.

    Raises:
        CompanionError: an unknown selection, or ``"transcript"`` without labels (build the
            inputs with targets).
    """
    if positions not in SPEECH_POSITIONS:
        raise CompanionError(f"positions={positions!r}: use one of "
                             f"{', '.join(SPEECH_POSITIONS)}")
    mask = batch["attention_mask"].bool()
    if positions == "audio":
        return mask & batch["audio_mask"]
    if positions == "text":
        return mask & batch["text_mask"]
    if positions == "transcript":
        if "labels" not in batch:
            raise CompanionError("positions='transcript' needs the transcripts: score with "
                                 "with_targets=True")
        target = mask & (batch["labels"] != -100)
        t = target.shape[1]
        last = (t - 1) - torch.flip(target.long(), [1]).argmax(1)  # the closing <eos>
        target = target.clone()
        rows = torch.arange(target.shape[0], device=target.device)
        has = target.any(1)
        target[rows[has], last[has]] = False
        return target
    return mask


@torch.no_grad()
@stage("scoring")
def score_speech(model: "SpeechLLM", data: "FeatureSet", batch_size: int = 8,
                 positions: str | Sequence[str] = "all", with_targets: bool = True,
                 cka_pairs: Any = None) -> Any:
    """Redundancy scores of speech inputs: projected audio + prompt (+ target transcript).

    Args:
        model: the SpeechLLM.
        data: cached encoder features (and transcripts).
        batch_size: utterances per forward pass.
        positions: which positions are counted: ``"all"``, ``"audio"``, ``"text"`` or
            ``"transcript"`` (:func:`speech_positions`); or a sequence of them, all scored
            from the same forward passes.
        with_targets: append the transcript (teacher forcing) after the prompt.
        cka_pairs: None (skip CKA), ``"default"`` or a list of ``(i, j)``.

    Returns:
        A :class:`RedundancyResult`, or ``{selection: RedundancyResult}`` when ``positions``
        is a sequence.
    """
    if not is_speechllm(model):
        raise CompanionError(f"score_speech needs a SpeechLLM, got {type(model).__name__}")
    selections = [positions] if isinstance(positions, str) else list(positions)
    for sel in selections:
        if sel not in SPEECH_POSITIONS:
            raise CompanionError(f"positions={sel!r}: use one of "
                                 f"{', '.join(SPEECH_POSITIONS)}")
    if not selections:
        raise CompanionError("positions is empty: name at least one of "
                             f"{', '.join(SPEECH_POSITIONS)}")
    if "transcript" in selections and not with_targets:
        raise CompanionError("positions='transcript' needs the transcripts: score with "
                             "with_targets=True")
    if data is None or len(data) == 0:
        raise CompanionError("score_speech got an empty feature set: pass at least one utterance")
    if batch_size < 1:
        raise CompanionError(f"batch_size={batch_size}: use a positive integer")
    decoder = model.decoder
    layers = find_decoder_layers(decoder)
    accs = {sel: RedundancyAccumulator(len(layers), cka_pairs) for sel in selections}
    with eval_mode(model):
        for start in range(0, len(data), batch_size):
            idx = list(range(start, min(start + batch_size, len(data))))
            check_features(data, idx)
            feats, lengths, texts = data.batch(idx, target=model.task.target)
            batch = model.build_inputs(feats, lengths, texts if with_targets else None)
            _score_batch(decoder, [(accs[sel], speech_positions(batch, sel))
                                   for sel in selections],
                         inputs_embeds=batch["inputs_embeds"],
                         attention_mask=batch["attention_mask"])
    results = {sel: acc.result("speech", sel) for sel, acc in accs.items()}
    return results[positions] if isinstance(positions, str) else results


# ----------------------------------------------------------------------------------------
# Comparing rankings
# ----------------------------------------------------------------------------------------


def agreement(a: RedundancyResult, b: RedundancyResult, metric: str = "angular_last",
              chance_draws: int = 0, seed: int = 0) -> dict[str, Any]:
    """How alike two d(l, n) surfaces are (e.g. text vs speech inputs), within each n.

    The measures and their chance baseline are defined in :mod:`lib.score.agreement`
    (:func:`~lib.score.agreement.surface_agreement`: ``spearman_per_n``, ``spearman_per_n_mean``,
    ``overlap``, ``overlap_mean``, ``blocks_a`` / ``blocks_b`` and, with ``chance_draws``,
    ``chance``). Added here: ``n_cells``, ``mean_abs_diff`` / ``max_abs_diff`` of ``d`` over
    the cells valid in both, and ``spearman_pooled``,
    the correlation over all (l, n) cells at once, kept only to show why it misleads (``d``
    grows with ``n``, so unrelated surfaces still correlate when pooled).
    """
    if a.n_layers != b.n_layers:
        raise CompanionError(f"cannot compare a {a.n_layers}-layer result with a "
                             f"{b.n_layers}-layer one: score the same decoder")
    sa, sb = a._surface(metric), b._surface(metric)
    out = surface_agreement(sa, sb, draws=chance_draws, seed=seed)
    ok = np.isfinite(sa) & np.isfinite(sb)
    diff = np.abs(sa[ok] - sb[ok])
    out.update({
        "spearman_pooled": spearman_rho(sa[ok], sb[ok]),
        "n_cells": int(ok.sum()),
        "mean_abs_diff": float(diff.mean()) if diff.size else float("nan"),
        "max_abs_diff": float(diff.max()) if diff.size else float("nan"),
    })
    return out
