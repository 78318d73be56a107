"""Chapter 5's recipe: speech translation, a multi-task SpeechLLM for each decoder of
``multitask_decoders`` beside its budget-matched control, which tasks it learns, and whether
the learned tasks mark the same blocks, section by section (book/05_tasks_and_languages.ipynb).

Each function is one section of the page and returns a
:class:`~lib.recipes.section.Section`; every verdict comes from :mod:`lib.report.rules`.
Sections 5.4 (the surfaces) and 5.5 (the removal test) live in
:mod:`lib.recipes.task_surfaces` and :mod:`lib.recipes.task_profiles`.

Stage: the chapters' recipes. Explained in chapter 5 (book/05_tasks_and_languages.ipynb).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from lib.config.sections import Run
from lib.data.corpus import voice_family
from lib.evaluate.metrics import paired_task_difference
from lib.paths import slug
from lib.recipes import multitask as mt
from lib.recipes.ch01 import training_log
from lib.recipes.pipeline import ModelRun, prepare_features
from lib.recipes.section import Section, settings_line
from lib.report import plotting
from lib.report.results import record_headline, recorded_line
from lib.report.rules import (COMPETENCE_MARGIN, asr_against_asr_only, asr_rule_sentence,
                              paired_target, task_learned, whisper_target)
from lib.recipes.task_profiles import removal_profiles  # noqa: F401  (section 5.5)
from lib.recipes.task_surfaces import agreements, surfaces  # noqa: F401  (section 5.4)
from lib.score.controls import NULL_INPUTS
from lib.tasks import TASKS

SHORT = {"better than": "better", "worse than": "worse", "not distinguishable from": "level"}
"""The paired verdicts as the score table writes them (the record keeps the full words)."""


def _ci(pair: Any, scale: float = 1.0) -> str:
    return "{:.1f}–{:.1f}".format(*(scale * x for x in pair))


def settings(cfg: Run) -> str:
    """The line under the chapter's resolved values: what this run does, in its own numbers."""
    mt_ = cfg.multitask
    decoders = [cfg.models[i].decoder for i in mt.chosen_models(cfg)]
    return settings_line(cfg, f"tasks: {', '.join(mt_.tasks)}",
                         f"multi-task decoder(s): {', '.join(decoders)}",
                         f"{mt_.n_parallel_train} training and {mt_.n_parallel_test} test "
                         "verse pairs", f"{mt_.steps} steps on the mix and as many on "
                         "English ASR alone")


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
    rows, heard = [], sorted({TASKS[n].hears for n in cfg.multitask.tasks})
    for split, sets in (("train (mix)", {lang: data.audio for lang in heard}),
                        ("test", {t.hears: data.tests[t.name] for t in
                                  (TASKS[n] for n in cfg.multitask.tasks)})):
        for lang, fs in sets.items():
            utts = [u for u in fs.utterances if u.language == lang]
            if utts:
                rows.append({"split": split, "language": lang, "utterances": len(utts),
                             "hours": sum(u.duration for u in utts) / 3600,
                             "voices": len({voice_family(u.voice) for u in utts})})
    example = data.tests[next((n for n in cfg.multitask.tasks if TASKS[n].hears != "en"),
                              "asr")].utterances[0]
    items = [f"{example.voice}: {example.text} ({example.translation})",
             Audio(read_audio(example.audio), rate=16000)]
    glue = dict(n_pairs_train=data.pairs["train"], n_pairs_dev=data.pairs["dev"],
                n_pairs_test=data.pairs["test"], n_mix=len(data.mix), n_reused=data.reused)
    return Section(pd.DataFrame(rows), glue, {"data": data, "ch1_train": ch1_train,
                                              "ch1_tests": ch1_tests}, items)


# ------------------------------------------------------------------ 5.2 training


def dev_curves(runs: dict[str, ModelRun]) -> pd.DataFrame:
    """Every task's dev score against training minutes (warm start included), long form:
    WER in %, chrF for translation."""
    rows = []
    for name, r in runs.items():
        offset = r.warm_start.wall_time_s / 60 if r.warm_start else 0.0
        for row in r.train.dev_log:
            for key, value in row.items():
                if key.startswith("dev_"):
                    task = TASKS[key[4:]]
                    wer = task.metric == "wer"
                    rows.append({"model": name, "task": task.name,
                                 "metric": "WER" if wer else "chrF", "minutes":
                                 row["train_minutes"] + offset, "step": row["step"],
                                 "score": 100 * value if wer else value})
    return pd.DataFrame(rows)


