"""Chapter 6's recipe: does a cut chosen on one task, language or encoder suit the others,
section by section (book/06_one_backbone.ipynb).

Section 6.1 states the test; 6.2 measures it across the tasks and languages chapter 5's
multi-task model learned (its models, decodes and profiles reused from chapter 5's run); 6.3
sets encoders beside each other (:mod:`lib.recipes.encoders`) and measures it across them.
The matrices and their decoding checks are :mod:`lib.recipes.transfer`'s; every verdict comes
from :mod:`lib.report.rules`. Stage: the chapters' recipes. Explained in chapter 6
(book/06_one_backbone.ipynb).
"""

from __future__ import annotations

import pandas as pd

from lib.config.sections import Run
from lib.paths import slug
from lib.prune.transfer import MIN_FINITE, SELECTORS
from lib.recipes import multitask as mt
from lib.recipes.ch05 import found_tasks, learned_tasks
from lib.recipes.encoders import describe, encoder_runs, encoder_table
from lib.recipes.pipeline import prepare_features
from lib.recipes.section import Section, settings_line
from lib.recipes.transfer import Condition, confirm, task_conditions, transfer_section
from lib.report.results import record_headline, recorded_line
from lib.report.rules import TRANSFER_MIN


def settings(cfg: Run) -> str:
    """The line under the chapter's resolved values: what this run does, in its numbers."""
    return settings_line(cfg, f"multi-task decoder(s): "
                              f"{', '.join(cfg.models[i].decoder for i in mt.chosen_models(cfg))}",
                         f"encoders: {', '.join(cfg.transfer.encoders)}, each with "
                         f"{cfg.transfer.decoder}",
                         f"{cfg.score.profile_utterances} items per condition, halved")


# ------------------------------------------------------------------ 6.1 the test


def the_test(cfg: Run) -> Section:
    """The rule and its numbers, fixed before the run: the cuts, the selectors, the
    threshold."""
    rows = [{"what": "cuts (fractions of a decoder's layers, rounded)",
             "value": ", ".join(f"{f:g}" for f in cfg.score.profile_fractions)},
            {"what": "selectors", "value": ", ".join(SELECTORS)},
            {"what": "items per condition (choose half / score half)",
             "value": str(cfg.score.profile_utterances)},
            {"what": "transfers when TE(A->B)'s 95 % interval is at or above",
             "value": f"{TRANSFER_MIN:g}"},
            {"what": "resamples with a defined TE needed for an interval",
             "value": f"{MIN_FINITE:.0%}"}]
    return Section(pd.DataFrame(rows), {"transfer_min": TRANSFER_MIN,
                                        "profile_fractions": ", ".join(
                                            f"{f:g}" for f in cfg.score.profile_fractions)})


# ------------------------------------------------------------------ 6.2 tasks and languages


def task_groups(cfg: Run) -> Section:
    """Chapter 5's multi-task models (reused) and the tasks each learned (by chapter 5's
    competence rule, from its kept decodes): one group of conditions per decoder."""
    ch1_train, ch1_tests = prepare_features(cfg)
    data = mt.parallel_data(cfg, ch1_train)
    _, runs, alone = mt.multitask_runs(cfg, data, ch1_train, ch1_tests)
    found, _ = found_tasks(cfg, runs, alone, data)
    learned = learned_tasks(found)
    groups = {slug(d): task_conditions(r, data.tests, learned[slug(d)])
              for d, r in runs.items()}
    rows = [{"decoder": d, "task": n, "learned": "yes" if r["learned"] else "no",
             "items": min(len(data.tests[n]), cfg.score.profile_utterances)}
            for d, ts in found.items() for n, r in ts.items()]
    glue = {"learned_list": "; ".join(f"{d}: {', '.join(ts) or 'none'}"
                                      for d, ts in learned.items()),
            "n_learned_tasks": sum(len(v) for v in learned.values())}
    return Section(pd.DataFrame(rows), glue, {"groups": groups, "found": found})


def tasks_transfer(cfg: Run, groups: dict[str, dict[str, Condition]]) -> Section:
    """The transfer matrices across each decoder's learned tasks."""
    return transfer_section(cfg, groups, "task")


# ------------------------------------------------------------------ 6.3 encoders


def encoders(cfg: Run) -> Section:
    """Each encoder's SpeechLLM: what it is, its WER, whether it reads the audio."""
    runs = encoder_runs(cfg)
    table, record = encoder_table(cfg, runs)
    listens = [e for e, r in record.items() if r["reads_audio"]]
    glue = {"encoders_list": "; ".join(f"{e} ({describe(e)})" for e in runs),
            "encoders_reading": ", ".join(listens) or "none",
            "n_encoders_reading": len(listens), "n_encoders": len(runs),
            "encoder_decoder": cfg.transfer.decoder}
    groups = {cfg.transfer.decoder: {e: Condition(r.run.model, "asr", r.test,
                                                  r.run.train.run_dir)
                                     for e, r in runs.items()}}
    return Section(table, glue, {"groups": groups, "record": record}, precision=2)


def encoders_transfer(cfg: Run, groups: dict[str, dict[str, Condition]]) -> Section:
    """The transfer matrices across encoders (English ASR, each encoder's own model)."""
    return transfer_section(cfg, groups, "encoder")


def decoding_check(cfg: Run, groups: dict[str, dict[str, Condition]], sec: Section,
                   kind: str) -> Section:
    """Decoding confirms (or not) the cells of ``sec`` that carry a verdict."""
    return confirm(cfg, groups, sec["cells"], kind)


# ------------------------------------------------------------------ the record


def record(cfg: Run, learned: Section, tasks: Section, task_checks: Section, enc: Section,
           enc_cells: Section, enc_checks: Section) -> Section:
    """Keep the chapter's figures of record (a full book run only)."""
    keep = ("group", "selector", "n", "a", "b", "chosen_a", "chosen_b", "best_start", "te",
            "te_ci95", "te_self", "te_self_ci95", "difference", "difference_ci95",
            "n_items", "changes", "verdict")
    cells = {kind: [{k: c[k] for k in keep} for c in s["cells"]]
             for kind, s in (("task", tasks), ("encoder", enc_cells))}
    figures = {"transfer_min": TRANSFER_MIN, "learned": learned.glue["learned_list"],
               "cells": cells, "checks": {"task": task_checks["record"],
                                          "encoder": enc_checks["record"]},
               "encoders": enc["record"],
               "sentences": {k: v for s in (tasks, enc_cells) for k, v in s.glue.items()
                             if "_transfer_" in k}}
    path = record_headline(cfg, figures)
    return Section(items=[recorded_line(path, cfg)])
