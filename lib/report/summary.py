"""What each chapter finds, one row per chapter, rendered from the numbers of record.

The README's summary table (``<!-- results: default/summary -->``): each chapter's question
and, from its record, what the last full run found, every figure with its interval or its
count. Only fields the chapter's record must hold (:data:`lib.report.results.NEEDS`) are
read. Stage: report. Explained in the README.
"""

from __future__ import annotations

from typing import Any

from lib.report.results import check_needs

QUESTIONS = {
    "ch01": "Does a SpeechLLM trained on two CPU cores transcribe speech?",
    "ch02": "Do text and speech mark the same redundant blocks of layers?",
    "ch03": "How many layers can go, by what a cut costs, and which?",
    "ch04": "Does healing win back what pruning lost, and what does pruning buy?",
    "ch05": "Which tasks are learned, and do they mark the same blocks when blocks go?",
    "ch06": "Does a cut chosen on one task, language or encoder suit the others?",
}
"""Chapter -> the question its row answers (the chapter's page answers it at length)."""


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _ci(pair: list[float] | None) -> str:
    return "" if not pair else f" [{100 * pair[0]:.1f}, {100 * pair[1]:.1f}]"


def found_ch01(rec: dict[str, Any]) -> str:
    """Greedy WER with its 95 % interval, per decoder and test set."""
    return "; ".join(
        f"{dec}: " + ", ".join(f"{_pct(t['wer'])}{_ci(t['wer_ci95'])} WER on {test} "
                               f"({t['n_utterances']} utt.)"
                               for test, t in d["test_sets"].items())
        for dec, d in rec["decoders"].items())


def found_ch02(rec: dict[str, Any]) -> str:
    """Per decoder, how many comparisons of the distance surfaces mark the same blocks (read
    against the null inputs where the run scored them), and the functional profiles'
    verdict per block size (what removing each block costs, against a null input and a
    random-weights decoder) where the run measured them."""
    parts = []
    for dec, d in rec["decoders"].items():
        comps = list(d["comparisons"].values())
        if any("beyond_null" in c for c in comps):
            same = sum(c.get("beyond_null") == "the same blocks, beyond a null input"
                       for c in comps)
            part = f"{dec}: the same blocks beyond a null input in {same} of {len(comps)} " \
                   "comparisons"
        else:
            same = sum(c["verdict"] == "the same blocks" for c in comps)
            part = f"{dec}: the same blocks in {same} of {len(comps)} comparisons"
        if d.get("profiles"):
            part += "; by removal cost, " + ", ".join(
                f"n = {n}: {p['verdict']}" for n, p in d["profiles"].items())
        parts.append(part)
    t = rec["thresholds"]
    return "; ".join(parts) + (f" (Spearman per n ≥ {t['agree_rho']:g} and overlap gain ≥ "
                               f"{t['agree_overlap_gain']:g} over chance"
                               + (f"; specificity ≥ {t['specific_min']:g}"
                                  if "specific_min" in t else "") + ")")


def found_ch03(rec: dict[str, Any]) -> str:
    """Per decoder, the cut the paper's rule allows and the strategy that chose it."""
    parts = []
    for dec, d in rec["decoders"].items():
        c = d["chosen"]
        layers = "layer" if c["n_removed"] == 1 else "layers"
        parts.append(f"{dec}: {c['n_removed']} {layers} ({100 * c['removed_fraction']:.0f} %) "
                     f"by {c['strategy']}")
    s = rec["settings"]
    if s.get("curve") == "loss":
        return "; ".join(parts) + (f" (loss cost ≤ {s['loss_threshold']:g} of the audio's "
                                   f"worth on every utterance of {s['ruled_on']})")
    return ("; ".join(parts) + f" (WER increase ≤ {100 * s['threshold']:.0f} % "
            f"on {s['curve_utterances']} utterances per test set)")


