"""Chapter 5's recipe: speech translation, one multi-task SpeechLLM per decoder, and whether
the same blocks are redundant across tasks and languages, section by section
(book/05_tasks_and_languages.ipynb).

Each function is one section of the page and returns a
:class:`~lib.recipes.section.Section`; every verdict comes from :mod:`lib.report.rules`.

Stage: the chapters' recipes. Explained in chapter 5 (book/05_tasks_and_languages.ipynb).
"""

from __future__ import annotations

import itertools
from typing import Any

import pandas as pd

from lib.build.adapters import pretrained_decoder
from lib.config.sections import Run
from lib.data.corpus import voice_family
from lib.evaluate.metrics import paired_task_difference
from lib.paths import slug
from lib.recipes import multitask as mt
from lib.recipes.ch01 import training_log
from lib.recipes.pipeline import ModelRun, prepare_features, train_and_evaluate
from lib.recipes.section import Section, settings_line
from lib.report import plotting
from lib.report.results import record_headline, recorded_line
from lib.report.rules import (asr_against_asr_only, asr_rule_sentence, floor_sentence,
                              whisper_target, agreement_verdict, null_share, paired_target,
                              specific_verdict)
from lib.score.controls import NULL_INPUTS, null_agreement, null_surfaces
from lib.score.redundancy import agreement, score_speech, score_text
from lib.tasks import TASKS

SHORT = {"better than": "better", "worse than": "worse", "not distinguishable from": "level"}
"""The paired verdicts as the score table writes them (the record keeps the full words)."""


def _ci(pair: Any, scale: float = 1.0) -> str:
    return "{:.1f}–{:.1f}".format(*(scale * x for x in pair))


def settings(cfg: Run) -> str:
    """The line under the chapter's resolved values: what this run does, in its own numbers."""
    mt_ = cfg.multitask
    return settings_line(cfg, f"tasks: {', '.join(mt_.tasks)}",
                         f"{mt_.n_parallel_train} training and {mt_.n_parallel_test} test "
                         "verse pairs", f"{mt_.steps} steps on the mix")


# ------------------------------------------------------------------ 5.1 tasks and corpus


def tasks_table(cfg: Run) -> Section:
    """The tasks as data (:data:`lib.tasks.TASKS`), the ones this run trains marked."""
    rows = [{"task": t.name, "instruction": t.instruction.strip(), "hears": t.hears,
             "writes": t.writes, "target field": t.target, "metric": t.metric.upper(),
             "in the mix": t.name in cfg.multitask.tasks} for t in TASKS.values()]
    return Section(pd.DataFrame(rows), {"n_tasks": len(cfg.multitask.tasks)})


def corpus(cfg: Run) -> Section:
    """The spoken parallel corpus: verse pairs per split, speech per language, reuse."""
    from IPython.display import Audio

    from lib.data.audio import read_audio

    ch1_train, ch1_tests = prepare_features(cfg)
    data = mt.parallel_data(cfg, ch1_train)
    rows = []
    for split, sets in (("train (mix)", {"en": data.audio, "es": data.audio}),
                        ("test", {t.hears: data.tests[t.name] for t in
                                  (TASKS[n] for n in cfg.multitask.tasks)})):
        for lang, fs in sets.items():
            utts = [u for u in fs.utterances if u.language == lang]
            if utts:
                rows.append({"split": split, "language": lang, "utterances": len(utts),
                             "hours": sum(u.duration for u in utts) / 3600,
                             "voices": len({voice_family(u.voice) for u in utts})})
    example = data.tests[next(n for n in cfg.multitask.tasks if TASKS[n].hears == "es")
                         if any(TASKS[n].hears == "es" for n in cfg.multitask.tasks)
                         else "asr"].utterances[0]
    items = [f"{example.voice}: {example.text} ({example.translation})",
             Audio(read_audio(example.audio), rate=16000)]
    glue = dict(n_pairs_train=data.pairs["train"], n_pairs_dev=data.pairs["dev"],
                n_pairs_test=data.pairs["test"], n_mix=len(data.mix), n_reused=data.reused)
    return Section(pd.DataFrame(rows), glue, {"data": data, "ch1_train": ch1_train,
                                              "ch1_tests": ch1_tests}, items)


# ------------------------------------------------------------------ 5.2 training


