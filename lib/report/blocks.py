"""Each chapter's block of results, rendered from its record (``results/<preset>/chNN.json``):
the tables and notes the README, the course page and the records page show between their
``<!-- results: ... -->`` markers (:mod:`lib.report.readme` puts them there).

Stage: report (the README's tables).
"""

from __future__ import annotations

from typing import Any

from lib.report.rules import (LISTENS_GAP, NULL_SHARE_MAX, P_MAX, WER_TARGETS, compare_wer,
                              memory_verdict, paired_verdict)
from lib.report.results import measured_at


def _verdicts(dec: str, d: dict[str, Any]) -> str:
    """One sentence per decoder, every clause computed from the record by a named rule."""
    parts = []
    for test, t in d["test_sets"].items():
        base = t.get("baselines", {})
        vs = [f"{compare_wer(t, base[k])} {label}" for k, label in
              (("ctc_head", "its CTC head's"), ("whisper", "Whisper-base's"))
              if base.get(k, {}).get("wer_ci95")]
        target = WER_TARGETS.get(test)
        met = ("" if target is None else
               f"; target ≤ {100 * target:.0f} % {'met' if t['wer'] <= target else 'not met'}")
        resc = t.get("ctc_rescored")
        if resc:
            rmet = ("" if target is None else
                    f", target {'met' if resc['wer'] <= target else 'not met'}")
            diff = resc["vs_greedy"]
            met += (f"; with CTC rescoring (weight {resc['weight']:g}) "
                    f"{100 * resc['wer']:.1f} %, {paired_verdict(diff)} greedy "
                    f"(paired difference {100 * diff['difference']:+.1f} points, "
                    "95 % interval {:+.1f} to {:+.1f}){}".format(
                        *(100 * x for x in diff["difference_ci95"]), rmet))
        parts.append(f"on {test} its WER is {' and '.join(vs) or 'not compared'}{met}")
    gap = d.get("audio_reliance_gap")
    listens = ("" if gap is None else
               f"; it {'reads' if gap >= LISTENS_GAP else 'does not read'} the audio "
               f"(reliance gap {gap:.2f} {'≥' if gap >= LISTENS_GAP else '<'} "
               f"{LISTENS_GAP:g} nats/token)")
    return f"{dec}: " + "; ".join(parts) + listens


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _wer(rec: dict[str, Any] | None) -> str:
    if not rec:
        return "–"
    lo, hi = rec.get("wer_ci95") or (None, None)
    ci = f" [{_pct(lo)}, {_pct(hi)}]" if lo is not None else ""
    return f"{_pct(rec['wer'])}{ci}"


def _provenance(rec: dict[str, Any]) -> str:
    return (f"Measured by the book run of preset `{rec.get('preset')}` "
            f"{measured_at(rec.get('provenance', {}))}.")


def render_ch01(rec: dict[str, Any]) -> str:
    """Chapter 1: WER with 95 % intervals per decoder and test set (greedy, and with joint
    CTC / attention decoding when the run has it), and the baselines."""
    rows = ["| decoder | test set (utterances) | SpeechLLM | + CTC rescoring | CTC head alone "
            "| Whisper-base |", "|---|---|---|---|---|---|"]
    notes = []
    for dec, d in rec["decoders"].items():
        for test, t in d["test_sets"].items():
            base = t.get("baselines", {})
            rows.append(f"| {dec} | {test} ({t['n_utterances']}) | {_wer(t)} | "
                        f"{_wer(t.get('ctc_rescored'))} | "
                        f"{_wer(base.get('ctc_head'))} | {_wer(base.get('whisper'))} |")
        tr = d.get("training", {})
        notes.append(f"{dec}: {tr.get('minutes', float('nan')):.1f} min of training "
                     f"({tr.get('ctc_minutes', 0):.1f} min CTC warm start + "
                     f"{tr.get('llm_minutes', float('nan')):.1f} min for {tr.get('steps')} LLM "
                     f"steps, recipe `{tr.get('recipe')}`); audio-reliance gap "
                     f"{d.get('audio_reliance_gap', float('nan')):.2f} nats/token")
    verdicts = [_verdicts(dec, d) for dec, d in rec["decoders"].items()]
    seeds = rec.get("levers", {}).get("clean_seeds", {}).get("real", [])
    if len(seeds) > 1:  # the same recipe's CTC head over training seeds
        notes.append(f"real speech over {len(seeds)} training seeds (CTC head, clean recipe): "
                     f"{100 * min(seeds):.1f}–{100 * max(seeds):.1f} % WER, a spread the "
                     "intervals above (utterances only) do not include; recipe of record: "
                     f"{rec['levers'].get('choice', {}).get('lever', '–')}")
    text = "\n".join(rows) + "\n\n" + "".join(f"- {n}\n" for n in notes + verdicts)
    return (text + "\nVerdicts: one WER is lower or higher than another only when their 95 % "
            "intervals do not overlap; rescored against greedy (the same utterances, decoded "
            "twice), only when the 95 % interval of their paired bootstrap difference lies "
            "wholly on one side of zero.\n\n" + _provenance(rec) + "\n")