def found_ch04(rec: dict[str, Any]) -> str:
    """Per decoder: the variant with the lowest loss after healing and its recovery, and
    whether healing repairs the cut beyond the unpruned control (a record scored by WER:
    the best variant's WER)."""
    s = rec["settings"]
    if s.get("scored") == "loss":
        parts = []
        for dec, d in rec["decoders"].items():
            first = s["ruled_on"]
            healed = {v: x["tests"][first] for v, x in d["variants"].items() if v != "none"}
            if not healed:
                continue
            best = min(healed, key=lambda v: healed[v]["loss"])
            b = healed[best]
            parts.append(f"{dec}, {d['cut']['n_removed']} of {d['cut']['n_layers']} layers "
                         f"removed: best `{best}`, recovery {b['recovery']:.2f} "
                         f"[{b['recovery_ci95'][0]:.2f}, {b['recovery_ci95'][1]:.2f}] of the "
                         f"loss; {d['repair']['verdict']}")
        return "; ".join(parts) + (f" ({s['heal_steps']} healing steps, {s['heal_seeds']} "
                                   "seeds)")
    parts = []
    for dec, d in rec["decoders"].items():
        cut = d["cut"]
        first = next(iter(next(iter(d["variants"].values()))["tests"]))
        after = {v: x["tests"][first] for v, x in d["variants"].items()}
        best = min(after, key=lambda v: after[v]["wer_after"])
        b = after[best]
        parts.append(f"{dec}, {cut['n_removed']} of {cut['n_layers']} layers removed: best "
                     f"`{best}`, {_pct(b['wer_after'])}{_ci(b['wer_after_ci95'])} on {first} "
                     f"(pruned {_pct(b['wer_before'])})")
    return "; ".join(parts) + f" ({rec['settings']['heal_steps']} healing steps)"


def found_ch05(rec: dict[str, Any]) -> str:
    """Per decoder, which tasks are learned; then claim 5's answer by removal."""
    parts = []
    for dec, d in rec["decoders"].items():
        learned = [n for n, t in d["tasks"].items() if t["learned"]]
        parts.append(f"{dec}: {len(learned)} of {len(d['tasks'])} tasks learned "
                     f"({', '.join(learned) or 'none'})")
    return "; ".join(parts) + f"; by removal: {rec['claim5'].split(':')[0]}"


def found_ch06(rec: dict[str, Any]) -> str:
    """The transfer answers per kind of condition (the paper's angular selector, then the
    loss), then the backbone: its cut and how many tasks it keeps level with the full
    model."""
    s = rec["sentences"]
    parts = [f"{kind}s: angular {s.get(f'{kind}_transfer_angular', '–').split(' (')[0]}, "
             f"loss {s.get(f'{kind}_transfer_loss', '–').split(' (')[0]}"
             for kind in ("task", "encoder")]
    for dec, b in rec["backbone"].items():
        level = sum(t["healed_vs_full"]["verdict"] != "worse than" for t in b["tasks"].values())
        parts.append(f"{dec} backbone: layers {b['layers'][0]}–{b['layers'][-1]} removed, "
                     f"{level} of {len(b['tasks'])} learned tasks not worse than the full model "
                     f"after healing, reload {'exact' if b['reload']['exact'] else 'not exact'}")
    return "; ".join(parts)


FOUND = {"ch01": found_ch01, "ch02": found_ch02, "ch03": found_ch03, "ch04": found_ch04,
         "ch05": found_ch05, "ch06": found_ch06}
"""Chapter -> the function that says in one cell what its record found."""


def render_summary(recs: dict[str, dict[str, Any]], preset: str) -> str:
    """The one-table summary: a row per chapter, what its record found or that there is
    none yet."""
    rows = ["| chapter | the question | what the last full run found |", "|---|---|---|"]
    for chapter, question in QUESTIONS.items():
        rec = recs.get(chapter)
        if rec is None:
            found = f"not recorded yet (`make book PRESET={preset}`)"
        else:
            check_needs(rec, chapter, f"results/{preset}/{chapter}.json")
            found = FOUND[chapter](rec)
        rows.append(f"| {int(chapter[2:])} | {question} | {found} |")
    return "\n".join(rows) + "\n"
