"""Functional profiles: each block's removal cost against physically pruned copies; the
agreement, its ceiling and the specificity index on constructed profiles, by hand, including
one where a null agrees as much (the index says no)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from lib.build.speechllm import build_speechllm
from lib.config.sections import ModelConfig
from lib.errors import CompanionError
from lib.prune.loss_curves import LossMeter, UtteranceLosses
from lib.prune.profiles import (BlockProfile, TextLossMeter, block_profile, profile_agreement,
                                random_weights,
                                specificity, specificity_index, split_half_rho, top_k_overlap)
from lib.prune.surgery import remove_layers
from lib.report.rules import (PROFILE_DECODER, PROFILE_NOT, PROFILE_SPECIFIC, PROFILE_UNDECIDED,
                              profile_verdict)


@pytest.fixture(scope="module")
def model():
    return build_speechllm(ModelConfig(encoder="tiny-whisper", decoder="tiny-llama",
                                       projector_stack=1, projector_hidden=32, lora_rank=4,
                                       lora_alpha=8), seed=5).eval()


def _mean_loss(model, data) -> float:
    """The reference: each utterance alone, summed losses over summed tokens."""
    total, tokens = 0.0, 0
    with torch.no_grad():
        for i in range(len(data)):
            feats, lengths, texts = data.batch([i], target=model.task.target)
            total += float(model.loss(feats, lengths, texts, reduction="sum"))
            tokens += len(model.target_ids(texts[0]))
    return total / tokens


@pytest.mark.parametrize("decoder", ["tiny-llama", "tiny-gemma"])
@pytest.mark.parametrize("n", [1, 2])
def test_each_blocks_cost_matches_a_physically_pruned_copy(decoder, n, random_features):
    """The prefix kept from the full pass (every block but the first and the last) gives
    what a copy with the block removed for good scores, utterance by utterance."""
    m = model_of(decoder)
    data = random_features(6, dim=64, seed=4)
    p = block_profile(LossMeter(m, data, batch_size=4), n)
    assert p.starts.tolist() == list(range(4 - n + 1))
    full = _mean_loss(m, data)
    for b, start in enumerate(p.starts):
        pruned = copy.deepcopy(m)
        remove_layers(pruned.decoder, list(range(int(start), int(start) + n)))
        assert p.increase()[b] == pytest.approx(_mean_loss(pruned, data) - full, abs=1e-4)
    plain = block_profile(LossMeter(m, data, batch_size=4), n, reuse_prefix=False)
    np.testing.assert_allclose(p.sums, plain.sums, rtol=1e-5, atol=1e-5)


def model_of(decoder: str):
    return build_speechllm(ModelConfig(encoder="tiny-whisper", decoder=decoder,
                                       projector_stack=1, projector_hidden=32, lora_rank=4,
                                       lora_alpha=8), seed=5).eval()


def test_the_text_meter_is_the_decoders_own_language_model_loss(model):
    """The reference: transformers' own loss (labels) of each transcript alone, times its
    number of predicted tokens; then with a layer removed, against a pruned copy."""
    texts = ["one two three", "four five", "six seven eight nine", "ten", "red green"]
    meter = TextLossMeter(model, texts, batch_size=3)

    def one(m, t):
        start = m.tokenizer.bos_token_id
        ids = torch.tensor([[m.eos_id if start is None else start] + m.target_ids(t)])
        with torch.no_grad():
            return float(m.decoder(input_ids=ids, labels=ids).loss) * (ids.shape[1] - 1)

    np.testing.assert_allclose(meter().sums, [one(model, t) for t in texts], rtol=1e-4)
    pruned = copy.deepcopy(model)
    remove_layers(pruned.decoder, [2])
    np.testing.assert_allclose(meter.without([2]).sums, [one(pruned, t) for t in texts],
                               rtol=1e-4)


def test_the_random_weights_null_keeps_the_architecture_and_learns_nothing(model):
    other = random_weights(model, seed=1)
    assert other.decoder.config.to_dict() == model.decoder.config.to_dict()
    mats = [(n, p) for n, p in model.decoder.named_parameters() if p.ndim >= 2]
    theirs = dict(other.decoder.named_parameters())
    assert all(not torch.equal(p, theirs[n]) for n, p in mats)
    for a, b in zip(model.projector.parameters(), other.projector.parameters()):
        assert torch.equal(a, b)  # the trained projector is kept
    again = dict(random_weights(model, seed=1).decoder.named_parameters())
    assert all(torch.equal(theirs[n], again[n]) for n, _ in mats)  # seeded


def test_top_k_overlap_by_hand():
    a, b = np.array([0.1, 0.5, 0.2, 0.9]), np.array([0.3, 0.1, 0.2, 0.8])
    assert top_k_overlap(a, b, 2) == 0.5  # {0, 2} against {1, 2}
    assert top_k_overlap(a, a, 3) == 1.0


def test_the_specificity_index_by_hand():
    assert specificity_index(0.8, 0.2, 1.0) == pytest.approx(0.75)
    assert specificity_index(0.2, 0.2, 1.0) == 0
    assert specificity_index(0.8, 0.9, 0.9) == 0  # the null agrees as much as the ceiling
    assert np.isnan(specificity_index(np.nan, 0.2, 1.0))


def _profile(pattern: np.ndarray, noise: float, seed: int, u: int = 24) -> BlockProfile:
    """Constructed: every utterance's cost of block b is ``pattern[b]`` plus noise."""
    rng = np.random.default_rng(seed)
    tokens = np.full(u, 5.0)
    full = UtteranceLosses(np.full(u, 10.0), tokens)
    per_token = pattern[:, None] + noise * rng.standard_normal((len(pattern), u))
    return BlockProfile(2, np.arange(len(pattern)), full, full.sums + per_token * tokens)


