"""Chapter 4's recipe: heal the pruned models, then save, reload and measure them, section
by section (book/04_healing.ipynb).

Each function is one section of the page and returns a
:class:`~lib.recipes.section.Section`; every verdict comes from :mod:`lib.report.rules`.

Stage: the chapters' recipes. Explained in chapter 4 (book/04_healing.ipynb).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from lib.build.checkpoint import load_speechllm, save_speechllm
from lib.config.sections import Run
from lib.evaluate.decode import CAP_SLACK_TOKENS, CAP_TOKENS_PER_SECOND
from lib.heal.healing import HealRun, schedule
from lib.heal.measure import compare_seeded, loss_recovery, seed_mean
from lib.paths import slug
from lib.prune.cost import compare_decoding
from lib.prune.curves import evaluate_cut, full_capped
from lib.prune.export import saved_full
from lib.prune.loss_curves import BOOTSTRAP_DRAWS, LossMeter, cut_losses, loss_point, loss_rule
from lib.prune.strategies import PAPER_STRATEGY, cut_sizes, strategy_layers
from lib.recipes.heal_controls import heal_seeded, interval_text
from lib.recipes.pipeline import prepare_features, split_dev, train_and_evaluate
from lib.recipes.section import Section, settings_line
from lib.report.results import record_headline, recorded_line
from lib.report.rules import (SPEEDUP_TARGET, memory_verdict, seeded_verdict,
                              speedup_reaches_target)
from lib.score.records import speech_scores

COST_NEW_TOKENS = 16
"""Tokens decoded per utterance in the speed check: every round decodes exactly as many."""


def _wer_ci(s: dict[str, Any]) -> str:
    return f"{100 * s['wer']:.1f} [{100 * s['wer_ci95'][0]:.1f}, {100 * s['wer_ci95'][1]:.1f}]"


def settings(cfg: Run) -> str:
    """The line under the chapter's resolved values: what this run does, in its own numbers."""
    hc, ht = cfg.heal, schedule(cfg.heal, cfg.train)
    return settings_line(cfg, f"healing: {', '.join(hc.variants)} at {hc.fraction:.0%} of the "
                              f"layers (angular) and 'both' at the loss rule's cut",
                         f"{hc.seeds} seed{'s' if hc.seeds != 1 else ''} per variant and "
                         "for the unpruned control",
                         f"{ht.steps} steps of {ht.batch_size} utterances, peak rate "
                         f"{ht.learning_rate:g}, LoRA rank {hc.lora_rank}")


# ------------------------------------------------------------------ 4.1 the cuts, the budget


