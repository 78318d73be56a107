"""Chapter 4's recipe: heal the pruned models, then save, reload and measure them, section
by section (book/04_healing.ipynb).

Each function is one section of the page and returns a
:class:`~lib.recipes.section.Section`; every verdict comes from :mod:`lib.report.rules`.

Stage: the chapters' recipes. Explained in chapter 4 (book/04_healing.ipynb).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from lib.build.checkpoint import load_speechllm, reuse_saved, save_speechllm
from lib.build.speechllm import SpeechLLM
from lib.build.adapters import merged_copy
from lib.config.sections import Run
from lib.data.features import FeatureSet
from lib.heal.healing import HealRun, heal, recovery, schedule
from lib.paths import slug
from lib.prune.cost import compare_decoding
from lib.prune.curves import evaluate_cut
from lib.prune.strategies import cut_sizes, strategy_layers
from lib.prune.surgery import pruned_copy
from lib.recipes.pipeline import ModelRun, prepare_features, split_dev, train_and_evaluate
from lib.recipes.section import Section, settings_line
from lib.report import plotting
from lib.report.results import record_headline, recorded_line
from lib.report.rules import (SPEEDUP_TARGET, interval_beats, memory_verdict,
                              speedup_reaches_target)
from lib.score.records import speech_scores

COST_NEW_TOKENS = 16
"""Tokens decoded per utterance in the speed check: every round decodes exactly as many."""


def _wer_ci(s: dict[str, Any]) -> str:
    return f"{100 * s['wer']:.1f} [{100 * s['wer_ci95'][0]:.1f}, {100 * s['wer_ci95'][1]:.1f}]"


def settings(cfg: Run) -> str:
    """The line under the chapter's resolved values: what this run does, in its own numbers."""
    hc, ht = cfg.heal, schedule(cfg.heal, cfg.train)
    fractions = ", ".join(f"{f:.0%}" for f in hc.curve_fractions)
    return settings_line(cfg, f"healing: {', '.join(hc.variants)} at {hc.fraction:.0%} of the "
                              f"layers (angular)", f"'both' at {fractions}",
                         f"{ht.steps} steps of {ht.batch_size} utterances, peak rate "
                         f"{ht.learning_rate:g}, LoRA rank {hc.lora_rank}")


# ------------------------------------------------------------------ 4.1 the cuts, the budget


def healing_inputs(cfg: Run) -> Section:
    """Chapter 1's models, chapter 3's ``angular`` layers for every cut healed, the
    training set healing uses and the curve subsets it is measured on."""
    hc, ht = cfg.heal, schedule(cfg.heal, cfg.train)
    train, tests = prepare_features(cfg)
    fit, _ = split_dev(train, cfg.dev_utterances)
    curve_sets = {name: fs.subset(cfg.heal.curve_utterances) for name, fs in tests.items()}
    runs, plans, cuts = {}, {}, {}
    for m in cfg.models:
        name = slug(m.decoder)
        run = runs[name] = train_and_evaluate(m, cfg, train, tests, evaluate=False)
        big_l = len(run.model.decoder_layers)
        sizes = cut_sizes(sorted(set(hc.curve_fractions) | {hc.fraction}), big_l)
        scores = speech_scores(run.model, run.train.run_dir, tests[cfg.test_data[0]],
                               cfg.score)
        plans[name] = strategy_layers("angular", sizes, big_l, speech_scores=scores)
        cuts[name] = cut_sizes([hc.fraction], big_l)[0]
    glue = dict(heal_steps=ht.steps, heal_batch=ht.batch_size,
                heal_utts=ht.steps * ht.batch_size, heal_share=ht.steps * ht.batch_size / len(fit),
                n_fit=len(fit), heal_lr=f"{ht.learning_rate:g}", heal_ckpt=ht.checkpoint_every)
    return Section(glue=glue, data={"tests": tests, "fit": fit, "curve_sets": curve_sets,
                                    "runs": runs, "plans": plans, "cuts": cuts})


# ------------------------------------------------------------------ 4.2 five variants


def heal_and_score(cfg: Run, run: ModelRun, layers: list[int], variant: str,
                   fit: FeatureSet, curve_sets: dict[str, FeatureSet]
                   ) -> tuple[SpeechLLM | None, HealRun, dict[str, dict[str, Any]]]:
    """Heal a pruned copy of ``run``'s model with one variant; its WER on every curve
    subset. ``none`` is the pruned model as it is: chapter 3's cached points, no copy."""
    ev = cfg.eval
    if variant == "none":
        scores = {t: evaluate_cut(run.model, fs, layers, run.train.run_dir, t, ev)
                  for t, fs in curve_sets.items()}
        return None, HealRun("none", None, {"projector": 0, "lora": 0, "layers": []},
                             None), scores
    model = pruned_copy(run.model, layers)
    hr = heal(model, fit, variant, cfg.heal, cfg.train, run.train.run_dir,
              desc=f"healing {variant}, {len(layers)} layers removed")
    scores = {t: evaluate_cut(model, fs, [], hr.run_dir, t, ev)
              for t, fs in curve_sets.items()}
    return model, hr, scores


