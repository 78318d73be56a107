"""What the chapters display: tables, the headline figures and the verdicts, built from
the runs of :mod:`lib.experiment`.

Every function here takes finished results and returns a DataFrame, a dict of figures or
a sentence; nothing trains or decodes. Stage: report (page level). Explained in chapter 1
(book/01_building_a_speechllm.ipynb); the agreement table and chapter 2's figures of record
in chapter 2 (book/02_where_redundancy_lies.ipynb).
"""

from __future__ import annotations

import json
from typing import Any

from lib.data.corpus import voice_family
from lib.evaluate import audio_reliance
from lib.experiment import ModelRun, slug
from lib.features import FeatureSet
from lib.speechllm import SpeechLLM


def data_summary(train: FeatureSet, tests: dict[str, FeatureSet],
                 train_name: str = "train") -> Any:
    """Utterances, hours, voices and mean duration of each data set (a DataFrame).

    ``voices`` counts voice families (:func:`lib.data.corpus.voice_family`): the rate and
    pitch variants of one synthetic voice count once."""
    import pandas as pd

    rows = []
    for name, fs in [(train_name, train), *tests.items()]:
        durs = [u.duration for u in fs.utterances]
        rows.append({"set": name, "utterances": len(fs), "hours": sum(durs) / 3600,
                     "mean duration (s)": sum(durs) / len(durs),
                     "voices": len({voice_family(u.voice) for u in fs.utterances}),
                     "sources": ", ".join(sorted({u.source for u in fs.utterances}))})
    return pd.DataFrame(rows)


def training_log(runs: dict[str, ModelRun]) -> Any:
    """All runs' training logs in one long DataFrame (model, step, loss, lr, elapsed_s)."""
    import pandas as pd

    return pd.concat([pd.DataFrame(r.train.log).assign(model=slug(name))
                      for name, r in runs.items()], ignore_index=True)


def wer_table(runs: dict[str, ModelRun],
              whisper: dict[str, dict[str, Any]] | None = None) -> Any:
    """WER with 95 % intervals of every system on every test set (one row each).

    Systems: each SpeechLLM (greedy), the same SpeechLLM with joint CTC / attention
    decoding (:func:`lib.experiment.rescore_run`, when run), its CTC head alone (recipe
    ``ctc-warmstart``) and the encoder's own Whisper decoder (``whisper``: test set ->
    :func:`whisper_baseline`).
    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).
    """
    import pandas as pd

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


def dev_curve(runs: dict[str, ModelRun]) -> Any:
    """The learning curves: dev WER against training minutes (warm start included)."""
    import pandas as pd

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


def rescore_sweep(runs: dict[str, ModelRun]) -> Any:
    """The CTC-weight sweeps of joint decoding (dev WER per weight), one frame for all
    runs, with the chosen weight marked."""
    import pandas as pd

    rows = [{"model": slug(name), "weight": x["weight"], "dev_wer": x["dev_wer"],
             "dev_low": x["dev_wer_ci95"][0], "dev_high": x["dev_wer_ci95"][1],
             "chosen": x["weight"] == r.rescored["weight"]}
            for name, r in runs.items() if r.rescored for x in r.rescored["sweep"]]
    return pd.DataFrame(rows)


def headline_ch01(runs: dict[str, ModelRun], whisper: dict[str, dict[str, Any]],
                  reliance: Any) -> dict[str, Any]:
    """Chapter 1's figures of record (``results/<preset>/ch01.json``): per decoder and
    test set ``wer``, ``wer_ci95``, ``n_utterances``, the baselines' scores and (when run)
    ``ctc_rescored`` (joint decoding: ``wer``, ``wer_ci95``, the dev-chosen ``weight``, and
    ``vs_greedy``, its paired difference from greedy decoding);
    training minutes and the audio-reliance gap per decoder."""
    out: dict[str, Any] = {}
    gaps = dict(zip(reliance["model"], reliance["loss, other audio"] - reliance["loss, own audio"]))
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
    return {"decoders": out}


def examples_table(runs: dict[str, ModelRun], test: str, n: int = 5) -> Any:
    """Reference and each model's hypothesis for the first ``n`` utterances of ``test``."""
    import pandas as pd

    table: dict[str, list[str]] = {}
    for name, r in runs.items():
        rec = r.scores[test]
        hyp_file = r.train.run_dir / rec["hypotheses"]
        rows = [json.loads(x) for x in hyp_file.read_text().splitlines()][:n]
        table.setdefault("reference", [x["ref"] for x in rows])
        table[slug(name)] = [x["hyp"] for x in rows]
    return pd.DataFrame(table)