def _block(rows: list[str], notes: list[str], rule: str, rec: dict[str, Any]) -> str:
    """A chapter's block: its table, its notes as a list, the rule that reads it, where the
    record was measured."""
    return ("\n".join(rows) + "\n\n" + "".join(f"- {n}\n" for n in notes) + rule + "\n"
            + _provenance(rec) + "\n")


def _f2(x: Any) -> str:
    return "–" if x is None else f"{x:.2f}"


def render_ch02(rec: dict[str, Any]) -> str:
    """Chapter 2: per decoder and comparison, the agreement figures beside their chance
    level, the verdict, the share a null input reaches, and the ablation check."""
    rows = ["| decoder | comparison | Spearman per n (chance) | block overlap (chance) "
            "| verdict | null share | beyond a null input |", "|---|---|---|---|---|---|---|"]
    notes = []
    for dec, d in rec["decoders"].items():
        for label, c in d.get("comparisons", {}).items():
            ch = c.get("chance", {})
            rows.append(f"| {dec} | {label} | {_f2(c.get('spearman_per_n_mean'))} "
                        f"({_f2(ch.get('spearman_per_n_mean'))}) | "
                        f"{_f2(c.get('overlap_mean'))} ({_f2(ch.get('overlap_mean'))}) | "
                        f"{c.get('verdict', '–')} | {_f2(c.get('null_share'))} | "
                        f"{c.get('beyond_null', '–')} |")
        a = d.get("ablation")
        if a:
            notes.append(f"{dec}: removing the block the score picks ([{a['chosen_start']}, "
                         f"{a['chosen_start'] + a['block_size']})) raises the loss by "
                         f"{a['chosen_delta']:.2f} nats, rank {a['chosen_rank']} of "
                         f"{a['n_blocks']}; Spearman(d, loss) {_f2(a.get('spearman'))}")
        for n, p in d.get("profiles", {}).items():
            lo, hi = p["index_ci95"]
            notes.append(f"{dec}, blocks of {n} removed in turn: Spearman text–speech "
                         f"{_f2(p['rho'])} (split-half ceiling {_f2(p['rho_ceiling'])}, "
                         + ", ".join(f"{k} {_f2(v['rho_null'])}" for k, v in p["nulls"].items())
                         + f"); specificity {p['index']:.2f} [{lo:.2f}, {hi:.2f}] against "
                         f"{p['stricter_null']}: {p['verdict']}")
    th = rec.get("thresholds", {})
    rule = (f"\nVerdicts: \"the same blocks\" when the per-n Spearman mean is at least "
            f"{th.get('agree_rho', '?')} and the block overlap at least "
            f"{th.get('agree_overlap_gain', '?')} of the way from chance to 1, both above "
            f"their chance draws (p ≤ {P_MAX:g}); \"no more than chance\" when neither is; "
            f"\"beyond a null input\" when, in addition, an input that carries no task "
            f"reaches at most {NULL_SHARE_MAX:g} of the agreement above chance (the null "
            "share; – where the run recorded none)."
            + (f" By removal cost: \"specific to the inputs\" when the specificity index "
               f"(rho - rho_null) / (rho_ceiling - rho_null) has its 95 % interval at or above "
               f"{th['specific_min']:g}, \"as any input marks them\" when wholly below."
               if "specific_min" in th else "") + "\n")
    return _block(rows, notes, rule, rec)


def _score(metric: str, s: dict[str, Any], key: str | None = None) -> str:
    """A score with its interval: WER in %, or ``key`` (chrF by default) for translation."""
    if not s:
        return "–"
    if metric == "wer":
        lo, hi = s["wer_ci95"]
        return f"{100 * s['wer']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"
    key = key or "chrf"
    lo, hi = s[f"{key}_ci95"]
    return f"{s[key]:.1f} [{lo:.1f}, {hi:.1f}]"