def _minutes(r: ModelRun, start: str) -> dict[str, Any]:
    w = r.warm_start.wall_time_s / 60 if r.warm_start else 0.0
    llm = r.train.result["provenance"]["wall_time_s"] / 60
    return {"start": start, "ctc_minutes": w, "llm_minutes": llm, "minutes": w + llm,
            "steps": r.train.result["steps"]}


def train(cfg: Run, data: mt.ParallelData, ch1_train: Any,
          ch1_tests: dict[str, Any]) -> Section:
    """For each decoder of ``multitask_decoders``: chapter 1's ASR model (reused), the
    multi-task SpeechLLM trained on the mix, and the budget-matched control (the same start,
    steps and batches on the mix's English ASR alone); each trained once, then reused."""
    ch1, runs, alone = mt.multitask_runs(cfg, data, ch1_train, ch1_tests)
    both = {**{slug(d): r for d, r in runs.items()},
            **{f"{slug(d)}, English ASR alone": r for d, r in alone.items()}}
    plotting.plot_training_curves(training_log(both)).set_title(
        "Multi-task training and its budget-matched control (projector + LoRA)")
    curves = dev_curves(both)
    if not curves.empty:
        plotting.plot_task_curves(curves)
    minutes = {slug(d): {**_minutes(r, cfg.multitask.start),
                         "asr_only": _minutes(alone[d], cfg.multitask.start)}
               for d, r in runs.items()}
    items = []
    for d, r in runs.items():
        m = minutes[slug(d)]
        begun = (f"continued chapter 1's ASR model ({r.start.train.run_dir.name})"
                 if r.start is not None else f"CTC warm start {m['ctc_minutes']:.1f} min")
        items.append(f"{d}: {begun}; {m['steps']} steps on the mix in {m['llm_minutes']:.1f} "
                     f"min, the same on English ASR alone in "
                     f"{m['asr_only']['llm_minutes']:.1f} min")
    first = next(iter(minutes.values()))
    glue = dict(mt_steps=cfg.multitask.steps, mt_minutes_first=first["minutes"],
                mt_alone_minutes_first=first["asr_only"]["minutes"],
                mt_batch=cfg.train.batch_size, mt_start=cfg.multitask.start,
                mt_decoders=", ".join(slug(d) for d in runs))
    return Section(glue=glue, items=items, data={"runs": runs, "ch1": ch1, "alone": alone,
                                                 "minutes": minutes, "curves": curves})


# ------------------------------------------------------------------ 5.3 scores


def _cell(task: Any, s: dict[str, Any]) -> str:
    if task.metric == "wer":
        return f"{100 * s['wer']:.1f} [{_ci(s['wer_ci95'], 100)}]"
    return f"{s['chrf']:.1f} [{_ci(s['chrf_ci95'])}]"


