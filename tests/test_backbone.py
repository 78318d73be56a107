"""Chapter 6's backbone on a tiny model: the cut by the rule on the pooled tasks (the same
choice as a hand computation on the profiles), healed once on a mix, every task scored
against the full model, exported with its card and reloaded exactly in a fresh process; a cut
chosen on a task the model did not learn is refused in one line."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest

from lib.build.speechllm import build_speechllm
from lib.config.resolve import resolve
from lib.data.features import FeatureSet
from lib.errors import CompanionError
from lib.prune.transfer import halves
from lib.recipes.transfer import profiles_of, task_conditions
from lib.tasks import TASKS


def _setup(random_features, tmp_path, monkeypatch, **changes):
    monkeypatch.setenv("COMPANION_CACHE", str(tmp_path))
    cfg = resolve(6, preset="tiny", changes={"precision": "fp32", "profile_utterances": 8,
                                             "profile_fractions": [0.25, 0.5], **changes})
    model = build_speechllm(cfg.models[0], seed=3).eval()
    fs = random_features(8, dim=64)
    fs = FeatureSet([dataclasses.replace(u, translation=f"uno dos {i}")
                     for i, u in enumerate(fs.utterances)], fs.feats)
    tasks = ["asr", "st-en-es"]
    mix = FeatureSet(fs.utterances * 2, fs.feats * 2,
                     tasks=[TASKS[t] for t in tasks for _ in fs.utterances])
    run = SimpleNamespace(model=model, train=SimpleNamespace(run_dir=tmp_path / "run"),
                          config=cfg.models[0])
    (tmp_path / "run").mkdir()
    tests = {t: fs for t in tasks}
    learned = {"groups": {"tiny-llama": task_conditions(run, tests, tasks)},
               "runs": {"tiny-llama": run}, "data": SimpleNamespace(mix=mix, tests=tests)}
    return cfg, learned


def test_the_pooled_cut_is_the_hand_computed_one(random_features, tmp_path, monkeypatch):
    from lib.recipes.backbone import cut_by_rule

    cfg, learned = _setup(random_features, tmp_path, monkeypatch)
    conds = learned["groups"]["tiny-llama"]
    cut = cut_by_rule(cfg, conds)
    prof = profiles_of(cfg, conds)
    for n, size in cut["sizes"].items():
        first = halves(8, cfg.train.seed)[0]
        costs = []  # each block's mean over the two tasks of its increase per token
        for b in range(len(prof[n]["asr"].starts)):
            per = [(prof[n][t].sums[b, first].sum() - prof[n][t].full.sums[first].sum())
                   / prof[n][t].full.tokens[first].sum() for t in ("asr", "st-en-es")]
            costs.append(sum(per) / 2)
        assert size["start"] == int(np.argmin(costs))
    within = [n for n, s in cut["sizes"].items() if s["within"]]
    assert cut["n"] == (max(within) if within else min(cut["sizes"]))
    assert cut["within"] == bool(within)


def test_a_cut_on_a_task_not_learned_is_refused(random_features, tmp_path, monkeypatch):
    from lib.recipes.backbone import cut_by_rule

    cfg, learned = _setup(random_features, tmp_path, monkeypatch,
                          backbone_chosen_on="asr-es")
    with pytest.raises(CompanionError, match="did not learn that task"):
        cut_by_rule(cfg, learned["groups"]["tiny-llama"])


def test_the_backbone_section_heals_scores_exports_and_reloads(random_features, tmp_path,
                                                              monkeypatch):
    from lib.recipes import ch06
    from lib.recipes.exercises import backbone_by_paper_rule

    cfg, learned = _setup(random_features, tmp_path, monkeypatch)
    sec = ch06.backbone(cfg, learned)
    rec = sec["record"]["tiny-llama"]
    assert set(rec["scores"]) == {"asr", "st-en-es"}
    assert rec["scores"]["st-en-es"]["metric"] == "chrf"
    ex = rec["export"]
    assert ex["reload"]["exact"], ex["reload"]
    folder = tmp_path / ex["folder"]
    meta = json.loads((folder / "speechllm.json").read_text())
    assert meta["pruned_layers"] == rec["cut"]["layers"]
    card = (folder / "README.md").read_text()
    assert "## Speed and memory" in card and "| st-en-es | chrF |" in card
    assert "the same outputs exactly" in sec.glue["backbone_export"]
    again = ch06.backbone(cfg, learned)  # a kept export is reused, checked again
    assert again["record"]["tiny-llama"]["export"]["reload"]["exact"]
    assert backbone_by_paper_rule(sec["record"]).glue["ex_rule_tasks"] == 2
