"""Chapter 6's section 6.4: one pruned multi-task backbone as a product
(book/06_one_backbone.ipynb).

The cut is chosen once, on the learned tasks pooled (or on the one task
``backbone_chosen_on`` names): for each block size of ``profile_fractions`` the block whose
removal costs least, averaged over the tasks, on each task's first half of items
(:mod:`lib.prune.transfer`'s halves); the size is the largest whose block keeps every learned
task within chapter 3's loss rule on its second half (normalised cost at most
``prune_loss_threshold``; the floor is the task's items with noise for audio). That cut is
applied to chapter 5's multi-task model for every task, healed once on the mix
(``backbone_heal_variant``), each task decoded on its whole test set before and after
healing against the full model, and the backbone exported with its model card
(:mod:`lib.prune.export`), reloaded in a fresh process, and timed against the full model.
Stage: the chapters' recipes. Explained in chapter 6.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from lib.config.sections import Run
from lib.errors import CompanionError
from lib.prune.loss_curves import UtteranceLosses, loss_point, within_loss_rule
from lib.prune.transfer import halves
from lib.recipes.transfer import Condition, profiles_of
from lib.tasks import TASKS


def _rows(x: UtteranceLosses, rows: np.ndarray) -> UtteranceLosses:
    return UtteranceLosses(x.sums[rows], x.tokens[rows])


def _floors(cfg: Run, conds: dict[str, Condition]) -> dict[str, UtteranceLosses]:
    """Each task's full-model losses on its items with noise where the audio goes."""
    from lib.prune.loss_curves import LossMeter
    from lib.score.controls import noise_features

    sc, out = cfg.score, {}
    for t, c in conds.items():
        items = noise_features(c.items.subset(sc.profile_utterances), cfg.train.seed)
        with c.model.asking(TASKS[t]):
            out[t] = LossMeter(c.model, items, sc.batch_size, cfg.train.precision)()
    return out


def cut_by_rule(cfg: Run, conds: dict[str, Condition]) -> dict[str, Any]:
    """The backbone's cut: per block size the block chosen on the first halves (pooled or
    one task), each learned task's normalised cost on its second half with its interval,
    and the largest size within the rule (the smallest size, flagged, when none is).

    Raises:
        CompanionError: ``backbone_chosen_on`` names a task this model did not learn.
    """
    on = cfg.backbone.chosen_on
    if on != "pooled" and on not in conds:
        raise CompanionError(f"backbone_chosen_on={on!r}: the model did not learn that task "
                             f"(learned: {', '.join(conds) or 'none'}); choose a learned "
                             "task, or pooled")
    names = list(conds) if on == "pooled" else [on]
    profiles, floors = profiles_of(cfg, conds), _floors(cfg, conds)
    thr, seed, sizes = cfg.prune.loss_threshold, cfg.train.seed, {}
    for n, prof in sorted(profiles.items()):
        split = {t: halves(len(p.full.sums), seed) for t, p in prof.items()}
        pooled = np.mean([prof[t].increase(split[t][0][None])[0] for t in names], axis=0)
        b = int(np.argmin(pooled))
        start = int(prof[names[0]].starts[b])
        tasks = {}
        for t, p in prof.items():
            rows = split[t][1]
            cut = UtteranceLosses(p.sums[b], p.full.tokens)
            pt = loss_point(_rows(p.full, rows), _rows(cut, rows), _rows(floors[t], rows),
                            seed=seed)
            tasks[t] = {**pt, "within": bool(within_loss_rule(pt["normalised"], thr))}
        sizes[n] = {"start": start, "layers": list(range(start, start + n)), "tasks": tasks,
                    "within": all(x["within"] for x in tasks.values())}
    ok = [n for n, s in sizes.items() if s["within"]]
    n = max(ok) if ok else min(sizes)
    return {"n": n, "within": bool(ok), "chosen_on": on, "threshold": thr,
            "layers": sizes[n]["layers"], "sizes": sizes}


def cut_table(cut: dict[str, Any]) -> pd.DataFrame:
    """Every size's block and each task's normalised cost with its interval."""
    rows = []
    for n, s in cut["sizes"].items():
        for t, x in s["tasks"].items():
            lo, hi = x["normalised_ci95"]
            rows.append({"layers removed": n, "block": f"[{s['start']}, {s['start'] + n})",
                         "task": t, "normalised cost [95 % CI]":
                             f"{x['normalised']:.2f} [{lo:.2f}, {hi:.2f}]",
                         f"within {cut['threshold']:g}": "yes" if x["within"] else "no",
                         "chosen": "yes" if n == cut["n"] else ""})
    return pd.DataFrame(rows)


def _metric(task: Any) -> tuple[str, float]:
    """The score a task is judged by and its scale on the page: WER in %, or chrF."""
    return ("wer", 100.0) if task.metric == "wer" else ("chrf", 1.0)


def _cell(task: Any, s: dict[str, Any]) -> str:
    key, unit = _metric(task)
    lo, hi = s[f"{key}_ci95"]
    return f"{unit * s[key]:.1f} [{unit * lo:.1f}, {unit * hi:.1f}]"