def _versus(task: Any, s: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """``s`` against ``other`` on the same utterances, paired: by WER, or by chrF (the
    verdict) with BLEU's difference beside it."""
    d = paired_task_difference(task, s, other)
    out = {**d, "verdict": paired_target(d, task.metric != "wer")}
    if task.metric != "wer":
        b = paired_task_difference(task, s, other, "bleu")
        out["bleu"] = {**b, "verdict": paired_target(b, True)}
    return out


def competence(cfg: Run, run: ModelRun, name: str, data: mt.ParallelData) -> dict[str, Any]:
    """One decoder and task: its score, its no-audio floor (another utterance's audio),
    the paired difference, and whether the task is learned
    (:func:`lib.report.rules.task_learned`); each decode kept with the run."""
    task, fs, out = TASKS[name], data.tests[name], run.train.run_dir
    s = mt.evaluate_task(run.model, fs, out, task, cfg.eval)
    floor = mt.evaluate_task(run.model, fs.other_audio(), out, task, cfg.eval,
                             label=f"{name}-other-audio")
    rec = {"task": name, "metric": task.metric, "score": s, "floor": floor,
           "vs_floor": _versus(task, s, floor), "baselines": {}}
    rec["learned"] = task_learned(rec["vs_floor"], "wer" if task.metric == "wer" else "chrf")
    return rec


def _score_task(cfg: Run, run: ModelRun, alone: ModelRun, name: str,
                data: mt.ParallelData, whisper: dict[str, Any]) -> dict[str, Any]:
    """One decoder and task: :func:`competence`, then its baselines, each paired with
    it."""
    task, fs, out = TASKS[name], data.tests[name], run.train.run_dir
    rec = competence(cfg, run, name, data)
    s = rec["score"]
    if name in whisper:
        rec["baselines"]["whisper"] = whisper[name]
    if task.metric == "bleu":
        source = next(t for t in TASKS.values() if t.target == "text" and t.hears == task.hears)
        asr = mt.evaluate_task(run.model, fs, out, source, cfg.eval)
        rec["baselines"]["cascade"] = mt.cascade(run.model, asr, out, task, fs, cfg.eval)
    if name == "asr":
        rec["baselines"]["asr-only"] = mt.evaluate_task(alone.model, fs, alone.train.run_dir,
                                                        task, cfg.eval, label="parallel-asr")
    for key, b in rec["baselines"].items():
        rec[f"vs_{key}"] = _versus(task, s, b)
    return rec


def silent_lines(found: dict[str, dict[str, Any]]) -> list[str]:
    """One line per system that wrote nothing for some utterances of a test set (all of
    them: it scores 0 or 100 % WER, and says what to do)."""
    out = []
    for dec, tasks in found.items():
        for name, rec in tasks.items():
            systems = {"the model": rec["score"], "its no-audio floor": rec["floor"],
                       **{f"baseline {k}": b for k, b in rec["baselines"].items()}}
            for label, s in systems.items():
                n, empty = s.get("n_utterances", 0), s.get("empty_hypotheses", 0)
                if empty and empty == n:
                    out.append(f"{dec} {name}, {label}: all {n} hypotheses are empty (it "
                               "wrote nothing and scores as silence): train longer or check "
                               "max_new_tokens and the task's prompt")
                elif empty:
                    out.append(f"{dec} {name}, {label}: {empty} of {n} hypotheses empty")
    return out


def scores(cfg: Run, runs: dict[str, ModelRun], alone: dict[str, ModelRun],
           data: mt.ParallelData) -> Section:
    """Every task of every multi-task model with its interval, against its no-audio floor
    (which decides whether the task is learned) and its baselines, each by the paired
    rule."""
    whisper = mt.whisper_tasks(cfg, data.tests)
    found = {slug(d): {n: _score_task(cfg, r, alone[d], n, data, whisper)
                       for n in cfg.multitask.tasks} for d, r in runs.items()}
    rows = []
    for dec, tasks in found.items():
        for n, rec in tasks.items():
            task = TASKS[n]
            row = {"decoder": dec, "task": n, "metric": "WER %" if task.metric == "wer"
                   else "chrF", "score [95 % CI]": _cell(task, rec["score"]),
                   "BLEU": (f"{rec['score']['bleu']:.1f} [{_ci(rec['score']['bleu_ci95'])}]"
                            if task.metric == "bleu" else "–"),
                   "no-audio floor": f"{_cell(task, rec['floor'])} "
                                     f"({SHORT[rec['vs_floor']['verdict']]})",
                   "learned": "yes" if rec["learned"] else "no"}
            for key, label in (("whisper", "Whisper-base"),
                               ("cascade", "text cascade (handicapped)"),
                               ("asr-only", "English ASR alone")):
                if key in rec["baselines"]:
                    row[label] = (f"{_cell(task, rec['baselines'][key])} "
                                  f"({SHORT[rec[f'vs_{key}']['verdict']]})")
            rows.append(row)
    table = pd.DataFrame(rows).fillna("–")
    plotting.plot_task_scores(found)
    learned = learned_tasks(found)
    return Section(table, _target_glue(found, learned, data),
                   {"found": found, "whisper": whisper, "learned": learned},
                   items=silent_lines(found))


def learned_tasks(found: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Per decoder, the tasks it learned (:func:`lib.report.rules.task_learned`)."""
    return {d: [n for n, r in ts.items() if r["learned"]] for d, ts in found.items()}


def _target_glue(found: dict[str, dict[str, Any]], learned: dict[str, list[str]],
                 data: mt.ParallelData) -> dict[str, Any]:
    """The chapter's targets, computed by the rules of :mod:`lib.report.rules`: which tasks
    are learned, Whisper's translation, English ASR against the budget-matched model."""
    st = {d: ts["st-es-en"] for d, ts in found.items() if "st-es-en" in ts
          and "vs_whisper" in ts["st-es-en"]}
    asr = {}
    for d, ts in found.items():
        asr[d] = asr_against_asr_only(ts["asr"]["baselines"]["asr-only"]["wer"],
                                      ts["asr"]["score"]["wer"])
        ts["asr"]["relative_to_asr_only"] = asr[d]
    translation = [(d, n) for d, ts in found.items() for n, r in ts.items()
                   if r["metric"] == "bleu"]
    return dict(
        n_learned=sum(len(v) for v in learned.values()),
        n_task_cells=sum(len(ts) for ts in found.values()),
        learned_sentence=competence_sentence(found),
        chrf_margin=COMPETENCE_MARGIN["chrf"], wer_margin=100 * COMPETENCE_MARGIN["wer"],
        translation_learned=("both translation directions are learned" if translation and
                             all(found[d][n]["learned"] for d, n in translation) else
                             "not every translation direction is learned"),
        st_whisper_sentence=("; ".join(
            f"{d}: chrF {r['score']['chrf']:.1f} against Whisper-base's "
            f"{r['baselines']['whisper']['chrf']:.1f}, {r['vs_whisper']['verdict']} it"
            for d, r in st.items()) or "no Whisper baseline in this run"),
        st_target=whisper_target([r["vs_whisper"]["verdict"] for r in st.values()]),
        asr_sentence=asr_rule_sentence(asr),
        n_test=data.pairs["test"])


def competence_sentence(found: dict[str, dict[str, Any]]) -> str:
    """Which tasks each decoder learned, each with its margin over the floor."""
    parts = []
    for d, ts in found.items():
        bits = []
        for n, r in ts.items():
            lo, hi = r["vs_floor"]["difference_ci95"]
            gain = (f"{-100 * r['vs_floor']['difference']:.1f} WER points "
                    f"[{-100 * hi:.1f}, {-100 * lo:.1f}]" if r["metric"] == "wer" else
                    f"{r['vs_floor']['difference']:.1f} chrF [{lo:.1f}, {hi:.1f}]")
            bits.append(f"{n} {'learned' if r['learned'] else 'not learned'} ({gain} "
                        "better than its floor)")
        parts.append(f"{d}: " + ", ".join(bits))
    return "; ".join(parts)


# ------------------------------------------------------------------ the record


def headline(found: dict[str, Any], table: pd.DataFrame, minutes: dict[str, Any],
             data: mt.ParallelData, removal: dict[str, Any], claim5: str) -> dict[str, Any]:
    """Chapter 5's figures of record (``results/<preset>/ch05.json``): every score with its
    signature and silent count, learned or not, the removal test's pairs and verdicts."""
    keep = ("wer", "wer_ci95", "bleu", "bleu_ci95", "chrf", "chrf_ci95", "bleu_signature",
            "chrf_signature", "n_utterances", "empty_hypotheses")

    def small(s: dict[str, Any]) -> dict[str, Any]:
        return {k: s[k] for k in keep if k in s}

    out: dict[str, Any] = {}
    for dec, tasks in found.items():
        out[dec] = {"training": minutes.get(dec, {}), "tasks": {
            n: {"metric": r["metric"], "learned": r["learned"], **small(r["score"]),
                "floor": small(r["floor"]), "vs_floor": r["vs_floor"],
                "baselines": {k: small(b) for k, b in r["baselines"].items()},
                **{k: v for k, v in r.items() if k.startswith("vs_") and k != "vs_floor"},
                **({"relative_to_asr_only": r["relative_to_asr_only"]}
                   if "relative_to_asr_only" in r else {})}
            for n, r in tasks.items()}}
        t = table[table["decoder"] == dec]
        out[dec]["surface_agreement"] = [
            {k: (float(v) if isinstance(v, float) else v) for k, v in row.items()
             if k != "decoder"} for row in t.to_dict("records")]
        out[dec]["removal"] = removal.get(dec, {})
    return {"decoders": out, "pairs": data.pairs, "reused_clips": data.reused,
            "null_inputs": list(NULL_INPUTS), "competence_margin": COMPETENCE_MARGIN,
            "claim5": claim5}


def record(cfg: Run, scored: Section, agreed: Section, removal: Section, trained: Section,
           data: mt.ParallelData) -> Section:
    """Keep the chapter's figures of record (a full book run only)."""
    path = record_headline(cfg, headline(scored["found"], agreed["table"],
                                         trained["minutes"], data, removal["record"],
                                         removal.glue["claim5_sentence"]))
    return Section(items=[recorded_line(path, cfg)])
