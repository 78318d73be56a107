"""The CTC head: a CTC output layer made of the decoder's own input embeddings.

The CTC warm start (:mod:`lib.train.ctc`) trains the projector against it; afterwards the
head is a small ASR system of its own (greedy CTC, no language model: chapter 1's baseline)
and the second scorer of joint CTC / attention decoding
(:class:`lib.evaluate.decode.Rescoring`). It belongs with the model: training, evaluation
and decoding all read it. Stage: building the SpeechLLM. Explained in chapter 1
(book/01_building_a_speechllm.ipynb).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from lib.build.speechllm import SpeechLLM
from lib.errors import CompanionError


class CTCHead(nn.Module):
    """CTC output layer made of the decoder's input embeddings (fixed) and a learned blank.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Args:
        token_ids: the decoder vocabulary ids the head can emit (class ``i + 1``).
        embeddings: ``[V, d]`` rows of the decoder's embedding *table* for those ids.
        embed_scale: the factor the decoder's embedding module multiplies its table by
            (Gemma: sqrt(d) = 25.3 at d = 640; 1 for Llama-style decoders). The head's
            logits use the unscaled rows, so their sharpness does not depend on that
            factor (with Gemma's scaled rows a small change of the projector output moved
            the logits 25x as far, and the warm start reached 64 % WER instead of 37 %);
            the norm matching targets the scaled rows, which the decoder really reads.
    """

    def __init__(self, token_ids: Sequence[int], embeddings: torch.Tensor,
                 embed_scale: float = 1.0) -> None:
        super().__init__()
        self.token_ids = [int(t) for t in token_ids]
        self.register_buffer("embeddings", embeddings.detach().float().clone())
        self.register_buffer("embed_scale", torch.tensor(float(embed_scale)))
        self.blank = nn.Parameter(torch.zeros(embeddings.shape[1]))
        # Divides the projector output: after norm matching scales the projector up or down,
        # the head still sees the vectors it was trained on.
        self.register_buffer("input_scale", torch.ones(()))

    @property
    def index(self) -> dict[int, int]:
        """Decoder token id -> CTC class (0 is the blank)."""
        return {t: i + 1 for i, t in enumerate(self.token_ids)}

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``[B, T, d]`` projector outputs -> ``[B, T, V + 1]`` logits, blank first."""
        z = z.float() / self.input_scale
        return torch.cat([(z @ self.blank)[..., None], z @ self.embeddings.T], -1)


def build_ctc_head(model: SpeechLLM, texts: Sequence[str]) -> CTCHead:
    """A CTC head over the word pieces that ``texts`` use, in ``model``'s decoder.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Raises:
        CompanionError: no transcript has a single token.
    """
    ids = sorted({t for text in texts for t in model.target_ids(text)[:-1]})
    if not ids:
        raise CompanionError("the CTC warm start found no tokens in the training transcripts:"
                             " check train_data (its texts are empty)")
    table = model.decoder.get_input_embeddings()
    rows = table.weight.detach()[torch.tensor(ids, device=table.weight.device)].float().cpu()
    return CTCHead(ids, rows, float(getattr(table, "embed_scale", 1.0))).to(model.device)


def ctc_targets(model: SpeechLLM, head: CTCHead, texts: Sequence[str]) -> list[list[int]]:
    """Each text as the head's classes (its word pieces the head can emit)."""
    index = head.index
    return [[index[t] for t in model.target_ids(text)[:-1] if t in index] for text in texts]


def ctc_nll(model: SpeechLLM, head: CTCHead, feats: torch.Tensor, lengths: torch.Tensor,
             targets: Sequence[Sequence[int]], reduction: str,
             zero_infinity: bool) -> torch.Tensor:
    """PyTorch's ``ctc_loss`` (blank 0) of the head's classes ``targets`` after the
    projector: the one CTC computation behind training and rescoring."""
    z, z_len = model.projector(feats.to(model.device), lengths.to(model.device))
    logp = torch.log_softmax(head(z), -1).transpose(0, 1)
    flat = torch.tensor([t for seq in targets for t in seq], dtype=torch.long)
    t_len = torch.tensor([len(seq) for seq in targets], dtype=torch.long)
    return nn.functional.ctc_loss(logp, flat, z_len.cpu(), t_len, blank=0,
                                  reduction=reduction, zero_infinity=zero_infinity)


@torch.no_grad()
def ctc_logprob(model: SpeechLLM, head: CTCHead, feats: torch.Tensor, lengths: torch.Tensor,
                texts: Sequence[str]) -> torch.Tensor:
    """``log p_CTC(text | audio)`` of each (utterance, text) pair, ``[B]`` (float32).

    The sum over every alignment (PyTorch's ``ctc_loss``, ``reduction="none"``). A text
    with a word piece the head cannot emit, or more pieces than the audio has room for,
    gets ``-inf``; an empty text is the all-blank path.
    """
    index = head.index
    pieces = [model.target_ids(t)[:-1] if t.strip() else [] for t in texts]
    ok = torch.tensor([all(p in index for p in seq) for seq in pieces])
    targets = [[index.get(p, 1) for p in seq] for seq in pieces]
    nll = ctc_nll(model, head, feats, lengths, targets, "none", False).float().cpu()
    return torch.where(ok, -nll, torch.tensor(float("-inf")))


@torch.no_grad()
def ctc_greedy(model: SpeechLLM, head: CTCHead, feats: torch.Tensor,
               lengths: torch.Tensor) -> list[str]:
    """Greedy CTC transcripts of one batch of encoder features."""
    z, z_len = model.projector(feats.to(model.device), lengths.to(model.device))
    best = head(z).argmax(-1).cpu()
    out = []
    for row, n in zip(best, z_len.tolist()):
        ids, prev = [], 0
        for c in row[:n].tolist():
            if c != prev and c != 0:
                ids.append(head.token_ids[c - 1])
            prev = c
        out.append(model.tokenizer.decode(ids).strip())
    return out