def reliance_table(runs: dict[str, ModelRun], data: FeatureSet, n: int = 64) -> Any:
    """Per model: target loss with the right audio and with another utterance's audio."""
    import pandas as pd

    rows = []
    for name, r in runs.items():
        rel = audio_reliance(r.model, data, n=n)
        rows.append({"model": slug(name), "loss, own audio": rel["own_audio_loss"],
                     "loss, other audio": rel["other_audio_loss"],
                     "utterances": rel["n_utterances"]})
    return pd.DataFrame(rows)

def training_change(model: SpeechLLM, pretrained_text: Any, trained_text: Any,
                    speech: Any) -> dict[str, Any]:
    """What LoRA training did to one decoder, with the text -> speech change for scale.

    ``pretrained_text`` / ``trained_text`` / ``speech`` are :class:`RedundancyResult` of the
    same utterances (the decoder with LoRA off and on, and speech through the SpeechLLM).
    Returns one table row: number of adapted matrices, mean and max relative weight update
    (%), mean and max ``|Δd|`` (last token) from training, mean ``|Δd|`` from text to
    speech, and the spread of ``d`` (largest minus smallest cell) of the pretrained LLM.
    Explained in chapter 2.
    """
    import numpy as np

    from lib.redundancy import agreement
    from lib.speechllm import lora_update_norms

    upd = lora_update_norms(model)["relative_update"]
    lora = agreement(pretrained_text, trained_text)
    modal = agreement(trained_text, speech)
    surf = pretrained_text.distance_last[:, 1:]
    return {"adapted matrices": len(upd),
            "update, mean (%)": 100 * float(upd.mean()) if len(upd) else 0.0,
            "update, max (%)": 100 * float(upd.max()) if len(upd) else 0.0,
            "|Δd| training, mean": lora["mean_abs_diff"],
            "|Δd| training, max": lora["max_abs_diff"],
            "|Δd| text → speech, mean": modal["mean_abs_diff"],
            "spread of d": float(np.nanmax(surf) - np.nanmin(surf))}


CH02_COMPARISONS: dict[str, tuple[str, str]] = {
    "text vs speech, transcript tokens": ("text, pretrained LLM", "speech, transcript"),
    "text vs speech, audio positions": ("text, pretrained LLM", "speech, audio"),
    "pretrained vs trained decoder, text": ("text, pretrained LLM", "text, SpeechLLM decoder"),
}
"""Chapter 2's comparisons: label -> the two inputs (keys of a decoder's results)."""


def agreement_table(results: dict[str, dict[str, Any]], draws: int, rho_min: float,
                    gain_min: float, seed: int = 0,
                    comparisons: dict[str, tuple[str, str]] = CH02_COMPARISONS) -> Any:
    """Every comparison of every decoder, each figure beside its chance level (a DataFrame).

    Columns: decoder, comparison, ``Spearman per n`` (mean over n of the correlation over
    l), ``chance Spearman``, ``overlap`` (mean block overlap), ``chance overlap``,
    ``overlap gain`` and ``verdict`` (:func:`lib.agreement.agreement_verdict` with
    ``rho_min`` and ``gain_min``). Explained in chapter 2.
    """
    import pandas as pd

    from lib.agreement import agreement_verdict, overlap_gain
    from lib.redundancy import agreement

    rows = []
    for dec, res in results.items():
        for label, (a, b) in comparisons.items():
            agr = agreement(res[a], res[b], chance_draws=draws, seed=seed)
            rows.append({"decoder": dec, "comparison": label,
                         "Spearman per n": agr["spearman_per_n_mean"],
                         "chance Spearman": agr["chance"]["spearman_per_n_mean"],
                         "overlap": agr["overlap_mean"],
                         "chance overlap": agr["chance"]["overlap_mean"],
                         "overlap gain": overlap_gain(agr),
                         "verdict": agreement_verdict(agr, rho_min, gain_min)})
    return pd.DataFrame(rows)


