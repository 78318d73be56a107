"""BLEU and chrF with intervals: the point scores are sacrebleu's, every bootstrap replicate
is sacrebleu's corpus score of its own draw, and the paired difference is the difference."""

from __future__ import annotations

import numpy as np
import pytest
from sacrebleu.metrics import BLEU, CHRF

from lib.errors import CompanionError
from lib.evaluate.bleu import _draws, paired_translation_difference, score_translation

REFS = ["the cat sat on the mat", "a dog ran in the park", "we go home now",
        "it rains all day long", "the sun is up"]
HYPS = ["the cat sat on a mat", "a dog runs in the park", "we go now",
        "it rains all the day", "sun is up"]
OTHER = ["a cat on the mat", "the dog ran", "home now", "rain all day", "the sun is up"]


def test_point_scores_are_sacrebleus():
    s = score_translation(REFS, HYPS)
    assert s["bleu"] == pytest.approx(BLEU().corpus_score(HYPS, [REFS]).score)
    assert s["chrf"] == pytest.approx(CHRF().corpus_score(HYPS, [REFS]).score)
    assert s["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    assert s["chrf_signature"].startswith("nrefs:1|case:mixed")
    assert s["bleu_ci95"][0] <= s["bleu"] <= s["bleu_ci95"][1]


def test_a_bootstrap_replicate_is_the_corpus_score_of_its_draw():
    """The slow reference: sacrebleu scoring the drawn sentences as a new corpus."""
    draws = _draws(len(REFS), 20, 0)
    s = score_translation(REFS, HYPS, n_boot=20)
    from lib.evaluate.bleu import _score, _stats

    stats = _stats(BLEU(), REFS, HYPS)
    for row in draws[:5]:
        refs, hyps = [REFS[i] for i in row], [HYPS[i] for i in row]
        assert _score(BLEU(), stats[row]) == pytest.approx(
            BLEU().corpus_score(hyps, [refs]).score)
    reps = [_score(BLEU(), stats[row]) for row in draws]
    assert s["bleu_ci95"] == pytest.approx([np.percentile(reps, 2.5),
                                            np.percentile(reps, 97.5)])


def test_the_paired_difference_is_the_difference_of_the_scores():
    a, b = score_translation(REFS, HYPS), score_translation(REFS, OTHER)
    d = paired_translation_difference(a, b)
    assert d["difference"] == pytest.approx(a["bleu"] - b["bleu"])
    assert d["difference_ci95"][0] <= d["difference"] <= d["difference_ci95"][1]
    same = paired_translation_difference(a, a, metric="chrf")
    assert same["difference"] == 0 and same["difference_ci95"] == [0.0, 0.0]


def test_bad_translation_inputs_are_one_line():
    with pytest.raises(CompanionError, match="all 2 hypotheses are empty: BLEU of nothing"):
        score_translation(["a b", "c d"], ["", " "])
    silent = score_translation(["a b", "c d"], ["", " "], allow_empty=True)
    assert silent["bleu"] == 0 and silent["empty_hypotheses"] == 2
    with pytest.raises(CompanionError, match="2 references but 1 hypotheses"):
        score_translation(["a", "b"], ["a"])
    with pytest.raises(CompanionError, match="reference 1 is empty"):
        score_translation(["a", ""], ["a", "b"])
    a, b = score_translation(REFS, HYPS), score_translation(REFS[:3], HYPS[:3])
    with pytest.raises(CompanionError, match="5 and 3 utterances"):
        paired_translation_difference(a, b)
