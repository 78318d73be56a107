"""Every scoring and evaluation entry point runs the model in eval mode (dropout off) and
gives the caller's mode back (issue 8, part 1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lib.config.sections import EvalConfig
from lib.build.components import eval_mode
from lib.evaluate.baselines import audio_reliance
from lib.evaluate.decode import transcribe
from lib.prune.loss_curves import LossMeter
from lib.prune.profiles import block_profile
from lib.score.redundancy import score_speech, score_text
from references import adapted_speechllm

TEXTS = ["hello world", "the cat sat on the mat", "x y"]


@pytest.fixture(scope="module")
def noisy_model():
    """LoRA with dropout 0.5 and non-zero B (a trained adapter), left in train mode."""
    m = adapted_speechllm("tiny-gemma", dropout=0.5)
    m.train()
    return m


def _modes(model):
    return [sub.training for sub in model.modules()]


def test_dropout_really_changes_a_train_mode_forward(noisy_model):
    """The premise: in train mode two forwards differ (else the tests below cannot fail)."""
    ids = noisy_model.tokenizer(TEXTS[:1], return_tensors="pt").input_ids
    torch.manual_seed(0)
    a = noisy_model.decoder(input_ids=ids).logits
    b = noisy_model.decoder(input_ids=ids).logits
    assert not torch.equal(a, b)


def test_text_and_speech_scores_are_bit_identical_and_mode_restored(noisy_model,
                                                                    random_features):
    data = random_features(n=3)
    before = _modes(noisy_model)
    assert any(before)
    t1 = score_text(noisy_model, None, TEXTS, batch_size=2)
    t2 = score_text(noisy_model, None, TEXTS, batch_size=2)
    np.testing.assert_array_equal(t1.distance_all, t2.distance_all)
    np.testing.assert_array_equal(t1.distance_last, t2.distance_last)
    s1 = score_speech(noisy_model, data, batch_size=2)
    s2 = score_speech(noisy_model, data, batch_size=2)
    np.testing.assert_array_equal(s1.distance_all, s2.distance_all)
    assert _modes(noisy_model) == before
    # the same as scoring a model the caller put in eval mode itself
    noisy_model.eval()
    try:
        t3 = score_text(noisy_model, None, TEXTS, batch_size=2)
    finally:
        noisy_model.train()
    np.testing.assert_array_equal(t1.distance_all, t3.distance_all)


def test_ablation_decoding_and_reliance_are_deterministic(noisy_model, random_features):
    data = random_features(n=3)
    before = _modes(noisy_model)
    a1 = block_profile(LossMeter(noisy_model, data, batch_size=2, min_utterances=1), 1)
    a2 = block_profile(LossMeter(noisy_model, data, batch_size=2, min_utterances=1), 1)
    np.testing.assert_array_equal(a1.sums, a2.sums)
    r1 = audio_reliance(noisy_model, data, n=3)
    r2 = audio_reliance(noisy_model, data, n=3)
    assert r1 == r2
    ev = EvalConfig(batch_size=2, max_new_tokens=3)
    assert transcribe(noisy_model, data, ev) == transcribe(noisy_model, data, ev)
    assert _modes(noisy_model) == before


def test_eval_mode_restores_mixed_modes_on_error():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
    net.train()
    net[0].eval()  # a mixed state, e.g. a frozen part kept in eval
    with pytest.raises(RuntimeError):
        with eval_mode(net, None, "not a module"):
            assert not any(m.training for m in net.modules())
            raise RuntimeError("boom")
    assert [m.training for m in net.modules()] == [True, False, True]


def test_without_the_switch_the_scores_would_differ(noisy_model, monkeypatch):
    """The test above can fail: with eval_mode made a no-op, two scores disagree."""
    import contextlib

    import lib.score.redundancy

    monkeypatch.setattr(lib.score.redundancy, "eval_mode", lambda *m: contextlib.nullcontext())
    torch.manual_seed(0)
    t1 = score_text(noisy_model, None, TEXTS, batch_size=2)
    t2 = score_text(noisy_model, None, TEXTS, batch_size=2)
    assert not np.array_equal(t1.distance_all, t2.distance_all, equal_nan=True)