def render_ch05(rec: dict[str, Any]) -> str:
    """Chapter 5: per decoder and task, the score with its interval, its no-audio floor,
    whether the task is learned, and its baselines (each with its paired verdict); then, per
    pair of learned tasks, what removing each block costs compared across them."""
    rows = ["| decoder | task | score [95 % CI] | BLEU | no-audio floor | learned | "
            "Whisper-base | text cascade (handicapped) | English ASR alone |",
            "|---|---|---|---|---|---|---|---|---|"]
    pairs = ["| decoder | block | a | b | changes | index [95 % CI] | verdict |",
             "|---|---|---|---|---|---|---|"]
    sig = ""
    for dec, d in rec["decoders"].items():
        for name, t in d["tasks"].items():
            m = t["metric"]
            cells = [f"{_score(m, t['baselines'][k])} ({t[f'vs_{k}']['verdict']})"
                     if k in t["baselines"] else "–"
                     for k in ("whisper", "cascade", "asr-only")]
            bleu = _score(m, t, "bleu") if m != "wer" else "–"
            rows.append(f"| {dec} | {name} | {_score(m, t)} | {bleu} | {_score(m, t['floor'])} "
                        f"({t['vs_floor']['verdict']}) | {'yes' if t['learned'] else 'no'} | "
                        + " | ".join(cells) + " |")
            sig = sig or t.get("chrf_signature", "")
        for p in d["removal"]["pairs"]:
            lo, hi = p["index_ci95"]
            pairs.append(f"| {dec} | {p['n']} | {p['a']} | {p['b']} | {p['changes']} | "
                         f"{_f2(p['index'])} [{_f2(lo)}, {_f2(hi)}] | {p['verdict']} |")
    margin = rec["competence_margin"]
    note = ("\nScores: WER % (ASR) or chrF (translation, sacrebleu " + sig + "; BLEU beside "
            "it), each with its 95 % bootstrap interval over utterances; a verdict is the "
            "multi-task model's against the system, by the paired bootstrap. Learned: better "
            f"than the no-audio floor by at least {margin['chrf']:g} chrF or "
            f"{100 * margin['wer']:g} WER points, the whole paired interval. Removal: every "
            "block removed in turn on each learned task's test items; the index places the "
            "two tasks' agreement between their noise-audio nulls' (0) and each task's with "
            "itself (1). Claim 5 by removal: " + rec["claim5"] + ".\n")
    body = "\n".join(rows) + "\n\n"
    if len(pairs) > 2:
        body += "\n".join(pairs) + "\n"
    return body + note + "\n" + _provenance(rec) + "\n"


def _pct0(x: Any) -> str:
    return "–" if x is None else f"{100 * x:.0f}"


def render_ch03(rec: dict[str, Any]) -> str:
    """Chapter 3: the loss rule's cut per strategy, angular against the last-n baseline, the
    WER at the chosen cut; a record of WER curves (before 08d4d7f) by :func:`render_ch03_wer`."""
    if (s := rec["settings"]).get("curve") != "loss":
        return render_ch03_wer(rec)
    rows = ["| decoder | strategy | layers removed [95 % CI] | cut (%) | interval (grid steps) "
            "| cost at the cut |", "|---|---|---|---|---|---|"]
    notes = []
    for dec, d in rec["decoders"].items():
        for strategy, st in d["strategies"].items():
            r = st["loss_rule"]
            lo, hi = r["n_removed_ci95"]
            rows.append(f"| {dec} | {strategy} | {r['n_removed']} [{lo}, {hi}] | "
                        f"{_pct0(r['removed_fraction'])} | {r['grid_steps']} | "
                        f"{r['cost']:.2f} |")
        if d["baseline"]["against"]:
            notes.append(f"{dec}, angular against {d['baseline']['strategy']} (paired loss "
                         "difference per cut): " + ", ".join(
                             f"{a['n_removed']} layers: {a['verdict']}"
                             for a in d["baseline"]["against"]))
        ch = d.get("chosen", {})
        notes += [f"{dec}, {ch['strategy']} cut of {ch['n_removed']} layers on {t} "
                  f"({v['n_utterances']} utterances{'' if v['ruled'] else ', not ruled on'}): "
                  f"WER {100 * v['wer_full']:.1f} % -> {100 * a['wer']:.1f} % "
                  f"[{100 * a['wer_ci95'][0]:.1f}, {100 * a['wer_ci95'][1]:.1f}], "
                  f"{a['insertion_rate']:.2f} insertions per word"
                  for t, v in ch.get("tests", {}).items() for a in v["at"]
                  if a["n_removed"] == ch["n_removed"]]
    rule = (f"\nThe rule: the largest cut whose loss cost (L_cut - L_full) / (L_floor - L_full) "
            f"stays within {s['loss_threshold']:g} on every utterance of {s['ruled_on']} (the "
            f"floor: another utterance's audio); its interval from {s['bootstrap_draws']} "
            "resamples of the utterances. WER decodes are capped by each clip's length.\n")
    return _block(rows, notes, rule, rec)


