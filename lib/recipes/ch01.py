"""Chapter 1's recipe: build, train and evaluate one SpeechLLM per decoder, section by
section (book/01_building_a_speechllm.ipynb).

Each function is one section of the page: it runs the section's computation (through
:mod:`lib.recipes.pipeline` and the stages), draws its figures, and returns a
:class:`~lib.recipes.section.Section` with the table, the values the prose cites and what
later sections use. Every verdict comes from :mod:`lib.report.rules`.

Stage: the chapters' recipes. Explained in chapter 1 (book/01_building_a_speechllm.ipynb).
"""

from __future__ import annotations

import json
import os
from typing import Any

import pandas as pd

from lib.config.sections import Run
from lib.data.corpus import voice_family
from lib.data.features import FeatureSet
from lib.evaluate.baselines import audio_reliance, whisper_baseline
from lib.paths import slug
from lib.recipes.levers import recipe_words, training_corpus
from lib.recipes.bf16 import precision_record
from lib.recipes.pipeline import ModelRun, prepare_features, rescore_run, train_and_evaluate
from lib.recipes.section import Section
from lib.report import plotting
from lib.report.results import record_headline, recorded_line
from lib.report.rules import LISTENS_GAP, compare_wer, reads_audio

RELIANCE_UTTERANCES = 64
"""Test utterances behind the audio-reliance check (each scored twice)."""



# ------------------------------------------------------------------ 1.1 the architecture


def parameter_split(cfg: Run) -> Section:
    """Where the parameters live: this run's SpeechLLMs and the paper's, counted on meta."""
    from lib.build.model_configs import PAPER_ASR_PAIRS, split_table

    m0 = cfg.models[0]
    ours = split_table([(m.encoder, m.decoder) for m in cfg.models],
                       stack=m0.projector_stack, hidden=m0.projector_hidden)
    paper = split_table(PAPER_ASR_PAIRS, hidden=2048)
    both = pd.concat([ours.assign(run="this run"), paper.assign(run="paper")],
                     ignore_index=True)
    millions = ["encoder", "projector", "decoder", "total"]
    table = (both.assign(**{c: both[c] / 1e6 for c in millions})
             .rename(columns={c: f"{c} (M)" for c in millions}))
    plotting.plot_parameter_split(both).set_title("Where the parameters are")
    share = "decoder share (%)"
    above = paper[paper[share] > 90]
    smallest = paper.loc[paper["total"].idxmin()]
    glue = dict(
        paper_share_min=paper[share].min(), paper_share_max=paper[share].max(),
        paper_n_above_90=len(above), paper_n_models=len(paper),
        paper_smallest_above_90=above.loc[above["total"].idxmin(), "model"],
        ours_share_min=ours[share].min(), ours_share_max=ours[share].max(),
        smallest_model=smallest["model"], smallest_enc_m=smallest["encoder"] / 1e6,
        smallest_enc_share=100 * smallest["encoder"] / smallest["total"])
    return Section(table, glue, precision=1)


# ------------------------------------------------------------------ 1.2 data


def data_summary(train: FeatureSet, tests: dict[str, FeatureSet],
                 train_name: str = "train") -> pd.DataFrame:
    """Utterances, hours, voices and mean duration of each data set.

    ``voices`` counts voice families (:func:`lib.data.corpus.voice_family`): the rate and
    pitch variants of one synthetic voice count once."""
    rows = []
    for name, fs in [(train_name, train), *tests.items()]:
        durs = [u.duration for u in fs.utterances]
        rows.append({"set": name, "utterances": len(fs), "hours": sum(durs) / 3600,
                     "mean duration (s)": sum(durs) / len(durs),
                     "voices": len({voice_family(u.voice) for u in fs.utterances}),
                     "sources": ", ".join(sorted({u.source for u in fs.utterances}))})
    return pd.DataFrame(rows)


def data(cfg: Run) -> Section:
    """The training set (the corpus :func:`lib.recipes.levers.training_corpus` chooses) and
    the test sets, encoded once (cached): their summary."""
    corpus = training_corpus(cfg)
    train, tests = prepare_features(cfg, corpus)
    summary = data_summary(train, tests, cfg.train_data)
    return Section(summary, {"train_utts": len(train), "train_hours": summary.loc[0, "hours"],
                             "train_recipe": recipe_words(corpus)},
                   {"train": train, "tests": tests, "corpus": corpus})


def listen(train: FeatureSet, tests: dict[str, FeatureSet]) -> Section:
    """One training utterance and (when there is one) one real recording, to listen to."""
    from IPython.display import Audio

    from lib.data.audio import read_audio

    examples = [train.utterances[0]]
    if "real" in tests:
        examples.append(tests["real"].utterances[0])
    items: list[Any] = []
    for utt in examples:
        items += [f"{utt.voice}: {utt.text}", Audio(read_audio(utt.audio), rate=16000)]
    return Section(items=items)


