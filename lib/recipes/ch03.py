"""Chapter 3's recipe: prune chapter 1's models by every strategy and measure what each cut
costs, section by section (book/03_pruning.ipynb).

What a cut costs is measured on every test utterance as a teacher-forced loss
(:mod:`lib.prune.loss_curves`): against the full model, and against the floor of the model
hearing another utterance's audio. The pruning rule is stated on that curve; WER is decoded
to confirm it at the chosen cut and its neighbours, with each decode capped by its audio's
length. Each function is one section of the page and returns a
:class:`~lib.recipes.section.Section`.

Stage: the chapters' recipes. Explained in chapter 3 (book/03_pruning.ipynb).
"""

from __future__ import annotations

import time
from typing import Any

import pandas as pd

from lib.config.sections import Run
from lib.data.features import FeatureSet
from lib.errors import CompanionError
from lib.paths import slug
from lib.evaluate.decode import CAP_SLACK_TOKENS, CAP_TOKENS_PER_SECOND
from lib.prune.curves import evaluate_cut, full_capped
from lib.prune.loss_curves import (BOOTSTRAP_DRAWS, LossMeter, compare_at_cuts, cut_losses,
                                   grid_steps, loss_curves, loss_rule)
from lib.prune.rule import relative_change, within_threshold
from lib.prune.strategies import PAPER_STRATEGY, STRATEGIES, cut_sizes, strategy_layers
from lib.recipes.pipeline import ModelRun, prepare_features, split_dev, train_and_evaluate
from lib.recipes.section import Section, settings_line
from lib.report import plotting
from lib.report.results import record_headline, recorded_line
from lib.score.records import speech_scores

PAPER_CUTS = [  # the paper's headline table (../shared/PAPER.md): WER % full -> pruned
    {"decoder": "Qwen2.5-7B", "removed (%)": 28.6, "test-clean": (2.01, 2.36),
     "test-other": (4.77, 4.83)},
    {"decoder": "Llama-3.1-8B", "removed (%)": 43.8, "test-clean": (2.65, 3.28),
     "test-other": (5.03, 6.28)},
    {"decoder": "Qwen2.5-3B", "removed (%)": 30.6, "test-clean": (2.22, 2.53),
     "test-other": (4.83, 5.12)},
]
"""The paper's chosen cuts (the summaries differ on the 7B cut and the 8B WERs; marked (?)
in PAPER.md). Llama 3.2 1B tolerates only ~6 % of its layers removed."""

BASELINE = "gromov"
"""The simple rule the paper's strategy is compared with: the last n layers before the
final one ("Reassessing Layer Pruning", ICLR 2026: healed, it beats metric-chosen blocks)."""


def _layers(n: int) -> str:
    return f"{n} layer{'' if n == 1 else 's'}"


def _wer_ci(s: dict[str, Any]) -> str:
    return f"{100 * s['wer']:.1f} [{100 * s['wer_ci95'][0]:.1f}, {100 * s['wer_ci95'][1]:.1f}]"


def settings(cfg: Run) -> str:
    """The line under the chapter's resolved values: what this run does, in its own numbers."""
    pc = cfg.prune
    return settings_line(cfg, f"strategies: {', '.join(pc.strategies)}",
                         f"fractions {list(pc.fractions)}",
                         "losses on every utterance of each test set",
                         f"loss rule threshold {pc.loss_threshold} on {cfg.test_data[0]}",
                         f"WER rule threshold {pc.threshold}, checked at the chosen cut")


# ------------------------------------------------------------------ 3.1 models and losses