PATTERN = np.array([0.5, 0.1, 0.9, 0.3, 1.4, 0.2, 0.7, 1.1])


def test_specificity_says_no_when_a_null_agrees_as_much():
    """Text and speech share the pattern, and so does the null input: the agreement
    belongs to the decoder, not to the inputs (index about 0)."""
    text, speech = _profile(PATTERN, 0.05, 1), _profile(PATTERN, 0.05, 2)
    null = _profile(PATTERN, 0.05, 3)
    s = specificity(text, speech, null, draws=200)
    assert s["rho"] > 0.9 and s["rho_null"] > 0.9
    assert abs(s["index"]) < 0.2 and s["index_ci95"][0] < 0.2


def test_specificity_says_yes_when_the_null_does_not_agree():
    text, speech = _profile(PATTERN, 0.05, 1), _profile(PATTERN, 0.05, 2)
    null = _profile(PATTERN[::-1].copy(), 0.05, 3)
    s = specificity(text, speech, null, draws=200)
    assert s["rho_ceiling"] > 0.9 and s["index"] > 0.8 and s["index_ci95"][0] > 0.5
    assert split_half_rho(text) == pytest.approx(s["rho_ceiling"])


UNRELATED = np.array([1.2, 0.4, 0.3, 1.0, 0.1, 0.8, 0.5, 1.3])  # rho with PATTERN: about 0


@pytest.mark.parametrize("speech_pattern,null_pattern,want", [
    (PATTERN, PATTERN[::-1].copy(), PROFILE_SPECIFIC),  # the null marks other blocks
    (PATTERN, PATTERN, PROFILE_DECODER),  # a null marks the same: the decoder's profile
    (UNRELATED, PATTERN[::-1].copy(), PROFILE_NOT),  # text and speech differ
])
def test_the_profile_verdict_can_say_each_thing(speech_pattern, null_pattern, want):
    """Constructed profiles through the chapter's own chain (specificity, then the rule at
    the default thresholds, Spearman 0.8 and index 0.5)."""
    speech, text = _profile(speech_pattern, 0.05, 1), _profile(PATTERN, 0.05, 2)
    null = _profile(null_pattern, 0.05, 3)
    s = specificity(speech, text, null, draws=300)
    assert profile_verdict(s["rho"], s["index_ci95"], 0.8, 0.5) == want


def test_the_profile_verdict_by_hand():
    assert profile_verdict(0.79, [0.9, 1.0], 0.8, 0.5) == PROFILE_NOT
    assert profile_verdict(float("nan"), [0.9, 1.0], 0.8, 0.5) == PROFILE_NOT
    assert profile_verdict(0.9, [0.5, 1.0], 0.8, 0.5) == PROFILE_SPECIFIC
    assert profile_verdict(0.9, [-0.2, 0.49], 0.8, 0.5) == PROFILE_DECODER
    assert profile_verdict(0.9, [0.3, 0.7], 0.8, 0.5) == PROFILE_UNDECIDED


@pytest.mark.parametrize("call,match", [
    (lambda m, d: block_profile(LossMeter(m, d), 4), "block size n=4 out of range"),
    (lambda m, d: profile_agreement(_profile(PATTERN, 0.1, 1),
                                    _profile(PATTERN[:5].copy(), 0.1, 1)),
     "profiles of blocks|same decoder"),
    (lambda m, d: split_half_rho(_profile(PATTERN, 0.1, 1, u=3)), "at least 4 utterances"),
    (lambda m, d: TextLossMeter(m, ["a", "b"]), "at least 5 transcripts"),
])
def test_bad_input_is_one_line(model, random_features, call, match):
    with pytest.raises(CompanionError, match=match) as err:
        call(model, random_features(6, dim=64))
    assert "\n" not in str(err.value)
