"""Chapter 5's section 5.5: the same blocks across tasks and languages, tested by removal
(book/05_tasks_and_languages.ipynb). Called as ``ch05.removal_profiles``.

For every task the model learned (section 5.3's competence rule), every contiguous block of
layers is removed in turn and every held-out test item's teacher-forced loss kept
(:func:`lib.prune.profiles.block_profile`, chapter 2's profile, here under the task's
instruction and on its target), beside the same items with noise where the audio goes (the
task's null). Each pair of learned tasks is then compared half against half
(:func:`lib.prune.profiles.cross_specificity`): their agreement placed between the null's
(0) and each task's agreement with itself (1), with a bootstrap interval over the items, and
judged by :func:`lib.report.rules.task_profile_verdict`: "the same blocks",
"task-dependent" or "cannot tell". Pairs are named by what they change (heard, written,
both; :func:`lib.tasks.contrast`).

Stage: the chapters' recipes. Explained in chapter 5 (book/05_tasks_and_languages.ipynb).
"""

from __future__ import annotations

import itertools
from typing import Any

import pandas as pd

from lib.config.sections import Run
from lib.paths import slug
from lib.recipes.pipeline import ModelRun
from lib.recipes.section import Section
from lib.report import plotting
from lib.report.rules import (ROOM_MIN, TASKS_DIFFER, TASKS_SAME, claim5_sentence,
                              task_profile_verdict)
from lib.tasks import CONTRASTS, TASKS, contrast

PROFILE_DRAWS = 1000
"""Resamples of each task's items behind every cross-task interval."""

NOISE = "noise audio"
"""The label of a task's null profile: its items with noise where the audio goes."""


def task_profiles(cfg: Run, model: Any, tests: dict[str, Any], tasks: list[str],
                  folder: Any, nulls: bool = True) -> dict[int, dict[str, Any]]:
    """``{n: {task: profile, "task, noise audio": profile}}`` for every block size of
    ``profile_fractions`` and every task in ``tasks``, on the first ``profile_utterances``
    test items of each task; kept in ``folder`` (the model's run folder), so chapters 5 and
    6 measure each once. ``nulls=False``: the tasks' profiles only."""
    from lib.clock import stage
    from lib.prune.loss_curves import LossMeter
    from lib.prune.profiles import kept_profile
    from lib.prune.strategies import cut_sizes
    from lib.score.controls import noise_features

    sc, seed, prec = cfg.score, cfg.train.seed, cfg.train.precision
    sizes = cut_sizes(sc.profile_fractions, len(model.decoder_layers))
    out: dict[int, dict[str, Any]] = {n: {} for n in sizes}
    with stage("profiles"):
        for name in tasks:
            items = tests[name].subset(sc.profile_utterances)
            with model.asking(TASKS[name]):
                sets = {name: items}
                if nulls:
                    sets[f"{name}, {NOISE}"] = noise_features(items, seed)
                for label, fs in sets.items():
                    meter = LossMeter(model, fs, sc.batch_size, prec)
                    keyed = {"data": fs.digest(), "prompt": model.prompt, "precision": prec,
                             "batch_size": sc.batch_size}
                    for n in sizes:
                        out[n][label] = kept_profile(meter, n, folder, label, keyed,
                                                     desc=f"{label}, blocks of {n}")
    return out


def compare_tasks(profiles: dict[int, dict[str, Any]], tasks: list[str], same_min: float,
                  seed: int = 0) -> list[dict[str, Any]]:
    """Every pair of ``tasks`` at every block size: what it changes, the cross-task
    specificity (:func:`lib.prune.profiles.cross_specificity`) and its verdict."""
    from lib.prune.profiles import cross_specificity

    rows = []
    for n, prof in profiles.items():
        for a, b in itertools.combinations(tasks, 2):
            spec = cross_specificity(prof[a], prof[b], prof[f"{a}, {NOISE}"],
                                     prof[f"{b}, {NOISE}"], draws=PROFILE_DRAWS, seed=seed)
            rows.append({"n": n, "a": a, "b": b, "changes": contrast(TASKS[a], TASKS[b]),
                         **spec, "verdict": task_profile_verdict(spec, same_min)})
    return rows