def dev_curves(runs: dict[str, ModelRun]) -> pd.DataFrame:
    """Every task's dev score against training minutes (warm start included), long form."""
    rows = []
    for name, r in runs.items():
        offset = r.warm_start.wall_time_s / 60 if r.warm_start else 0.0
        for row in r.train.dev_log:
            for key, value in row.items():
                if key.startswith("dev_"):
                    task = TASKS[key[4:]]
                    rows.append({"model": slug(name), "task": task.name,
                                 "metric": task.metric.upper(), "minutes":
                                 row["train_minutes"] + offset, "step": row["step"],
                                 "score": 100 * value if task.metric == "wer" else value})
    return pd.DataFrame(rows)


def train(cfg: Run, data: mt.ParallelData, ch1_train: Any,
          ch1_tests: dict[str, Any]) -> Section:
    """Chapter 1's ASR-only models (reused), and one multi-task SpeechLLM per decoder
    trained once on the mix (or reused), by default continuing chapter 1's model."""
    ch1 = {m.decoder: train_and_evaluate(m, cfg, ch1_train, ch1_tests, evaluate=False)
           for m in cfg.models}
    runs = {m.decoder: mt.train_multitask(cfg, data, i, start=ch1[m.decoder])
            for i, m in enumerate(cfg.models)}
    plotting.plot_training_curves(training_log(runs)).set_title(
        "Multi-task training (projector + LoRA, four tasks)")
    curves = dev_curves(runs)
    if not curves.empty:
        plotting.plot_task_curves(curves)
    items = []
    minutes = {}
    for name, r in runs.items():
        w = r.warm_start.wall_time_s / 60 if r.warm_start else 0.0
        llm = r.train.result["provenance"]["wall_time_s"] / 60
        minutes[slug(name)] = {"start": cfg.multitask.start, "ctc_minutes": w,
                               "llm_minutes": llm, "minutes": w + llm}
        begun = (f"continued chapter 1's ASR model ({r.start.train.run_dir.name})"
                 if r.start is not None else f"CTC warm start {w:.1f} min")
        items.append(f"{name}: {begun}, {r.train.result['steps']} steps on the mix in "
                     f"{llm:.1f} min")
    first = next(iter(minutes.values()))
    glue = dict(mt_steps=cfg.multitask.steps, mt_minutes_first=first["minutes"],
                mt_batch=cfg.train.batch_size, mt_start=cfg.multitask.start)
    return Section(glue=glue, items=items, data={"runs": runs, "ch1": ch1,
                                                 "minutes": minutes, "curves": curves})


# ------------------------------------------------------------------ 5.3 scores


def _cell(task: Any, s: dict[str, Any]) -> str:
    if task.metric == "wer":
        return f"{100 * s['wer']:.1f} [{_ci(s['wer_ci95'], 100)}]"
    return f"{s['bleu']:.1f} [{_ci(s['bleu_ci95'])}]"


def _score_task(cfg: Run, run: ModelRun, ch1_run: ModelRun, name: str,
                data: mt.ParallelData, whisper: dict[str, Any]) -> dict[str, Any]:
    """One decoder and task: the score, its floor, its baselines, each paired with it."""
    task, fs, out = TASKS[name], data.tests[name], run.train.run_dir
    better = task.metric != "wer"
    s = mt.evaluate_task(run.model, fs, out, task, cfg.eval)
    floor = mt.evaluate_task(run.model, fs.other_audio(), out, task, cfg.eval,
                             label=f"{name}-other-audio")
    rec = {"task": name, "metric": task.metric, "score": s, "floor": floor,
           "vs_floor": paired_task_difference(task, s, floor), "baselines": {}}
    rec["vs_floor"]["verdict"] = paired_target(rec["vs_floor"], better)
    if name in whisper:
        rec["baselines"]["whisper"] = whisper[name]
    if task.metric == "bleu":
        source = "asr" if task.hears == "en" else "asr-es"
        asr = mt.evaluate_task(run.model, fs, out, TASKS[source], cfg.eval)
        rec["baselines"]["cascade"] = mt.cascade(run.model, asr, out, task, fs, cfg.eval)
    if name == "asr":
        rec["baselines"]["asr-only"] = mt.evaluate_task(ch1_run.model, fs,
                                                        ch1_run.train.run_dir, task, cfg.eval,
                                                        label="parallel-asr")
    for key, b in rec["baselines"].items():
        d = paired_task_difference(task, s, b)
        rec[f"vs_{key}"] = {**d, "verdict": paired_target(d, better)}
    return rec


