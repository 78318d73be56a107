"""Chapter 3's recipe: prune chapter 1's models by every strategy and measure WER against
the cut, section by section (book/03_pruning.ipynb).

Each function is one section of the page and returns a
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
from lib.prune.curves import evaluate_cut, pruning_curves, threshold_table
from lib.prune.rule import within_threshold
from lib.prune.strategies import STRATEGIES, cut_sizes, strategy_layers
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


def _wer_ci(s: dict[str, Any]) -> str:
    return f"{100 * s['wer']:.1f} [{100 * s['wer_ci95'][0]:.1f}, {100 * s['wer_ci95'][1]:.1f}]"


def settings(cfg: Run) -> str:
    """The line under the chapter's resolved values: what this run does, in its own numbers."""
    pc = cfg.prune
    return settings_line(cfg, f"strategies: {', '.join(pc.strategies)}",
                         f"fractions {list(pc.fractions)}",
                         f"curve points on the first {pc.curve_utterances} utterances of each "
                         f"test set", f"rule threshold {pc.threshold}")


# ------------------------------------------------------------------ 3.1 models and subsets


def pruning_inputs(cfg: Run) -> Section:
    """Chapter 1's models (reused), chapter 2's scores on speech (computed if missing), the
    curve subsets of the test sets, and the calibration set of the loss-driven strategies.

    Raises:
        CompanionError: ``dev_utterances`` is 0, which leaves no calibration set.
    """
    pc = cfg.prune
    train, tests = prepare_features(cfg)
    curve_sets = {name: fs.subset(pc.curve_utterances) for name, fs in tests.items()}
    calib = split_dev(train, cfg.dev_utterances)[1]
    if calib is None:
        raise CompanionError("dev_utterances = 0 leaves no calibration set for the "
                             "strategies sleb and oracle: set dev_utterances > 0")
    calib = calib.subset(pc.calibration_utterances)
    runs, scores = {}, {}
    for m in cfg.models:
        name = slug(m.decoder)
        runs[name] = train_and_evaluate(m, cfg, train, tests, evaluate=False)
        scores[name] = speech_scores(runs[name].model, runs[name].train.run_dir,
                                     tests[cfg.test_data[0]], cfg.score)
    glue = dict(curve_n=pc.curve_utterances, calib_n=len(calib),
                curve_sizes=", ".join(f"{len(fs)} of {len(tests[n])} in {n}"
                                      for n, fs in curve_sets.items()))
    return Section(glue=glue, data={"train": train, "tests": tests, "curve_sets": curve_sets,
                                    "calib": calib, "runs": runs, "scores": scores})


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
                loss_precision=("bf16 autocast" if cfg.train.precision == "bf16"
                                else "float32"),
                bi_contiguous=", ".join(f"{n}: {'yes' if c.get('block-influence') else 'no'}"
                                        for n, c in contig.items()))
    shown = cost.reset_index().assign(
        **{"one block": [STRATEGIES[s].contiguous for s in cost.index]})
    shown = shown.rename(columns={d: f"{d} (s)" for d in runs})
    return Section(shown, glue, {"plans": plans}, precision=1)


# ------------------------------------------------------------------ 3.3 the curves


def curves(cfg: Run, runs: dict[str, ModelRun], curve_sets: dict[str, FeatureSet],
           plans: dict[str, dict[str, dict[int, list[int]]]]) -> Section:
    """WER against the cut for every strategy on every curve subset, and the paper's rule
    on each curve (:func:`lib.prune.curves.threshold_table`)."""
    found, rules = {}, {}
    for name, run in runs.items():
        points, full = pruning_curves(run.model, curve_sets, plans[name], run.train.run_dir,
                                      cfg.eval)
        found[name] = (points, full)
        rules[name] = threshold_table(points, full, cfg.prune.threshold,
                                      seed=cfg.train.seed)
        plotting.plot_pruning_curves(points, full, cfg.prune.threshold, title=name)
    return Section(data={"curves": found, "rules": rules})


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


def rule_table(cfg: Run, rules: dict[str, pd.DataFrame]) -> Section:
    """The largest cut within the rule per strategy and test set, with its interval."""
    table = pd.concat([r.assign(decoder=n) for n, r in rules.items()], ignore_index=True)
    show = table.assign(
        **{"cut (%)": 100 * table["threshold_cut"],
           "95 % interval (%)": [f"{100 * a:.0f}–{100 * b:.0f}"
                                 for a, b in zip(table["cut_low"], table["cut_high"])],
           "WER full (%)": 100 * table["wer_full"],
           "WER at cut (%)": 100 * table["wer_at_cut"]})
    first = cfg.test_data[0]
    on_first = table[table["test_set"] == first]
    best = {n: g.loc[g["threshold_cut"].idxmax()] for n, g in on_first.groupby("decoder",
                                                                              sort=False)}
    angular = on_first[on_first["strategy"] == "angular"]
    glue = dict(
        first=first, threshold_pct=100 * cfg.prune.threshold,
        best_sentence="; ".join(
            f"for {n}, {b['strategy']} allows the most, {100 * b['threshold_cut']:.0f} % of "
            f"the layers ({b['n_removed']} layers; interval {100 * b['cut_low']:.0f}–"
            f"{100 * b['cut_high']:.0f} %)" for n, b in best.items()),
        angular_sentence="; ".join(
            f"{r.decoder}: {100 * r.threshold_cut:.0f} % (interval {100 * r.cut_low:.0f}–"
            f"{100 * r.cut_high:.0f} %)" for r in angular.itertuples()))
    cols = ["decoder", "test_set", "strategy", "cut (%)", "95 % interval (%)", "n_removed",
            "WER full (%)", "WER at cut (%)"]
    return Section(show[cols], glue, {"table": table}, precision=1)