def pruning_inputs(cfg: Run) -> Section:
    """Chapter 1's models (reused), chapter 2's scores on speech (computed if missing), the
    calibration set of the loss-driven strategies, and per decoder and test set the loss of
    every utterance for the full model and for the floor (each utterance heard with another
    one's audio).

    Raises:
        CompanionError: ``dev_utterances`` is 0, which leaves no calibration set; a test set
            too small for a bootstrap (:class:`lib.prune.loss_curves.LossMeter`).
    """
    pc = cfg.prune
    train, tests = prepare_features(cfg)
    calib = split_dev(train, cfg.dev_utterances)[1]
    if calib is None:
        raise CompanionError("dev_utterances = 0 leaves no calibration set for the "
                             "strategies sleb and oracle: set dev_utterances > 0")
    calib = calib.subset(pc.calibration_utterances)
    runs, scores, meters, rows = {}, {}, {}, []
    for m in cfg.models:
        name = slug(m.decoder)
        runs[name] = run = train_and_evaluate(m, cfg, train, tests, evaluate=False)
        scores[name] = speech_scores(run.model, run.train.run_dir, tests[cfg.test_data[0]],
                                     cfg.score)
        meters[name] = {}
        for test, fs in tests.items():
            meter = LossMeter(run.model, fs, cfg.eval.batch_size, cfg.train.precision)
            floor_meter = LossMeter(run.model, fs.other_audio(), cfg.eval.batch_size,
                                    cfg.train.precision)
            full = cut_losses(meter, [], run.train.run_dir, test)
            floor = cut_losses(floor_meter, [], run.train.run_dir, f"{test}-other-audio")
            meters[name][test] = {"meter": meter, "full": full, "floor": floor}
            rows.append({"decoder": name, "test set": test, "utterances": len(fs),
                         "target tokens": int(full.tokens.sum()),
                         "loss, full model": full.mean, "loss, other audio": floor.mean,
                         "the audio's worth": floor.mean - full.mean})
    table = pd.DataFrame(rows)
    first = table[table["test set"] == cfg.test_data[0]]
    glue = dict(calib_n=len(calib), ruled_on=cfg.test_data[0],
                loss_precision=("bf16 autocast" if cfg.train.precision == "bf16"
                                else "float32"),
                test_sizes=", ".join(f"{len(fs)} in {n}" for n, fs in tests.items()),
                worth_sentence="; ".join(
                    f"{r['decoder']}: {r['loss, full model']:.2f} nats per token with its "
                    f"own audio, {r['loss, other audio']:.2f} with another utterance's"
                    for _, r in first.iterrows()),
                deaf=", ".join(f"{r['decoder']} on {r['test set']}"
                               for _, r in table.iterrows() if r["the audio's worth"] <= 0)
                or "none")
    return Section(table, glue, {"train": train, "tests": tests, "calib": calib,
                                 "runs": runs, "scores": scores, "meters": meters},
                   precision=3)


# ------------------------------------------------------------------ 3.2 what each removes


def choose_layers(cfg: Run, runs: dict[str, ModelRun], scores: dict[str, Any],
                  calib: FeatureSet) -> Section:
    """Every strategy's layers for every cut, what choosing them cost, and whether Block
    Influence's picks are one block anyway."""
    pc, plans, costs = cfg.prune, {}, []
    for name, run in runs.items():
        big_l = len(run.model.decoder_layers)
        sizes = cut_sizes(pc.fractions, big_l)
        plans[name] = {}
        for s in pc.strategies:
            t0 = time.perf_counter()
            plans[name][s] = strategy_layers(s, sizes, big_l, speech_scores=scores[name],
                                             model=run.model, dev=calib,
                                             batch_size=cfg.score.batch_size,
                                             seed=cfg.train.seed,
                                             precision=cfg.train.precision)
            costs.append({"decoder": name, "strategy": s,
                          "seconds": time.perf_counter() - t0})
        plotting.plot_removed_layers(plans[name], big_l, title=f"{name}: {big_l} layers")
    cost = pd.DataFrame(costs).pivot(index="strategy", columns="decoder", values="seconds")
    cost = cost.loc[list(pc.strategies)]
    contig = {name: {s: all(ls == list(range(ls[0], ls[0] + len(ls))) for ls in p.values())
                     for s, p in pl.items()} for name, pl in plans.items()}
    dearest = cost.max(axis=1).sort_values(ascending=False)
    glue = dict(dearest=dearest.index[0], dearest_cost=dearest.iloc[0],
                bi_contiguous=", ".join(f"{n}: {'yes' if c.get('block-influence') else 'no'}"
                                        for n, c in contig.items()))
    shown = cost.reset_index().assign(
        **{"one block": [STRATEGIES[s].contiguous for s in cost.index]})
    shown = shown.rename(columns={d: f"{d} (s)" for d in runs})
    return Section(shown, glue, {"plans": plans}, precision=1)


