"""Chapter 4's healing runs and its controls (book/04_healing.ipynb, section 4.3): a
variant healed once per seed and scored on every test utterance's loss
(:func:`heal_seeded`), the unpruned model trained with the same budget, and healing at the
loss rule's cut as well as at the fixed one (:func:`controls`).

Stage: the chapters' recipes. Explained in chapter 4 (book/04_healing.ipynb).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pandas as pd

from lib.build.adapters import merged_copy
from lib.build.speechllm import SpeechLLM
from lib.config.sections import Run
from lib.data.features import FeatureSet
from lib.heal.healing import HealRun, control_targets, heal, heal_seeds
from lib.heal.measure import loss_recovery, repair_contrast, seed_mean
from lib.prune.loss_curves import (BOOTSTRAP_DRAWS, LossMeter, UtteranceLosses, cut_losses,
                                   loss_point, within_loss_rule)
from lib.prune.surgery import pruned_copy
from lib.recipes.pipeline import ModelRun
from lib.recipes.section import Section
from lib.report import plotting
from lib.report.rules import repair_verdict


def interval_text(v: float, ci: list[float], fmt: str = ".2f") -> str:
    """``v [low, high]``, as chapter 4's tables and sentences write a value and its interval."""
    return f"{v:{fmt}} [{ci[0]:{fmt}}, {ci[1]:{fmt}}]"


def _healed_losses(cfg: Run, model: SpeechLLM, hr: HealRun,
                   tests: dict[str, FeatureSet]) -> dict[str, UtteranceLosses]:
    """Every test utterance's loss for a healed model, kept in its healing run's folder."""
    out = {}
    for test, fs in tests.items():
        meter = LossMeter(model, fs, cfg.eval.batch_size, cfg.train.precision)
        out[test] = cut_losses(meter, [], hr.run_dir, test)
    return out


def heal_seeded(cfg: Run, run: ModelRun, layers: list[int], variant: str, fit: FeatureSet,
                tests: dict[str, FeatureSet], control: bool = False, keep_first: bool = False
                ) -> dict[str, Any]:
    """``variant`` healed once per seed (:func:`lib.heal.healing.heal_seeds`) on its own copy
    of ``run``'s model pruned of ``layers``, or, ``control``, on an unpruned copy with the
    same trainable parts (LoRA on the layers that would receive the cut); every test
    utterance's loss after each. ``keep_first``: the first seed's model is returned too, as
    healed (its adapters not merged)."""
    big_l = len(run.model.decoder_layers)
    lora = control_targets(layers, big_l) if control else None
    out: dict[str, Any] = {"losses": [], "records": [], "model": None, "heal": None}
    for seed in heal_seeds(cfg.heal, cfg.train):
        model = merged_copy(run.model) if control else pruned_copy(run.model, layers)
        what = (f"the unpruned control (as for {len(layers)} layers removed)" if control else
                f"{variant}, {len(layers)} layer{'' if len(layers) == 1 else 's'} removed")
        hr = heal(model, fit, variant, cfg.heal, cfg.train, run.train.run_dir, seed=seed,
                  lora_layers=lora, desc=f"healing {what}, seed {seed}")
        out["losses"].append(_healed_losses(cfg, model, hr, tests))
        out["records"].append({**hr.record(), "seed": seed})
        if keep_first and out["model"] is None:
            out["model"], out["heal"] = model, hr
        else:
            del model
    return out


def _loss_points(got: dict[str, Any], first: str) -> pd.DataFrame:
    """Every healing's loss on ``first``: variant (or control), seed, loss per token."""
    return pd.DataFrame([{"variant": v, "seed": k, "loss": x[first].mean}
                         for v, g in got.items() for k, x in enumerate(g["losses"])])