def task_scores(cfg: Run, run: Any, healed: Any, heal_dir: Any, layers: list[int],
                tasks: list[str], tests: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each learned task on its whole test set: the full model (chapter 5's decode, kept),
    the cut before healing and the healed backbone, each paired with the full model, and
    what healing won back (``recovery``: the share of the cut's loss of score regained)."""
    from lib.evaluate.metrics import paired_task_difference
    from lib.prune.curves import evaluate_cut
    from lib.recipes.multitask import evaluate_task
    from lib.report.rules import paired_target

    out = {}
    for t in tasks:
        task, fs = TASKS[t], tests[t]
        full = evaluate_task(run.model, fs, run.train.run_dir, task, cfg.eval)
        with run.model.asking(task):
            cut = evaluate_cut(run.model, fs.subset(cfg.eval.max_test_utterances), layers,
                               run.train.run_dir, f"{t}-backbone-cut", cfg.eval)
        back = evaluate_task(healed, fs, heal_dir or run.train.run_dir, task, cfg.eval,
                             label=f"{t}-backbone-healed")
        key, _ = _metric(task)
        rec = {"metric": key, "full": full, "cut": cut, "healed": back}
        for name in ("cut", "healed"):
            d = paired_task_difference(task, rec[name], full)
            rec[f"{name}_vs_full"] = {**d, "verdict": paired_target(d, key != "wer")}
        lost = cut[key] - full[key]
        rec["recovery"] = float((cut[key] - back[key]) / lost) if lost else float("nan")
        out[t] = rec
    return out


def scores_table(scores: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per task: full, cut and healed with intervals, the healed model's verdict
    against the full model, and the share recovered."""
    rows = []
    for t, r in scores.items():
        task = TASKS[t]
        rows.append({"task": t, "metric": "WER %" if r["metric"] == "wer" else "chrF",
                     "full model": _cell(task, r["full"]), "cut": _cell(task, r["cut"]),
                     "healed backbone": _cell(task, r["healed"]),
                     "healed vs full": r["healed_vs_full"]["verdict"],
                     "recovered": f"{100 * r['recovery']:.0f} %"})
    return pd.DataFrame(rows)


def card_facts(cfg: Run, d: str, run: Any, cut: dict[str, Any], found: dict[str, Any],
               n_kept: int) -> dict[str, Any]:
    """What the model card says (:func:`lib.prune.export.model_card`): the model, the
    layers removed and the rule that chose them, the healing, each task's score."""
    on = "every learned task pooled" if cut["chosen_on"] == "pooled" else cut["chosen_on"]
    return {"name": f"{d} multi-task backbone, {cut['n']} layers removed",
            "encoder": run.config.encoder, "decoder": run.config.decoder,
            "removed": cut["layers"], "n_layers": n_kept + cut["n"],
            "rule": f"the block whose removal costs least on {on} (first half of each task's "
                    f"items), the largest cut of {cfg.score.profile_fractions} keeping every "
                    f"learned task within chapter 3's loss rule (normalised cost at most "
                    f"{cut['threshold']:g}) on the other half"
                    + ("" if cut["within"] else "; no cut did, so the smallest was taken"),
            "healing": f"{cfg.backbone.heal_variant}, {cfg.heal.steps} steps on the mix",
            "made_by": "book/06_one_backbone.ipynb (lib.recipes.ch06.backbone), preset "
                       f"{cfg.preset}",
            "scores": {t: {"metric": "WER %" if r["metric"] == "wer" else "chrF",
                           "full": _cell(TASKS[t], r["full"]),
                           "this": _cell(TASKS[t], r["healed"])} for t, r in found.items()}}


def export_backbone(cfg: Run, run: Any, healed: Any, folder: Any, facts: dict[str, Any],
                    probe: Any) -> dict[str, Any]:
    """Save the healed backbone (adapters merged in place) with its card (a kept export of
    this very healing run is reused), reload it in a fresh process against the model in
    memory on the ``probe`` items, and time it against the full model on this machine
    (speed against the FLOP ideal, peak memory of a fresh process); the card then gets
    the measured cost."""
    from lib.build.adapters import merge_adapters
    from lib.build.checkpoint import reuse_saved
    from lib.fileio import cpu_model
    from lib.prune.cost import compare_decoding
    from lib.prune.export import CARD, export_model, model_card, reload_check, saved_full

    full, full_folder = saved_full(run.model, run.train.run_dir, run.config.encoder)
    if reuse_saved(folder):
        merge_adapters(healed)
    else:
        export_model(healed, folder, facts)
    feats, lengths, texts = probe.batch(list(range(len(probe))))
    check = reload_check(healed, folder, feats, lengths, texts)
    rounds = cfg.heal.cost_rounds
    cost = compare_decoding(full, healed, probe, new_tokens=16, rounds=rounds,
                            full_folder=full_folder, pruned_folder=folder,
                            memory_rounds=rounds)
    facts = {**facts, "cost": {**cost, "machine": cpu_model() or "this CPU"}}
    (folder / CARD).write_text(model_card(facts))
    return {"folder": str(folder), "reload": check, "cost": cost, "facts": facts}
