"""The worked solutions of the chapters' exercises, one function per exercise.

Each solution is computed from what its chapter has already in memory (the trained runs,
the scores, the curves), so it costs seconds and runs in every book run and in the tests
(with the ``tiny`` preset): an exercise whose code breaks fails CI. The page shows the
solution hidden in a dropdown (``sphinx-exercise``); ``make student`` strips the solutions
and the outputs from a copy of each chapter (:mod:`lib.book.student`). Exercises that need
a run of their own (a ``-p`` change that trains again) are the chapters' *projects*, with
their cost from the results of record.

Stage: the chapters' recipes (exercises). Explained in the course page (book/course.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from lib.data.corpus import voice_family
from lib.data.features import FeatureSet
from lib.evaluate.metrics import bootstrap_wer_ci
from lib.paths import slug
from lib.recipes.section import Section
from lib.report.rules import NULL_SHARE_MAX, specific_verdict
from lib.score.redundancy import agreement

# ------------------------------------------------------------------ chapter 1


def wer_by_voice(runs: dict[str, Any], tests: dict[str, FeatureSet], test: str) -> Section:
    """Exercise 1.1: each test voice's WER (pooled over its utterances, 95 % bootstrap
    interval), per decoder, from the per-utterance errors of the chapter's scores."""
    rows = []
    for name, run in runs.items():
        s = run.scores[test]
        voices = [voice_family(u.voice) for u in tests[test].subset(len(s["utterance_words"]))
                  .utterances]
        for v in sorted(set(voices)):
            idx = [i for i, x in enumerate(voices) if x == v]
            errs = [s["utterance_errors"][i] for i in idx]
            words = [s["utterance_words"][i] for i in idx]
            lo, hi = bootstrap_wer_ci(errs, words)
            rows.append({"decoder": slug(name), "voice": v, "utterances": len(idx),
                         "WER (%)": 100 * sum(errs) / max(sum(words), 1),
                         "95 % CI": f"{100 * lo:.1f}–{100 * hi:.1f}"})
    table = pd.DataFrame(rows)
    worst = table.loc[table.groupby("decoder")["WER (%)"].idxmax()]
    return Section(table, {"ex_voice_worst": "; ".join(
        f"{r['decoder']}: {r['voice']}, {r['WER (%)']:.1f} % over {r['utterances']} "
        "utterances" for _, r in worst.iterrows())}, precision=1)


def paper_decoder_share(pairs: list[tuple[str, str]]) -> Section:
    """Exercise 1.2: where the parameters of a paper-scale SpeechLLM live (counted on the
    meta device: nothing is downloaded)."""
    from lib.build.model_configs import split_table

    table = split_table(pairs)
    return Section(table, {"ex_paper_share": ", ".join(
        f"{v:.1f} %" for v in table["decoder share (%)"])}, precision=1)


# ------------------------------------------------------------------ chapter 2