def scores(cfg: Run, runs: dict[str, ModelRun], ch1: dict[str, ModelRun],
           data: mt.ParallelData) -> Section:
    """Every task of every multi-task model with its interval, against its no-audio floor
    and its baselines, each by the paired rule."""
    whisper = mt.whisper_tasks(cfg, data.tests)
    found = {slug(d): {n: _score_task(cfg, r, ch1[d], n, data, whisper)
                       for n in cfg.multitask.tasks} for d, r in runs.items()}
    rows = []
    for dec, tasks in found.items():
        for n, rec in tasks.items():
            task = TASKS[n]
            row = {"decoder": dec, "task": f"{n} ({task.metric.upper()})",
                   "score [95 % CI]": _cell(task, rec["score"]),
                   "no-audio floor": f"{_cell(task, rec['floor'])} "
                                     f"({SHORT[rec['vs_floor']['verdict']]})"}
            if task.metric == "bleu":
                row["chrF"] = f"{rec['score']['chrf']:.1f}"
            for key, label in (("whisper", "Whisper-base"), ("cascade", "text cascade"),
                               ("asr-only", "chapter 1 ASR-only")):
                if key in rec["baselines"]:
                    row[label] = (f"{_cell(task, rec['baselines'][key])} "
                                  f"({SHORT[rec[f'vs_{key}']['verdict']]})")
            rows.append(row)
    table = pd.DataFrame(rows).fillna("–")
    plotting.plot_task_scores(found)
    return Section(table, _target_glue(found, data), {"found": found, "whisper": whisper})


def _target_glue(found: dict[str, dict[str, Any]], data: mt.ParallelData) -> dict[str, Any]:
    """The chapter's targets, computed by the rules of :mod:`lib.report.rules`: floors,
    Whisper's translation, English ASR against chapter 1's ASR-only model."""
    below = [f"{d} {n}" for d, ts in found.items() for n, r in ts.items()
             if r["vs_floor"]["verdict"] != "better than"]
    n_cells = sum(len(ts) for ts in found.values())
    st = {d: ts["st-es-en"] for d, ts in found.items() if "st-es-en" in ts
          and "vs_whisper" in ts["st-es-en"]}
    asr = {}
    for d, ts in found.items():
        asr[d] = asr_against_asr_only(ts["asr"]["baselines"]["asr-only"]["wer"],
                                      ts["asr"]["score"]["wer"])
        ts["asr"]["relative_to_asr_only"] = asr[d]
    bleu = next((r["score"] for ts in found.values() for r in ts.values()
                 if r["metric"] == "bleu"), {})
    return dict(
        bleu_signature=bleu.get("bleu_signature", "(no translation task)"),
        chrf_signature=bleu.get("chrf_signature", "(no translation task)"),
        n_above_floor=n_cells - len(below), n_task_cells=n_cells,
        floor_sentence=floor_sentence(below, n_cells),
        st_whisper_sentence=("; ".join(
            f"{d}: {r['score']['bleu']:.1f} BLEU against Whisper-base's "
            f"{r['baselines']['whisper']['bleu']:.1f}, {r['vs_whisper']['verdict']} it"
            for d, r in st.items()) or "no Whisper baseline in this run"),
        st_target=whisper_target([r["vs_whisper"]["verdict"] for r in st.values()]),
        asr_sentence=asr_rule_sentence(asr),
        n_test=data.pairs["test"])


# ------------------------------------------------------------------ 5.4 redundancy


def _speech(model: Any, fs: Any, task: Any, sc: Any) -> Any:
    with model.asking(task):
        return score_speech(model, fs.subset(sc.n_score_utterances), batch_size=sc.batch_size,
                            positions="transcript")


def surfaces(cfg: Run, runs: dict[str, ModelRun], ch1: dict[str, ModelRun],
             data: mt.ParallelData) -> Section:
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


def agreements(cfg: Run, surf: dict[str, Any]) -> Section:
    """Every pair of inputs compared within each block size, against its shuffled chance
    and against the null inputs; the verdict per pair (:mod:`lib.report.rules`)."""
    sc, seed, rows = cfg.score, cfg.train.seed, []
    for d, s in surf.items():
        res, nulls = s["inputs"], s["nulls"]
        with_null = {k: null_agreement(v, nulls) for k, v in res.items()}
        for a, b in _pairs(list(res)):
            agr = agreement(res[a], res[b], chance_draws=sc.chance_draws, seed=seed)
            share = null_share(agr, [*with_null[a].values(), *with_null[b].values()])
            base = agreement_verdict(agr, sc.agree_rho, sc.agree_overlap_gain)
            rows.append({"decoder": d, "a": a, "b": b,
                         "Spearman per n": agr["spearman_per_n_mean"],
                         "chance Spearman": agr["chance"]["spearman_per_n_mean"],
                         "null Spearman": max(n["spearman_per_n_mean"] for x in (a, b)
                                              for n in with_null[x].values()),
                         "overlap": agr["overlap_mean"],
                         "chance overlap": agr["chance"]["overlap_mean"],
                         "null share": share, "verdict": specific_verdict(base, share)})
    table = pd.DataFrame(rows)
    plotting.plot_agreement_matrix(table)
    return Section(_compact(table), _claim5_glue(table), {"table": table})


