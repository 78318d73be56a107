"""Chapter 1's section 1.5: joint CTC / attention decoding, its dev sweep of the CTC weight
and each SpeechLLM's rescored WER against its greedy WER by the paired rule.

Explained in chapter 1 (book/01_building_a_speechllm.ipynb). Stage: the pipeline (evaluate),
the decoding itself in :func:`lib.recipes.pipeline.rescore_run`.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from lib.config.sections import Run
from lib.paths import slug
from lib.recipes.pipeline import ModelRun
from lib.recipes.section import Section, ci_text
from lib.report import plotting
from lib.report.rules import WER_TARGETS, paired_verdict, target_met



def rescore_sweep(runs: dict[str, ModelRun]) -> pd.DataFrame:
    """The CTC-weight sweeps of joint decoding (dev WER per weight), one frame for all
    runs, with the chosen weight marked."""
    rows = [{"model": slug(name), "weight": x["weight"], "dev_wer": x["dev_wer"],
             "dev_low": x["dev_wer_ci95"][0], "dev_high": x["dev_wer_ci95"][1],
             "chosen": x["weight"] == r.rescored["weight"]}
            for name, r in runs.items() if r.rescored for x in r.rescored["sweep"]]
    return pd.DataFrame(rows)


def _rescored_rows(runs: dict[str, ModelRun]) -> pd.DataFrame:
    rows = []
    for name, r in runs.items():
        for test, g in r.scores.items():
            j = r.rescored["scores"][test]
            d = r.rescored["vs_greedy"][test]  # rescored minus greedy, paired
            met = target_met(j["wer"], test)
            target = WER_TARGETS.get(test)
            rows.append({"decoder": name.split("/")[-1], "test set": test,
                         "weight": r.rescored["weight"], "greedy WER (%)": 100 * g["wer"],
                         "greedy 95 % CI": ci_text(g["wer_ci95"]),
                         "rescored WER (%)": 100 * j["wer"],
                         "rescored 95 % CI": ci_text(j["wer_ci95"]),
                         "difference (points)": 100 * d["difference"],
                         "difference 95 % CI": "{:+.1f} to {:+.1f}".format(
                             *(100 * x for x in d["difference_ci95"])),
                         "rescored vs greedy": paired_verdict(d),
                         "target (%)": float("nan") if target is None else 100 * target,
                         "target met": met,
                         "utt/s greedy": g["decode_utterances_per_s"],
                         "utt/s rescored": j["decode_utterances_per_s"]})
    return pd.DataFrame(rows)


def joint_decoding(cfg: Run, runs: dict[str, ModelRun]) -> Section:
    """The dev sweep of the CTC weight, and each SpeechLLM's joint decoding against its
    greedy decoding by the paired rule (:func:`lib.report.rules.paired_verdict`)."""
    sweep = rescore_sweep(runs)
    glue: dict[str, Any] = {"targets_text": ", ".join(f"{t} ≤ {100 * v:.0f} %"
                                                      for t, v in WER_TARGETS.items())}
    nan = float("nan")
    if sweep.empty:
        glue.update(resc_weight=nan, resc_beams=cfg.eval.rescore_beams, resc_syn=nan,
                    resc_syn_lo=nan, resc_syn_hi=nan, resc_vs_greedy="not compared with",
                    resc_speed_ratio=nan, resc_diff=nan, resc_diff_lo=nan, resc_diff_hi=nan,
                    resc_n_met=0, resc_n_cells=0)
        return Section(glue=glue, items=["no joint decoding: rescore_beams is 0, the recipe "
                                         "has no CTC head, or there is no dev subset"])
    plotting.plot_rescore_sweep(sweep).set_title("Dev WER against the CTC weight "
                                                 "(ringed: chosen)")
    resc = _rescored_rows(runs)
    r0 = next(iter(runs.values()))
    syn = cfg.test_data[0]
    j0, d0 = r0.rescored["scores"][syn], r0.rescored["vs_greedy"][syn]
    has_target = resc["target met"].notna()
    glue.update(resc_weight=r0.rescored["weight"], resc_beams=cfg.eval.rescore_beams,
                resc_syn=100 * j0["wer"], resc_syn_lo=100 * j0["wer_ci95"][0],
                resc_syn_hi=100 * j0["wer_ci95"][1], resc_vs_greedy=paired_verdict(d0),
                resc_diff=100 * d0["difference"], resc_diff_lo=100 * d0["difference_ci95"][0],
                resc_diff_hi=100 * d0["difference_ci95"][1],
                resc_speed_ratio=(resc["utt/s greedy"] / resc["utt/s rescored"]).median(),
                resc_n_met=int(resc.loc[has_target, "target met"].astype(bool).sum()),
                resc_n_cells=int(has_target.sum()))
    return Section(resc, glue, precision=1)
