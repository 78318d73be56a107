"""What each lever of acoustic variety buys on real speech, measured by the CTC head.

Explained in chapter 1 (book/01_building_a_speechllm.ipynb, section "Real speech: what the
training audio needs"). Stage: the pipeline (data -> features -> CTC warm start -> evaluate).

A lever changes only the training data (:data:`lib.data.spec.LEVERS`: another engine's
voices, more of Piper's natural voice, other words, one waveform augmentation, all six). For each, the corpus is
built (or augmented beside the clean one), encoded, and the CTC head of the first decoder's
warm start is trained on it exactly as chapter 1 trains it, then scored on the real dev
prompts, the real test set and the synthetic test voices. The CTC head is the cheap witness:
minutes per lever where the LLM stage takes a quarter of an hour, and chapter 1's record
shows that its WER and the SpeechLLM's move together. The clean recipe is trained with
``lever_seeds`` seeds, as is every lever, and the larger of the two spreads widens each
comparison (:func:`lib.report.rules.seed_widened`). The recipe of record is chosen on
``real:dev`` by :func:`lib.report.rules.choose_lever`, never on a test set.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, replace
from typing import Any

import pandas as pd

from lib.build.components import build_encoder
from lib.build.speechllm import build_speechllm
from lib.cache import cached
from lib.config.sections import Run
from lib.data.features import FeatureSet, extract_features, split_dev
from lib.data.sources import load_source
from lib.data.spec import CLEAN_RECIPE, LEVERS, CorpusSpec, lever_fields, recipe_changes
from lib.device import resolve_device
from lib.evaluate.baselines import score_ctc
from lib.evaluate.metrics import paired_difference, wer_by
from lib.fileio import config_hash
from lib.paths import cache_subdir, slug
from lib.recipes.section import Section
from lib.report.rules import (WER_TARGETS, choose_lever, paired_verdict, seed_widened,
                              target_met)
from lib.train.ctc import ctc_warm_start, warmstart_folder, warmstart_settings

LEVER_TESTS = ("real:dev", "real", "synthetic:test")
"""Where a lever is scored: the dev prompts that choose, then the two test sets."""


def clean_spec(spec: CorpusSpec) -> CorpusSpec:
    """The corpus of ``spec`` without any lever: no augmentation, no flite, Piper's default
    share (chapter 1's recipe before this chapter measured the levers)."""
    return replace(spec, **CLEAN_RECIPE)


def recipe_words(spec: CorpusSpec) -> str:
    """How a corpus differs from the clean recipe, in words: ``"the clean recipe"`` or e.g.
    ``"the clean recipe with text_fraction 0.5"``."""
    changed = [f"{f} {getattr(spec, f)}" for f in recipe_changes(asdict(spec))]
    return "the clean recipe" + (f" with {', '.join(changed)}" if changed else "")


def lever_spec(spec: CorpusSpec, lever: str) -> CorpusSpec:
    """``spec``'s corpus with one lever pulled (:data:`LEVERS`, or ``name=amount``:
    :func:`lib.data.spec.lever_fields`)."""
    return replace(clean_spec(spec), **lever_fields(lever))


def _scored(score: dict[str, Any], utts: list[Any]) -> dict[str, Any]:
    """A CTC score kept with its WER per source of the utterances."""
    return {**score, "by_source": wer_by(score, [u.source for u in utts])}


def lever_run(cfg: Run, lever: str, seed: int, tests: dict[str, FeatureSet],
              own: FeatureSet | None = None) -> dict[str, Any]:
    """One lever at one seed: corpus, features, CTC warm start, scores (cached by key).

    ``own`` is the run's own training features (chapter 1's corpus): a lever whose corpus is
    the run's own takes them, and at the run's seed its warm start is the first decoder's,
    read back rather than trained again. Every corpus is encoded whole, as the run encodes
    the corpus it trains on (:func:`lib.recipes.pipeline.prepare_features`), so a lever and
    the run read the same bits whichever encodes the corpus first. Splicing a lever's
    changed clips onto the clean recipe's features saved a minute but made other bits (a
    clip's features move in their last bits with the batch it is encoded in, under bf16),
    and a CTC head trained on them ends elsewhere: the text lever at seed 0 scored 49.7 %
    on the dev prompts encoded whole and 54.8 % spliced, under the same key, and the rule's
    choice followed the order the cache had been filled in.

    Returns:
        ``lever``, ``seed``, ``corpus`` (its digest), ``features`` (the training set's
        digest), ``minutes`` (corpus, features, warm start: wall minutes on this machine when
        first computed) and ``scores`` per test set (with ``by_source``).
    """
    spec = lever_spec(cfg.corpus, lever)
    mc = cfg.models[0]
    keyed = {"corpus": spec.digest(), "augment": spec.augment_settings(), "model": mc,
             "warm start": warmstart_settings(replace(cfg.train, seed=seed)),
             "tests": {name: fs.digest() for name, fs in tests.items()},
             "dev": cfg.dev_utterances}

    def compute(_: Any) -> dict[str, Any]:
        t0 = time.perf_counter()
        utts = load_source(cfg.train_data, spec)
        t1 = time.perf_counter()
        device = resolve_device(cfg.device)
        encoder = build_encoder(mc.encoder).to(device)
        # the whole spec, augmentation included (a corpus's digest leaves it out)
        train = (own if own is not None and spec == cfg.corpus else
                 extract_features(encoder, utts, desc=f"features {lever}",
                                  precision=cfg.train.precision))
        t2 = time.perf_counter()
        fit, _dev = split_dev(train, cfg.dev_utterances)
        tr = replace(cfg.train, seed=seed)
        model = build_speechllm(mc, device=device, seed=seed)
        warm = ctc_warm_start(model, fit, tr, warmstart_folder(mc, tr, fit),
                              desc=f"CTC warm start {lever} seed {seed}")
        t3 = time.perf_counter()
        scores = {name: _scored(score_ctc(model, warm.head, fs), fs.utterances)
                  for name, fs in tests.items()}
        return {"lever": lever, "seed": seed, "corpus": spec.digest(),
                "augment": spec.augment_settings(), "features": train.digest(),
                "minutes": {"corpus": (t1 - t0) / 60, "features": (t2 - t1) / 60,
                            "warm_start": (warm.wall_time_s if warm.cached else t3 - t2) / 60},
                "scores": scores}

    return cached(cache_subdir("levers"), f"{slug(mc.decoder)}-{slug(lever)}-s{seed}", keyed, compute,
                  what=f"lever {lever} seed {seed}")


def lever_tests(cfg: Run) -> dict[str, FeatureSet]:
    """The features of :data:`LEVER_TESTS` (clean audio, the run's encoder)."""
    encoder = build_encoder(cfg.models[0].encoder).to(resolve_device(cfg.device))
    return {name: extract_features(encoder, load_source(name, cfg.corpus),
                                   desc=f"features {name}", precision=cfg.train.precision)
            for name in LEVER_TESTS}


def measure_levers(cfg: Run, levers: tuple[str, ...], seeds: int,
                   own: FeatureSet | None = None) -> list[dict[str, Any]]:
    """Every lever and ``clean`` at ``seeds`` seeds each (seed 0 of all first, the
    reference first of all), each cached; ``own``: the run's training features
    (:func:`lever_run`). A lever's own spread over seeds widens its comparison as clean's
    does (:func:`lever_table`): one seed of one lever once moved the dev WER by 5 points."""
    tests = lever_tests(cfg)
    names = ["clean", *(lever for lever in levers if lever != "clean")]
    order = [(lever, s) for s in range(max(seeds, 1)) for lever in names]
    return [lever_run(cfg, lever, seed, tests, own) for lever, seed in order]


def seed_spreads(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per lever and test set, the max - min of its WER over the seeds measured (NaN for a
    lever measured at one seed)."""
    out: dict[str, dict[str, float]] = {}
    for lever in dict.fromkeys(r["lever"] for r in runs):
        wers = {t: [r["scores"][t]["wer"] for r in runs if r["lever"] == lever]
                for t in LEVER_TESTS}
        out[lever] = {t: max(w) - min(w) if len(w) > 1 else float("nan")
                      for t, w in wers.items()}
    return out


_CHOSEN: dict[str, CorpusSpec] = {}
""":func:`training_corpus`'s answers in this process, by what the lever runs are keyed on and
the cache: a chapter resolves the recipe of record several times (its features, chapter 1's
models, each encoder's run), and each time the nine cached lever runs and the lever tests'
features were read again (9 s a time on two cores)."""


def training_corpus(cfg: Run, measured: list[dict[str, Any]] | None = None) -> CorpusSpec:
    """The corpus the run's SpeechLLMs train on. With ``corpus_recipe = "rule"`` (the
    default) on the synthetic corpus, the levers of ``cfg.levers`` are measured first (each
    cached: :func:`measure_levers`) and the one :func:`lib.report.rules.choose_lever` picks on
    the real dev prompts is pulled on the clean recipe (clean when none wins, or when no
    lever is named); with ``"given"``, or another training source, ``cfg.corpus`` as set.
    Every chapter trains and reads chapter 1's models through it
    (:func:`lib.recipes.pipeline.prepare_features`), so they agree on the recipe; ``measured``:
    :func:`measure_levers` of ``cfg`` already at hand."""
    if cfg.corpus_recipe != "rule" or cfg.train_data != "synthetic:train":
        return cfg.corpus
    if not any(lever_spec(cfg.corpus, lever) != clean_spec(cfg.corpus) for lever in cfg.levers):
        return clean_spec(cfg.corpus)
    key = config_hash({"corpus": cfg.corpus, "levers": cfg.levers, "seeds": cfg.lever_seeds,
                       "model": cfg.models[0], "train": cfg.train, "dev": cfg.dev_utterances,
                       "device": cfg.device, "cache": str(cache_subdir("levers"))})
    if measured is not None or key not in _CHOSEN:
        _, extra = lever_table(measured or measure_levers(cfg, cfg.levers, cfg.lever_seeds))
        _CHOSEN[key] = lever_spec(cfg.corpus, extra["choice"]["lever"])
    return _CHOSEN[key]


def lever_table(runs: list[dict[str, Any]]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One row per lever (seed 0): WER with its interval on each test set and per real
    source, minutes, and the difference from clean (seed 0 against seed 0, paired) widened by
    the larger of clean's and the lever's own spread over seeds (:func:`seed_spreads`); and
    the choice of the recipe of record (:func:`choose_lever`).

    Returns:
        ``(table, {"choice", "seed_spread", "clean_seeds", "spreads"})``; ``seed_spread`` is
        clean's (the figure's band).
    """
    clean = [r for r in runs if r["lever"] == "clean"]
    spreads = seed_spreads(runs)
    spread = spreads["clean"]
    ref = next(r for r in clean if r["seed"] == 0)
    rows, choice_rows = [], []
    for r in (r for r in runs if r["seed"] == 0):
        row: dict[str, Any] = {"lever": r["lever"], "minutes": sum(r["minutes"].values())}
        vs: dict[str, dict[str, Any]] = {}  # its widened paired differences from clean
        for t in LEVER_TESTS:
            s = r["scores"][t]
            row[f"{t} WER"], row[f"{t} ci95"] = s["wer"], tuple(s["wer_ci95"])
            if r is not ref:
                wider = max((x for x in (spread[t], spreads[r["lever"]][t])
                             if math.isfinite(x)), default=float("nan"))
                vs[t] = seed_widened(paired_difference(s, ref["scores"][t]), wider)
                row[f"{t} vs clean"] = vs[t]["difference"]
                row[f"{t} vs clean ci95"] = tuple(vs[t]["difference_ci95"])
        for source, s in r["scores"]["real"]["by_source"].items():
            row[f"real:{source} WER"] = s["wer"]
        rows.append(row)
        choice_rows.append({"lever": r["lever"], "dev_wer": r["scores"]["real:dev"]["wer"],
                            "vs_clean": vs.get("real:dev")})
    clean_seeds = {t: [r["scores"][t]["wer"] for r in clean] for t in LEVER_TESTS}
    return pd.DataFrame(rows), {"choice": choose_lever(choice_rows), "seed_spread": spread,
                                "clean_seeds": clean_seeds, "spreads": spreads}


def by_source_table(runs: dict[str, Any], real: FeatureSet) -> pd.DataFrame:
    """Each trained SpeechLLM's WER per source of the real set: greedy, rescored (joint CTC /
    attention, when the run has it) and its CTC head alone, with intervals."""
    rows = []
    for name, run in runs.items():
        systems = {"greedy": run.scores.get("real"), "CTC head": run.ctc_scores.get("real"),
                   "rescored": run.rescored.get("scores", {}).get("real")}
        for system, score in systems.items():
            if not score:
                continue
            groups = [u.source for u in real.utterances[:len(score["utterance_errors"])]]
            for source, s in {**wer_by(score, groups),
                              "all": {"wer": score["wer"], "wer_ci95": score["wer_ci95"],
                                      "n": len(groups)}}.items():
                rows.append({"decoder": name, "system": system, "source": source,
                             "utterances": s["n"], "WER": s["wer"],
                             "ci95": tuple(s["wer_ci95"])})
    return pd.DataFrame(rows)


def _percent(table: pd.DataFrame) -> pd.DataFrame:
    """WER columns (fractions) as percentages, intervals as 'low-high' strings."""
    out = table.copy()
    for col in out.columns:
        if col.endswith("ci95"):
            out[col] = [f"{100 * a:.1f}–{100 * b:.1f}" if isinstance(a, float) else ""
                        for a, b in (v if isinstance(v, tuple) else (None, None)
                                     for v in out[col])]
        elif "WER" in col or col.endswith("vs clean"):
            out[col] = 100 * out[col]
    return out


def real_sets(tests: dict[str, FeatureSet]) -> dict[str, list[Any]]:
    """The real test utterances and the dev prompts (the run's own when it encoded them)."""
    return {name: tests[name].utterances if name in tests else load_source(name)
            for name in ("real", "real:dev")}


def sources_table(sets: dict[str, list[Any]]) -> pd.DataFrame:
    """Where the real recordings come from: each source's packages, licence, speakers and
    utterances (test, and the dev prompts; ``sets`` from :func:`real_sets`)."""
    from lib.data.real import REAL_SOURCES

    return pd.DataFrame([{"source": s.name, "Debian packages": ", ".join(s.packages),
                          "licence": s.licence, "speakers": s.speakers,
                          "test utterances": sum(u.source == s.name for u in sets["real"]),
                          "dev utterances": sum(u.source == s.name for u in sets["real:dev"])}
                         for s in REAL_SOURCES.values()])


def real_speech(cfg: Run, runs: dict[str, Any], train: FeatureSet,
                tests: dict[str, FeatureSet]) -> Section:
    """Chapter 1's section on real speech: this run's SpeechLLMs per real source, then every
    lever of :data:`LEVERS` named by ``cfg.levers`` measured by the CTC head (table, figure,
    the recipe of record chosen on the dev prompts)."""
    from lib.report.plot_levers import plot_levers

    sources = by_source_table(runs, tests["real"]) if "real" in tests else pd.DataFrame()
    sets = real_sets(tests)
    measured = measure_levers(cfg, cfg.levers, cfg.lever_seeds,  # cached under "rule"
                              own=train if cfg.corpus_recipe == "given" else None)
    trained = training_corpus(cfg, measured)
    table, extra = lever_table(measured)
    spread = extra["seed_spread"]
    clean = table.iloc[0]
    best = table.loc[table["real:dev WER"].idxmin()]
    glue = {"lever_choice": extra["choice"]["sentence"], "lever_of_record": extra["choice"]["lever"],
            "clean_real_ctc": 100 * clean["real WER"], "clean_dev_ctc": 100 * clean["real:dev WER"],
            "seed_spread_real": 100 * spread["real"], "seed_spread_dev": 100 * spread["real:dev"],
            "lever_seeds": len(extra["clean_seeds"]["real"]), "best_dev_lever": best["lever"],
            "best_dev_real": 100 * best["real WER"], "best_dev_minutes": best["minutes"],
            "n_levers": len(table) - 1, "run_recipe": recipe_words(trained),
            "lever_list": ", ".join(table["lever"][1:]) or "no lever",
            "best_dev_trade": trade_sentence(best.to_dict()),
            "choice_trained": choice_trained(trained, extra["choice"]["lever"],
                                             by_rule=cfg.corpus_recipe == "rule"),
            "real_target": 100 * WER_TARGETS["real"],
            "clean_syn_ctc": 100 * clean["synthetic:test WER"],
            "target_vs_domain": "below" if WER_TARGETS["real"] < clean["synthetic:test WER"]
            else "not below",
            "best_real_target": "meets" if target_met(best["real WER"], "real") else "misses",
            "real_winners": ", ".join(lower_on(table, "real")) or "none",
            "flite_share": 100 * LEVERS["flite"]["flite_fraction"],
            "piper_share": 100 * LEVERS["piper"]["piper_fraction"],
            "text_share": 100 * LEVERS["text"]["text_fraction"],
            "piper_default": 100 * CorpusSpec.piper_fraction, "augment_prob": cfg.corpus.augment_prob,
            "real_n": len(sets["real"]), "real_dev_n": len(sets["real:dev"]),
            "real_speakers": len({u.voice for u in sets["real"]}),
            "real_packages": len({u.source for u in sets["real"]})}
    items: list[Any] = [sources_table(sets)]
    if len(sources):
        items.append(_percent(sources).round(1))
    items.append(plot_levers(table, spread))
    return Section(_percent(table), glue, {"levers": measured, "sources": sources,
                                           "summary": lever_summary(table, extra)},
                   items, precision=1)


def lower_on(table: pd.DataFrame, test: str) -> list[str]:
    """The levers whose seed-widened difference from clean on ``test`` lies wholly below
    zero (:func:`lib.report.rules.paired_verdict`), in table order."""
    return [row["lever"] for row in table.to_dict("records") if row["lever"] != "clean"
            and paired_verdict({"difference_ci95": row[f"{test} vs clean ci95"]}) == "lower than"]


def choice_trained(spec: CorpusSpec, lever: str, by_rule: bool = False) -> str:
    """Whether the run trained the recipe of record (``lever`` of :func:`choose_lever`): its
    corpus ``spec`` is that lever's corpus (``by_rule``: chosen so before the SpeechLLMs
    trained, ``corpus_recipe = "rule"``), or the ``-p`` a run of record would set."""
    chosen = lever_spec(spec, lever)
    if chosen == spec:
        return ("This run's SpeechLLMs were trained on that recipe" +
                (", which the rule chose before they trained (corpus_recipe rule)"
                 if by_rule else ""))
    changes = []
    for f in ("piper_fraction", "flite_fraction", "text_fraction", "augment", "augment_prob"):
        value = getattr(chosen, f)
        if value != getattr(spec, f):
            shown = f"'[{', '.join(value)}]'" if isinstance(value, tuple) else f"{value:g}"
            changes.append(f"-p {f} {shown}")
    return (f"This run's SpeechLLMs were trained on {recipe_words(spec)}, not on that recipe: "
            f"a run of that recipe sets {' '.join(changes)}")


def trade_sentence(row: dict[str, Any]) -> str:
    """What the lever of one :func:`lever_table` row does against clean on the real test set
    and on the synthetic test voices, each difference seed-widened and read by
    :func:`lib.report.rules.paired_verdict` (the clean row has nothing to say)."""
    if row["lever"] == "clean":
        return "no lever reads the dev prompts better than the clean recipe"
    parts = []
    for test, name in (("real", "the real test set"), ("synthetic:test", "the synthetic test voices")):
        d = {"difference": row[f"{test} vs clean"], "difference_ci95": row[f"{test} vs clean ci95"]}
        lo, hi = (100 * x for x in d["difference_ci95"])
        parts.append(f"on {name} it is {paired_verdict(d)} clean "
                     f"({100 * d['difference']:+.1f} points [{lo:+.1f}, {hi:+.1f}])")
    return f"{row['lever']}: " + "; ".join(parts)


def lever_summary(table: pd.DataFrame, extra: dict[str, Any]) -> dict[str, Any]:
    """What chapter 1's record keeps of the levers: the choice, the clean seeds and their
    spread, one row per lever (intervals as lists; none for clean's own difference)."""
    rows = [{k: (list(v) if isinstance(v, tuple) else None if k.endswith("ci95") else v)
             for k, v in row.items()} for row in table.to_dict("records")]
    spreads = {lever: {t: None if math.isnan(x) else x for t, x in by.items()}
               for lever, by in extra["spreads"].items()}
    return {"choice": extra["choice"], "seed_spread": extra["seed_spread"],
            "clean_seeds": extra["clean_seeds"], "spreads": spreads, "rows": rows}