def _curve_records(points: pd.DataFrame) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in points.sort_values("removed_fraction").to_dict("records"):
        out.setdefault(r["test_set"], []).append({
            "removed_fraction": round(float(r["removed_fraction"]), 4),
            "n_removed": int(r["n_removed"]), "layers": [int(x) for x in r["layers"]],
            "wer": float(r["wer"]), "wer_ci95": [float(r["wer_low"]), float(r["wer_high"])]})
    return out


def headline(curves_: dict[str, tuple[Any, dict[str, Any]]], rules: dict[str, Any],
             chosen: dict[str, dict[str, Any]], settings: dict[str, Any]) -> dict[str, Any]:
    """Chapter 3's figures of record (``results/<preset>/ch03.json``).

    Per decoder: the full model's WER on each curve subset, and per strategy the curve
    points (``removed_fraction``, ``wer``, ``wer_ci95``, layers) and ``threshold_cut`` per
    test set (``cut`` and its ``ci95``); ``chosen``: the paper strategy's cut evaluated on
    the full test sets."""
    out: dict[str, Any] = {}
    for dec, (points, full) in curves_.items():
        rule = rules[dec]
        d = out.setdefault(dec, {"full": {t: {"wer": f["wer"], "wer_ci95": f["wer_ci95"]}
                                          for t, f in full.items()}, "strategies": {}})
        for strategy, g in points.groupby("strategy", sort=False):
            r = rule[rule["strategy"] == strategy]
            d["strategies"][strategy] = {
                "curve": _curve_records(g),
                "threshold_cut": {row["test_set"]: {
                    "cut": float(row["threshold_cut"]),
                    "ci95": [float(row["cut_low"]), float(row["cut_high"])],
                    "n_removed": int(row["n_removed"])} for row in r.to_dict("records")}}
        d["chosen"] = chosen.get(dec, {})
    return {"decoders": out, "settings": dict(settings)}


def chosen_cut(cfg: Run, runs: dict[str, ModelRun], tests: dict[str, FeatureSet],
               plans: dict[str, Any], table: pd.DataFrame, curves_: dict[str, Any],
               rules: dict[str, Any]) -> Section:
    """The paper's strategy at its rule cut (on the first test set's curve subset),
    decoded on every full test set beside the full model; then the figures of record."""
    first, chosen, rows = cfg.test_data[0], {}, []
    for name, run in runs.items():
        t = table[(table["decoder"] == name) & (table["test_set"] == first)
                  & (table["strategy"] == "angular")]
        n_cut = int(t["n_removed"].iloc[0]) if len(t) else 0
        layers = plans[name]["angular"].get(n_cut, []) if n_cut else []
        chosen[name] = {"strategy": "angular", "n_removed": n_cut, "layers": layers,
                        "removed_fraction": n_cut / len(run.model.decoder_layers),
                        "tests": {}}
        for test, fs in tests.items():
            f = evaluate_cut(run.model, fs, [], run.train.run_dir, test, cfg.eval)
            p = evaluate_cut(run.model, fs, layers, run.train.run_dir, test, cfg.eval)
            chosen[name]["tests"][test] = {"wer_full": f["wer"], "wer_full_ci95": f["wer_ci95"],
                                           "wer": p["wer"], "wer_ci95": p["wer_ci95"],
                                           "n_utterances": len(fs)}
            rows.append({"decoder": name, "test set": test, "layers removed": n_cut,
                         "utterances": len(fs), "WER full (%)": _wer_ci(f),
                         "WER pruned (%)": _wer_ci(p),
                         "relative increase (%)": 100 * (p["wer"] / f["wer"] - 1)})
    full_rows = pd.DataFrame(rows)
    over = full_rows[[r == r and not within_threshold(r / 100, cfg.prune.threshold)
                      for r in full_rows["relative increase (%)"]]]  # r == r: not NaN
    glue = {"full_check": (
        "on every full test set the relative increase stays within the threshold"
        if over.empty else
        "the relative increase exceeds the threshold on the full set for "
        + ", ".join(f"{r['decoder']} ({r['test set']}, {r['relative increase (%)']:.0f} %)"
                    for _, r in over.iterrows())
        + ": there the curve subset was too small to place the cut, as its interval warned")}
    pc = cfg.prune
    path = record_headline(cfg, headline(curves_, rules, chosen, {
            "threshold": pc.threshold, "fractions": list(pc.fractions),
            "curve_utterances": pc.curve_utterances,
            "calibration_utterances": pc.calibration_utterances}))
    items = [recorded_line(path, cfg)]
    return Section(full_rows, glue, items=items, precision=1)
