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

from typing import Any

import pandas as pd

from lib.config.sections import Run
from lib.paths import slug
from lib.prune.transfer import MIN_FINITE, SELECTORS
from lib.recipes import multitask as mt
from lib.recipes.ch05 import competence, learned_tasks
from lib.recipes.encoders import describe, encoder_runs, encoder_table
from lib.recipes.pipeline import prepare_features
from lib.recipes.section import Section, settings_line
from lib.recipes.transfer import (TRANSFER_DRAWS, Condition, confirm, task_conditions,
                                  transfer_section)
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
                                        "transfer_draws": TRANSFER_DRAWS,
                                        "profile_fractions": ", ".join(
                                            f"{f:g}" for f in cfg.score.profile_fractions)})


# ------------------------------------------------------------------ 6.2 tasks and languages


def task_groups(cfg: Run) -> Section:
    """Chapter 5's multi-task models (reused) and the tasks each learned (chapter 5's
    competence rule, from its kept decodes; its baselines and control are not needed
    here): one group of conditions per decoder."""
    ch1_train, ch1_tests = prepare_features(cfg)
    data = mt.parallel_data(cfg, ch1_train)
    _, runs, _ = mt.multitask_runs(cfg, data, ch1_train, ch1_tests, control=False)
    found = {slug(d): {n: competence(cfg, r, n, data) for n in cfg.multitask.tasks}
             for d, r in runs.items()}
    learned = learned_tasks(found)
    groups = {slug(d): task_conditions(r, data.tests, learned[slug(d)])
              for d, r in runs.items()}
    rows = [{"decoder": d, "task": n, "learned": "yes" if r["learned"] else "no",
             "items": min(len(data.tests[n]), cfg.score.profile_utterances)}
            for d, ts in found.items() for n, r in ts.items()]
    glue = {"learned_list": "; ".join(f"{d}: {', '.join(ts) or 'none'}"
                                      for d, ts in learned.items()),
            "n_learned_tasks": sum(len(v) for v in learned.values())}
    return Section(pd.DataFrame(rows), glue, {"groups": groups, "found": found, "runs": {
        slug(d): r for d, r in runs.items()}, "data": data})


def tasks_transfer(cfg: Run, groups: dict[str, dict[str, Condition]]) -> Section:
    """The transfer matrices across each decoder's learned tasks."""
    return transfer_section(cfg, groups, "task")


# ------------------------------------------------------------------ 6.3 encoders


def encoders(cfg: Run) -> Section:
    """Each encoder's SpeechLLM: what it is, its WER, whether it reads the audio."""
    runs = encoder_runs(cfg)
    table, record = encoder_table(cfg, runs)
    listens = [e for e, r in record.items() if r["reads_audio"]]
    glue = {"encoders_list": "; ".join(describe(e) for e in runs),
            "encoders_reading": ", ".join(listens) or "none",
            "n_encoders_reading": len(listens), "n_encoders": len(runs),
            "encoder_decoder": cfg.transfer.decoder}
    groups = {cfg.transfer.decoder: {e: Condition(r.run.model, "asr", r.test,
                                                  r.run.train.run_dir)
                                     for e, r in runs.items()}}
    return Section(table, glue, {"groups": groups, "record": record}, precision=2)


def encoders_transfer(cfg: Run, groups: dict[str, dict[str, Condition]]) -> Section:
    """The transfer matrices across encoders (English ASR, each encoder's own model), and
    what the null encoder's cut does for the run's own encoder."""
    sec = transfer_section(cfg, groups, "encoder")
    sec.glue["null_encoder_sentence"] = null_encoder_sentence(sec["cells"],
                                                              cfg.transfer.encoders)
    return sec


def null_encoder_sentence(cells: list[dict[str, Any]], encoders: tuple[str, ...]) -> str:
    """For each selector and cut, the verdict of a cut chosen with the null encoder
    (``@random``) scored on the run's own encoder (the first): "transfers" there says the
    block belongs to the decoder, not to what it hears."""
    nulls = [e for e in encoders if e.endswith("@random")]
    if not nulls or nulls[0] == encoders[0]:
        return "no null encoder in transfer_encoders (add <encoder>@random to measure it)"
    parts = [f"{c['selector']}, {c['n']} layers: {c['verdict']} (TE {c['te']:.2f} "
             f"[{c['te_ci95'][0]:.2f}, {c['te_ci95'][1]:.2f}] against the encoder's own "
             f"choice's {c['te_self']:.2f})"
             for c in cells if c["a"] == nulls[0] and c["b"] == encoders[0]]
    return "; ".join(parts) or "not measured"


def decoding_check(cfg: Run, groups: dict[str, dict[str, Condition]], sec: Section,
                   kind: str) -> Section:
    """Decoding confirms (or not) the cells of ``sec`` that carry a verdict."""
    return confirm(cfg, groups, sec["cells"], kind)


# ------------------------------------------------------------------ 6.4 one backbone


