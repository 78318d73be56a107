"""Chapter 5's tests of claim 5: the competence rule on known strings, the 2 x 2 of tasks, and
the cross-task removal comparison on constructed profiles whose answer is known (the same
blocks, task-dependent, cannot tell), each verdict shown saying no."""

from __future__ import annotations

import numpy as np
import pytest

from lib.evaluate.bleu import paired_translation_difference, score_translation
from lib.evaluate.metrics import paired_task_difference, score_task
from lib.errors import CompanionError
from lib.prune.profiles import BlockProfile, cross_specificity
from lib.report.rules import (ROOM_MIN, TASKS_DIFFER, TASKS_SAME, TASKS_UNDECIDED,
                              claim5_sentence, task_learned, task_profile_verdict)
from lib.score.agreement import spearman_rho
from lib.tasks import TASKS, contrast
from tests.references import constructed_profile

PATTERN = np.array([0.5, 0.1, 0.9, 0.3, 1.4, 0.2, 0.7, 1.1])
UNRELATED = np.array([1.2, 0.4, 0.3, 1.0, 0.1, 0.8, 0.5, 1.3])  # rho with PATTERN: about 0
OTHER = np.array([0.9, 1.3, 0.2, 0.6, 0.4, 1.0, 0.1, 0.8])  # a null's own shape


_profile = constructed_profile  # every item's cost of block b: costs[b] plus noise


def test_the_2x2_names_what_a_pair_changes():
    assert contrast(TASKS["asr"], TASKS["st-en-es"]) == "written"  # the same English clips
    assert contrast(TASKS["asr"], TASKS["st-es-en"]) == "heard"  # both write English
    assert contrast(TASKS["asr"], TASKS["asr-es"]) == "both"
    assert contrast(TASKS["st-en-es"], TASKS["st-es-en"]) == "both"
    assert contrast(TASKS["asr-es"], TASKS["st-en-es"]) == "heard"
    assert contrast(TASKS["asr-es"], TASKS["st-es-en"]) == "written"
    assert contrast(TASKS["asr"], TASKS["asr"]) == "neither"


REFS = ["en el principio creó dios los cielos y la tierra", "y la tierra estaba desordenada",
        "y dijo dios sea la luz y fue la luz", "y vio dios que la luz era buena",
        "y llamó dios a la luz día y a las tinieblas noche"] * 4


def test_a_task_is_learned_only_beyond_the_margin_over_its_floor():
    """Known strings through sacrebleu: a system that writes the references beats a floor
    that writes one fixed verse (learned); a system that writes the floor's verse is level
    with it (not learned, the rule says no)."""
    st = TASKS["st-en-es"]
    floor = score_task(st, REFS, ["y dijo dios"] * len(REFS))
    good = score_task(st, REFS, REFS)
    same = score_task(st, REFS, ["y dijo dios"] * len(REFS))
    d_good = paired_task_difference(st, good, floor)
    assert d_good["metric"] == "chrf"
    assert d_good["difference"] == pytest.approx(good["chrf"] - floor["chrf"])
    assert task_learned(d_good, "chrf")
    assert not task_learned(paired_task_difference(st, same, floor), "chrf")
    bleu = paired_task_difference(st, good, floor, "bleu")
    assert bleu == paired_translation_difference(good, floor, "bleu")


def test_the_competence_margin_by_hand():
    assert task_learned({"difference_ci95": [5.1, 9.0]}, "chrf")
    assert not task_learned({"difference_ci95": [4.9, 9.0]}, "chrf")  # beyond 0, not 5
    assert task_learned({"difference_ci95": [-0.40, -0.11]}, "wer")
    assert not task_learned({"difference_ci95": [-0.40, -0.09]}, "wer")
    with pytest.raises(ValueError, match="metric 'bleu'"):
        task_learned({"difference_ci95": [9.0, 10.0]}, "bleu")


def test_a_silent_system_keeps_its_count():
    empty = score_translation(REFS[:5], [""] * 5, allow_empty=True)
    assert empty["empty_hypotheses"] == 5 and empty["chrf"] == 0
    wer = score_task(TASKS["asr"], ["a b", "c d"], ["", "c d"])
    assert wer["empty_hypotheses"] == 1