def bi_against_angular(results: dict[str, dict[str, Any]], key: str) -> Section:
    """Exercise 2.1: ShortGPT's layers (lowest Block Influence) against the block of
    smallest d(l, n), on the ``key`` input of each decoder, for every n up to half the
    decoder: how many of ShortGPT's n layers lie inside the block."""
    from lib.prune.strategies import angular_layers, block_influence_layers

    rows = []
    for name, res in results.items():
        r = res[key]
        for n in range(1, r.n_layers // 2 + 1):
            bi, ang = block_influence_layers(r, n), angular_layers(r, n)
            rows.append({"decoder": name, "n": n, "ShortGPT layers": str(bi),
                         "d(l, n) block": str(ang), "shared": len(set(bi) & set(ang)),
                         "shared share": len(set(bi) & set(ang)) / n})
    table = pd.DataFrame(rows)
    return Section(table, {"ex_bi_shared": float(table["shared share"].mean())})


def pooled_against_per_n(results: dict[str, dict[str, Any]],
                         comparisons: dict[str, tuple[str, str]]) -> Section:
    """Exercise 2.2: the correlation pooled over every (l, n) cell against the per-n
    Spearman, for each of the chapter's comparisons."""
    rows = []
    for name, res in results.items():
        for label, (a, b) in comparisons.items():
            agr = agreement(res[a], res[b])
            rows.append({"decoder": name, "comparison": label,
                         "Spearman per n (mean)": agr["spearman_per_n_mean"],
                         "pooled over (l, n)": agr["spearman_pooled"]})
    table = pd.DataFrame(rows)
    gap = table["pooled over (l, n)"] - table["Spearman per n (mean)"]
    return Section(table, {"ex_pooled_gap_min": float(gap.min()),
                           "ex_pooled_gap_max": float(gap.max())})


# ------------------------------------------------------------------ chapter 3


def cuts_at_thresholds(curves: dict[str, Any], meters: dict[str, dict[str, Any]], test: str,
                       thresholds: tuple[float, ...] = (0.05, 0.1, 0.25),
                       seed: int = 0) -> Section:
    """Exercise 3.1: the loss rule on the chapter's curves of ``test`` at other thresholds
    (the per-utterance losses are reused: no forward pass)."""
    from lib.prune.loss_curves import loss_rule

    rows = []
    for name, c in curves.items():
        m = meters[name][test]
        for t in thresholds:
            for strategy, losses in c["losses"][test].items():
                r = loss_rule(m["full"], m["floor"], losses, t, seed=seed)
                rows.append({"decoder": name, "threshold": t, "strategy": strategy,
                             "layers removed": r["n_removed"],
                             "95 % interval": "{}–{}".format(*r["n_removed_ci95"])})
    table = pd.DataFrame(rows)
    moved = table.groupby(["decoder", "strategy"])["layers removed"].agg(np.ptp)
    return Section(table, {"ex_cut_moves_max": int(moved.max())}, precision=2)


def same_layers(plans: dict[str, dict[str, dict[int, list[int]]]], a: str, b: str) -> Section:
    """Exercise 3.2: at which cut sizes strategies ``a`` and ``b`` remove the same layers."""
    rows = [{"decoder": name, "layers removed": n, a: str(p[a][n]), b: str(p[b][n]),
             "same": p[a][n] == p[b][n]}
            for name, p in plans.items() if a in p and b in p for n in sorted(p[a])
            if n in p[b]]
    table = pd.DataFrame(rows)
    return Section(table, {"ex_same_n": int(table["same"].sum()) if len(table) else 0,
                           "ex_same_of": len(table)})


# ------------------------------------------------------------------ chapter 4


def recovery_per_cost(variants: pd.DataFrame, test: str) -> Section:
    """Exercise 4.1: each healing variant's recovery per minute of healing and per million
    trainable parameters, on ``test``."""
    t = variants[(variants["test_set"] == test) & (variants["minutes"] > 0)].copy()
    t["recovery per minute"] = t["recovery"] / t["minutes"]
    t["recovery per M trainable"] = t["recovery"] / t["trainable (M)"]
    known = t.dropna(subset=["recovery per minute"])  # undefined where pruning cost nothing
    best = known.loc[known.groupby("decoder")["recovery per minute"].idxmax()]
    cols = ["decoder", "variant", "recovery", "minutes", "trainable (M)",
            "recovery per minute", "recovery per M trainable"]
    return Section(t[cols], {"ex_best_per_minute": "; ".join(
        f"{r.decoder}: {r.variant}" for r in best.itertuples()) or
        "undefined (pruning raised no WER to win back)"})


# ------------------------------------------------------------------ chapter 5


def verdicts_at_share(table: pd.DataFrame, share_max: float = 0.5) -> Section:
    """Exercise 5.1: the agreement verdicts read against the null inputs with another
    :data:`lib.report.rules.NULL_SHARE_MAX`: which pairs change."""
    same = table["verdict"].str.startswith("the same blocks")
    base = np.where(same, "the same blocks", table["verdict"])
    new = [specific_verdict(b, s, share_max) for b, s in zip(base, table["null share"])]
    out = table[["decoder", "a", "b", "null share", "verdict"]].assign(
        **{f"verdict at {share_max:g}": new})
    changed = int((out["verdict"] != out[f"verdict at {share_max:g}"]).sum())
    return Section(out, {"ex_changed": changed, "ex_pairs": len(out),
                         "ex_share_default": NULL_SHARE_MAX})


def cascade_by_bleu(found: dict[str, dict[str, Any]]) -> Section:
    """Exercise 5.2: the speech model against the text cascade by BLEU instead of chrF,
    paired, for every translation task."""
    from lib.evaluate.bleu import paired_translation_difference
    from lib.report.rules import paired_target

    rows = []
    for dec, tasks in found.items():
        for name, rec in tasks.items():
            if "cascade" not in rec["baselines"]:
                continue
            s, c = rec["score"], rec["baselines"]["cascade"]
            d = paired_translation_difference(s, c, "bleu")
            rows.append({"decoder": dec, "task": name, "BLEU speech": s["bleu"],
                         "BLEU cascade": c["bleu"], "speech - cascade": d["difference"],
                         "verdict (BLEU)": paired_target(d, True),
                         "verdict (chrF)": rec["vs_cascade"]["verdict"]})
    table = pd.DataFrame(rows)
    differ = int((table["verdict (chrF)"] != table["verdict (BLEU)"]).sum()) if rows else 0
    return Section(table, {"ex_bleu_differ": differ, "ex_bleu_of": len(rows)}, precision=1)


def removal_at_room(record: dict[str, Any], room_min: float = 0.05,
                    same_min: float = 0.5) -> Section:
    """Exercise 5.3: the removal verdicts of section 5.5 read with another
    :data:`lib.report.rules.ROOM_MIN` (the room a task's ceiling must leave above its null):
    which pairs change."""
    from lib.report.rules import ROOM_MIN, task_profile_verdict

    rows = [{"decoder": d, "n": p["n"], "a": p["a"], "b": p["b"],
             "room (ceiling - null)": p["rho_ceiling"] - p["rho_null"],
             "index": p["index"], "verdict": p["verdict"],
             f"verdict at {room_min:g}": task_profile_verdict(p, same_min, room_min)}
            for d, r in record.items() for p in r.get("pairs", [])]
    table = pd.DataFrame(rows)
    changed = int((table["verdict"] != table[f"verdict at {room_min:g}"]).sum()) if rows else 0
    return Section(table, {"ex_room_changed": changed, "ex_room_pairs": len(rows),
                           "ex_room_default": ROOM_MIN, "ex_room": room_min}, precision=2)


# ------------------------------------------------------------------ chapter 6


def transfer_at(cells: list[dict[str, Any]], te_min: float = 0.9) -> Section:
    """Exercise 6.1: every off-diagonal transfer cell judged again with another threshold
    ``te_min`` (the book's is :data:`lib.report.rules.TRANSFER_MIN`); the changed ones."""
    from lib.report.rules import TRANSFER_MIN, transfer_verdict

    rows = []
    for c in cells:
        if c["a"] == c["b"]:
            continue
        now = transfer_verdict(c, c["kind"], te_min)
        rows.append({"group": c["group"], "selector": c["selector"], "n": c["n"],
                     "chosen on": c["a"], "scored on": c["b"],
                     "TE lower bound": c["te_ci95"][0], "verdict": c["verdict"],
                     f"at {te_min:g}": now, "changed": now != c["verdict"]})
    table = pd.DataFrame(rows)
    changed = int(table["changed"].sum()) if rows else 0
    return Section(table, {"ex_te_changed": changed, "ex_te_cells": len(rows),
                           "ex_te_min": te_min, "ex_te_default": TRANSFER_MIN}, precision=2)


def backbone_by_paper_rule(record: dict[str, Any], asr: float = 0.25,
                           translation: float = 0.10) -> Section:
    """Exercise 6.2: the healed backbone's tasks read by the paper's rule (a relative WER
    increase of at most ``asr``; a relative drop of at most ``translation``, here of
    chrF) instead of the paired bootstrap."""
    from lib.prune.rule import relative_change, within_threshold

    rows = []
    for d, r in record.items():
        for t, s in r["scores"].items():
            key = s["metric"]
            higher = key != "wer"
            rel = float(relative_change(s["full"][key], s["healed"][key], higher))
            limit = translation if higher else asr
            rows.append({"decoder": d, "task": t, "metric": key, "full": s["full"][key],
                         "healed": s["healed"][key], "relative degradation": rel,
                         "limit": limit, "kept": within_threshold(rel, limit),
                         "paired verdict": s["healed_vs_full"]["verdict"]})
    table = pd.DataFrame(rows)
    kept = int(table["kept"].sum()) if rows else 0
    return Section(table, {"ex_rule_kept": kept, "ex_rule_tasks": len(rows)}, precision=3)
