"""The CTC warm start: the loss against a brute-force sum over alignments, greedy decoding,
norm matching that changes nothing but the scale, and a reused warm start."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from lib.config.sections import ModelConfig, TrainConfig
from lib.build.ctc_head import build_ctc_head
from lib.evaluate.baselines import ctc_transcribe
from lib.train.ctc import ctc_loss, ctc_warm_start, match_embedding_norm
from lib.errors import CompanionError
from lib.build.speechllm import build_speechllm


@pytest.fixture
def model():
    mc = ModelConfig(encoder="tiny-whisper", decoder="tiny-llama", projector_hidden=32,
                     lora_rank=0)
    return build_speechllm(mc, seed=0)


def _collapse(path: tuple[int, ...]) -> list[int]:
    out, prev = [], 0
    for c in path:
        if c != prev and c != 0:
            out.append(c)
        prev = c
    return out


def test_ctc_loss_equals_the_sum_over_all_alignments(model, random_features):
    """-log sum over every length-T path that collapses to the target, by enumeration."""
    data = random_features(2, dim=64, base=16, step=4)  # 16, 20 frames -> 4, 4 positions
    texts = ["on", "to"]  # tiny-llama spells characters: " o n", " t o"
    head = build_ctc_head(model, texts)
    feats, lengths, _ = data.batch([0, 1])
    loss = ctc_loss(model, head, feats, lengths, texts)
    with torch.no_grad():
        z, z_len = model.projector(feats, lengths)
        logits = torch.cat([(z @ head.blank)[..., None], z @ head.embeddings.T], -1)
        logp = torch.log_softmax(logits.double(), -1)
    index = head.index
    expected = []
    for b, text in enumerate(texts):
        target = [index[t] for t in model.target_ids(text)[:-1]]
        total = 0.0
        for path in itertools.product(range(logp.shape[-1]), repeat=int(z_len[b])):
            if _collapse(path) == target:
                total += math.exp(sum(float(logp[b, t, c]) for t, c in enumerate(path)))
        # PyTorch's "mean" divides each utterance's loss by its target length.
        expected.append(-math.log(total) / len(target))
    assert loss.item() == pytest.approx(sum(expected) / 2, rel=1e-4)


def test_greedy_decoding_merges_repeats_and_drops_blanks(model, random_features):
    """A projector forced to emit e(a), e(a), blank, e(b) decodes to the text of [a, b]."""
    head = build_ctc_head(model, ["one two"])
    a, b = head.token_ids[0], head.token_ids[-1]
    data = random_features(1, dim=64, base=20, step=0)  # 20 frames -> 4 positions
    emb = head.embeddings
    wanted = torch.stack([emb[0], emb[0], torch.zeros_like(emb[0]), emb[-1]]) * 50

    class Fixed(torch.nn.Module):
        stack = 5

        def __init__(self):
            super().__init__()
            self.unused = torch.nn.Parameter(torch.zeros(1))  # gives the model a device

        def forward(self, feats, lengths):
            return wanted[None], torch.tensor([4])

    with torch.no_grad():
        head.blank.copy_(torch.zeros_like(head.blank))
        head.blank[0] = 1.0
    model.projector = Fixed()
    # Position 3 (zeros) scores 0 for every class, so give the blank a margin there.
    wanted[2, 0] = 100.0
    (text,) = ctc_transcribe(model, head, data)
    assert text == model.tokenizer.decode([a, b]).strip()


def test_norm_matching_rescales_outputs_and_keeps_the_ctc_logits(model, random_features):
    data = random_features(4, dim=64, base=20, step=5)
    head = build_ctc_head(model, ["one two", "three"])
    feats, lengths, _ = data.batch([0, 1, 2, 3])
    with torch.no_grad():
        z0, n0 = model.projector(feats, lengths)
        logits0 = head(z0)
        factor = match_embedding_norm(model, head, data)
        z1, _ = model.projector(feats, lengths)
        logits1 = head(z1)
    valid = torch.arange(z1.shape[1])[None] < n0[:, None]
    emb_norm = head.embeddings.norm(dim=-1).mean()
    assert z1[valid].norm(dim=-1).mean().item() == pytest.approx(emb_norm.item(), rel=1e-4)
    torch.testing.assert_close(z1, z0 * factor, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits1, logits0, rtol=1e-4, atol=1e-4)


def test_gemma_head_uses_the_unscaled_table_and_matches_the_scaled_norm(random_features):
    """Gemma's embedding module multiplies its table by sqrt(d): the head's logits use the
    stored rows, and norm matching aims at what the decoder reads (the module's output)."""
    mc = ModelConfig(encoder="tiny-whisper", decoder="tiny-gemma", projector_hidden=32,
                     lora_rank=0)
    gemma = build_speechllm(mc, seed=0)
    head = build_ctc_head(gemma, ["one two", "three"])
    table = gemma.decoder.get_input_embeddings()
    ids = torch.tensor(head.token_ids)
    hidden = gemma.decoder.config.hidden_size
    torch.testing.assert_close(head.embeddings, table.weight.detach()[ids].float())
    read = table(ids).detach().float()  # the vectors the decoder really reads
    torch.testing.assert_close(read, head.embeddings * math.sqrt(hidden), rtol=1e-3, atol=1e-4)
    data = random_features(4, dim=64, base=20, step=5)
    feats, lengths, _ = data.batch([0, 1, 2, 3])
    match_embedding_norm(gemma, head, data)
    with torch.no_grad():
        z, n = gemma.projector(feats, lengths)
    valid = torch.arange(z.shape[1])[None] < n[:, None]
    assert z[valid].norm(dim=-1).mean().item() == pytest.approx(
        read.norm(dim=-1).mean().item(), rel=1e-3)


def test_warm_start_learns_and_is_reused(tmp_path, random_features):
    data = random_features(6, dim=64, split="train", base=30, step=5)
    mc = ModelConfig(encoder="tiny-whisper", decoder="tiny-llama", projector_hidden=32,
                     lora_rank=0)
    m1 = build_speechllm(mc, seed=0)
    cfg = TrainConfig(ctc_epochs=30, ctc_learning_rate=1e-2, ctc_batch_size=3,
                      precision="fp32")
    ws = ctc_warm_start(m1, data, cfg, tmp_path / "ws")
    assert not ws.cached and len(ws.log) == 60
    first = sum(r["loss"] for r in ws.log[:5]) / 5
    last = sum(r["loss"] for r in ws.log[-5:]) / 5
    assert last < first - 0.5  # measured: ~6 -> ~2 nats on 6 random-feature utterances
    m2 = build_speechllm(mc, seed=1)
    again = ctc_warm_start(m2, data, cfg, tmp_path / "ws")
    assert again.cached and again.norm_factor == ws.norm_factor
    for (k, v), (_, w) in zip(m1.projector.state_dict().items(),
                              m2.projector.state_dict().items()):
        assert torch.equal(v, w), k


def test_no_tokens_is_one_line(model):
    with pytest.raises(CompanionError, match="no tokens"):
        build_ctc_head(model, [])


def test_a_warm_start_is_keyed_by_what_it_reads(tmp_path, monkeypatch, random_features):
    """Changing the LLM stage (steps, rates, batch, the CTC weight kept on) keeps the warm
    start's folder, so a run of other steps reads it back; changing what the warm start
    reads (its rate, epochs, batch, seed, precision, the data, the model) moves it."""
    from dataclasses import replace

    from lib.train.ctc import warmstart_folder

    monkeypatch.setenv("COMPANION_CACHE", str(tmp_path))
    mc = ModelConfig(encoder="tiny-whisper", decoder="tiny-llama", projector_hidden=32,
                     lora_rank=0)
    train = TrainConfig(ctc_epochs=1, ctc_batch_size=2, precision="fp32")
    data = random_features(6, dim=64, split="train", base=30, step=5)
    here = warmstart_folder(mc, train, data)
    for llm_stage in ({"steps": 7}, {"learning_rate": 0.01}, {"batch_size": 3},
                      {"ctc_weight": 0.0}, {"warmup_steps": 2}, {"dev_every": 0},
                      {"projector_learning_rate": 0.1}, {"checkpoint_every": 2}):
        assert warmstart_folder(mc, replace(train, **llm_stage), data) == here, llm_stage
    for its_own in ({"ctc_learning_rate": 0.01}, {"ctc_epochs": 2}, {"ctc_batch_size": 4},
                    {"seed": 1}, {"precision": "bf16"}, {"length_grouping": 0}):
        assert warmstart_folder(mc, replace(train, **its_own), data) != here, its_own
    assert warmstart_folder(mc, train, random_features(6, dim=64, seed=1, split="train",
                                                       base=30, step=5)) != here
    assert warmstart_folder(replace(mc, projector_hidden=16), train, data) != here
    first = ctc_warm_start(build_speechllm(mc, seed=0), data, train, here)
    other_steps = replace(train, steps=7)
    again = ctc_warm_start(build_speechllm(mc, seed=0), data, other_steps,
                           warmstart_folder(mc, other_steps, data))
    assert again.cached and not first.cached and again.log == first.log