def render_ch03_wer(rec: dict[str, Any]) -> str:
    """Chapter 3 as recorded before the loss curves: per decoder and strategy, the paper's
    rule's cut on each test set's WER curve subset; then the cut on the full test sets."""
    s = rec.get("settings", {})
    tests = sorted({t for d in rec["decoders"].values() for st in d["strategies"].values()
                    for t in st["threshold_cut"]})
    rows = ["| decoder | strategy | " + " | ".join(f"cut on {t} (%) [95 % CI]" for t in tests)
            + " |", "|---|---|" + "---|" * len(tests)]
    notes = []
    for dec, d in rec["decoders"].items():
        for strategy, st in d["strategies"].items():
            cells = []
            for t in tests:
                c = st["threshold_cut"].get(t)
                cells.append("–" if c is None else
                             f"{_pct0(c['cut'])} [{_pct0(c['ci95'][0])}, {_pct0(c['ci95'][1])}]")
            rows.append(f"| {dec} | {strategy} | " + " | ".join(cells) + " |")
        ch = d.get("chosen", {})
        for t, v in ch.get("tests", {}).items():
            notes.append(f"{dec}, {ch['strategy']} cut of {ch['n_removed']} layers "
                         f"({_pct0(ch['removed_fraction'])} %) on all of {t} "
                         f"({v['n_utterances']} utterances): WER {_wer_pair(v)}")
    rule = (f"\nThe paper's rule: the largest cut whose relative WER increase stays within "
            f"{s.get('threshold', '?')}, on the first {s.get('curve_utterances', '?')} "
            f"utterances of each test set; the interval re-applies the rule to curves "
            f"resampled over utterances.\n")
    return _block(rows, notes, rule, rec)


def _wer_pair(v: dict[str, Any]) -> str:
    return (f"{100 * v['wer_full']:.1f} % [{100 * v['wer_full_ci95'][0]:.1f}, "
            f"{100 * v['wer_full_ci95'][1]:.1f}] before, {100 * v['wer']:.1f} % "
            f"[{100 * v['wer_ci95'][0]:.1f}, {100 * v['wer_ci95'][1]:.1f}] after pruning")