def _both_vs_single(f0: pd.DataFrame) -> str:
    """Per decoder: does ``both`` beat ``projector`` and ``decoder`` alone by the interval
    rule (:func:`lib.report.rules.interval_beats`)?"""
    out = []
    for n, g in f0.groupby("decoder"):
        if not {"both", "projector", "decoder"} <= set(g.variant):
            continue
        ci = {v: {"ci": [lo, hi]} for v, lo, hi in zip(g.variant, g.wer_low, g.wer_high)}
        beats = all(interval_beats(ci["both"], ci[v], key="ci") for v in ("projector",
                                                                          "decoder"))
        out.append(f"{n}: " + ("both beats projector and decoder alone" if beats else
                               "both is not clearly better than either alone "
                               "(intervals overlap)"))
    return "; ".join(out) or ("not measured (the variants both, projector and decoder were "
                              "not all run)")


def _variant_row(name: str, v: str, t: str, s: dict[str, Any], rec: dict[str, Any],
                 full: dict[str, Any], pruned: dict[str, Any], rc: float) -> dict[str, Any]:
    return {"decoder": name, "variant": v, "test_set": t, "wer": s["wer"],
            "wer_low": s["wer_ci95"][0], "wer_high": s["wer_ci95"][1],
            "wer_full": full["wer"], "wer_pruned": pruned["wer"], "recovery": rc,
            "trainable (M)": (rec["trainable_projector"] + rec["trainable_lora"]) / 1e6,
            "minutes": rec["wall_time_s"] / 60}


def variants(cfg: Run, inputs: Section) -> Section:
    """Each healing variant on its own copy of the model pruned at ``heal_fraction``: WER
    before and after, and the share of the lost WER won back."""
    runs, plans, cuts = inputs["runs"], inputs["plans"], inputs["cuts"]
    curve_sets, ev = inputs["curve_sets"], cfg.eval
    full, out, rows, models = {}, {}, [], {}
    for name, run in runs.items():
        full[name] = {t: evaluate_cut(run.model, fs, [], run.train.run_dir, t, ev)
                      for t, fs in curve_sets.items()}
        layers = plans[name][cuts[name]]
        pruned = {t: evaluate_cut(run.model, fs, layers, run.train.run_dir, t, ev)
                  for t, fs in curve_sets.items()}
        out[name] = {}
        for v in cfg.heal.variants:
            model, hr, scores = heal_and_score(cfg, run, layers, v, inputs["fit"], curve_sets)
            if v == "both":
                models[name] = (model, hr)
            rec = hr.record()
            out[name][v] = {**rec, "tests": {}}
            for t, s in scores.items():
                rc = recovery(full[name][t]["wer"], pruned[t]["wer"], s["wer"])
                out[name][v]["tests"][t] = {
                    "wer_before": pruned[t]["wer"], "wer_before_ci95": pruned[t]["wer_ci95"],
                    "wer_after": s["wer"], "wer_after_ci95": s["wer_ci95"], "recovery": rc}
                rows.append(_variant_row(name, v, t, s, rec, full[name][t], pruned[t], rc))
    vt = pd.DataFrame(rows)
    for name in runs:
        plotting.plot_heal_variants(vt[vt["decoder"] == name],
                                    title=f"{name}, {cuts[name]} layers removed")
    show = vt.assign(**{"WER after (%)": [f"{100 * w:.1f} [{100 * a:.1f}, {100 * b:.1f}]"
                                          for w, a, b in zip(vt.wer, vt.wer_low, vt.wer_high)],
                        "WER full (%)": 100 * vt.wer_full, "WER pruned (%)": 100 * vt.wer_pruned})
    first = cfg.test_data[0]
    f0 = vt[vt["test_set"] == first]
    best = f0.loc[f0.groupby("decoder")["wer"].idxmin()]
    glue = dict(
        heal_pct=f"{cfg.heal.fraction:.0%}", curve_n=cfg.heal.curve_utterances, first=first,
        best_variant="; ".join(f"for {r.decoder}, {r.variant} ({100 * r.wer:.1f} % against "
                               f"{100 * r.wer_pruned:.1f} % unhealed and "
                               f"{100 * r.wer_full:.1f} % before pruning)"
                               for r in best.itertuples()),
        both_vs_single=_both_vs_single(f0))
    cols = ["decoder", "test_set", "variant", "WER full (%)", "WER pruned (%)", "WER after (%)",
            "recovery", "trainable (M)", "minutes"]
    return Section(show[cols], glue, {"variants": out, "models": models, "full": full})


