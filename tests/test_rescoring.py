"""Joint CTC / attention decoding (lib.evaluate.decode.Rescoring): per-utterance log-likelihoods
against slow one-utterance loops and a brute-force sum over CTC alignments, and the chosen
transcript against candidates scored one at a time by hand."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from lib.config.sections import EvalConfig
from lib.config.sections import ModelConfig
from lib.build.ctc_head import build_ctc_head, ctc_greedy, ctc_logprob
from lib.errors import CompanionError
from lib.evaluate.decode import Rescoring, evaluate_asr, transcribe
from lib.data.features import FeatureSet
from lib.build.speechllm import build_speechllm

TEXTS = ["one two", "to on", "no tot", "wet one"]


@pytest.fixture
def model():
    mc = ModelConfig(encoder="tiny-whisper", decoder="tiny-llama", projector_hidden=32,
                     lora_rank=0)
    m = build_speechllm(mc, seed=0)
    m.eval()
    return m


def test_sequence_loss_equals_one_utterance_at_a_time(model, random_features):
    """reduction='sequence' on a padded batch == the summed loss of each utterance alone."""
    data = random_features(3, dim=64, base=20, step=7)
    feats, lengths, _ = data.batch([0, 1, 2])
    texts = ["one", "two on two", "wet"]
    with torch.no_grad():
        batch = model.loss(feats, lengths, texts, reduction="sequence")
        alone = [model.loss(feats[i:i + 1, :int(lengths[i])], lengths[i:i + 1], [t],
                            reduction="sum").item() for i, t in enumerate(texts)]
    assert batch.shape == (3,)
    assert batch.tolist() == pytest.approx(alone, rel=1e-4, abs=1e-4)


def test_ctc_logprob_is_the_sum_over_alignments(model, random_features):
    """log p_CTC(text | audio) by enumeration of every path; -inf for a piece the head
    cannot emit."""
    data = random_features(2, dim=64, base=16, step=4)  # 4 projector positions each
    head = build_ctc_head(model, ["on", "to"])
    feats, lengths, _ = data.batch([0, 1])
    got = ctc_logprob(model, head, feats, lengths, ["on", "to"])
    with torch.no_grad():
        z, z_len = model.projector(feats, lengths)
        logp = torch.log_softmax(head(z).double(), -1)
    index = head.index
    for b, text in enumerate(["on", "to"]):
        target = [index[t] for t in model.target_ids(text)[:-1]]
        total = 0.0
        for path in itertools.product(range(logp.shape[-1]), repeat=int(z_len[b])):
            out, prev = [], 0
            for c in path:
                if c != prev and c != 0:
                    out.append(c)
                prev = c
            if out == target:
                total += math.exp(sum(float(logp[b, t, c]) for t, c in enumerate(path)))
        assert got[b].item() == pytest.approx(math.log(total), rel=1e-4)
    # "w" is not among the head's pieces: that text cannot come out of the head
    assert ctc_logprob(model, head, feats[:1], lengths[:1], ["wo"]).item() == float("-inf")


def _by_hand(model, head, feats, lengths, weight, beams, max_new_tokens):
    """The rescored transcript of each utterance, every candidate scored alone."""
    out = []
    for i in range(feats.shape[0]):
        f, n = feats[i:i + 1, :int(lengths[i])], lengths[i:i + 1]
        cands = model.generate(f, n, max_new_tokens, num_beams=beams)
        cands += ctc_greedy(model, head, f, n)
        best, best_text = -math.inf, None
        for text in dict.fromkeys(c for c in cands if c.strip()):
            llm = -model.loss(f, n, [text], reduction="sum").item()
            pieces = model.target_ids(text)[:-1]
            if all(p in head.index for p in pieces):
                z, z_len = model.projector(f, n)
                logp = torch.log_softmax(head(z), -1).transpose(0, 1)
                target = torch.tensor([head.index[p] for p in pieces])
                ctc = -torch.nn.functional.ctc_loss(  # inf when the audio is too short
                    logp, target[None], z_len, torch.tensor([len(pieces)]),
                    reduction="sum").item()
            else:
                ctc = -math.inf
            score = ((1 - weight) * llm if weight < 1 else 0) + (weight * ctc if weight else 0)
            if best_text is None or score > best:  # all impossible: the first (best beam)
                best, best_text = score, text
        out.append(best_text or "")
    return out


@pytest.mark.parametrize("weight", [0.0, 0.5, 1.0])
def test_rescored_transcripts_match_candidates_scored_by_hand(model, random_features, weight):
    data = random_features(4, dim=64, base=40, step=0)  # no padding: batch == alone
    head = build_ctc_head(model, TEXTS)
    with torch.no_grad():  # a random blank and projector: give the head some opinion
        head.blank.normal_(0, 1.0)
    rescore = Rescoring(head, weight=weight, num_beams=3)
    got = transcribe(model, data, EvalConfig(batch_size=4, max_new_tokens=6), rescore=rescore)
    feats, lengths, _ = data.batch(list(range(4)))
    with torch.no_grad():
        want = _by_hand(model, head, feats, lengths, weight, 3, 6)
    assert got == want


def test_rescoring_settings_are_checked(model):
    head = build_ctc_head(model, TEXTS)
    with pytest.raises(CompanionError, match="rescore weight 1.5"):
        Rescoring(head, weight=1.5)
    with pytest.raises(CompanionError, match="rescore num_beams 0"):
        Rescoring(head, num_beams=0)


def test_rescore_run_picks_the_lowest_dev_wer_and_reuses_its_sweep(model, random_features,
                                                                    tmp_path, monkeypatch):
    """The weight is the argmin of the dev WER (ties: the smaller weight), each weight
    decoded separately here and scored with jiwer; the sweep is read back, not recomputed."""
    from types import SimpleNamespace

    import jiwer

    import lib.recipes.pipeline as experiment
    from lib.config.sections import EvalConfig
    from lib.evaluate.metrics import english_normalizer

    train = random_features(6, dim=64, base=40, step=3)
    tests = {"t": random_features(2, dim=64, base=40, step=3, seed=1)}
    head = build_ctc_head(model, [u.text for u in train.utterances])
    with torch.no_grad():
        head.blank.normal_(0, 1.0)
    ev = EvalConfig(batch_size=4, max_new_tokens=5, rescore_beams=2,
                    rescore_weights=(0.0, 0.5, 1.0))
    cfg = SimpleNamespace(eval=ev, dev_utterances=3)
    greedy = evaluate_asr(model, tests["t"], tmp_path, "t", ev)
    run = SimpleNamespace(model=model, warm_start=SimpleNamespace(head=head),
                          train=SimpleNamespace(run_dir=tmp_path), rescored={},
                          scores={"t": greedy})
    out = experiment.rescore_run(run, cfg, train, tests)

    dev_utts = train.utterances[-3:]  # the last dev_utterances of the training data
    dev = FeatureSet(dev_utts, train.feats[-3:])
    norm = english_normalizer()
    wers = {}
    for w in ev.rescore_weights:
        hyps = transcribe(model, dev, ev, rescore=Rescoring(head, w, 2))
        wers[w] = jiwer.wer([norm(u.text) for u in dev_utts], [norm(h) for h in hyps])
    best = min(wers, key=lambda w: (wers[w], w))
    assert out["weight"] == best
    assert [r["dev_wer"] for r in out["sweep"]] == pytest.approx([wers[w] for w in (0, .5, 1)])
    assert set(out["scores"]) == {"t"} and out["scores"]["t"]["decoding"] == {
        "ctc_rescore": {"ctc_rescore_weight": best, "num_beams": 2}}
    # the paired comparison with greedy: its point value is the difference of the two WERs
    assert out["vs_greedy"]["t"]["difference"] == pytest.approx(
        out["scores"]["t"]["wer"] - greedy["wer"])

    def fail(*a, **k):
        raise AssertionError("the dev sweep was decoded again")

    monkeypatch.setattr(experiment, "transcribe_candidates", fail)
    assert experiment.rescore_run(run, cfg, train, tests)["sweep"] == out["sweep"]
    # no CTC head (recipe plain) or rescore_beams 0: nothing to do
    assert experiment.rescore_run(SimpleNamespace(warm_start=None), cfg, train, tests) == {}
