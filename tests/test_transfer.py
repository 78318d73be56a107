"""Chapter 6's transfer efficiency on constructed profiles whose answer is known: TE by the
formula worked by hand, the halves, the loss selector, and each verdict ("transfers",
"<kind>-dependent", "cannot tell") shown coming out each way."""

from __future__ import annotations

import functools
import numpy as np
import pytest

from lib.errors import CompanionError
from lib.prune.profiles import BlockProfile
from lib.prune.transfer import halves, loss_choice, transfer_cell, transfer_matrix
from lib.report.rules import (TRANSFER_MIN, TRANSFER_UNDECIDED, TRANSFERS, dependent,
                              transfer_sentence, transfer_verdict)
from tests.references import constructed_profile

COSTS = np.array([0.5, 0.1, 0.9, 0.3, 1.4, 0.2, 0.7, 1.1])  # best block: start 1
ELSEWHERE = np.array([0.9, 1.3, 0.6, 0.8, 0.1, 1.0, 0.4, 1.2])  # best block: start 4


_profile = functools.partial(constructed_profile, u=40)  # item costs: costs[b] + noise


def test_te_is_the_formula_worked_by_hand():
    p = _profile(COSTS, 0.0, 0)
    mean, best = COSTS.mean(), COSTS.min()
    cell = transfer_cell(p, np.arange(20), chosen_a=3, chosen_b=1, draws=100)
    assert cell["te"] == pytest.approx((mean - 0.3) / (mean - best))
    assert cell["te_self"] == pytest.approx(1.0)
    assert cell["random_mean"] == pytest.approx(mean)
    assert cell["best_start"] == 1 and cell["cost_a"] == pytest.approx(0.3)
    # no noise: every resample gives the same TE
    assert cell["te_ci95"] == pytest.approx([cell["te"]] * 2)
    worse = transfer_cell(p, np.arange(20), chosen_a=4, chosen_b=1, draws=100)
    assert worse["te"] < 0  # worse than a block drawn at random


def test_te_on_a_half_matches_a_slow_loop_over_its_items():
    p = _profile(COSTS, 0.6, 3, u=12)
    rows = np.array([0, 2, 5, 7, 9, 11])
    inc = []
    for b in range(len(COSTS)):  # the increase per token of each block, item by item
        extra = sum(p.sums[b, u] - p.full.sums[u] for u in rows)
        inc.append(extra / sum(p.full.tokens[u] for u in rows))
    inc = np.array(inc)
    want = (inc.mean() - inc[6]) / (inc.mean() - inc.min())
    assert transfer_cell(p, rows, 6, 6, draws=100)["te"] == pytest.approx(want)


def test_halves_are_disjoint_fixed_and_refuse_too_few_items():
    a, b = halves(11, seed=2)
    assert not set(a) & set(b) and sorted([*a, *b]) == list(range(11))
    assert np.array_equal(halves(11, seed=2)[0], a)
    with pytest.raises(CompanionError, match="at least 4 items"):
        halves(3)


def test_the_loss_selector_takes_the_cheapest_block_on_its_rows():
    p = _profile(COSTS, 0.0, 0)
    assert loss_choice(p, np.arange(10)) == 1
    tied = _profile(np.array([0.2, 0.2, 0.5]), 0.0, 0)
    assert loss_choice(tied, np.arange(4)) == 0  # ties: the earlier block


def test_a_cut_transfers_when_two_conditions_share_their_costs():
    a, b = _profile(COSTS, 0.2, 1), _profile(COSTS, 0.2, 2)
    choices = {c: loss_choice(p, halves(40)[0]) for c, p in (("a", a), ("b", b))}
    cells = {(x["a"], x["b"]): x for x in transfer_matrix({"a": a, "b": b}, choices, 300)}
    assert transfer_verdict(cells[("a", "b")]) == TRANSFERS
    assert cells[("b", "b")]["difference"] == 0.0  # the diagonal is TE(B -> B) itself


def test_a_cut_is_dependent_when_the_other_condition_marks_another_block():
    a, b = _profile(COSTS, 0.2, 1), _profile(ELSEWHERE, 0.2, 2)
    choices = {c: loss_choice(p, halves(40)[0]) for c, p in (("a", a), ("b", b))}
    cells = {(x["a"], x["b"]): x for x in transfer_matrix({"a": a, "b": b}, choices, 300)}
    assert transfer_verdict(cells[("a", "b")], "encoder") == dependent("encoder")
    assert transfer_verdict(cells[("b", "a")]) == dependent("task")
    assert transfer_verdict(cells[("a", "a")]) == TRANSFERS


def test_cannot_tell_when_the_items_disagree_too_much():
    flat = np.full(len(COSTS), 0.5)
    a, b = _profile(COSTS, 0.2, 1), _profile(flat, 1.5, 2, u=8)
    choices = {"a": loss_choice(a, halves(40)[0]), "b": loss_choice(b, halves(8)[0])}
    cells = {(x["a"], x["b"]): x for x in transfer_matrix({"a": a, "b": b}, choices, 300)}
    assert transfer_verdict(cells[("a", "b")]) == TRANSFER_UNDECIDED