def backbone(cfg: Run, learned: Section) -> Section:
    """For each multi-task model: the cut by the rule on its learned tasks, applied to all,
    healed once on the mix, every learned task before and after healing against the full
    model, the backbone exported with its card, reloaded in a fresh process, and timed."""
    from lib.heal.healing import heal
    from lib.prune.surgery import pruned_copy
    from lib.recipes import backbone as bb

    data, record, items, cuts, scores = learned["data"], {}, [], [], []
    for d, conds in learned["groups"].items():
        if not conds:
            items.append(f"{d}: no learned task, so no backbone to cut")
            continue
        run = learned["runs"][d]
        cut = bb.cut_by_rule(cfg, conds)
        model = pruned_copy(run.model, cut["layers"])
        hr = heal(model, data.mix, cfg.backbone.heal_variant, cfg.heal, cfg.train,
                  run.train.run_dir, desc=f"healing the {d} backbone on the mix")
        found = bb.task_scores(cfg, run, model, hr.run_dir, cut["layers"], list(conds),
                               data.tests)
        facts = bb.card_facts(cfg, d, run, cut, found, len(model.decoder_layers))
        probe = data.tests[next(iter(conds))].subset(cfg.eval.batch_size)
        folder = (hr.run_dir or run.train.run_dir / "heal-none") / "backbone"
        ex = bb.export_backbone(cfg, run, model, folder, facts, probe)
        record[d] = {"cut": cut, "scores": found, "export": ex}
        cuts.append(bb.cut_table(cut).assign(decoder=d))
        scores.append(bb.scores_table(found).assign(decoder=d))
    table = pd.concat(scores, ignore_index=True) if scores else pd.DataFrame()
    if cuts:
        items.append(pd.concat(cuts, ignore_index=True))
    return Section(table, _backbone_glue(record, cfg), {"record": record}, items=items)


def _backbone_glue(record: dict[str, Any], cfg: Run) -> dict[str, Any]:
    from lib.report.rules import SPEEDUP_TARGET, speedup_reaches_target

    if not record:
        return {"backbone_sentence": "no backbone: no decoder learned a task",
                "backbone_export": "nothing exported", "backbone_cost": "not measured",
                "backbone_recovery": "not measured"}
    parts, exports, costs, rec = [], [], [], []
    for d, r in record.items():
        c, ex = r["cut"], r["export"]
        parts.append(f"{d}: layers {c['layers'][0]}–{c['layers'][-1]} ({c['n']} of "
                     f"{ex['facts']['n_layers']}) chosen on "
                     f"{'the pooled learned tasks' if c['chosen_on'] == 'pooled' else c['chosen_on']}"
                     f", {'within' if c['within'] else 'no cut within'} the loss rule for "
                     "every learned task")
        chk = ex["reload"]
        exports.append(f"{d}: reloaded in a fresh process, "
                       + ("the same outputs exactly" if chk["exact"] else
                          f"outputs differ (largest loss gap {chk['max_loss_gap']:.1e}, same "
                          f"tokens {chk['same_tokens']})") + f" on {chk['items']} items")
        k = ex["cost"]
        costs.append(f"{d}: {k['speedup']:.2f}x faster against an ideal "
                     f"{k['ideal_speedup']:.2f}x (ratio {k['speedup_over_ideal']:.2f}, "
                     f"{'at least' if speedup_reaches_target(k['speedup_over_ideal']) else 'below'}"
                     f" the target {SPEEDUP_TARGET:g}), peak memory {k['peak_mib_full']:.0f} → "
                     f"{k['peak_mib_pruned']:.0f} MiB")
        rec.append(f"{d}: " + ", ".join(
            f"{t} {s['healed_vs_full']['verdict']} the full model ({100 * s['recovery']:.0f} % "
            "recovered)" for t, s in r["scores"].items()))
    return {"backbone_sentence": "; ".join(parts), "backbone_export": "; ".join(exports),
            "backbone_cost": "; ".join(costs), "backbone_recovery": "; ".join(rec)}


# ------------------------------------------------------------------ the record


def headline(learned: Section, tasks: Section, task_checks: Section, enc: Section,
             enc_cells: Section, enc_checks: Section, bone: Section) -> dict[str, Any]:
    """Chapter 6's figures of record (``results/<preset>/ch06.json``): every transfer cell
    with its intervals and verdict, the decoding checks, the encoders, the backbone."""
    keep = ("group", "selector", "n", "a", "b", "chosen_a", "chosen_b", "best_start", "te",
            "te_ci95", "te_self", "te_self_ci95", "difference", "difference_ci95",
            "n_items", "changes", "verdict")
    cells = {kind: [{k: c[k] for k in keep} for c in s["cells"]]
             for kind, s in (("task", tasks), ("encoder", enc_cells))}
    return {"transfer_min": TRANSFER_MIN, "learned": learned.glue["learned_list"],
            "cells": cells, "checks": {"task": task_checks["record"],
                                       "encoder": enc_checks["record"]},
            "encoders": enc["record"], "backbone": _backbone_record(bone["record"]),
            "sentences": {k: v for s in (tasks, enc_cells) for k, v in s.glue.items()
                          if "_transfer_" in k or k == "null_encoder_sentence"}}


def record(cfg: Run, *sections: Section) -> Section:
    """Keep the chapter's figures of record (a full book run only): ``sections`` as
    :func:`headline` takes them."""
    path = record_headline(cfg, headline(*sections))
    return Section(items=[recorded_line(path, cfg)])


def _backbone_record(record: dict[str, Any]) -> dict[str, Any]:
    """The backbone's figures of record: the cut, each task's scores, reload and cost."""
    keep = ("wer", "wer_ci95", "chrf", "chrf_ci95", "bleu", "bleu_ci95", "n_utterances")
    out = {}
    for d, r in record.items():
        c = r["cut"]
        out[d] = {"layers": c["layers"], "n": c["n"], "within_rule": c["within"],
                  "chosen_on": c["chosen_on"], "loss_threshold": c["threshold"],
                  "tasks": {t: {"metric": s["metric"], "recovery": s["recovery"],
                                **{k: {f: s[k][f] for f in keep if f in s[k]}
                                   for k in ("full", "cut", "healed")},
                                "healed_vs_full": s["healed_vs_full"]}
                            for t, s in r["scores"].items()},
                  "reload": r["export"]["reload"],
                  "cost": {k: v for k, v in r["export"]["cost"].items()
                           if not k.endswith("_rounds")}}
    return out
