"""The benchmarks' own figures, rendered: ``results/bench/<name>.json`` as written by
``make bench``, ``make bench-scores`` and ``make bench-prune`` (each script's ``--json``).

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

COMMANDS = {"train": "make bench", "scores": "make bench-scores", "prune": "make bench-prune"}
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


RENDERERS: dict[str, Callable[[dict[str, Any]], str]] = {
    "train": render_train, "scores": render_scores, "prune": render_prune}
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
