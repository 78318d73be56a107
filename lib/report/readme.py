"""The README's tables of results, rendered from ``results/<preset>/<chapter>.json``.

The numbers of record of a full book run are the small JSON files the chapters write
(:func:`lib.report.results.record_headline`). The README never types a figure: each block between

    <!-- results: default/ch01 -->
    ...
    <!-- end results -->

is replaced by the rendering of that file. ``python -m lib.report`` (and every
``make book``) re-renders them; a test checks that the README matches its JSON files.

Stage: report (the README's tables).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

from lib.errors import CompanionError
from lib.fileio import atomic_write_text
from lib.paths import REPO_ROOT
from lib.report.rules import (LISTENS_GAP, NULL_SHARE_MAX, P_MAX, WER_TARGETS, compare_wer,
                              memory_verdict, paired_verdict)
from lib.report.bench import render_bench
from lib.report.results import check_needs, measured_at, records, results_root
from lib.report.summary import render_summary

BLOCK = re.compile(r"(<!-- results: ([\w.-]+)/(\w+) -->\n)(.*?)(<!-- end results -->)", re.S)


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


def _score(metric: str, s: dict[str, Any]) -> str:
    if not s:
        return "–"
    if metric == "wer":
        lo, hi = s["wer_ci95"]
        return f"{100 * s['wer']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"
    lo, hi = s["bleu_ci95"]
    return f"{s['bleu']:.1f} [{lo:.1f}, {hi:.1f}]"


def render_ch05(rec: dict[str, Any]) -> str:
    """Chapter 5: per decoder and task, the score with its interval, its no-audio floor and
    its baselines (each with its paired verdict); then the agreement of tasks and languages
    read against the null inputs."""
    rows = ["| decoder | task | score [95 % CI] | no-audio floor | Whisper-base | text "
            "cascade | chapter 1 ASR-only |", "|---|---|---|---|---|---|---|"]
    agree = ["| decoder | a | b | Spearman per n (chance) | null share | verdict |",
             "|---|---|---|---|---|---|"]
    sig = ""
    for dec, d in rec["decoders"].items():
        for name, t in d["tasks"].items():
            m = t["metric"]
            cells = [f"{_score(m, t['baselines'][k])} ({t[f'vs_{k}']['verdict']})"
                     if k in t["baselines"] else "–"
                     for k in ("whisper", "cascade", "asr-only")]
            rows.append(f"| {dec} | {name} | {_score(m, t)} | {_score(m, t['floor'])} "
                        f"({t['vs_floor']['verdict']}) | " + " | ".join(cells) + " |")
            sig = sig or t.get("bleu_signature", "")
        for a in d.get("agreement", []):
            if a["a"].startswith("speech") and a["b"].startswith("speech"):
                agree.append(f"| {dec} | {a['a']} | {a['b']} | {_f2(a['Spearman per n'])} "
                             f"({_f2(a['chance Spearman'])}) | {_f2(a['null share'])} | "
                             f"{a['verdict']} |")
    note = ("\nScores: WER % (ASR) or BLEU (translation, sacrebleu " + sig + "), each with "
            "its 95 % bootstrap interval over utterances; a baseline's verdict is the "
            "multi-task model's against it, by the paired bootstrap. Agreement: speech of "
            "every task on its target positions; verdicts as in chapter 2, read against "
            f"inputs that carry no task (null share at most {NULL_SHARE_MAX:g}).\n")
    return ("\n".join(rows) + "\n\n" + "\n".join(agree) + "\n" + note + "\n"
            + _provenance(rec) + "\n")


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
    """Chapter 4: per decoder and healing variant, WER before and after healing on each
    test set's curve subset and the recovery; the reloaded model and what pruning bought."""
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
        e = d.get("export", {})
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
    s = rec.get("settings", {})
    budget = (f"\nHealing budget: {s.get('heal_steps', '?')} steps of "
              f"{s.get('heal_batch_size', '?')} utterances, peak rate "
              f"{s.get('heal_learning_rate', '?')}, LoRA rank {s.get('heal_lora_rank', '?')}; "
              "recovery = (pruned - healed) / (pruned - full).\n")
    return ("\n".join(rows) + "\n\n" + "".join(f"- {n}\n" for n in notes) + budget + "\n"
            + _provenance(rec) + "\n")