def _halves_by_hand(p: BlockProfile, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(len(p.full.sums))
    h = [order[: len(order) // 2], order[len(order) // 2:]]
    return tuple((p.sums[:, i].sum(1) - p.full.sums[i].sum()) / p.full.tokens[i].sum()
                 for i in h)


def test_the_cross_task_rhos_by_hand():
    """Every rho is between disjoint halves (both tasks split by the seed-0 permutation of
    their items), each half's increase summed by hand."""
    a, b = _profile(PATTERN, 0.3, 1), _profile(UNRELATED, 0.3, 2, u=20, tokens=7.0)
    na, nb = _profile(OTHER, 0.3, 3), _profile(OTHER, 0.3, 4, u=20, tokens=7.0)
    s = cross_specificity(a, b, na, nb, draws=20)
    a1, a2 = _halves_by_hand(a, 0)
    b1, b2 = _halves_by_hand(b, 0)
    n_a2 = _halves_by_hand(na, 0)[1]
    n_b2 = _halves_by_hand(nb, 0)[1]
    assert s["rho"] == pytest.approx((spearman_rho(a1, b2) + spearman_rho(a2, b1)) / 2)
    assert s["rho_ceiling"] == pytest.approx((spearman_rho(a1, a2) + spearman_rho(b1, b2)) / 2)
    assert s["rho_null"] == pytest.approx((spearman_rho(a1, n_a2) + spearman_rho(b1, n_b2)) / 2)
    assert s["index"] == pytest.approx((s["rho"] - s["rho_null"])
                                       / (s["rho_ceiling"] - s["rho_null"]))


@pytest.mark.parametrize("u_b", [24, 32])  # other items; the same verses, resampled together
@pytest.mark.parametrize("b_pattern,null_pattern,want", [
    (PATTERN, OTHER, TASKS_SAME),  # both tasks mark the same blocks; the nulls do not
    (UNRELATED, OTHER, TASKS_DIFFER),  # the second task marks other blocks
    (PATTERN, PATTERN, TASKS_UNDECIDED),  # the null marks them too: no room to differ
])
def test_the_cross_task_verdict_can_say_each_thing(b_pattern, null_pattern, want, u_b):
    """Constructed profiles, on item sets of their own with other token counts (two tasks
    never share targets), through the chapter's chain at the default threshold 0.5."""
    a, b = _profile(PATTERN, 0.1, 1), _profile(b_pattern, 0.1, 2, u=u_b, tokens=3.0)
    na, nb = _profile(null_pattern, 0.1, 3), _profile(null_pattern, 0.1, 4, u=u_b, tokens=3.0)
    s = cross_specificity(a, b, na, nb, draws=200)
    assert task_profile_verdict(s, 0.5) == want


def test_the_cross_task_verdict_by_hand():
    def spec(ci, ceiling=0.9, null=0.1):
        return {"index_ci95": ci, "rho_ceiling": ceiling, "rho_null": null}

    assert task_profile_verdict(spec([0.5, 1.1]), 0.5) == TASKS_SAME
    assert task_profile_verdict(spec([-0.1, 0.49]), 0.5) == TASKS_DIFFER
    assert task_profile_verdict(spec([0.3, 0.8]), 0.5) == TASKS_UNDECIDED
    assert task_profile_verdict(spec([0.9, 1.0], 0.5, 0.5 - ROOM_MIN / 2), 0.5) == \
        TASKS_UNDECIDED  # the ceiling hardly above the null
    assert claim5_sentence([]).startswith("not measured")
    assert claim5_sentence([TASKS_SAME, TASKS_SAME]) == "the same blocks (2 of 2 pairs)"
    assert claim5_sentence([TASKS_SAME, TASKS_DIFFER]).startswith("task-dependent: 1 of 2")
    assert claim5_sentence([TASKS_SAME, TASKS_UNDECIDED]).startswith("cannot tell")


def test_a_null_of_other_items_is_one_line():
    a, b = _profile(PATTERN, 0.1, 1), _profile(PATTERN, 0.1, 2, u=24, tokens=3.0)
    with pytest.raises(CompanionError, match="null profile is not of the task's") as err:
        cross_specificity(a, b, _profile(OTHER, 0.1, 3, u=10), b, draws=5)
    assert "\n" not in str(err.value)


def test_the_removal_section_profiles_each_learned_task_under_its_own_prompt(
        random_features, monkeypatch, tmp_path):
    """Section 5.5's recipe on a tiny random model: one profile per learned task and block
    size, each the loss under the task's instruction and on its target (checked against a
    per-item loop with the layers physically removed), and a verdict per pair."""
    import copy
    import dataclasses
    from types import SimpleNamespace

    import torch

    from lib.build.speechllm import build_speechllm
    from lib.config.resolve import resolve
    from lib.data.features import FeatureSet
    from lib.prune.surgery import remove_layers
    from lib.recipes.task_profiles import removal_profiles, task_profiles

    monkeypatch.setenv("COMPANION_CACHE", str(tmp_path))
    cfg = resolve(5, preset="tiny", changes={"profile_fractions": [0.25],
                                             "precision": "fp32"})
    model = build_speechllm(cfg.models[0], seed=3).eval()
    fs = random_features(6, dim=64)
    fs = FeatureSet([dataclasses.replace(u, translation=f"uno dos {i}")
                     for i, u in enumerate(fs.utterances)], fs.feats)
    tests = {"asr": fs, "st-en-es": fs}
    prof = task_profiles(cfg, model, tests, ["asr", "st-en-es"], tmp_path / "run")
    again = task_profiles(cfg, model, tests, ["asr"], tmp_path / "run", nulls=False)
    assert set(again[1]) == {"asr"}  # read back as kept
    assert np.array_equal(again[1]["asr"].sums, prof[1]["asr"].sums)
    assert set(prof[1]) == {"asr", "asr, noise audio", "st-en-es", "st-en-es, noise audio"}
    st = TASKS["st-en-es"]
    cut = copy.deepcopy(model)
    remove_layers(cut.decoder, [2])
    total, tokens = 0.0, 0
    with cut.asking(st), torch.no_grad():
        for i in range(len(fs)):
            feats, lengths, texts = fs.batch([i], target=st.target)
            assert texts == [f"uno dos {i}"]
            total += float(cut.loss(feats, lengths, texts, reduction="sum"))
            tokens += len(cut.target_ids(texts[0]))
    full = prof[1]["st-en-es"].full
    got = (prof[1]["st-en-es"].sums[2].sum()) / full.tokens.sum()
    assert got == pytest.approx(total / tokens, rel=1e-4)

    runs = {"tiny-llama": SimpleNamespace(model=model,
                                          train=SimpleNamespace(run_dir=tmp_path / "run"))}
    sec = removal_profiles(cfg, runs, {"tiny-llama": ["asr", "st-en-es"]},
                           SimpleNamespace(tests=tests))
    pairs = sec["record"]["tiny-llama"]["pairs"]
    assert [(p["a"], p["b"], p["changes"]) for p in pairs] == [("asr", "st-en-es", "written")]
    assert pairs[0]["verdict"] in (TASKS_SAME, TASKS_DIFFER, TASKS_UNDECIDED)
    assert sec.glue["claim5_heard"].startswith("not measured")
    none = removal_profiles(cfg, runs, {"tiny-llama": ["asr"]}, SimpleNamespace(tests=tests))
    assert none.glue["claim5_sentence"].startswith("cannot tell: fewer than two tasks")


def test_the_record_keeps_every_scores_signature_and_silent_count():
    """A decoder that wrote nothing: one line naming the system and what to do, and its
    empty count and sacrebleu signature kept in the chapter's record."""
    from types import SimpleNamespace

    import pandas as pd

    from lib.recipes.ch05 import headline, silent_lines

    silent = score_task(TASKS["st-en-es"], REFS[:5], [""] * 5)
    some = score_task(TASKS["st-en-es"], REFS[:5], REFS[:4] + [""])
    d = paired_task_difference(TASKS["st-en-es"], some, silent)
    rec = {"metric": "bleu", "learned": False, "score": some, "floor": silent,
           "vs_floor": {**d, "verdict": "better than"}, "baselines": {}}
    found = {"dec": {"st-en-es": rec}}
    lines = silent_lines(found)
    assert lines == ["dec st-en-es, the model: 1 of 5 hypotheses empty",
                     "dec st-en-es, its no-audio floor: all 5 hypotheses are empty (it wrote "
                     "nothing and scores as silence): train longer or check max_new_tokens "
                     "and the task's prompt"]
    out = headline(found, pd.DataFrame({"decoder": []}), {}, SimpleNamespace(
        pairs={"test": 5}, reused=0), {"dec": {"tasks": [], "pairs": []}}, "cannot tell: x")
    task = out["decoders"]["dec"]["tasks"]["st-en-es"]
    assert task["floor"]["empty_hypotheses"] == 5 and task["empty_hypotheses"] == 1
    assert task["chrf_signature"].startswith("nrefs:1") and "bleu_signature" in task["floor"]
    assert task["learned"] is False and out["competence_margin"]["chrf"] == 5.0


def test_claim_5s_answer_says_why_it_cannot_tell():
    from lib.recipes.task_profiles import claim5_overall

    def p(verdict, room):
        return {"verdict": verdict, "rho_ceiling": 0.95, "rho_null": 0.95 - room}

    assert claim5_overall([p(TASKS_SAME, 0.5)] * 2).startswith("the same blocks")
    assert claim5_overall([p(TASKS_SAME, 0.5), p(TASKS_DIFFER, 0.5)]).startswith(
        "task-dependent: 1 of 2")
    out = claim5_overall([p(TASKS_UNDECIDED, 0.05), p(TASKS_UNDECIDED, 0.4)])
    assert out.startswith("cannot tell: no pair is shown to differ, and 2 of 2")
    assert "for 1 of them" in out and out.endswith("straddle the threshold")
    assert claim5_overall([]).startswith("cannot tell: fewer than two tasks")


def test_exercise_5_3_reads_the_removal_verdicts_with_another_room():
    """A pair with 0.08 of room: "cannot tell" at the book's 0.1, read by its index at 0.05
    (here wholly below 0.5: task-dependent); a pair with ample room does not change."""
    from lib.recipes.exercises import removal_at_room

    tight = {"n": 2, "a": "asr", "b": "st-en-es", "rho_ceiling": 0.98, "rho_null": 0.90,
             "index": -0.8, "index_ci95": [-1.9, -0.2], "verdict": TASKS_UNDECIDED}
    ample = {**tight, "b": "asr-es", "rho_null": 0.5, "index_ci95": [0.6, 1.0],
             "verdict": TASKS_SAME}
    sec = removal_at_room({"d": {"pairs": [tight, ample]}}, room_min=0.05)
    assert sec.table["verdict at 0.05"].tolist() == [TASKS_DIFFER, TASKS_SAME]
    assert sec.glue["ex_room_changed"] == 1 and sec.glue["ex_room_pairs"] == 2
    assert removal_at_room({"d": {"pairs": []}}).glue["ex_room_changed"] == 0