def healing_inputs(cfg: Run) -> Section:
    """Chapter 1's models; chapter 3's ``angular`` layers and its loss rule's cut (recomputed
    from the losses chapter 3 kept); per decoder and test set the losses of the full model,
    of the floor and of every cut healed; the training set healing uses."""
    hc, pc = cfg.heal, cfg.prune
    train, tests = prepare_features(cfg)
    fit, _ = split_dev(train, cfg.dev_utterances)
    first, runs, models, rows = cfg.test_data[0], {}, {}, []
    for m in cfg.models:
        name = slug(m.decoder)
        run = runs[name] = train_and_evaluate(m, cfg, train, tests, evaluate=False)
        big_l, out_dir = len(run.model.decoder_layers), run.train.run_dir
        grid = cut_sizes(pc.fractions, big_l)
        fixed = cut_sizes([hc.fraction], big_l)[0]
        scores = speech_scores(run.model, out_dir, tests[first], cfg.score)
        plan = strategy_layers(PAPER_STRATEGY, sorted(set(grid) | {fixed}), big_l,
                               speech_scores=scores)
        losses = {}
        for test, fs in tests.items():
            meter = LossMeter(run.model, fs, cfg.eval.batch_size, cfg.train.precision)
            floor_meter = LossMeter(run.model, fs.other_audio(), cfg.eval.batch_size,
                                    cfg.train.precision)
            losses[test] = {"full": cut_losses(meter, [], out_dir, test),
                            "floor": cut_losses(floor_meter, [], out_dir,
                                                f"{test}-other-audio"),
                            "cuts": {n: cut_losses(meter, plan[n], out_dir, test)
                                     for n in sorted(set(grid) | {fixed})}}
            meter.kept = None
        lf = losses[first]
        rule = loss_rule(lf["full"], lf["floor"], {n: lf["cuts"][n] for n in grid},
                         pc.loss_threshold, BOOTSTRAP_DRAWS, cfg.train.seed)
        cuts = {"fixed": fixed, "rule": rule["n_removed"]}
        points = {n: loss_point(lf["full"], lf["cuts"][n], lf["floor"], BOOTSTRAP_DRAWS,
                                cfg.train.seed) for n in set(cuts.values()) if n}
        models[name] = {"plan": plan, "cuts": cuts, "rule": rule, "losses": losses,
                        "points": points, "n_layers": big_l}
        for kind, n in cuts.items():
            p = points.get(n)
            rows.append({"decoder": name, "cut": "fixed (heal_fraction)" if kind == "fixed"
                         else "the loss rule's (chapter 3)", "layers removed": n,
                         "of": big_l, "layers": str(plan.get(n, [])),
                         f"loss cost on {first}": "–" if p is None else
                         interval_text(p["normalised"], p["normalised_ci95"])})
    ht = schedule(hc, cfg.train)
    glue = dict(heal_steps=ht.steps, heal_batch=ht.batch_size,
                heal_utts=ht.steps * ht.batch_size, heal_share=ht.steps * ht.batch_size / len(fit),
                n_fit=len(fit), heal_lr=f"{ht.learning_rate:g}", heal_ckpt=ht.checkpoint_every,
                heal_seeds=hc.seeds, loss_threshold=pc.loss_threshold, first=first,
                n_first=len(tests[first]), heal_pct=f"{hc.fraction:.0%}",
                n_healings=sum(_healings(cfg, d["cuts"]) for d in models.values()))
    return Section(pd.DataFrame(rows), glue, {"tests": tests, "fit": fit, "runs": runs,
                                              "models": models})


def _healings(cfg: Run, cuts: dict[str, int]) -> int:
    """How many healings a decoder takes: the variants' seeds, the control's, the rule's cut."""
    trained = [v for v in cfg.heal.variants if v != "none"]
    return (len(trained) + 1) * cfg.heal.seeds + int(cuts["rule"] not in (0, cuts["fixed"]))


# ------------------------------------------------------------------ 4.2 the variants


def variants(cfg: Run, inputs: Section) -> Section:
    """Each healing variant, with every seed, on its own copy of the model pruned at
    ``heal_fraction``: its loss on every test utterance, the share of the loss pruning added
    that it won back, and ``both`` against each variant alone by the seeded paired rule."""
    tests, first, out, rows = inputs["tests"], cfg.test_data[0], {}, []
    for name, run in inputs["runs"].items():
        d = inputs["models"][name]
        n = d["cuts"]["fixed"]
        layers = d["plan"][n]
        out[name] = {}
        for v in cfg.heal.variants:
            if v == "none":
                got = {"losses": [{t: d["losses"][t]["cuts"][n] for t in tests}],
                       "records": [HealRun("none", None, {"projector": 0, "lora": 0,
                                                          "layers": []}, None).record()],
                       "model": None, "heal": None}
            else:
                got = heal_seeded(cfg, run, layers, v, inputs["fit"], tests,
                                  keep_first=v == "both")
            out[name][v] = got
            for t in tests:
                mean = seed_mean([x[t] for x in got["losses"]])
                lt = d["losses"][t]
                r = loss_recovery(lt["full"], lt["cuts"][n], mean, BOOTSTRAP_DRAWS,
                                  cfg.train.seed)
                per_seed = [x[t].mean for x in got["losses"]]
                got.setdefault("tests", {})[t] = {**r, "loss_per_seed": per_seed}
                rec = got["records"][0]
                rows.append({"decoder": name, "variant": v, "test_set": t,
                             "seeds": len(per_seed), "loss": mean.mean,
                             "seed range": f"{min(per_seed):.3f}–{max(per_seed):.3f}",
                             "recovery [95 % CI]": "–" if v == "none" else
                             interval_text(r["recovery"], r["recovery_ci95"]),
                             "recovery": r["recovery"],
                             "trainable (M)": (rec["trainable_projector"]
                                               + rec["trainable_lora"]) / 1e6,
                             "minutes": sum(x["wall_time_s"] for x in got["records"]) / 60
                             / len(got["records"])})
    comparisons = _compare_variants(cfg, out)
    vt = pd.DataFrame(rows)
    healed_first = [(name, v, g["tests"][first]) for name, o in out.items()
                    for v, g in o.items() if v != "none"]
    best = {}
    for name, v, t in healed_first:
        if name not in best or t["loss"] < best[name][1]["loss"]:
            best[name] = (v, t)
    glue = dict(
        best_variant="; ".join(
            f"for {name}, {v} ({t['loss']:.3f} nats per token, recovery "
            f"{interval_text(t['recovery'], t['recovery_ci95'])})"
            for name, (v, t) in best.items()) or "no variant healed",
        both_vs_single="; ".join(
            f"{name}: both's loss is {c['verdict']} {v}'s ({c['delta']:+.3f} nats per token, "
            f"interval "
            f"{c['ci95'][0]:+.3f} to {c['ci95'][1]:+.3f} from the {c['interval_from']})"
            for name, cs in comparisons.items() for v, c in cs.items())
        or "not measured (give both, and projector or decoder, in heal_variants)")
    cols = ["decoder", "test_set", "variant", "seeds", "loss", "seed range",
            "recovery [95 % CI]", "trainable (M)", "minutes"]
    return Section(vt[cols], glue, {"variants": out, "comparisons": comparisons,
                                    "table": vt}, precision=3)