def render_time(recs: dict[str, dict[str, Any]], min_share: float = 0.01) -> str:
    """Where each chapter's time went, stage by stage, from the records' ``time``
    (:func:`lib.clock.summary`): the chapter's wall time, each stage's minutes and share
    (stages under ``min_share`` folded into ``other``), and what was reused from the cache
    instead of computed (nothing: a first run). Also what ``make bench-book`` prints."""
    from lib.clock import OTHER, duration

    if not recs:
        return "(no full run recorded yet: `make book`)\n"
    rows = ["| chapter | wall time | where it went (share of the chapter) | reused from the "
            "cache |", "|---|---|---|---|"]
    total, timed, runs = 0.0, [], {}
    for ch, rec in recs.items():
        t = rec.get("time")
        prov = rec.get("provenance", {})
        commit = (prov.get("git_hash") or "unknown")[:7]
        runs.setdefault(commit + (" (uncommitted changes)" if prov.get("git_dirty") else ""),
                        prov.get("date", "?")[:10])
        if not t:
            rows.append(f"| {int(ch[2:])} | not recorded | (this record predates the stage "
                        "times) | – |")
            continue
        wall, stages = t["wall_s"], dict(t["stages"])
        total += wall
        timed.append(int(ch[2:]))
        small = sum(v for k, v in stages.items() if v < min_share * wall and k != OTHER)
        shown = {k: v for k, v in stages.items() if v >= min_share * wall and k != OTHER}
        if stages.get(OTHER, 0.0) + small > 0:
            shown[OTHER] = stages.get(OTHER, 0.0) + small
        where = " · ".join(f"{k} {duration(v)} ({100 * v / max(wall, 1e-9):.0f} %)"
                           for k, v in shown.items())
        reused = ", ".join(f"{k} x{n}" for k, n in t.get("reused", {}).items()) or \
            "nothing (a first run)"
        rows.append(f"| {int(ch[2:])} | {duration(wall)} | {where} | {reused} |")
    if len(timed) > 1:
        rows.append(f"| {timed[0]}-{timed[-1]} | **{duration(total)}** | the chapters' "
                    "wall times added (the kernels' start-up not counted) | |")
    when = "; ".join(f"commit {c} on {d}" for c, d in runs.items())
    return "\n".join(rows) + f"\n\nMeasured by the run itself ({when}).\n"


def render_record(chapter: str, rec: dict[str, Any], where: str) -> str:
    """Chapter ``chapter``'s block from its checked record; a field the renderer needs and
    the record lacks is one line naming it (:func:`check_needs`), never a traceback."""
    check_needs(rec, chapter, where)
    try:
        return RENDERERS[chapter](rec)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as err:
        raise CompanionError(f"{where} does not hold what the README renders "
                             f"({type(err).__name__}: {' '.join(str(err).split())[:60]}): run "
                             "`make book` to record it again") from None


RENDERERS: dict[str, Callable[[dict[str, Any]], str]] = {
    "ch01": render_ch01, "ch02": render_ch02, "ch03": render_ch03, "ch04": render_ch04,
    "ch05": render_ch05}
"""Chapter -> the function that renders its results file as Markdown."""


def render(text: str, root: Path | None = None) -> str:
    """``text`` (the README) with every results block re-rendered from its JSON file.

    A block whose file does not exist yet says so instead of showing a number.
    """
    root = root or results_root()
    runs: dict[str, dict[str, dict[str, Any]]] = {}

    def one(m: re.Match) -> str:
        preset, chapter = m.group(2), m.group(3)
        if preset == "bench":  # a benchmark's own output, not a run's record
            return m.group(1) + render_bench(chapter, root) + m.group(5)
        if preset not in runs:  # every record of the preset, checked as one run's
            runs[preset] = records(preset, root=root)
        if chapter == "time":
            body = render_time(runs[preset])
        elif chapter == "summary":
            body = render_summary(runs[preset], preset)
        elif chapter not in RENDERERS:
            body = f"(no renderer for {chapter})\n"
        elif chapter not in runs[preset]:
            body = f"(no full `{preset}` run recorded yet: `make book PRESET={preset}`)\n"
        else:
            body = render_record(chapter, runs[preset][chapter],
                                 str(root / preset / f"{chapter}.json"))
        return m.group(1) + body + m.group(5)

    return BLOCK.sub(one, text)


RENDERED = ("README.md", "book/course.md", "book/cpu.md", "book/records.md")
"""The files whose results blocks are rendered from ``results/``: the README, the course
page's table of times, the page on running on a CPU (stage times and the benchmarks) and
the page of the numbers of record."""


def update_readme(readme: Path = REPO_ROOT / "README.md") -> bool:
    """Re-render the results blocks of the README (and, beside the repository's own README,
    of the other :data:`RENDERED` files); returns whether anything changed. Every file is
    rendered before any is written: a bad results file leaves them all as they were."""
    paths = [readme] + ([REPO_ROOT / p for p in RENDERED[1:]]
                        if readme == REPO_ROOT / "README.md" else [])
    texts = {p: p.read_text(encoding="utf-8") for p in paths if p.is_file()}
    rendered = {p: render(t) for p, t in texts.items()}
    changed = [p for p in texts if rendered[p] != texts[p]]
    for p in changed:
        atomic_write_text(p, rendered[p])
    return bool(changed)


def main(readme: Path = REPO_ROOT / "README.md", argv: list[str] | None = None) -> int:
    """``python -m lib.report``: re-render the README's results blocks; a results file that
    fails its checks (:func:`lib.report.results.check_record`) is one line, status 1, and
    the README is left as it was. ``--time [--preset P] [--trial T]`` prints where the
    recorded run's time went instead (``make bench-book``)."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m lib.report", description=main.__doc__)
    ap.add_argument("--time", action="store_true",
                    help="print where the recorded run's time went, stage by stage")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--trial", default=None, help="a trial's name (results/<preset>/trials/)")
    args = ap.parse_args(argv or [])
    try:
        if args.time:
            print(render_time(records(args.preset, args.trial)), end="")
            return 0
        changed = update_readme(readme)
    except CompanionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{', '.join(RENDERED)}: results " + ("re-rendered" if changed else
                                                 "already up to date"))
    return 0