def render_ch04(rec: dict[str, Any]) -> str:
    """Chapter 4: per decoder and healing variant, the loss after healing (seeds' mean and
    range) and the share of pruning's loss won back on the first test set; both against
    each variant alone, healing against the unpruned control, the cuts healed, the capped
    WER; the reloaded model and what pruning bought. A record scored by WER (written before
    the losses) by :func:`render_ch04_wer`."""
    if rec.get("settings", {}).get("scored") != "loss":
        return render_ch04_wer(rec)
    s = rec["settings"]
    first = s["ruled_on"]
    rows = [f"| decoder | variant | seeds | loss on {first} (nats per token; seed range) | "
            "recovery [95 % CI] |", "|---|---|---|---|---|"]
    notes = []
    for dec, d in rec["decoders"].items():
        lo = d["losses"][first]
        rows.append(f"| {dec} | full model | – | {lo['full']:.3f} | – |")
        for v, r in d["variants"].items():
            x = r["tests"][first]
            ps = x["loss_per_seed"]
            rc = ("–" if v == "none" or x["recovery"] != x["recovery"] else
                  f"{x['recovery']:.2f} [{x['recovery_ci95'][0]:.2f}, "
                  f"{x['recovery_ci95'][1]:.2f}]")
            rows.append(f"| {dec} | {v} | {len(ps)} | {x['loss']:.3f} ({min(ps):.3f}–"
                        f"{max(ps):.3f}) | {rc} |")
        cut, rc = d["cut"], d["rule_cut"]
        notes.append(f"{dec}: {cut['n_removed']} of {cut['n_layers']} layers removed (fixed); "
                     f"the loss rule's cut {rc['n_removed']} (interval "
                     f"{rc['n_removed_ci95'][0]}–{rc['n_removed_ci95'][1]})")
        for v, c in d["both_vs"].items():
            notes.append(f"{dec}: both's loss is {c['verdict']} {v}'s ({c['delta']:+.3f} "
                         f"nats per token, [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}] from the "
                         f"{c['interval_from']})")
        r = d["repair"]
        notes.append(f"{dec}: {r['verdict']} (gain {r['gain_healed']:.3f} against the "
                     f"control's {r['gain_control']:.3f}; difference [{r['ci95'][0]:+.3f}, "
                     f"{r['ci95'][1]:+.3f}])")
        for k, c in d["cuts"].items():
            notes.append(f"{dec}: at {k} removed ({c['kind']}), healing takes the loss cost from "
                         f"{c['cost_before']:.2f} to {c['cost_after']:.2f} "
                         f"[{c['cost_after_ci95'][0]:.2f}, {c['cost_after_ci95'][1]:.2f}], "
                         f"{'within' if c['within_rule'] else 'beyond'} the rule's "
                         f"{s['loss_threshold']:g}")
        w = d.get("wer", {}).get(first, {})
        if w:
            notes.append(f"{dec}: WER on {first}, capped: " + ", ".join(
                f"{label} {100 * x['wer']:.1f} % ({x['insertion_rate']:.2f} insertions per "
                "word)" for label, x in w.items()))
        notes.extend(_export_notes(dec, d.get("export", {})))
    budget = (f"\nHealing budget: {s['heal_steps']} steps of {s['heal_batch_size']} "
              f"utterances, peak rate {s['heal_learning_rate']}, LoRA rank "
              f"{s['heal_lora_rank']}, {s['heal_seeds']} seeds; recovery = (pruned - healed) "
              "/ (pruned - full) in loss per token; loss cost = (cut - full) / (floor - full)."
              "\n")
    return ("\n".join(rows) + "\n\n" + "".join(f"- {n}\n" for n in notes) + budget + "\n"
            + _provenance(rec) + "\n")


def _export_notes(dec: str, e: dict[str, Any]) -> list[str]:
    """What pruning bought and whether the saved model reloads to the same transcripts."""
    notes = []
    c = e.get("cost")
    if c:
        notes.append(f"{dec}: decoding {c['speedup']:.2f}x faster than the full model "
                     f"(ideal from FLOPs {c['ideal_speedup']:.2f}x, ratio "
                     f"{c['speedup'] / c['ideal_speedup']:.2f}); decoder parameters "
                     f"{c['params_full_m']:.0f} M -> {c['params_pruned_m']:.0f} M; peak "
                     f"memory {c['peak_mib_full']:.0f} -> {c['peak_mib_pruned']:.0f} MiB, "
                     f"{memory_verdict(c)}")
    same = [t for t, x in e.get("tests", {}).items() if x.get("same_transcripts_as_in_memory")]
    if e.get("tests"):
        notes.append(f"{dec}: saved, reloaded with plain transformers; same transcripts as "
                     f"in memory on {len(same)} of {len(e['tests'])} test sets")
    return notes


def render_ch04_wer(rec: dict[str, Any]) -> str:
    """Chapter 4 as recorded before the losses: per decoder and healing variant, WER before
    and after healing on each test set's curve subset and the recovery."""
    rows = ["| decoder | variant | test set | WER pruned -> healed (%) [95 % CI] | recovery |",
            "|---|---|---|---|---|"]
    notes = []
    for dec, d in rec["decoders"].items():
        for v, r in d["variants"].items():
            for t, x in r["tests"].items():
                lo, hi = x["wer_after_ci95"]
                rc = x.get("recovery")
                rows.append(
                    f"| {dec} | {v} | {t} | {100 * x['wer_before']:.1f} -> "
                    f"{100 * x['wer_after']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] | "
                    f"{'–' if rc is None else f'{rc:.2f}'} |")
        notes.append(f"{dec}: {d['cut']['n_removed']} of {d['cut']['n_layers']} layers "
                     "removed; trained (M parameters, minutes): " + ", ".join(
                         f"{v} {r['trainable'] / 1e6:.2f}, {r['wall_time_s'] / 60:.1f}"
                         for v, r in d["variants"].items()))
        notes.extend(_export_notes(dec, d.get("export", {})))
    s = rec.get("settings", {})
    budget = (f"\nHealing budget: {s.get('heal_steps', '?')} steps of "
              f"{s.get('heal_batch_size', '?')} utterances, peak rate "
              f"{s.get('heal_learning_rate', '?')}, LoRA rank {s.get('heal_lora_rank', '?')}; "
              "recovery = (pruned - healed) / (pruned - full).\n")
    return ("\n".join(rows) + "\n\n" + "".join(f"- {n}\n" for n in notes) + budget + "\n"
            + _provenance(rec) + "\n")


