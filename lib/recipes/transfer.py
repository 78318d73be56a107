"""Chapter 6's transfer matrices (book/06_one_backbone.ipynb): does a cut chosen on one
condition suit another?

A condition is a model asked one task on held-out items of its own: a learned task of
chapter 5's multi-task model (tasks and languages), or English ASR by one encoder's
SpeechLLM (encoders). For each, every block of each size of ``profile_fractions`` is removed
in turn on its items (:func:`lib.recipes.task_profiles.task_profiles`, kept with the model's
run, so chapter 5's profiles are reused), a block is chosen on the first half of its items
by each selector (:data:`lib.prune.transfer.SELECTORS`: the paper's angular distance from the
hidden states, or the loss itself), and every ordered pair is scored
(:func:`lib.prune.transfer.transfer_matrix`) and judged by
:func:`lib.report.rules.transfer_verdict`. Decoding then checks the cells that carry a
verdict (:func:`confirm`). Stage: the chapters' recipes. Explained in chapter 6.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lib.config.sections import Run
from lib.data.features import FeatureSet
from lib.prune.transfer import SELECTORS, halves, loss_choice, transfer_matrix
from lib.recipes.section import Section
from lib.report import plotting
from lib.report.rules import (TRANSFER_UNDECIDED, TRANSFERS, dependent,
                              paired_target, transfer_sentence, transfer_verdict)
from lib.tasks import TASKS, contrast

TRANSFER_DRAWS = 1000
"""Resamples of each scoring half behind every TE interval."""


@dataclass
class Condition:
    """One condition: a model, the task it is asked, its held-out items, and the folder
    of its weights (where its profiles and decodes are kept)."""

    model: Any
    task: str
    items: FeatureSet
    folder: Path


def task_conditions(run: Any, tests: dict[str, FeatureSet], tasks: list[str]
                    ) -> dict[str, Condition]:
    """Chapter 5's multi-task model asked each of ``tasks`` on its own test items."""
    return {t: Condition(run.model, t, tests[t], run.train.run_dir) for t in tasks}


def _half(fs: FeatureSet, rows: np.ndarray) -> FeatureSet:
    return FeatureSet([fs.utterances[i] for i in rows], [fs.feats[i] for i in rows])


def profiles_of(cfg: Run, conds: dict[str, Condition]) -> dict[int, dict[str, Any]]:
    """``{n: {condition: BlockProfile}}`` on each condition's first ``profile_utterances``
    items (kept with its model)."""
    from lib.recipes.task_profiles import task_profiles

    out: dict[int, dict[str, Any]] = {}
    for name, c in conds.items():
        prof = task_profiles(cfg, c.model, {c.task: c.items}, [c.task], c.folder, nulls=False)
        for n, p in prof.items():
            out.setdefault(n, {})[name] = p[c.task]
    return out


def choices_of(cfg: Run, conds: dict[str, Condition], profiles: dict[int, dict[str, Any]]
               ) -> dict[str, dict[int, dict[str, int]]]:
    """``{selector: {n: {condition: start}}}``: the block each selector chooses on each
    condition's first half of items."""
    from lib.prune.strategies import angular_layers
    from lib.score.redundancy import score_speech

    sc = cfg.score
    out: dict[str, dict[int, dict[str, int]]] = {s: {n: {} for n in profiles} for s in SELECTORS}
    for name, c in conds.items():
        items = c.items.subset(sc.profile_utterances)
        first, _ = halves(len(items), cfg.train.seed)
        with c.model.asking(TASKS[c.task]):
            dist = score_speech(c.model, _half(items, first), batch_size=sc.batch_size,
                                positions="transcript")
        for n, prof in profiles.items():
            out["angular"][n][name] = angular_layers(dist, n)[0]
            out["loss"][n][name] = loss_choice(prof[name], first)
    return out


def cells_of(cfg: Run, conds: dict[str, Condition], kind: str) -> list[dict[str, Any]]:
    """Every cell of every matrix (selector x block size), each off-diagonal one with its
    verdict and what its two conditions differ in."""
    profiles = profiles_of(cfg, conds)
    chosen = choices_of(cfg, conds, profiles)
    cells = []
    for sel in SELECTORS:
        for n, prof in profiles.items():
            for cell in transfer_matrix(prof, chosen[sel][n], TRANSFER_DRAWS, cfg.train.seed):
                diag = cell["a"] == cell["b"]
                changes = (contrast(TASKS[cell["a"]], TASKS[cell["b"]])
                           if kind == "task" and not diag else kind)
                cells.append({"selector": sel, "kind": kind, **cell,
                              "changes": "" if diag else changes,
                              "verdict": "" if diag else transfer_verdict(cell, kind)})
    return cells


def _interval(pair: list[float]) -> str:
    return "[{:.2f}, {:.2f}]".format(*pair)