# ------------------------------------------------------------------ 3.3 the loss curves


def _cell(v: float, lo: float, hi: float) -> str:
    return f"{v:.2f} [{lo:.2f}, {hi:.2f}]"


def curves(cfg: Run, runs: dict[str, ModelRun], meters: dict[str, dict[str, Any]],
           plans: dict[str, dict[str, dict[int, list[int]]]]) -> Section:
    """Every strategy's loss curve on every test set (:func:`lib.prune.loss_curves.
    loss_curves`), drawn normalised by the audio's worth; the table gives the points of the
    set the rule is stated on."""
    found, shown, passes, points_n = {}, {}, 0, 0
    first = cfg.test_data[0]
    for name, run in runs.items():
        parts, losses = [], {}
        for test, m in meters[name].items():
            pts, losses[test] = loss_curves(m["meter"], m["full"], m["floor"], plans[name],
                                            run.train.run_dir, test, BOOTSTRAP_DRAWS,
                                            cfg.train.seed)
            parts.append(pts)
            points_n += len(pts)
            passes += len({tuple(sorted(x)) for x in pts["layers"]})
        points = pd.concat(parts, ignore_index=True)
        found[name] = {"points": points, "losses": losses, "full": {
            test: {"loss": m["full"].mean, "loss_floor": m["floor"].mean,
                   "n_utterances": len(m["full"].sums)} for test, m in meters[name].items()}}
        plotting.plot_loss_curves(points, cfg.prune.loss_threshold, title=name)
        on_first = points[points["test_set"] == first]
        wide = on_first.assign(cost=[_cell(r.normalised, r.normalised_low, r.normalised_high)
                                     for r in on_first.itertuples()])
        wide = wide.pivot(index="strategy", columns="n_removed", values="cost")
        wide = wide.loc[[s for s in cfg.prune.strategies if s in wide.index]]
        shown[name] = wide
    glue = dict(n_points=points_n, n_passes=passes, first=first)
    return Section(cost_table(shown), glue, {"curves": found})


def cost_table(wide: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The table under the curves, from each decoder's costs (strategies by number of layers
    removed): a row per decoder and strategy, the cuts in increasing order; a cut that is
    not on a decoder's grid (each decoder has its own depth) is an empty cell."""
    table = pd.concat([w.reset_index().assign(decoder=name) for name, w in wide.items()],
                      ignore_index=True)
    cuts = sorted(c for c in table.columns if c not in ("decoder", "strategy"))
    table = table[["decoder", "strategy", *cuts]].fillna("")
    table.columns = ["decoder", "strategy", *[f"{n} removed" for n in cuts]]
    return table


def paper_cuts_table() -> pd.DataFrame:
    """The paper's cuts with the relative WER increase computed from its WERs."""
    rows = []
    for r in PAPER_CUTS:
        row = {"decoder": r["decoder"], "layers removed (%)": r["removed (%)"]}
        for test in ("test-clean", "test-other"):
            full, pruned = r[test]
            row[f"{test} WER full → pruned"] = f"{full:.2f} → {pruned:.2f}"
            row[f"{test} relative increase (%)"] = round(100 * (pruned / full - 1), 1)
        rows.append(row)
    return pd.DataFrame(rows)


def paper_cuts(runs: dict[str, ModelRun]) -> Section:
    """The paper's own cuts, for scale, beside the sizes of this run's decoders."""
    return Section(paper_cuts_table(), {"sizes": " and ".join(
        f"{r.model.decoder.num_parameters() / 1e6:.0f} M ({n})" for n, r in runs.items())},
        precision=1)


# ------------------------------------------------------------------ 3.4 the rule