def controls(cfg: Run, inputs: Section, healed: Section) -> Section:
    """Two controls of healing: the unpruned model trained with the same budget (the same
    trainable parts, seeds and steps), against which healing's gain must stand out; and
    ``both`` healed at the loss rule's cut as well as at the fixed one."""
    tests, first, out, rows = inputs["tests"], cfg.test_data[0], {}, []
    for name, run in inputs["runs"].items():
        d = inputs["models"][name]
        n, rule_n = d["cuts"]["fixed"], d["cuts"]["rule"]
        lf = d["losses"][first]
        both = healed["variants"][name].get("both") or _one_seed(cfg, run, d, n, inputs["fit"],
                                                                 tests)
        ctrl = heal_seeded(cfg, run, d["plan"][n], "both", inputs["fit"], tests, control=True,
                           keep_first=True)
        out[name] = {"control": ctrl}
        plotting.plot_heal_losses(
            _loss_points({**healed["variants"][name], "unpruned control": ctrl}, first),
            lf["full"].mean, lf["cuts"][n].mean, title=f"{name}, {n} layers removed, {first}")
        c_mean = seed_mean([x[first] for x in ctrl["losses"]])
        rows.append({"decoder": name, "model": "unpruned, trained as 'both' heals",
                     "layers removed": 0, "loss": c_mean.mean,
                     "gain (nats per token)": lf["full"].mean - c_mean.mean,
                     "recovery [95 % CI]": "–", "loss cost [95 % CI]": "–"})
        k = len(both["losses"])  # both healed with every seed, or (not a variant) one
        rep = repair_contrast(lf["full"], lf["cuts"][n], [x[first] for x in both["losses"]],
                              [x[first] for x in ctrl["losses"][:k]], BOOTSTRAP_DRAWS,
                              cfg.train.seed)
        out[name]["repair"] = {**rep, "verdict": repair_verdict(rep)}
        at = {n: both}
        if rule_n and rule_n != n:
            at[rule_n] = _one_seed(cfg, run, d, rule_n, inputs["fit"], tests)
        out[name]["cuts"] = {}
        for k, got in sorted(at.items()):
            h = seed_mean([x[first] for x in got["losses"]])
            rec = loss_recovery(lf["full"], lf["cuts"][k], h, BOOTSTRAP_DRAWS, cfg.train.seed)
            pt = loss_point(lf["full"], h, lf["floor"], BOOTSTRAP_DRAWS, cfg.train.seed)
            before = d["points"][k]  # the cut unhealed (section 4.1)
            out[name]["cuts"][k] = {
                "kind": "rule" if k == rule_n else "fixed", "seeds": len(got["losses"]),
                "recovery": rec["recovery"], "recovery_ci95": rec["recovery_ci95"],
                "cost_before": before["normalised"],
                "cost_before_ci95": before["normalised_ci95"],
                "cost_after": pt["normalised"], "cost_after_ci95": pt["normalised_ci95"],
                "within_rule": bool(within_loss_rule(pt["normalised"],
                                                     cfg.prune.loss_threshold)),
                "model": got["model"], "heal": got["heal"], "losses": got["losses"][0]}
            where = "the loss rule's cut" if k == rule_n else "the fixed cut"
            rows.append({"decoder": name, "model": f"pruned at {where}, healed with both",
                         "layers removed": k, "loss": h.mean,
                         "gain (nats per token)": lf["cuts"][k].mean - h.mean,
                         "recovery [95 % CI]": interval_text(rec["recovery"],
                                                             rec["recovery_ci95"]),
                         "loss cost [95 % CI]":
                         f"{interval_text(before['normalised'], before['normalised_ci95'])} → "
                         f"{interval_text(pt['normalised'], pt['normalised_ci95'])}"})
    thr = cfg.prune.loss_threshold
    glue = dict(
        repair_sentence="; ".join(
            f"{name}: {o['repair']['verdict']} (healing lowers the pruned model's loss by "
            f"{o['repair']['gain_healed']:.3f} nats per token, the same training changes the "
            f"unpruned model's by {-o['repair']['gain_control']:+.3f}; the difference of the "
            f"gains {o['repair']['delta']:+.3f}, interval {o['repair']['ci95'][0]:+.3f} to "
            f"{o['repair']['ci95'][1]:+.3f} from the {o['repair']['interval_from']})"
            for name, o in out.items()),
        rule_cut_sentence="; ".join(_rule_cut_one(name, o, inputs["models"][name], thr)
                                    for name, o in out.items()))
    return Section(pd.DataFrame(rows), glue, {"controls": out}, precision=3)


def _one_seed(cfg: Run, run: ModelRun, d: dict[str, Any], k: int, fit: FeatureSet,
              tests: dict[str, FeatureSet]) -> dict[str, Any]:
    """``both`` at another cut with the first seed only: a cut shown, not compared."""
    one = dataclasses.replace(cfg, heal=dataclasses.replace(cfg.heal, seeds=1))
    return heal_seeded(one, run, d["plan"][k], "both", fit, tests, keep_first=True)


def _rule_cut_one(name: str, o: dict[str, Any], d: dict[str, Any], thr: float) -> str:
    rule_n = d["cuts"]["rule"]
    if not rule_n:
        return (f"{name}: the loss rule removes no layer (every cut costs more than {thr:g} "
                "of the audio's worth), so only the fixed cut is healed")
    parts = []
    for k, c in o["cuts"].items():
        parts.append(f"at {k} layer{'' if k == 1 else 's'} removed "
                     f"({'the rule' if c['kind'] == 'rule' else 'fixed'}) "
                     f"healing takes the loss cost from {c['cost_before']:.2f} to "
                     f"{c['cost_after']:.2f} [{c['cost_after_ci95'][0]:.2f}, "
                     f"{c['cost_after_ci95'][1]:.2f}], "
                     f"{'within' if c['within_rule'] else 'beyond'} the rule's {thr:g}")
    return f"{name}: " + "; ".join(parts)