# ------------------------------------------------------------------ 1.3 training


def training_log(runs: dict[str, ModelRun]) -> pd.DataFrame:
    """All runs' training logs in one long DataFrame (model, step, loss, lr, elapsed_s)."""
    return pd.concat([pd.DataFrame(r.train.log).assign(model=slug(name))
                      for name, r in runs.items()], ignore_index=True)


def train(cfg: Run, train_set: FeatureSet,
          tests: dict[str, FeatureSet]) -> Section:
    """Train (or reuse) every SpeechLLM, score it, decode it jointly (section 1.5); the
    two training stages' curves and what they cost."""
    import matplotlib.pyplot as plt

    runs = {}
    for m in cfg.models:
        runs[m.decoder] = train_and_evaluate(m, cfg, train_set, tests)
        rescore_run(runs[m.decoder], cfg, train_set, tests)  # joint decoding, section 1.5
    log = training_log(runs)
    warm = {n: r.warm_start for n, r in runs.items() if r.warm_start}
    fig, axes = plt.subplots(1, 2 if warm else 1, figsize=(11 if warm else 6, 3.6),
                             squeeze=False)
    if warm:
        ctc_log = pd.concat([pd.DataFrame(w.log).assign(model=n.split("/")[-1])
                             for n, w in warm.items()], ignore_index=True)
        plotting.plot_training_curves(ctc_log, ax=axes[0, 0])
        axes[0, 0].set_ylabel("CTC loss per target token (nats)")
        axes[0, 0].set_title("1. CTC warm start (projector only)")
    plotting.plot_training_curves(log, ax=axes[0, -1])
    axes[0, -1].set_title("SpeechLLM training (projector + LoRA)")
    fig.tight_layout()
    items = []
    for name, r in runs.items():
        w = r.warm_start
        ws = f"warm start {w.wall_time_s / 60:.1f} min ({len(w.log)} CTC steps), " if w else ""
        items.append(f"{name}: {ws}{r.train.result['steps']} LLM steps in "
                     f"{r.train.result['provenance']['wall_time_s'] / 60:.1f} min, "
                     f"{r.train.result['utterances_per_s']:.1f} utt/s")
    first = next(iter(runs.values()))
    res = first.train.result
    first_log = log[log["model"] == log["model"].iloc[0]]
    w = first.warm_start
    glue = dict(
        recipe=cfg.train.recipe, train_steps_done=res["steps"],
        train_batch=cfg.train.batch_size * cfg.train.grad_accum,
        train_time_first=res["provenance"]["wall_time_s"] / 60,
        train_ups_first=res["utterances_per_s"], loss_start=first_log["loss"].iloc[0],
        loss_end=first_log["loss"].tail(10).mean(), precision=cfg.train.precision,
        ctc_minutes_first=w.wall_time_s / 60 if w else 0.0,
        ctc_steps_first=len(w.log) if w else 0, norm_factor_first=w.norm_factor if w else 1.0)
    return Section(glue=glue, data={"runs": runs, "log": log}, items=items)


def dev_curve(runs: dict[str, ModelRun]) -> pd.DataFrame:
    """The learning curves: dev WER against training minutes (warm start included)."""
    frames = []
    for name, r in runs.items():
        if not r.train.dev_log:
            continue
        d = pd.DataFrame(r.train.dev_log)
        offset = r.warm_start.wall_time_s / 60 if r.warm_start else 0.0
        frames.append(d.assign(model=slug(name), train_minutes=d["train_minutes"] + offset,
                               dev_low=[c[0] for c in d["dev_wer_ci95"]],
                               dev_high=[c[1] for c in d["dev_wer_ci95"]]))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def learning_curve(cfg: Run, runs: dict[str, ModelRun]) -> Section:
    """Dev WER while training, with its intervals (no curve without a dev subset)."""
    dev = dev_curve(runs)
    if dev.empty:
        nan = float("nan")
        return Section(glue=dict(dev_first=nan, dev_last=nan, dev_first_min=nan,
                                 dev_last_min=nan),
                       items=["no learning curve: dev_utterances or dev_every is 0"])
    plotting.plot_learning_curve(dev).set_title("Dev WER while training")
    d0 = dev[dev["model"] == dev["model"].iloc[0]]
    return Section(glue=dict(dev_first=100 * d0["dev_wer"].iloc[0],
                             dev_first_min=d0["train_minutes"].iloc[0],
                             dev_last=100 * d0["dev_wer"].iloc[-1],
                             dev_last_min=d0["train_minutes"].iloc[-1],
                             dev_n=cfg.dev_utterances))