def removal_profiles(cfg: Run, runs: dict[str, ModelRun],
                     learned: dict[str, list[str]], data: Any) -> Section:
    """For each decoder: the removal profile of every learned task beside its null, every
    pair of learned tasks compared, the verdict per pair and per contrast."""
    sc, rows, record = cfg.score, [], {}
    for d, run in runs.items():
        name, tasks = slug(d), learned.get(slug(d), [])
        if len(tasks) < 1:
            record[name] = {"tasks": [], "pairs": []}
            continue
        prof = task_profiles(cfg, run.model, data.tests, tasks, run.train.run_dir)
        plotting.plot_functional_profiles(prof, title=f"{name}, learned tasks")
        pairs = compare_tasks(prof, tasks, sc.specific_min, cfg.train.seed)
        record[name] = {"tasks": tasks, "n_items": {t: len(prof[next(iter(prof))][t].full.sums)
                                                    for t in tasks},
                        "pairs": pairs}
        for p in pairs:
            lo, hi = p["index_ci95"]
            rows.append({"decoder": name, "n": p["n"], "a": p["a"], "b": p["b"],
                         "changes": p["changes"],
                         "Spearman across (ceiling / null)": f"{p['rho']:.2f} "
                         f"({p['rho_ceiling']:.2f} / {p['rho_null']:.2f})",
                         f"top-{p['k']} overlap": p["top_k_overlap"],
                         "index [95 % CI]": f"{p['index']:.2f} [{lo:.2f}, {hi:.2f}]",
                         "verdict": p["verdict"]})
    every = [p for r in record.values() for p in r["pairs"]]
    glue = {f"claim5_{c}": claim5_sentence([p["verdict"] for p in every if p["changes"] == c])
            for c in CONTRASTS}
    glue.update(claim5_sentence=claim5_overall(every), n_task_pairs=len(every),
                same_min=sc.specific_min, room_min=ROOM_MIN,
                profile_tasks="; ".join(f"{d}: {', '.join(r['tasks']) or 'none'}"
                                        for d, r in record.items()))
    items = [] if rows else ["no pair of learned tasks for any decoder: nothing to compare by "
                             "removal (section 5.3 says which tasks are learned)"]
    return Section(pd.DataFrame(rows), glue, {"record": record}, items=items, precision=2)


def claim5_overall(pairs: list[dict[str, Any]]) -> str:
    """The chapter's answer to claim 5 for tasks and languages, from every pair's verdict;
    a "cannot tell" says why (no room above the null, or intervals that straddle)."""
    v = [p["verdict"] for p in pairs]
    if not v:
        return ("cannot tell: fewer than two tasks are learned, so no pair of tasks can be "
                "compared by removal")
    if all(x == TASKS_SAME for x in v):
        return ("the same blocks: every pair of learned tasks agrees on what removing a block "
                "costs about as much as each task agrees with itself, as the paper's claim 5 "
                "says")
    if any(x == TASKS_DIFFER for x in v):
        return (f"task-dependent: {sum(x == TASKS_DIFFER for x in v)} of {len(v)} pairs of "
                "learned tasks mark other blocks than each marks with itself, so one cut "
                "chosen on one task is not shown to suit the others (chapter 6 tests it)")
    tight = sum(not p["rho_ceiling"] - p["rho_null"] >= ROOM_MIN for p in pairs)
    open_ = len(v) - sum(x == TASKS_SAME for x in v)
    rest = (", and the others' intervals straddle the threshold" if tight < open_ else "")
    return (f"cannot tell: no pair is shown to differ, and {open_} of {len(v)} are not shown "
            f"to agree; for {tight} of them a task's noise-audio null agrees with it within "
            f"{ROOM_MIN:g} of the task's agreement with itself, so the profiles show mostly the "
            f"decoder's own shape{rest}")
