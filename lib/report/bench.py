"""The benchmarks' own figures, rendered: ``results/bench/<name>.json`` as written by
``make bench``, ``make bench-scores``, ``make bench-prune`` and ``make bench-features`` (each
script's ``--json``).

A page shows a benchmark through a block ``<!-- results: bench/<name> -->``; the block is
rendered from the file with the machine and commit it was measured on, or says how to
measure it when the file does not exist. Nothing here is typed by hand. Stage: report.
Explained on the book's page "How it runs on a CPU" (book/cpu.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from lib.errors import CompanionError
from lib.fileio import load_json
from lib.report.results import measured_at

COMMANDS = {"train": "make bench", "scores": "make bench-scores", "prune": "make bench-prune",
            "features": "make bench-features"}
"""Benchmark name -> the command that measures it (and writes ``results/bench/<name>.json``)."""


def render_train(rec: dict[str, Any]) -> str:
    """``make bench``: a training step against the bare decoder step, decoding speed, and
    the CTC warm-start step in float32 and bf16."""
    s = rec["settings"]
    rows = ["| decoder | train utt/s | s per step | bare s per step | step / bare | "
            "decode utt/s (fp32) | bf16 / fp32 decoding |", "|---|---|---|---|---|---|---|"]
    for name, r in rec["decoders"].items():
        rows.append(f"| {name} | {r['train_utt_s']:.2f} | {r['train_step_s']:.3f} | "
                    f"{r['bare_step_s']:.3f} | {r['overhead']:.2f} | {r['decode_utt_s']:.2f} | "
                    f"{r['decode_bf16_speedup']:.2f} |")
    text = "\n".join(rows) + (
        f"\n\nTraining batches of {s['batch']} utterances of {s['seconds']:g} s with "
        f"{s['words']}-word targets, precision {s['precision']}; decoding batches of "
        f"{s['decode_batch']}, {s['new_tokens']} new tokens; medians of {s['rounds']} "
        "alternating rounds.\n")
    if rec.get("ctc"):
        rows = ["| decoder | fp32 ms | bf16 ms | fp32 / bf16 |", "|---|---|---|---|"]
        rows += [f"| {n} | {1e3 * c['fp32_s']:.0f} | {1e3 * c['bf16_s']:.0f} | "
                 f"{c['speedup']:.2f} |" for n, c in rec["ctc"].items()]
        text += (f"\nA CTC warm-start step ({s['ctc_batch']} utterances, a head over "
                 f"{s['ctc_vocab']} word pieces):\n\n" + "\n".join(rows) + "\n")
    return text


def render_scores(rec: dict[str, Any]) -> str:
    """``make bench-scores``: what scoring redundancy costs over a bare forward pass."""
    rows = ["| decoder | layers | wall, streaming / bare | peak memory above the model, "
            "streaming / bare | common approach / streaming |", "|---|---|---|---|---|"]
    for name, d in rec["decoders"].items():
        b, s, t = d["bare"], d["stream"], d["timing"]
        naive = (f"{d['naive']['wall_s'] / s['wall_s']:.1f}x (L/2 = {b['layers'] / 2:g})"
                 if "naive" in d else "not run")
        rows.append(f"| {name} | {b['layers']} | {t['ratio']:.3f} (rounds "
                    f"{min(t['ratios']):.2f}–{max(t['ratios']):.2f}) | "
                    f"{s['peak_mib'] / b['peak_mib']:.2f} ({s['peak_mib']:.0f} vs "
                    f"{b['peak_mib']:.0f} MiB) | {naive} |")
    st = rec["settings"]
    return "\n".join(rows) + (f"\n\n{st['texts']} texts in batches of {st['batch']}; each "
                              "variant's memory in a fresh process; the wall ratio is the "
                              f"median of {st['repeats']} alternated rounds.\n")


def render_prune(rec: dict[str, Any]) -> str:
    """``make bench-prune``: decoding with layers removed against the full decoder."""
    rows = ["| decoder | removed | layers kept | speed-up | ideal (FLOPs) | measured / ideal "
            "| peak RSS MiB |", "|---|---|---|---|---|---|---|"]
    for r in rec.get("offline", []):
        rows.append(f"| {r['decoder']} | {100 * r['removed_fraction']:.0f} % | "
                    f"{r['layers_kept']} of {r['n_layers']} | {r['measured_speedup']:.2f}x | "
                    f"{r['ideal_speedup']:.2f}x | {r['ratio']:.2f} | {r['peak_rss_mib']:.0f} |")
    return "\n".join(rows) + "\n"


FLAT_SHARE = 0.1
"""The feature stage's peak memory may grow by at most this share of the bytes of the features
added (ten times the clips: nine times the first run's features) to be called flat; holding
every clip until the end grows it by about one."""


def memory_flat(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per storage of ``make bench-features``'s runs: the growth of the peak from its smaller
    run to its larger, as a share of the features' bytes added, and whether that is
    ``flat`` (below :data:`FLAT_SHARE`)."""
    out = {}
    for label in dict.fromkeys(r["storage"] for r in runs):
        small, large = sorted((r for r in runs if r["storage"] == label),
                              key=lambda r: r["utterances"])
        share = ((large["peak_rise_bytes"] - small["peak_rise_bytes"])
                 / (large["feature_bytes"] - small["feature_bytes"]))
        out[label] = {"growth_share": round(share, 3), "flat": share < FLAT_SHARE}
    return out


def render_features(rec: dict[str, Any]) -> str:
    """``make bench-features``: the feature stage's peak memory against its number of clips,
    in shards and (the control) in one shard, judged by :func:`memory_flat`."""
    rows = ["| storage | clips | features MiB | peak rise MiB | seconds |",
            "|---|---|---|---|---|"]
    rows += [f"| {r['storage']} | {r['utterances']} | {r['feature_bytes'] / 2**20:.1f} | "
             f"{r['peak_rise_bytes'] / 2**20:.1f} | {r['seconds']:.1f} |" for r in rec["runs"]]
    st = rec["settings"]
    where = {"sharded": "in shards", "one shard": "in one shard"}
    said = [f"{where.get(label, label)} the peak grew by {100 * v['growth_share']:.0f} % of the "
            f"features added: {'flat' if v['flat'] else 'not flat'}"
            for label, v in memory_flat(rec["runs"]).items()]
    return "\n".join(rows) + (
        f"\n\nA stand-in encoder of {st['dim']} dimensions, {st['frames']} frames a clip; "
        f"shards of {st['shard_mb']:g} MiB; flat when the peak grows by less than "
        f"{100 * FLAT_SHARE:.0f} % of the features added. " + said[0][:1].upper()
        + "; ".join(said)[1:] + ".\n")


RENDERERS: dict[str, Callable[[dict[str, Any]], str]] = {
    "train": render_train, "scores": render_scores, "prune": render_prune,
    "features": render_features}
"""Benchmark name -> the function that renders its JSON as Markdown."""


def render_bench(name: str, root: Path) -> str:
    """The block of benchmark ``name`` from ``<root>/bench/<name>.json``.

    Raises:
        CompanionError: no such benchmark, or a file that is not the benchmark's output.
    """
    if name not in RENDERERS:
        raise CompanionError(f"no benchmark {name!r}: use one of {', '.join(RENDERERS)}")
    path = root / "bench" / f"{name}.json"
    if not path.is_file():
        return f"(not measured on this checkout yet: `{COMMANDS[name]}` writes it)\n"
    try:
        rec = load_json(path)
        return (RENDERERS[name](rec) + f"\nMeasured {measured_at(rec.get('provenance', {}))}."
                + "\n")
    except (ValueError, KeyError, TypeError) as err:
        raise CompanionError(f"{path} is not the output of `{COMMANDS[name]}` ({err!r}): run "
                             "it again") from None