def _compare_variants(cfg: Run, out: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per decoder, ``both`` against each single variant (projector, decoder) on the first
    test set by :func:`lib.heal.measure.compare_seeded` and its verdict."""
    first, res = cfg.test_data[0], {}
    for name, got in out.items():
        if "both" not in got:
            continue
        res[name] = {}
        for v in ("projector", "decoder"):
            if v in got:
                c = compare_seeded([x[first] for x in got["both"]["losses"]],
                                   [x[first] for x in got[v]["losses"]], BOOTSTRAP_DRAWS,
                                   cfg.train.seed)
                res[name][v] = {**c, "verdict": seeded_verdict(c)}
    return {n: c for n, c in res.items() if c}


# ------------------------------------------------------------------ 4.4 WER to confirm


def confirm(cfg: Run, inputs: Section, healed: Section, ctrl: Section) -> Section:
    """WER decoded to confirm the losses, each decode capped by its audio's length, with its
    insertion rate: the full model (chapter 1's decodes), every healed cut before and after
    healing (first seed), and the unpruned control."""
    ev, rows, out = cfg.eval, [], {}
    for name, run in inputs["runs"].items():
        d, c = inputs["models"][name], ctrl["controls"][name]
        out[name] = {}
        for test, fs in inputs["tests"].items():
            sub = fs.subset(ev.max_test_utterances)
            full = full_capped(run.model, fs, run.train.run_dir, test, ev)
            ctl = c["control"]
            entries = [("full model", full), ("unpruned control", evaluate_cut(
                ctl["model"], sub, [], ctl["heal"].run_dir, test, ev, capped=True))]
            for k, cut in c["cuts"].items():
                entries.append((f"{k} removed", evaluate_cut(
                    run.model, sub, d["plan"][k], run.train.run_dir, test, ev, capped=True)))
                entries.append((f"{k} removed, healed (both)", evaluate_cut(
                    cut["model"], sub, [], cut["heal"].run_dir, test, ev, capped=True)))
            out[name][test] = {}
            for label, s in entries:
                out[name][test][label] = {"wer": s["wer"], "wer_ci95": s["wer_ci95"],
                                          "insertion_rate": s["insertion_rate"],
                                          "n_utterances": s["n_utterances"]}
                rows.append({"decoder": name, "test set": test, "model": label,
                             "WER (%) [95 % CI]": _wer_ci(s),
                             "insertions per word": s["insertion_rate"]})
    first = cfg.test_data[0]
    glue = dict(cap_rate=f"{CAP_TOKENS_PER_SECOND:g}", cap_slack=CAP_SLACK_TOKENS,
                wer_sentence="; ".join(
                    f"{name}: " + ", ".join(f"{label} {100 * s['wer']:.1f} %"
                                            for label, s in t[first].items())
                    for name, t in out.items()))
    return Section(pd.DataFrame(rows), glue, {"wer": out}, precision=2)


# ------------------------------------------------------------------ 4.4 save, reload, measure


def export(cfg: Run, inputs: Section, ctrl: Section) -> Section:
    """The model pruned at the fixed cut and healed with ``both`` (first seed) saved,
    reloaded with plain transformers, and checked against the model in memory as healed
    (adapters not merged): the loss on every utterance of every test set, and the
    transcripts of one batch of each (capped decodes)."""
    ev, rows, exports = cfg.eval, [], {}
    for name, run in inputs["runs"].items():
        fixed = inputs["models"][name]["cuts"]["fixed"]
        cut = ctrl["controls"][name]["cuts"][fixed]
        model, hr = cut["model"], cut["heal"]
        # the model as healed (adapters not merged): its losses of section 4.3, one batch
        # decoded before the save merges the adapters in place
        subs = {t: fs.subset(ev.batch_size) for t, fs in inputs["tests"].items()}
        decoded = {t: evaluate_cut(model, sub, [], hr.run_dir, t, ev, capped=True)
                   for t, sub in subs.items()}
        folder = save_speechllm(model, hr.run_dir / "export", overwrite=True,
                                extra={"encoder": run.config.encoder,
                                       "base_run": run.train.run_dir.name})
        reloaded = load_speechllm(folder)
        exports[name] = {"folder": str(folder), "n_removed": fixed, "tests": {}}
        for t, fs in inputs["tests"].items():
            mine = cut["losses"][t]
            back = LossMeter(reloaded, fs, ev.batch_size, cfg.train.precision)()
            gap = float(abs(mine.mean - back.mean))
            worst = float((abs(mine.sums - back.sums) / back.tokens).max())
            sub, a = subs[t], decoded[t]
            b = evaluate_cut(reloaded, sub, [], folder, t, ev, capped=True)
            same = [x["hyp"] for x in a["hypotheses"]] == [x["hyp"] for x in b["hypotheses"]]
            exports[name]["tests"][t] = {"loss": back.mean, "loss_gap": gap,
                                         "max_utterance_gap": worst,
                                         "decoded": len(sub),
                                         "same_transcripts_as_in_memory": same}
            rows.append({"decoder": name, "test set": t, "utterances": len(fs),
                         "loss reloaded": back.mean,
                         "difference (nats per token)": f"{gap:.1e}",
                         "largest, one utterance": f"{worst:.1e}",
                         "decoded": len(sub), "same transcripts as in memory": same})
    checks = [x for e in exports.values() for x in e["tests"].values()]
    differ = sum(not x["same_transcripts_as_in_memory"] for x in checks)
    glue = dict(export_sentence=(
        f"the reloaded models' mean loss differs from the models' in memory by at most "
        f"{max(x['loss_gap'] for x in checks):.1e} nats per token (one utterance by at most "
        f"{max(x['max_utterance_gap'] for x in checks):.1e}): the rounding of "
        f"{'bf16' if cfg.train.precision == 'bf16' else 'float32'} arithmetic, the adapters "
        "merged into the weights instead of added to their output; "
        f"the transcripts are the same on {len(checks) - differ} of {len(checks)} batches"
        + ("" if not differ else ", and where they differ that rounding took greedy decoding "
           "to another token where two were nearly tied")))
    return Section(pd.DataFrame(rows), glue, data={"exports": exports}, precision=4)


def headline(cfg: Run, inputs: Section, healed: Section, ctrl: Section, confirmed: Section,
             exports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Chapter 4's figures of record (``results/<preset>/ch04.json``).

    Per decoder: ``cut`` (the fixed cut) and ``rule_cut`` (the loss rule's, with its
    interval); ``losses`` per test set (full, floor, pruned at the fixed cut: nats per
    token); per variant its seeds, steps, wall time, trainable parameters and per test set
    the seed-averaged ``loss``, ``loss_per_seed`` and ``recovery`` (with ``recovery_ci95``);
    ``both_vs``: both against each single variant (``delta``, ``ci95``, ``interval_from``,
    ``verdict``); ``repair``: healing's gain against the unpruned control's; ``cuts``:
    ``both`` at each cut healed (cost before and after, within the rule); ``wer``: the capped
    decodes of section 4.4; ``export``: the reloaded model and the measured cost."""
    out: dict[str, Any] = {}
    for dec, d in inputs["models"].items():
        big_l, fixed, rule = d["n_layers"], d["cuts"]["fixed"], d["rule"]
        c = ctrl["controls"][dec]
        out[dec] = {
            "cut": {"n_removed": fixed, "n_layers": big_l, "removed_fraction": fixed / big_l},
            "rule_cut": {"n_removed": rule["n_removed"],
                         "n_removed_ci95": rule["n_removed_ci95"],
                         "removed_fraction": rule["n_removed"] / big_l},
            "losses": {t: {"full": x["full"].mean, "floor": x["floor"].mean,
                           "pruned": x["cuts"][fixed].mean} for t, x in d["losses"].items()},
            "variants": {v: {
                "seeds": [r.get("seed") for r in g["records"]],
                "steps": g["records"][0]["steps"],
                "wall_time_s": sum(r["wall_time_s"] for r in g["records"]) / len(g["records"]),
                "trainable": g["records"][0]["trainable_projector"]
                + g["records"][0]["trainable_lora"],
                "lora_layers": g["records"][0]["lora_layers"],
                "tests": {t: {k: x[k] for k in ("loss", "loss_per_seed", "recovery",
                                                "recovery_ci95")}
                          for t, x in g["tests"].items()}}
                for v, g in healed["variants"][dec].items()},
            "both_vs": {v: {k: x[k] for k in ("delta", "ci95", "interval_from", "per_seed",
                                              "verdict")}
                        for v, x in healed["comparisons"].get(dec, {}).items()},
            "repair": {k: c["repair"][k] for k in ("delta", "ci95", "interval_from",
                                                   "per_seed", "gain_healed",
                                                   "gain_healed_ci95", "gain_control",
                                                   "verdict")},
            "control": {"seeds": [r["seed"] for r in c["control"]["records"]],
                        "lora_layers": c["control"]["records"][0]["lora_layers"],
                        "loss": {t: seed_mean([x[t] for x in c["control"]["losses"]]).mean
                                 for t in inputs["tests"]}},
            "cuts": {str(k): {f: x[f] for f in ("kind", "seeds", "recovery", "recovery_ci95",
                                                "cost_before", "cost_after",
                                                "cost_after_ci95", "within_rule")}
                     for k, x in c["cuts"].items()},
            "wer": confirmed["wer"][dec], "export": exports.get(dec, {})}
    hc, ht = cfg.heal, schedule(cfg.heal, cfg.train)
    return {"decoders": out, "settings": {
        "scored": "loss", "heal_steps": ht.steps, "heal_batch_size": ht.batch_size,
        "heal_learning_rate": ht.learning_rate, "heal_lora_rank": hc.lora_rank,
        "heal_fraction": hc.fraction, "heal_seeds": hc.seeds,
        "loss_threshold": cfg.prune.loss_threshold, "ruled_on": cfg.test_data[0],
        "bootstrap_draws": BOOTSTRAP_DRAWS}}


def _cost_row(name: str, c: dict[str, Any]) -> dict[str, Any]:
    return {"decoder": name, "speedup": c["speedup"], "ideal speedup": c["ideal_speedup"],
            "ratio": c["speedup_over_ideal"],
            "params (M) full → pruned": f"{c['params_full_m']:.0f} → {c['params_pruned_m']:.0f}",
            "peak memory (MiB) full → pruned": f"{c['peak_mib_full']:.0f} → "
                                               f"{c['peak_mib_pruned']:.0f}",
            "batch × prompt + new tokens": f"{c['batch']} × {c['prompt_tokens']} + "
                                           f"{c['new_tokens']}"}


def cost(cfg: Run, inputs: Section, healed: Section, ctrl: Section, confirmed: Section,
         exported: Section) -> Section:
    """What pruning buys on this machine: decoding speed against the FLOP ideal
    (:func:`lib.report.rules.speedup_reaches_target`) and the peak memory of a fresh process
    (:func:`lib.report.rules.memory_verdict`); then the figures of record."""
    runs, exports, first = inputs["runs"], exported["exports"], cfg.test_data[0]
    rows = []
    for name, run in runs.items():
        fixed = inputs["models"][name]["cuts"]["fixed"]
        model = ctrl["controls"][name]["cuts"][fixed]["model"]
        # unpruned, adapters merged like the pruned one
        full_model, full_folder = saved_full(run.model, run.train.run_dir, run.config.encoder)
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
    path = record_headline(cfg, headline(cfg, inputs, healed, ctrl, confirmed, exports))
    items = [recorded_line(path, cfg)]
    return Section(pd.DataFrame(rows), glue, items=items)