def baseline_sentence(name: str, compared: list[dict[str, Any]]) -> str:
    """What the paired comparison of the paper's strategy with the baseline found, per
    decoder, as a sentence that can say either way."""
    from lib.prune.loss_curves import BEATS, LOSES, SAME, UNDECIDED

    count = {v: sum(c["verdict"] == v for c in compared) for v in (BEATS, LOSES, UNDECIDED,
                                                                  SAME)}
    parts = [f"{k} at {v} cut{'s' if v != 1 else ''}" for k, v in count.items() if v]
    if count[BEATS] and not count[LOSES]:
        verdict = f"{PAPER_STRATEGY} beats the baseline"
    elif count[LOSES] and not count[BEATS]:
        verdict = f"the baseline beats {PAPER_STRATEGY}"
    elif count[BEATS] and count[LOSES]:
        verdict = "neither wins at every cut"
    else:
        verdict = f"{PAPER_STRATEGY} does not beat the baseline"
    return f"{name}: {verdict} ({', '.join(parts)})"


def rule_table(cfg: Run, runs: dict[str, ModelRun], meters: dict[str, dict[str, Any]],
               curves_: dict[str, Any], plans: dict[str, Any]) -> Section:
    """The loss rule per strategy on the first test set: the largest cut whose normalised
    cost stays within ``prune_loss_threshold``, its bootstrap interval (in layers and in
    steps of the grid of cuts) and the cost there; then the paper's strategy against the
    last-n baseline by paired differences at every cut."""
    pc, first = cfg.prune, cfg.test_data[0]
    rules, rows, baseline = {}, [], {}
    for name, run in runs.items():
        m, losses = meters[name][first], curves_[name]["losses"][first]
        points = curves_[name]["points"]
        big_l = len(run.model.decoder_layers)
        rules[name] = {}
        for strategy in pc.strategies:
            r = loss_rule(m["full"], m["floor"], losses[strategy], pc.loss_threshold,
                          BOOTSTRAP_DRAWS, cfg.train.seed)
            lo, hi = r["n_removed_ci95"]
            r.update(removed_fraction=r["n_removed"] / big_l,
                     grid_steps=grid_steps(list(losses[strategy]), lo, hi),
                     layers=plans[name][strategy].get(r["n_removed"], []))
            at = points[(points["test_set"] == first) & (points["strategy"] == strategy)
                        & (points["n_removed"] == r["n_removed"])]
            r["cost"] = float(at["normalised"].iloc[0]) if len(at) else 0.0
            rules[name][strategy] = r
            rows.append({"decoder": name, "strategy": strategy,
                         "layers removed": r["n_removed"],
                         "cut (%)": 100 * r["removed_fraction"],
                         "95 % interval (layers)": f"{lo}–{hi}",
                         "interval (grid steps)": r["grid_steps"], "cost at the cut": r["cost"]})
        if PAPER_STRATEGY in pc.strategies and BASELINE in pc.strategies:
            baseline[name] = compare_at_cuts(losses[PAPER_STRATEGY], losses[BASELINE],
                                             plans[name][PAPER_STRATEGY],
                                             plans[name][BASELINE], BOOTSTRAP_DRAWS,
                                             cfg.train.seed)
    best = {n: max(r.items(), key=lambda kv: kv[1]["n_removed"]) for n, r in rules.items()}
    angular = {n: r[PAPER_STRATEGY] for n, r in rules.items() if PAPER_STRATEGY in r}
    glue = dict(
        loss_threshold=pc.loss_threshold,
        best_sentence="; ".join(
            f"for {n}, no cut can be ruled: another utterance's audio costs it nothing"
            if b["floor_gap"] <= 0 else
            f"for {n}, {s} allows the most, {_layers(b['n_removed'])} "
            f"({100 * b['removed_fraction']:.0f} %; interval {b['n_removed_ci95'][0]}–"
            f"{b['n_removed_ci95'][1]})" for n, (s, b) in best.items()),
        angular_sentence="; ".join(
            f"{n}: {_layers(r['n_removed'])} ({100 * r['removed_fraction']:.0f} %; interval "
            f"{r['n_removed_ci95'][0]}–{r['n_removed_ci95'][1]} layers, "
            f"{r['grid_steps']} grid step{'s' if r['grid_steps'] != 1 else ''})"
            for n, r in angular.items()) or f"not run ({PAPER_STRATEGY} is not in "
                                              "prune_strategies)",
        interval_check=("at most one step of the grid for every decoder: the curve decides "
                        "the cut" if all(r["grid_steps"] <= 1 for r in angular.values())
                        else "wider than one step of the grid for " + ", ".join(
                            n for n, r in angular.items() if r["grid_steps"] > 1)
                        + ": there the curve does not decide the cut"),
        baseline_sentence="; ".join(baseline_sentence(n, c) for n, c in baseline.items())
        or f"not compared: give both {PAPER_STRATEGY} and {BASELINE} in prune_strategies")
    return Section(pd.DataFrame(rows), glue, {"rules": rules, "baseline": baseline},
                   precision=2)