def _transfer_rows(cells: dict[str, list[dict[str, Any]]],
                   checks: dict[str, list[dict[str, Any]]]) -> list[str]:
    rows = ["| conditions | selector | layers removed | transfers | dependent | cannot tell | "
            "decoding confirms |", "|---|---|---|---|---|---|---|"]
    for kind, cs in cells.items():
        off = [c for c in cs if c["a"] != c["b"]]
        for sel, n in dict.fromkeys((c["selector"], c["n"]) for c in off):
            part = [c for c in off if (c["selector"], c["n"]) == (sel, n)]
            ch = [x for x in checks.get(kind, []) if (x["selector"], x["n"]) == (sel, n)]
            count = {v: sum(c["verdict"] == v for c in part)
                     for v in ("transfers", f"{kind}-dependent", "cannot tell")}
            rows.append(f"| {kind}s | {sel} | {n} | {count['transfers']} | "
                        f"{count[f'{kind}-dependent']} | {count['cannot tell']} | "
                        f"{sum(x['confirmed'] for x in ch)} of {len(ch)} |")
    return rows


def render_ch06(rec: dict[str, Any]) -> str:
    """Chapter 6: the transfer verdicts per kind of condition, selector and cut (with how
    many decoding confirms); the encoders; the backbone's cut, scores, reload and cost."""
    rows = _transfer_rows(rec["cells"], rec["checks"])
    enc = ["| encoder | what | WER % [95 % CI] | reads its audio (gap, nats/token) |",
           "|---|---|---|---|"]
    for e, r in rec["encoders"].items():
        enc.append(f"| {e} | {r['what']} | {_score('wer', r)} | "
                   f"{'yes' if r['reads_audio'] else 'no'} ({r['reliance_gap']:.2f}) |")
    bone = ["| decoder | layers removed | task | full model | healed backbone | verdict | "
            "recovered |", "|---|---|---|---|---|---|---|"]
    notes = []
    for dec, b in rec["backbone"].items():
        for t, s in b["tasks"].items():
            m = s["metric"]
            bone.append(f"| {dec} | {b['layers'][0]}–{b['layers'][-1]} | {t} | "
                        f"{_score(m, s['full'])} | {_score(m, s['healed'])} | "
                        f"{s['healed_vs_full']['verdict']} the full model | "
                        f"{_pct0(s['recovery'])} % |")
        c, r = b["cost"], b["reload"]
        notes.append(f"{dec}: reloaded in a fresh process, "
                     f"{'the same outputs exactly' if r['exact'] else 'outputs differ'}; "
                     f"decoding {c['speedup']:.2f}x faster (ideal {c['ideal_speedup']:.2f}x, "
                     f"ratio {c['speedup_over_ideal']:.2f}); peak memory "
                     f"{c['peak_mib_full']:.0f} -> {c['peak_mib_pruned']:.0f} MiB")
    rule = (f"\nTE(A -> B): the share of what choosing can gain over a random block that a "
            f"cut chosen on A's first half keeps on B's second half; transfers when its 95 % "
            f"interval is at or above {rec['transfer_min']:g} and it is not below B's own "
            "choice by the paired rule, dependent when it is. Scores: WER % or chrF with "
            "95 % bootstrap intervals; verdicts by the paired bootstrap.\n")
    body = "\n".join(rows) + "\n\n" + "\n".join(enc) + "\n\n"
    if len(bone) > 2:
        body += "\n".join(bone) + "\n\n" + "".join(f"- {n}\n" for n in notes)
    return body + rule + "\n" + _provenance(rec) + "\n"
