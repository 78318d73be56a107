"""Chapter 1, section 1.6: what ``precision: auto`` chose on this machine, how the choice
was made (:mod:`lib.machine`'s probe, kept in the cache), and what bf16 bought in this
run, measured again on the trained SpeechLLMs (book/01_building_a_speechllm.ipynb).

Stage: the chapters' recipes. Explained in chapter 1 (section 1.6).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from lib.config.sections import Run
from lib.data.features import FeatureSet
from lib.evaluate.decode import precision_check
from lib.fileio import device_info
from lib.machine import stored_choice
from lib.paths import slug
from lib.recipes.pipeline import ModelRun
from lib.recipes.section import Section
from lib.report.rules import BF16_MIN_SPEEDUP, bf16_verdict, paired_verdict
from lib.train.precision import training_speedup


def probe_sentence(found: dict[str, Any] | None) -> str:
    """How ``auto`` chose on this machine: the stored probe (:mod:`lib.machine`), its date,
    decoders and per-use ratio and verdict, or that no probe was made (a precision named
    with ``-p``, a GPU, or a CPU that emulates bf16)."""
    if found is None:
        return ("no probe decided it: both precisions were named, or the machine has a GPU or "
                "no native bf16")
    when = str(found.get("provenance", {}).get("date", "an earlier run"))[:10]
    uses = "; ".join(
        f"{use} bf16 {found[use]['speedup']:.2f} times as fast as float32 (rounds "
        f"{min(found[use]['round_speedups']):.2f}-{max(found[use]['round_speedups']):.2f}: "
        f"{found[use]['verdict']}, so {found[use]['chose']})" for use in ("training", "decoding"))
    share = found.get("others_share")
    machine = {"shared": f"; other processes took {100 * (share or 0):.0f} % of the CPU during "
                         "it, more than a quiet machine allows, so the next run measures again",
               "to itself": f"; other processes took {100 * (share or 0):.0f} % of the CPU "
                            "during it (a quiet machine)"}.get(found.get("machine"), "")
    return (f"the choice was measured once for this machine and these decoders "
            f"({', '.join(found['decoders'])}) on {when}, {found['rounds']} alternating rounds "
            f"on random features of a training batch's shape: {uses}{machine}")


def decoding_precision(cfg: Run, runs: dict[str, ModelRun], train: FeatureSet,
                       tests: dict[str, FeatureSet]) -> Section:
    """What ``auto`` chose on this machine, for training and for decoding, and what bf16
    bought in each, measured in this run: a few training steps of the first decoder timed
    in both precisions (:func:`lib.train.precision.training_speedup`) and each SpeechLLM's
    first test set decoded in both, paired (:func:`lib.evaluate.decode.precision_check`),
    each read by :func:`lib.report.rules.bf16_verdict`; nothing timed where bf16 is emulated."""
    info = device_info()
    where = info.get("gpu") or info.get("cpu") or "this machine"
    native = bool(info.get("gpu") or info.get("cpu_native_bf16"))
    probed = stored_choice([mc.decoder for mc in cfg.models]) if native else None
    glue: dict[str, Any] = {"cpu_name": where, "train_chose": cfg.train.precision,
                            "decode_chose": cfg.eval.precision,
                            "bf16_min_speedup": BF16_MIN_SPEEDUP,
                            "probe_sentence": probe_sentence(probed)}
    if not native:
        glue["prec_sentence"] = (
            f"{where} has no native bf16, so auto trained and decoded in float32 here and "
            "nothing was timed: emulated bf16 runs several times slower")
        return Section(glue=glue, data={"checks": {}, "training": None, "probe": None})
    first, run = next(iter(runs.items()))
    probe = training_speedup(run.model, train, cfg.train.batch_size)
    syn = cfg.test_data[0]
    found = {slug(d): precision_check(r.model, tests[syn].subset(cfg.eval.max_test_utterances),
                                      r.train.run_dir, syn, cfg.eval)
             for d, r in runs.items()}
    trained = bf16_verdict(probe["speedup"], rounds=probe["round_speedups"])
    rows = [{"use": "training", "decoder": slug(first), "auto chose": cfg.train.precision,
             "speed bf16 / fp32": probe["speedup"], "bf16 - fp32 WER (points) [95 % CI]": "",
             "bf16 verdict": trained}]
    rows += [{"use": f"decoding {syn}", "decoder": d, "auto chose": cfg.eval.precision,
              "speed bf16 / fp32": c["speedup"],
              "bf16 - fp32 WER (points) [95 % CI]": "{:+.1f} [{:+.1f}, {:+.1f}]".format(
                  *(100 * x for x in (c["difference"], *c["difference_ci95"]))),
              "bf16 verdict": bf16_verdict(c["speedup"], c)} for d, c in found.items()]
    decode = {row["bf16 verdict"] for row in rows[1:]}
    speeds = [c["speedup"] for c in found.values()]
    whole = run_decoding(found)
    glue.update(train_speedup=probe["speedup"], train_verdict=trained,
                decode_speed_low=min(speeds), decode_speed_high=max(speeds),
                decode_verdict=" and ".join(sorted(decode)), decode_run=whole,
                prec_sentence=precision_sentence(
                    cfg.train.precision, cfg.eval.precision,
                    (probe["speedup"], trained, probe["round_speedups"]),
                    (min(speeds), max(speeds), decode), whole))
    return Section(pd.DataFrame(rows), glue, {"checks": found, "training": probe,
                                              "probe": probed})


def run_decoding(checks: dict[str, dict[str, Any]]) -> tuple[float, str]:
    """What bf16 buys the run's decoding as a whole, as :mod:`lib.machine` decides ``auto``:
    the decoders' float32 seconds summed over their bf16 seconds (each from its own
    utterances per second on the same test set), read by
    :func:`lib.report.rules.bf16_verdict`; ``costs accuracy`` where any decoder's bf16 WER
    is higher by the paired rule."""
    fp32 = sum(1 / c["fp32"]["decode_utterances_per_s"] for c in checks.values())
    bf16 = sum(1 / c["bf16"]["decode_utterances_per_s"] for c in checks.values())
    costs = [c for c in checks.values() if paired_verdict(c) == "higher than"]
    return fp32 / bf16, bf16_verdict(fp32 / bf16, costs[0] if costs else None)


def precision_record(precision: Section) -> dict[str, Any]:
    """What ``auto`` chose on this machine and what bf16 bought, for the chapter's record."""
    g, probe, probed = precision.glue, precision["training"], precision["probe"]
    return {"machine": g["cpu_name"],
            "probe": None if probed is None else {
                k: probed[k] for k in ("decoders", "rounds", "training", "decoding")}
            | {"date": probed.get("provenance", {}).get("date")},
            "training": {"chose": g["train_chose"],
                         "bf16_speedup": probe["speedup"] if probe else None,
                         "rounds": probe["round_speedups"] if probe else None,
                         "fp32_s": probe["fp32_s"] if probe else None,
                         "bf16_s": probe["bf16_s"] if probe else None,
                         "verdict": g.get("train_verdict")},
            "decoding": {"chose": g["decode_chose"], "verdict": g.get("decode_verdict"),
                         "bf16_speedup": [g["decode_speed_low"], g["decode_speed_high"]]
                         if "decode_speed_low" in g else None,
                         "run": list(g["decode_run"]) if "decode_run" in g else None}}