# ------------------------------------------------------------------ 4.3 healed curves


def healed_curves(cfg: Run, inputs: Section, healed: Section) -> Section:
    """Every cut of ``heal_curve_fractions`` healed with ``both``, beside chapter 3's
    unhealed curve."""
    runs, plans, cuts = inputs["runs"], inputs["plans"], inputs["cuts"]
    curve_sets, ev = inputs["curve_sets"], cfg.eval
    out = {}
    for name, run in runs.items():
        big_l = len(run.model.decoder_layers)
        out[name], curve_rows = {}, []
        for n in cut_sizes(cfg.heal.curve_fractions, big_l):
            layers = plans[name][n]
            if n == cuts[name] and "both" in healed["variants"][name]:
                scores = {t: {"wer": d["wer_after"], "wer_ci95": d["wer_after_ci95"]}
                          for t, d in healed["variants"][name]["both"]["tests"].items()}
            else:
                _, _, scores = heal_and_score(cfg, run, layers, "both", inputs["fit"],
                                              curve_sets)
            for t, fs in curve_sets.items():
                p = evaluate_cut(run.model, fs, layers, run.train.run_dir, t, ev)
                for label, s in (("pruned", p), ("healed (both)", scores[t])):
                    curve_rows.append({"model": label, "test_set": t, "n_removed": n,
                                       "removed_fraction": n / big_l, "wer": s["wer"],
                                       "wer_low": s["wer_ci95"][0],
                                       "wer_high": s["wer_ci95"][1]})
                out[name].setdefault(t, []).append({
                    "removed_fraction": n / big_l, "n_removed": n, "wer_pruned": p["wer"],
                    "wer_pruned_ci95": p["wer_ci95"], "wer_healed": scores[t]["wer"],
                    "wer_healed_ci95": scores[t]["wer_ci95"],
                    "recovery": recovery(healed["full"][name][t]["wer"], p["wer"],
                                         scores[t]["wer"])})
        plotting.plot_pruning_curves(pd.DataFrame(curve_rows), healed["full"][name],
                                     cfg.prune.threshold, title=name, hue="model")
    rec = pd.DataFrame([{"decoder": n, "test_set": t, **p} for n, c in out.items()
                        for t, ps in c.items() for p in ps])
    cols = ["decoder", "test_set", "n_removed", "removed_fraction", "wer_pruned", "wer_healed",
            "recovery"]
    return Section(rec[cols], {"rec_min": rec["recovery"].min(),
                               "rec_max": rec["recovery"].max()},
                   {"curve": out}, precision=3)


# ------------------------------------------------------------------ 4.4 save, reload, measure


def export(cfg: Run, runs: dict[str, ModelRun], healed: Section,
           tests: dict[str, FeatureSet]) -> Section:
    """The pruned and healed model (``both``) saved, reloaded with plain transformers, and
    checked to give the same transcripts as in memory."""
    ev, rows, exports = cfg.eval, [], {}
    for name, run in runs.items():
        model, hr = healed["models"][name]
        folder = save_speechllm(model, hr.run_dir / "export", overwrite=True,
                                extra={"encoder": run.config.encoder,
                                       "base_run": run.train.run_dir.name})
        reloaded = load_speechllm(folder)
        exports[name] = {"folder": str(folder), "tests": {}}
        for t, fs in tests.items():
            a = evaluate_cut(model, fs, [], hr.run_dir, t, ev)
            b = evaluate_cut(reloaded, fs, [], folder, t, ev)
            same = [x["hyp"] for x in a["hypotheses"]] == [x["hyp"] for x in b["hypotheses"]]
            exports[name]["tests"][t] = {"wer": b["wer"], "wer_ci95": b["wer_ci95"],
                                         "same_transcripts_as_in_memory": same}
            rows.append({"decoder": name, "test set": t, "utterances": len(fs),
                         "WER reloaded (%)": _wer_ci(b), "same transcripts as in memory": same})
    return Section(pd.DataFrame(rows), data={"exports": exports})