# ------------------------------------------------------------------ 3.5 WER to confirm


def confirm_sizes(sizes: list[int], n: int) -> list[int]:
    """The cut sizes decoded to confirm the rule's cut ``n``: it and its neighbours on the
    grid (the smallest cut when the rule removes nothing)."""
    sizes = sorted(sizes)
    if n not in sizes:
        return sizes[:1]
    i = sizes.index(n)
    return sizes[max(i - 1, 0):i + 2]


def confirm(cfg: Run, runs: dict[str, ModelRun], tests: dict[str, FeatureSet],
            plans: dict[str, Any], rules: dict[str, Any], curves_: dict[str, Any],
            baseline: dict[str, Any]) -> Section:
    """The paper's strategy decoded at the loss rule's cut and its neighbours on every test
    set (chapter 1's test utterances), each decode capped by its audio's length, beside the
    full model's own decodes from chapter 1 capped the same way; the paper's WER rule
    checked there. Then the figures of record."""
    first, pc, chosen, rows = cfg.test_data[0], cfg.prune, {}, []
    for name, run in runs.items():
        if PAPER_STRATEGY not in rules[name]:
            continue
        rule, plan = rules[name][PAPER_STRATEGY], plans[name][PAPER_STRATEGY]
        points = curves_[name]["points"]
        chosen[name] = {"strategy": PAPER_STRATEGY, "n_removed": rule["n_removed"],
                        "layers": rule["layers"], "removed_fraction": rule["removed_fraction"],
                        "tests": {}}
        for test, fs in tests.items():
            full = full_capped(run.model, fs, run.train.run_dir, test, cfg.eval)
            at = []
            for k in confirm_sizes(list(plan), rule["n_removed"]):
                p = evaluate_cut(run.model, fs.subset(cfg.eval.max_test_utterances), plan[k],
                                 run.train.run_dir, test, cfg.eval, capped=True)
                rel = float(relative_change(full["wer"], p["wer"]))
                cost = points[(points["test_set"] == test)
                              & (points["strategy"] == PAPER_STRATEGY)
                              & (points["n_removed"] == k)]["normalised"]
                at.append({"n_removed": k, "wer": p["wer"], "wer_ci95": p["wer_ci95"],
                           "insertion_rate": p["insertion_rate"], "relative": rel,
                           "within": within_threshold(rel, pc.threshold),
                           "cost": float(cost.iloc[0])})
                rows.append({"decoder": name, "test set": test,
                             "layers removed": f"{k} (the rule's)" if k == rule["n_removed"]
                             else str(k),
                             "WER (%)": _wer_ci(p), "insertions per word": p["insertion_rate"],
                             "relative increase (%)": 100 * rel,
                             "loss cost": float(cost.iloc[0])})
            chosen[name]["tests"][test] = {
                "wer_full": full["wer"], "wer_full_ci95": full["wer_ci95"],
                "insertion_rate_full": full["insertion_rate"],
                "n_utterances": full["n_utterances"], "ruled": test == first, "at": at}
    glue = {"cap_rate": f"{CAP_TOKENS_PER_SECOND:g}", "cap_slack": CAP_SLACK_TOKENS,
            "confirm_sentence": "; ".join(_confirm_one(n, c, first, pc.threshold)
                                          for n, c in chosen.items()) or "nothing decoded",
            "full_sentence": "; ".join(
                f"{n} {100 * t['wer_full']:.1f} % on {test} ({t['insertion_rate_full']:.2f} "
                "insertions per word)" for n, c in chosen.items()
                for test, t in c["tests"].items())}
    path = record_headline(cfg, headline(cfg, curves_, rules, baseline, chosen))
    return Section(pd.DataFrame(rows), glue, items=[recorded_line(path, cfg)], precision=2)


