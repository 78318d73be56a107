"""Chapter 5's section 5.4, the paper's view: the redundancy surfaces of every task and
language of each multi-task model, compared pair by pair against shuffled chance and against
null inputs (book/05_tasks_and_languages.ipynb). Called as ``ch05.surfaces`` and
``ch05.agreements``.

A surface says where hidden states change little, and any input reaches one (chapter 2's
null control), so this section describes; the removal test of section 5.5
(:mod:`lib.recipes.task_profiles`) decides. Each pair of tasks is named by what it changes
in the 2 x 2 of language heard x language written (:func:`lib.tasks.contrast`).

Stage: the chapters' recipes. Explained in chapter 5 (book/05_tasks_and_languages.ipynb).
"""

from __future__ import annotations

import itertools
from typing import Any

import pandas as pd

from lib.build.adapters import pretrained_decoder
from lib.config.sections import Run
from lib.paths import slug
from lib.recipes.pipeline import ModelRun
from lib.recipes.section import Section
from lib.report import plotting
from lib.report.rules import agreement_verdict, null_share, specific_verdict
from lib.score.controls import null_agreement, null_surfaces
from lib.score.redundancy import agreement, score_speech, score_text
from lib.tasks import CONTRASTS, TASKS, contrast


def _speech(model: Any, fs: Any, task: Any, sc: Any) -> Any:
    with model.asking(task):
        return score_speech(model, fs.subset(sc.n_score_utterances), batch_size=sc.batch_size,
                            positions="transcript")


def surfaces(cfg: Run, runs: dict[str, ModelRun], ch1: dict[str, ModelRun],
             data: Any) -> Section:
    """For each decoder: the surface of every task on its test speech (the task's target
    positions), of the test texts in each language, of the same English text through the
    pretrained decoder and chapter 1's ASR-only decoder, and of the two null inputs."""
    sc, out = cfg.score, {}
    for d, run in runs.items():
        m = run.model
        res = {f"speech, {n}": _speech(m, data.tests[n], TASKS[n], sc)
               for n in cfg.multitask.tasks}
        texts = {}
        for lang in ("en", "es"):
            fs = next((data.tests[n] for n in cfg.multitask.tasks
                       if TASKS[n].hears == lang), None)
            if fs is not None:
                texts[lang] = [u.text for u in fs.subset(sc.n_score_utterances).utterances]
                res[f"text, {lang}"] = score_text(m, None, texts[lang],
                                                  batch_size=sc.batch_size,
                                                  positions="transcript")
        with pretrained_decoder(m) as llm:
            res["text, en, pretrained LLM"] = score_text(llm, None, texts["en"],
                                                         batch_size=sc.batch_size,
                                                         positions="transcript")
        res["text, en, chapter 1 ASR-only"] = score_text(
            ch1[d].model, None, texts["en"], batch_size=sc.batch_size, positions="transcript")
        nulls = null_surfaces(m, data.tests["asr"].subset(sc.n_score_utterances), texts["en"],
                              batch_size=sc.batch_size, seed=cfg.train.seed)
        out[slug(d)] = {"inputs": res, "nulls": nulls}
        plotting.plot_distance_heatmaps({k: v for k, v in res.items()
                                         if k.startswith("speech")}, title=slug(d))
    return Section(data={"surfaces": out}, glue={"n_surface": sc.n_score_utterances})


def _pairs(labels: list[str]) -> list[tuple[str, str]]:
    speech = [x for x in labels if x.startswith("speech")]
    out = list(itertools.combinations(speech, 2))
    out += [(a, b) for a in ("text, en", "text, es") if a in labels
            for b in speech if TASKS[b.split(", ")[1]].hears == a.split(", ")[1]]
    out += [(x, "text, en") for x in ("text, en, pretrained LLM",
                                      "text, en, chapter 1 ASR-only") if x in labels]
    if "text, es" in labels:
        out.append(("text, en", "text, es"))
    return out