def _compact(table: pd.DataFrame) -> pd.DataFrame:
    """The agreement table as the page shows it: each measure beside its chance level."""
    def f2(x: Any) -> str:
        return "–" if x is None or x != x else f"{x:.2f}"

    def pair(x: float, c: float) -> str:
        return f"{f2(x)} ({f2(c)})"

    return pd.DataFrame({
        "decoder": table["decoder"], "a": table["a"], "b": table["b"],
        "Spearman per n (chance)": [pair(x, c) for x, c in
                                    zip(table["Spearman per n"], table["chance Spearman"])],
        "overlap (chance)": [pair(x, c) for x, c in
                             zip(table["overlap"], table["chance overlap"])],
        "best null Spearman": table["null Spearman"].map(f2),
        "null share": table["null share"].map(f2),
        "verdict": table["verdict"]})


def _kind(a: str, b: str) -> str:
    """What a pair compares: the same clips under two tasks ("across tasks"), speech in
    two languages ("across languages"), text against speech, or text against text."""
    ta, tb = (TASKS[x.split(", ")[1]] if x.startswith("speech") else None for x in (a, b))
    if ta and tb:
        return "across languages" if ta.hears != tb.hears else "across tasks"
    return "text and speech" if (ta or tb) else "across decoders or text languages"


def _claim5_glue(table: pd.DataFrame) -> dict[str, Any]:
    """The verdict on the paper's claim 5 for tasks and languages, from the speech pairs."""
    out: dict[str, Any] = {}
    speech = table[table["a"].str.startswith("speech") & table["b"].str.startswith("speech")]
    kinds = speech.assign(kind=[_kind(a, b) for a, b in zip(speech["a"], speech["b"])])
    for kind in ("across tasks", "across languages"):
        k = kinds[kinds["kind"] == kind]
        v = k["verdict"]
        out[f"claim5_{kind.split()[1]}"] = (
            "not measured" if k.empty else
            "the same blocks, beyond a null input, for every pair" if (
                v == "the same blocks, beyond a null input").all() else
            "the same blocks for every pair, but a null input marks them as well" if
            v.str.startswith("the same blocks").all() else
            f"not the same blocks for {int((~v.str.startswith('the same blocks')).sum())} of "
            f"{len(v)} pairs")
        out[f"rho_{kind.split()[1]}_min"] = float(k["Spearman per n"].min()) if len(k) else 0
        out[f"null_{kind.split()[1]}_max"] = float(k["null share"].max()) if len(k) else 0
    return out


# ------------------------------------------------------------------ the record


def headline(found: dict[str, Any], table: pd.DataFrame, minutes: dict[str, Any],
             data: mt.ParallelData) -> dict[str, Any]:
    """Chapter 5's figures of record (``results/<preset>/ch05.json``)."""
    keep = ("wer", "wer_ci95", "bleu", "bleu_ci95", "chrf", "chrf_ci95", "bleu_signature",
            "chrf_signature", "n_utterances")

    def small(s: dict[str, Any]) -> dict[str, Any]:
        return {k: s[k] for k in keep if k in s}

    out: dict[str, Any] = {}
    for dec, tasks in found.items():
        out[dec] = {"training": minutes.get(dec, {}), "tasks": {
            n: {"metric": r["metric"], **small(r["score"]), "floor": small(r["floor"]),
                "vs_floor": r["vs_floor"],
                "baselines": {k: small(b) for k, b in r["baselines"].items()},
                **{k: v for k, v in r.items() if k.startswith("vs_") and k != "vs_floor"},
                **({"relative_to_asr_only": r["relative_to_asr_only"]}
                   if "relative_to_asr_only" in r else {})}
            for n, r in tasks.items()}}
        t = table[table["decoder"] == dec]
        out[dec]["agreement"] = [
            {k: (float(v) if isinstance(v, float) else v) for k, v in row.items()
             if k != "decoder"} for row in t.to_dict("records")]
    return {"decoders": out, "pairs": data.pairs, "reused_clips": data.reused,
            "null_inputs": list(NULL_INPUTS)}


def record(cfg: Run, scored: Section, agreed: Section, trained: Section,
           data: mt.ParallelData) -> Section:
    """Keep the chapter's figures of record (a full book run only)."""
    path = record_headline(cfg, headline(scored["found"], agreed["table"],
                                            trained["minutes"], data))
    return Section(items=[recorded_line(path, cfg)])
