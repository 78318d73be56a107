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
from lib.prune.profiles import (BlockProfile, block_profile, profile_agreement,
                                specificity, specificity_index, split_half_rho, top_k_overlap)
from lib.prune.surgery import remove_layers


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


def test_each_blocks_cost_matches_a_physically_pruned_copy(model, random_features):
    data = random_features(6, dim=64, seed=4)
    p = block_profile(LossMeter(model, data, batch_size=4), 2)
    assert p.starts.tolist() == [0, 1, 2]
    full = _mean_loss(model, data)
    for b, start in enumerate(p.starts):
        pruned = copy.deepcopy(model)
        remove_layers(pruned.decoder, [int(start), int(start) + 1])
        assert p.increase()[b] == pytest.approx(_mean_loss(pruned, data) - full, abs=1e-4)


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


@pytest.mark.parametrize("call,match", [
    (lambda m, d: block_profile(LossMeter(m, d), 4), "block size n=4 out of range"),
    (lambda m, d: profile_agreement(_profile(PATTERN, 0.1, 1),
                                    _profile(PATTERN[:5].copy(), 0.1, 1)),
     "profiles of blocks|same decoder"),
    (lambda m, d: split_half_rho(_profile(PATTERN, 0.1, 1, u=3)), "at least 4 utterances"),
])
def test_bad_input_is_one_line(model, random_features, call, match):
    with pytest.raises(CompanionError, match=match) as err:
        call(model, random_features(6, dim=64))
    assert "\n" not in str(err.value)