# ------------------------------------------------------------------ 1.4 word error rates


def wer_table(runs: dict[str, ModelRun],
              whisper: dict[str, dict[str, Any]] | None = None) -> pd.DataFrame:
    """WER with 95 % intervals of every system on every test set (one row each).

    Systems: each SpeechLLM (greedy), the same SpeechLLM with joint CTC / attention
    decoding (:func:`lib.recipes.pipeline.rescore_run`, when run), its CTC head alone
    (recipe ``ctc-warmstart``) and the encoder's own Whisper decoder (``whisper``: test set
    -> :func:`lib.evaluate.baselines.whisper_baseline`).
    """
    rows = []

    def add(system: str, test: str, s: dict[str, Any], quick: bool = False) -> None:
        lo, hi = s["wer_ci95"]
        rows.append({"system": system, "test set": test, "wer": s["wer"], "wer_low": lo,
                     "wer_high": hi, "cer": s["cer"], "utterances": s["n_utterances"],
                     "quick run": quick})

    for name, r in runs.items():
        for test, s in r.scores.items():
            add(f"SpeechLLM {slug(name)}", test, s, s["quick_run"])
        for test, s in r.rescored.get("scores", {}).items():
            add(f"SpeechLLM {slug(name)} + CTC rescoring (weight {r.rescored['weight']:g})",
                test, s, s["quick_run"])
        for test, s in r.ctc_scores.items():
            add(f"CTC head {slug(name)}", test, s)
    for test, s in (whisper or {}).items():
        add(f"{slug(s['model'])} (own decoder)", test, s)
    return pd.DataFrame(rows)


def word_error_rates(cfg: Run, runs: dict[str, ModelRun],
                     tests: dict[str, FeatureSet]) -> Section:
    """Every system's WER on every test set beside the two baselines, and the verdicts
    (:func:`lib.report.rules.compare_wer`) for the first SpeechLLM on the first test set."""
    enc = cfg.models[0].encoder
    whisper = {test: whisper_baseline(enc, fs.subset(cfg.eval.max_test_utterances), test)
               for test, fs in tests.items()} if "whisper" in enc else {}
    table = wer_table(runs, whisper)
    items = ([f"QUICK RUN: test sets cut to {cfg.eval.max_test_utterances} utterances; not "
              "comparable with full runs."] if table["quick run"].any() else [])
    shown = table.assign(**{c: 100 * table[c] for c in ["wer", "wer_low", "wer_high", "cer"]})
    shown = shown.drop(columns="quick run").rename(columns={
        "wer": "WER (%)", "wer_low": "95 % CI low", "wer_high": "95 % CI high",
        "cer": "CER (%)"})
    plotting.plot_wer(table).set_title("WER by system and test set (lower is better)")
    first = next(iter(runs.values()))
    syn = cfg.test_data[0]
    s = first.scores[syn]
    nan = float("nan")
    c, w = first.ctc_scores.get(syn), whisper.get(syn)
    glue = dict(first_test=syn, first_wer=100 * s["wer"], first_lo=100 * s["wer_ci95"][0],
                first_hi=100 * s["wer_ci95"][1], first_n=s["n_utterances"],
                ctc_wer=100 * c["wer"] if c else nan,
                vs_ctc=compare_wer(s, c) if c else "not compared with",
                whisper_wer=100 * w["wer"] if w else nan,
                vs_whisper=compare_wer(s, w) if w else "not compared with")
    return Section(shown, glue, {"whisper": whisper, "table": table}, items, precision=1)


# ------------------------------------------------------------------ does it listen?


def reliance_table(runs: dict[str, ModelRun], data: FeatureSet,
                   n: int = RELIANCE_UTTERANCES) -> pd.DataFrame:
    """Per model: target loss with the right audio and with another utterance's audio."""
    rows = []
    for name, r in runs.items():
        rel = audio_reliance(r.model, data, n=n)
        rows.append({"model": slug(name), "loss, own audio": rel["own_audio_loss"],
                     "loss, other audio": rel["other_audio_loss"],
                     "utterances": rel["n_utterances"]})
    return pd.DataFrame(rows)