def transfer_section(cfg: Run, groups: dict[str, dict[str, Condition]], kind: str
                     ) -> Section:
    """The matrices of one kind of condition for each group (a decoder's tasks, or the
    encoders): the heat maps, the table of off-diagonal cells, and the sentences per
    selector over every group."""
    cells = []
    for group, conds in groups.items():
        if len(conds) < 2:  # nothing to transfer between
            continue
        found = [{"group": group, **c} for c in cells_of(cfg, conds, kind)]
        plotting.plot_transfer(found, f"{group}: a cut chosen on one {kind}, scored on another")
        cells += found
    off = [c for c in cells if c["a"] != c["b"]]
    rows = [{"group": c["group"], "selector": c["selector"], "n": c["n"], "chosen on": c["a"],
             "scored on": c["b"], "changes": c["changes"],
             "blocks (A's, B's own, B's best)": f"{c['chosen_a']}, {c['chosen_b']}, "
                                                 f"{c['best_start']}",
             "TE(A->B) [95 % CI]": f"{c['te']:.2f} {_interval(c['te_ci95'])}",
             "TE(B->B) [95 % CI]": f"{c['te_self']:.2f} {_interval(c['te_self_ci95'])}",
             "difference [95 % CI]": f"{c['difference']:+.2f} "
                                     f"{_interval(c['difference_ci95'])}",
             "verdict": c["verdict"]} for c in off]
    glue = {f"{kind}_transfer_{sel}": transfer_sentence(
        [c["verdict"] for c in off if c["selector"] == sel], kind) for sel in SELECTORS}
    glue.update({f"n_{kind}_cells": len(off),
                 f"n_{kind}_transfers": sum(c["verdict"] == TRANSFERS for c in off),
                 f"n_{kind}_dependent": sum(c["verdict"] == dependent(kind) for c in off),
                 f"n_{kind}_undecided": sum(c["verdict"] == TRANSFER_UNDECIDED for c in off)})
    items = [] if off else [f"fewer than two {kind}s: no transfer to measure"]
    return Section(pd.DataFrame(rows), glue, {"cells": cells}, items=items, precision=2)


def confirm(cfg: Run, groups: dict[str, dict[str, Condition]], cells: list[dict[str, Any]],
            prefix: str) -> Section:
    """Decoding checks the cells that carry a verdict: B's scoring half decoded with the
    block chosen on A removed and with B's own choice removed, compared by B's metric with
    the paired rule. A "transfers" is confirmed when A's block is not worse, a
    "<kind>-dependent" when it is worse. Cells whose two blocks are the same need no
    decode (the same model)."""
    from lib.evaluate.metrics import paired_task_difference
    from lib.prune.curves import evaluate_cut
    from lib.prune.surgery import block_layers

    rows, record, decoded = [], [], 0
    for c in cells:
        if c["a"] == c["b"] or c["verdict"] in ("", TRANSFER_UNDECIDED):
            continue
        b = groups[c["group"]][c["b"]]
        task = TASKS[b.task]
        items = b.items.subset(cfg.score.profile_utterances)
        scored = _half(items, halves(len(items), cfg.train.seed)[1])
        big_l = len(b.model.decoder_layers)
        if c["chosen_a"] == c["chosen_b"]:
            check = {"difference": 0.0, "difference_ci95": [0.0, 0.0],
                     "verdict": "not distinguishable from", "decoded": False}
        else:
            with b.model.asking(task):
                s = {k: evaluate_cut(b.model, scored, block_layers(c[k], c["n"], big_l),
                                     b.folder, f"{b.task}-transfer-half", cfg.eval)
                     for k in ("chosen_a", "chosen_b")}
            d = paired_task_difference(task, s["chosen_a"], s["chosen_b"])
            check = {**d, "verdict": paired_target(d, task.metric != "wer"), "decoded": True}
            decoded += 2
        worse = check["verdict"] == "worse than"
        agrees = worse if c["verdict"].endswith("-dependent") else not worse
        record.append({**{k: c[k] for k in ("group", "selector", "n", "a", "b", "verdict")},
                       **check,
                       "confirmed": agrees})
        unit = 100 if task.metric == "wer" else 1
        lo, hi = (unit * x for x in check["difference_ci95"])
        rows.append({"group": c["group"], "selector": c["selector"], "n": c["n"],
                     "chosen on": c["a"],
                     "scored on": c["b"], "verdict": c["verdict"],
                     "metric": "WER points" if task.metric == "wer" else "chrF",
                     "A's block minus B's [95 % CI]":
                         f"{unit * check['difference']:+.1f} [{lo:+.1f}, {hi:+.1f}]",
                     "decoding": "confirms" if agrees else "does not confirm"})
    glue = {f"{prefix}_confirmed": sum(r["confirmed"] for r in record),
            f"{prefix}_checked": len(record), f"{prefix}_decodes": decoded}
    items = [] if rows else ["no cell carries a verdict: nothing for decoding to confirm"]
    return Section(pd.DataFrame(rows), glue, {"record": record}, items=items)