def headline(variants_: dict[str, dict[str, Any]], curve: dict[str, dict[str, Any]],
             exports: dict[str, dict[str, Any]], cuts: dict[str, int],
             settings: dict[str, Any], n_layers: dict[str, int]) -> dict[str, Any]:
    """Chapter 4's figures of record (``results/<preset>/ch04.json``): per decoder the cut,
    per healing variant ``wer_before`` / ``wer_after`` (with intervals) and the recovery per
    test set, trainable parameters, steps and wall time; the healed curve; the reloaded
    model's WER and the measured cost."""
    out: dict[str, Any] = {}
    for dec, vs in variants_.items():
        out[dec] = {
            "cut": {"n_removed": cuts[dec], "n_layers": n_layers[dec],
                    "removed_fraction": cuts[dec] / n_layers[dec]},
            "variants": {v: {"steps": r["steps"], "wall_time_s": r["wall_time_s"],
                             "trainable": r["trainable_projector"] + r["trainable_lora"],
                             "lora_layers": r["lora_layers"], "tests": r["tests"]}
                         for v, r in vs.items()},
            "healed_curve": curve.get(dec, {}), "export": exports.get(dec, {})}
    return {"decoders": out, "settings": dict(settings)}


def _cost_row(name: str, c: dict[str, Any]) -> dict[str, Any]:
    return {"decoder": name, "speedup": c["speedup"], "ideal speedup": c["ideal_speedup"],
            "ratio": c["speedup_over_ideal"],
            "params (M) full → pruned": f"{c['params_full_m']:.0f} → {c['params_pruned_m']:.0f}",
            "peak memory (MiB) full → pruned": f"{c['peak_mib_full']:.0f} → "
                                               f"{c['peak_mib_pruned']:.0f}",
            "batch × prompt + new tokens": f"{c['batch']} × {c['prompt_tokens']} + "
                                           f"{c['new_tokens']}"}


def cost(cfg: Run, inputs: Section, healed: Section, curves_: Section,
         exported: Section) -> Section:
    """What pruning buys on this machine: decoding speed against the FLOP ideal
    (:func:`lib.report.rules.speedup_reaches_target`) and the peak memory of a fresh process
    (:func:`lib.report.rules.memory_verdict`); then the figures of record."""
    runs, exports, first = inputs["runs"], exported["exports"], cfg.test_data[0]
    rows = []
    for name, run in runs.items():
        model, _ = healed["models"][name]
        full_model = merged_copy(run.model)  # unpruned, adapters merged like the pruned one
        full_folder = run.train.run_dir / "export-full"
        if not reuse_saved(full_folder):  # missing, or damaged and set aside
            save_speechllm(full_model, full_folder, extra={"encoder": run.config.encoder})
        c = compare_decoding(full_model, model,
                             inputs["tests"][first].subset(cfg.eval.batch_size),
                             new_tokens=COST_NEW_TOKENS, rounds=cfg.heal.cost_rounds,
                             full_folder=full_folder, pruned_folder=exports[name]["folder"],
                             memory_rounds=cfg.heal.cost_rounds)
        exports[name]["cost"] = c
        rows.append(_cost_row(name, c))
    costs = [exports[n]["cost"] for n in runs]
    glue = dict(
        mem_sentence="; ".join(
            f"{r['decoder']}: peak {c['peak_mib_pruned'] - c['peak_mib_full']:+.0f} MiB for "
            f"{c['param_mib_full'] - c['param_mib_pruned']:.0f} MiB of weights removed, "
            f"{memory_verdict(c)}" for r, c in zip(rows, costs)),
        cost_explain=(
            f"For every decoder the measured speed-up reaches at least {SPEEDUP_TARGET:g} of "
            "the ideal." if all(speedup_reaches_target(r["ratio"]) for r in rows) else
            f"Where the measured speed-up falls short of {SPEEDUP_TARGET:g} of the ideal, work "
            "that pruning does not touch (the prompt assembly, the sampling loop, per-step "
            "overheads of a small model) takes a larger share of the time than its FLOPs say."),
        cost_sentence="; ".join(
            f"{r['decoder']}: {r['speedup']:.2f}x faster against an ideal "
            f"{r['ideal speedup']:.2f}x (ratio {r['ratio']:.2f}, "
            f"{'at least' if speedup_reaches_target(r['ratio']) else 'below'} the target of "
            f"{SPEEDUP_TARGET:g}), parameters {r['params (M) full → pruned']} M, peak memory "
            f"{r['peak memory (MiB) full → pruned']} MiB" for r in rows))
    hc, ht = cfg.heal, schedule(cfg.heal, cfg.train)
    path = record_headline(cfg, headline(
        healed["variants"], curves_["curve"], exports, inputs["cuts"],
        {"heal_steps": ht.steps, "heal_batch_size": ht.batch_size,
         "heal_learning_rate": ht.learning_rate, "heal_lora_rank": hc.lora_rank,
         "heal_fraction": hc.fraction},
        {n: len(r.model.decoder_layers) for n, r in runs.items()}))
    items = [recorded_line(path, cfg)]
    return Section(pd.DataFrame(rows), glue, items=items)