def _confirm_one(name: str, c: dict[str, Any], first: str, threshold: float) -> str:
    t = c["tests"][first]
    at = next((a for a in t["at"] if a["n_removed"] == c["n_removed"]), None)
    if at is None:  # the rule removes nothing: the smallest cut was decoded
        return (f"{name}: the rule removes nothing; the smallest cut already moves WER by "
                f"{100 * t['at'][0]['relative']:+.0f} % relative")
    keeps = "within" if at["within"] else "beyond"
    return (f"{name}: the loss rule's cut of {_layers(c['n_removed'])} takes WER from "
            f"{100 * t['wer_full']:.1f} to {100 * at['wer']:.1f} % "
            f"({100 * at['relative']:+.0f} % relative, {keeps} the paper's "
            f"{100 * threshold:.0f} %; {at['insertion_rate']:.2f} insertions per word)")


def headline(cfg: Run, curves_: dict[str, Any], rules: dict[str, Any],
             baseline: dict[str, Any], chosen: dict[str, Any]) -> dict[str, Any]:
    """Chapter 3's figures of record (``results/<preset>/ch03.json``).

    Per decoder: ``full`` per test set (the full model's and the floor's loss per token);
    per strategy its loss ``curve`` per test set (``n_removed``, ``removed_fraction``,
    ``layers``, ``delta`` and ``normalised`` with their ``ci95``) and its ``loss_rule`` on
    the first test set (``n_removed``, ``n_removed_ci95``, ``grid_steps``); ``baseline``:
    the paper's strategy against the last-n rule at every cut; ``chosen``: the paper's
    strategy's cut and the WER decoded there and at its neighbours. ``settings`` says the
    curves are losses (``curve: loss``)."""
    out: dict[str, Any] = {}
    for dec, c in curves_.items():
        pts = c["points"]
        d = out.setdefault(dec, {"full": c["full"], "strategies": {}})
        for strategy, g in pts.groupby("strategy", sort=False):
            d["strategies"][strategy] = {
                "curve": {t: [{"n_removed": int(r.n_removed),
                               "removed_fraction": round(float(r.removed_fraction), 4),
                               "layers": [int(x) for x in r.layers],
                               "delta": float(r.delta),
                               "delta_ci95": [float(r.delta_low), float(r.delta_high)],
                               "normalised": float(r.normalised),
                               "normalised_ci95": [float(r.normalised_low),
                                                   float(r.normalised_high)]}
                              for r in gt.sort_values("n_removed").itertuples()]
                          for t, gt in g.groupby("test_set", sort=False)},
                "loss_rule": {k: rules[dec][strategy][k] for k in
                              ("n_removed", "n_removed_ci95", "removed_fraction",
                               "grid_steps", "cost", "floor_gap")}}
        d["baseline"] = {"strategy": BASELINE, "against": baseline.get(dec, [])}
        d["chosen"] = chosen.get(dec, {})
    pc = cfg.prune
    return {"decoders": out, "settings": {
        "curve": "loss", "loss_threshold": pc.loss_threshold, "threshold": pc.threshold,
        "fractions": list(pc.fractions), "ruled_on": cfg.test_data[0],
        "calibration_utterances": pc.calibration_utterances,
        "bootstrap_draws": BOOTSTRAP_DRAWS}}