def test_the_verdict_rule_on_constructed_cells():
    cell = {"te_ci95": [TRANSFER_MIN, 1.0], "difference_ci95": [-0.1, 0.05]}
    assert transfer_verdict(cell) == TRANSFERS
    assert transfer_verdict({**cell, "te_ci95": [TRANSFER_MIN - 0.01, 1.0]}) == \
        TRANSFER_UNDECIDED
    assert transfer_verdict({**cell, "difference_ci95": [-0.3, -0.01]}) == dependent("task")
    assert transfer_verdict({**cell, "te_ci95": [float("nan")] * 2}) == TRANSFER_UNDECIDED
    assert transfer_verdict(cell, te_min=0.95) == TRANSFER_UNDECIDED


def test_the_sentence_says_yes_no_and_cannot_tell():
    assert transfer_sentence([TRANSFERS] * 2, "task").startswith("the cut transfers (2 of 2")
    assert transfer_sentence([TRANSFERS, dependent("task")], "task").startswith(
        "task-dependent: in 1 of 2")
    assert transfer_sentence([TRANSFERS, TRANSFER_UNDECIDED], "encoder").startswith(
        "cannot tell (1 of 2 encoder pairs")
    assert transfer_sentence([], "task").startswith("not measured")


def test_bad_input_is_one_line():
    a = _profile(COSTS, 0.0, 0)
    with pytest.raises(CompanionError, match="block start 9"):
        transfer_cell(a, np.arange(8), 9, 1)
    with pytest.raises(CompanionError, match="no chosen block for b"):
        transfer_matrix({"a": a, "b": a}, {"a": 1})
    three = BlockProfile(3, np.arange(6), a.full, a.sums[:6])
    with pytest.raises(CompanionError, match="one size"):
        transfer_matrix({"a": a, "b": three}, {"a": 1, "b": 1})


def test_the_chapter_section_on_a_tiny_model(random_features, tmp_path, monkeypatch):
    """Two tasks of one tiny model: every cell of both selectors and both block sizes, the
    diagonal TE(B -> B), a verdict on every other cell, and decoding of the cells that
    carry one; profiles and decodes kept with the run."""
    import dataclasses
    from types import SimpleNamespace

    from lib.build.speechllm import build_speechllm
    from lib.config.resolve import resolve
    from lib.data.features import FeatureSet
    from lib.recipes.transfer import confirm, task_conditions, transfer_section

    monkeypatch.setenv("COMPANION_CACHE", str(tmp_path))
    cfg = resolve(6, preset="tiny", changes={"precision": "fp32", "profile_utterances": 8})
    model = build_speechllm(cfg.models[0], seed=3).eval()
    fs = random_features(8, dim=64)
    fs = FeatureSet([dataclasses.replace(u, translation=f"uno dos {i}")
                     for i, u in enumerate(fs.utterances)], fs.feats)
    run = SimpleNamespace(model=model, train=SimpleNamespace(run_dir=tmp_path / "run"))
    conds = task_conditions(run, {"asr": fs, "st-en-es": fs}, ["asr", "st-en-es"])
    sec = transfer_section(cfg, {"tiny": conds}, "task")
    cells = sec["cells"]
    assert len(cells) == 2 * 2 * 4  # selectors x block sizes x ordered pairs
    diag = [c for c in cells if c["a"] == c["b"]]
    assert all(c["verdict"] == "" and c["difference"] == 0.0 for c in diag)
    off = [c for c in cells if c["a"] != c["b"]]
    assert {c["changes"] for c in off} == {"written"}
    assert all(c["verdict"] in (TRANSFERS, TRANSFER_UNDECIDED, dependent("task"))
               for c in off)
    assert (tmp_path / "run" / "profiles").is_dir()
    forced = [{**c, "verdict": dependent("task"), "chosen_a": 0, "chosen_b": 1,
               "n": 1} for c in off[:1]]
    checked = confirm(cfg, {"tiny": conds}, forced, "task")
    assert checked["record"][0]["decoded"] and checked.glue["task_decodes"] == 2


def test_the_null_encoders_cut_is_read_on_the_runs_own_encoder():
    from lib.recipes.ch06 import null_encoder_sentence

    cell = {"selector": "loss", "n": 3, "a": "w@random", "b": "w", "te": 0.95,
            "te_ci95": [0.9, 1.0], "te_self": 0.96, "verdict": TRANSFERS}
    other = {**cell, "a": "w@half"}
    encs = ("w", "w@half", "w@random")
    assert null_encoder_sentence([cell, other], encs) == (
        "loss, 3 layers: transfers (TE 0.95 [0.90, 1.00] against the encoder's own choice's "
        "0.96)")
    no = {**cell, "te": 0.5, "te_ci95": [0.4, 0.6], "verdict": dependent("encoder")}
    assert "encoder-dependent (TE 0.50" in null_encoder_sentence([no], encs)
    assert null_encoder_sentence([cell], ("w", "w@half")).startswith("no null encoder")