def headline_ch02(agree: Any, ablation: dict[str, dict[str, Any]],
                  thresholds: dict[str, float]) -> dict[str, Any]:
    """Chapter 2's figures of record (``results/<preset>/ch02.json``): per decoder and
    comparison ``spearman_per_n_mean``, ``overlap_mean``, the same two under ``chance``
    and the verdict; the ablation summary per decoder; the verdicts' thresholds.
    Explained in chapter 2."""
    out: dict[str, Any] = {}
    for row in agree.to_dict("records"):
        dec = out.setdefault(row["decoder"], {"comparisons": {}})
        dec["comparisons"][row["comparison"]] = {
            "spearman_per_n_mean": float(row["Spearman per n"]),
            "overlap_mean": float(row["overlap"]),
            "chance": {"spearman_per_n_mean": float(row["chance Spearman"]),
                       "overlap_mean": float(row["chance overlap"])},
            "verdict": row["verdict"]}
    for dec, summary in ablation.items():
        out.setdefault(dec, {"comparisons": {}})["ablation"] = {
            k: (float(v) if isinstance(v, float) else v) for k, v in summary.items()}
    return {"decoders": out, "thresholds": dict(thresholds)}


def gguf_decoders(names: Any) -> list[str]:
    """The decoders among ``names`` that are offline GGUF checkpoints: 4-bit llama.cpp
    weights dequantised to fp32 (:mod:`lib.assets.gguf`). Explained in chapter 2."""
    from lib.assets.registry import OFFLINE_MODELS

    return [n for n in names if getattr(OFFLINE_MODELS.get(n), "kind", None) == "gguf"]


# ------------------------------------------------------------------ chapters 3 and 4

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


def paper_cuts_table() -> Any:
    """The paper's cuts with the relative WER increase computed from its WERs."""
    import pandas as pd

    rows = []
    for r in PAPER_CUTS:
        row = {"decoder": r["decoder"], "layers removed (%)": r["removed (%)"]}
        for test in ("test-clean", "test-other"):
            full, pruned = r[test]
            row[f"{test} WER full → pruned"] = f"{full:.2f} → {pruned:.2f}"
            row[f"{test} relative increase (%)"] = round(100 * (pruned / full - 1), 1)
        rows.append(row)
    return pd.DataFrame(rows)


def _curve_records(points: Any) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in points.sort_values("removed_fraction").to_dict("records"):
        out.setdefault(r["test_set"], []).append({
            "removed_fraction": round(float(r["removed_fraction"]), 4),
            "n_removed": int(r["n_removed"]), "layers": [int(x) for x in r["layers"]],
            "wer": float(r["wer"]), "wer_ci95": [float(r["wer_low"]), float(r["wer_high"])]})
    return out


def headline_ch03(curves: dict[str, tuple[Any, dict[str, Any]]], rules: dict[str, Any],
                  chosen: dict[str, dict[str, Any]], settings: dict[str, Any]) -> dict[str, Any]:
    """Chapter 3's figures of record (``results/<preset>/ch03.json``).

    Per decoder: the full model's WER on each curve subset, and per strategy the curve
    points (``removed_fraction``, ``wer``, ``wer_ci95``, layers) and ``threshold_cut`` per
    test set (``cut`` and its ``ci95``); ``chosen``: the paper strategy's cut evaluated on the
    full test sets. Explained in chapter 3."""
    out: dict[str, Any] = {}
    for dec, (points, full) in curves.items():
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


def headline_ch04(variants: dict[str, dict[str, Any]], curve: dict[str, dict[str, Any]],
                  exports: dict[str, dict[str, Any]], cuts: dict[str, int],
                  settings: dict[str, Any], n_layers: dict[str, int]) -> dict[str, Any]:
    """Chapter 4's figures of record (``results/<preset>/ch04.json``): per decoder the cut,
    per healing variant ``wer_before`` / ``wer_after`` (with intervals) and the recovery per
    test set, trainable parameters, steps and wall time; the healed curve; the reloaded
    model's WER and the measured cost. Explained in chapter 4."""
    out: dict[str, Any] = {}
    for dec, vs in variants.items():
        out[dec] = {
            "cut": {"n_removed": cuts[dec], "n_layers": n_layers[dec],
                    "removed_fraction": cuts[dec] / n_layers[dec]},
            "variants": {v: {"steps": r["steps"], "wall_time_s": r["wall_time_s"],
                             "trainable": r["trainable_projector"] + r["trainable_lora"],
                             "lora_layers": r["lora_layers"], "tests": r["tests"]}
                         for v, r in vs.items()},
            "healed_curve": curve.get(dec, {}), "export": exports.get(dec, {})}
    return {"decoders": out, "settings": dict(settings)}