def kind(a: str, b: str) -> str:
    """What a pair of inputs compares: for two tasks' speech, what the tasks change
    (:func:`lib.tasks.contrast`: heard, written, both); else text against speech, or text
    against text (across decoders or languages)."""
    ta, tb = (TASKS[x.split(", ")[1]] if x.startswith("speech") else None for x in (a, b))
    if ta and tb:
        return contrast(ta, tb)
    return "text and speech" if (ta or tb) else "text and text"


def agreements(cfg: Run, surf: dict[str, Any], learned: dict[str, list[str]]) -> Section:
    """Every pair of inputs compared within each block size, against its shuffled chance
    and against the null inputs; the verdict per pair (:mod:`lib.report.rules`); the
    summary per contrast over the pairs of learned tasks only."""
    sc, seed, rows = cfg.score, cfg.train.seed, []
    for d, s in surf.items():
        res, nulls = s["inputs"], s["nulls"]
        with_null = {k: null_agreement(v, nulls) for k, v in res.items()}
        for a, b in _pairs(list(res)):
            agr = agreement(res[a], res[b], chance_draws=sc.chance_draws, seed=seed)
            share = null_share(agr, [*with_null[a].values(), *with_null[b].values()])
            base = agreement_verdict(agr, sc.agree_rho, sc.agree_overlap_gain)
            rows.append({"decoder": d, "a": a, "b": b, "changes": kind(a, b),
                         "Spearman per n": agr["spearman_per_n_mean"],
                         "chance Spearman": agr["chance"]["spearman_per_n_mean"],
                         "null Spearman": max(n["spearman_per_n_mean"] for x in (a, b)
                                              for n in with_null[x].values()),
                         "overlap": agr["overlap_mean"],
                         "chance overlap": agr["chance"]["overlap_mean"],
                         "null share": share, "verdict": specific_verdict(base, share)})
    table = pd.DataFrame(rows)
    plotting.plot_agreement_matrix(table)
    return Section(_compact(table), surface_glue(table, learned), {"table": table})


def _compact(table: pd.DataFrame) -> pd.DataFrame:
    """The agreement table as the page shows it: each measure beside its chance level."""
    def f2(x: Any) -> str:
        return "–" if x is None or x != x else f"{x:.2f}"

    def pair(x: float, c: float) -> str:
        return f"{f2(x)} ({f2(c)})"

    return pd.DataFrame({
        "decoder": table["decoder"], "a": table["a"], "b": table["b"],
        "changes": table["changes"],
        "Spearman per n (chance)": [pair(x, c) for x, c in
                                    zip(table["Spearman per n"], table["chance Spearman"])],
        "overlap (chance)": [pair(x, c) for x, c in
                             zip(table["overlap"], table["chance overlap"])],
        "best null Spearman": table["null Spearman"].map(f2),
        "null share": table["null share"].map(f2),
        "verdict": table["verdict"]})


def surface_glue(table: pd.DataFrame, learned: dict[str, list[str]]) -> dict[str, Any]:
    """The surfaces' answer per contrast, from the speech pairs of learned tasks."""
    out: dict[str, Any] = {}
    ok = [(d, a, b) for d, a, b in zip(table["decoder"], table["a"], table["b"])
          if all(x.startswith("speech") and x.split(", ")[1] in learned.get(d, [])
                 for x in (a, b))]
    keep = table[[(d, a, b) in ok for d, a, b in zip(table["decoder"], table["a"],
                                                     table["b"])]]
    for c in CONTRASTS:
        v = keep[keep["changes"] == c]["verdict"]
        out[f"surface_{c}"] = (
            "not measured (no pair of learned tasks)" if v.empty else
            f"{int((v == 'the same blocks, beyond a null input').sum())} of {len(v)} pairs "
            "the same blocks beyond a null input, "
            f"{int((v == 'the same blocks, as a null input does').sum())} as a null input does")
    return out