def precision_sentence(train_chose: str, decode_chose: str,
                       train: tuple[float, str, list[float]],
                       decode: tuple[float, float, set[str]],
                       whole: tuple[float, str]) -> str:
    """What bf16 bought (``train``: ratio, verdict, each round's ratio; ``decode``: lowest and
    highest ratio over the decoders, their verdicts; ``whole``: the run's decoding as a whole,
    :func:`run_decoding`) and whether ``auto``'s choices stand by it, else the better ``-p``;
    rounds on both sides of the threshold decide nothing, and the sentence says so."""
    low, high, verdicts = decode
    speeds = f"{low:.2f}" if f"{low:.2f}" == f"{high:.2f}" else f"{low:.2f}-{high:.2f}"
    said = [f"a training step ran {train[0]:.2f} times as fast in bf16 as in float32 (rounds "
            f"{min(train[2]):.2f}-{max(train[2]):.2f}; bf16 {train[1]}), decoding {speeds} "
            f"times as fast (bf16 {' and '.join(sorted(verdicts))}; the decoders together "
            f"{whole[0]:.2f}: {whole[1]})"]
    for use, chose, pays, name in (("training", train_chose, train[1] == "pays", "precision"),
                                   ("decoding", decode_chose, whole[1] == "pays",
                                    "eval_precision")):
        if use == "training" and train[1] == "undecided":
            said.append(f"for training the rounds fall on both sides of {BF16_MIN_SPEEDUP}, so "
                        f"this run cannot say whether auto's choice ({chose}) stands")
        elif (chose == "bf16") == pays:
            said.append(f"for {use} auto's choice ({chose}) stands")
        else:
            other = "fp32" if chose == "bf16" else "bf16"
            said.append(f"for {use} auto's choice ({chose}) does not stand: "
                        f"-p {name} {other} would be the better default on this machine")
    return "; ".join(said)