def headline(runs: dict[str, ModelRun], whisper: dict[str, dict[str, Any]],
             reliance: pd.DataFrame, checks: dict[str, Any] | None = None) -> dict[str, Any]:
    """Chapter 1's figures of record (``results/<preset>/ch01.json``): per decoder and
    test set ``wer``, ``wer_ci95``, ``n_utterances``, the baselines' scores and (when run)
    ``ctc_rescored`` (joint decoding: ``wer``, ``wer_ci95``, the dev-chosen ``weight``, and
    ``vs_greedy``, its paired difference from greedy decoding); training minutes, the
    audio-reliance gap and (where decoding ran in bf16) the bf16 - fp32 check per decoder."""
    out: dict[str, Any] = {}
    gaps = dict(zip(reliance["model"],
                    reliance["loss, other audio"] - reliance["loss, own audio"]))
    for name, r in runs.items():
        tests = {}
        for test, s in r.scores.items():
            base = {}
            if test in r.ctc_scores:
                base["ctc_head"] = {k: r.ctc_scores[test][k] for k in ("wer", "wer_ci95")}
            if test in whisper:
                base["whisper"] = {k: whisper[test][k] for k in ("wer", "wer_ci95")}
            tests[test] = {"wer": s["wer"], "wer_ci95": s["wer_ci95"], "cer": s["cer"],
                           "n_utterances": s["n_utterances"], "baselines": base}
            if test in r.rescored.get("scores", {}):
                rs = r.rescored["scores"][test]
                tests[test]["ctc_rescored"] = {"wer": rs["wer"], "wer_ci95": rs["wer_ci95"],
                                               "weight": r.rescored["weight"],
                                               "vs_greedy": r.rescored["vs_greedy"][test]}
        ctc_min = r.warm_start.wall_time_s / 60 if r.warm_start else 0.0
        llm_min = r.train.result["provenance"]["wall_time_s"] / 60
        out[slug(name)] = {
            "test_sets": tests,
            "training": {"recipe": r.train.result["train_config"]["recipe"],
                         "steps": r.train.result["steps"], "ctc_minutes": ctc_min,
                         "llm_minutes": llm_min, "minutes": ctc_min + llm_min},
            "audio_reliance_gap": float(gaps[slug(name)]),
        }
        if slug(name) in (checks or {}):
            c = checks[slug(name)]
            out[slug(name)]["bf16_vs_fp32"] = {
                "fp32_wer": c["fp32"]["wer"], "difference": c["difference"],
                "difference_ci95": c["difference_ci95"], "speedup": c["speedup"]}
    return {"decoders": out}


def reliance(cfg: Run, runs: dict[str, ModelRun], tests: dict[str, FeatureSet],
             wers: Section, precision: Section | None = None) -> Section:
    """Does each decoder read the audio (:func:`lib.report.rules.reads_audio`)?"""
    rel = reliance_table(runs, tests[cfg.test_data[0]])
    gap = rel["loss, other audio"] - rel["loss, own audio"]
    glue = dict(gap_min=gap.min(), gap_max=gap.max(), listens_gap=LISTENS_GAP,
                n_listening=int(sum(reads_audio(g) for g in gap)), n_models=len(gap),
                own_loss_first=rel["loss, own audio"].iloc[0],
                other_loss_first=rel["loss, other audio"].iloc[0])
    return Section(rel, glue, {"table": rel}, precision=3)


def record(cfg: Run, runs: dict[str, ModelRun], data: Section, wers: Section,
           listening: Section, precision: Section | None, real: Section) -> Section:
    """The chapter's figures of record (:func:`headline`), with what they were computed from:
    each run's key (its folder), the corpus's and every feature set's digest, the real set
    per source and the levers with the clean CTC head's spread over seeds."""
    figures = headline(runs, wers["whisper"], listening["table"], precision and
                       precision["checks"])
    for name, r in runs.items():
        figures["decoders"][slug(name)]["run_key"] = os.path.basename(r.train.run_dir)
    sets = {cfg.train_data: data["train"], **data["tests"]}
    corpus = data["corpus"]
    figures["inputs"] = {"corpus": corpus.digest(), "augment": corpus.augment_settings(),
                         "recipe": recipe_words(corpus), "corpus_recipe": cfg.corpus_recipe,
                         "features": {name: fs.digest() for name, fs in sets.items()}}
    figures["real_by_source"] = real["sources"].to_dict("records")
    figures["levers"] = real["summary"]
    if precision is not None:
        figures["precision"] = precision_record(precision)
    return Section(items=[recorded_line(record_headline(cfg, figures), cfg)])


def examples(cfg: Run, runs: dict[str, ModelRun], tests: dict[str, FeatureSet],
             n: int = 5) -> Section:
    """Reference and each model's hypothesis for the first ``n`` utterances of the real
    recordings (or of the first test set)."""
    shown, table = "real" if "real" in tests else cfg.test_data[0], {}
    for name, r in runs.items():
        hyp_file = r.train.run_dir / r.scores[shown]["hypotheses"]
        rows = [json.loads(x) for x in hyp_file.read_text().splitlines()][:n]
        table.setdefault("reference", [x["ref"] for x in rows])
        table[slug(name)] = [x["hyp"] for x in rows]
    return Section(pd.DataFrame(table))
