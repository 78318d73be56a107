"""Pruned vs full decoding: speed and peak memory with decoder layers removed (bench-prune).

For each decoder, a contiguous block of 25 / 40 / 60 % of the layers (ending just before the
last layer) is removed and greedy decoding with the KV cache is timed against the full
model, all configurations alternated over rounds in one process (the speed-up is the median
of the per-round ratios full time / pruned time). The ideal speed-up is the FLOP ratio of
:func:`lib.prune.cost.decoder_flops` for the same prompt, batch and new tokens (embedding and LM
head counted); measured / ideal is the issue's target (>= 0.9). Peak memory is the resident
set size of a fresh process per configuration that loads the model (a pruned model is saved
and loaded as a checkpoint of its own, never the full one) and decodes once.

What is timed: the decoder's prefill over the assembled SpeechLLM prompt (prompt text and
projected audio) and then ``--new-tokens`` greedy steps by hand with the cache
(:func:`lib.prune.cost.greedy_decode`): exactly that many tokens whatever is predicted, so an
early eos cannot shorten a run. The features are random (speed does not depend on their
values), shaped like ``--seconds`` of Whisper-base features; the projector runs once before
timing (it is not pruned and costs ~1 % of the FLOPs here). No LoRA: a healed model would
have its adapters merged.

``--paper`` adds Llama-3.2-1B and -3B shapes (random bf16 weights, no download): prefill and
decode timed apart at batch 1 and 16, next to the paper's Llama 3.1 8B figures.

Usage::

    python scripts/benchmark_prune.py                            # offline decoders, CPU
    python scripts/benchmark_prune.py --paper --json /tmp/prune.json
    python scripts/benchmark_prune.py --decoders tiny-llama --rounds 1   # smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lib.config.sections import ModelConfig
from lib.prune.cost import (alternate_rounds, decoder_flops, greedy_decode, ideal_speedup,
                            median, median_ratio, parameter_bytes, run_isolated)
from lib.errors import CompanionError  # noqa: E402
from lib.fileio import device_info, provenance, save_json  # noqa: E402
from lib.build.model_configs import PAPER_DECODERS, make_config
from lib.prune.surgery import remove_layers, skip_layers

PAPER_MODELS = ("meta-llama/Llama-3.2-1B", "meta-llama/Llama-3.2-3B")
PAPER_LINE = ("paper (Llama 3.1 8B, ~40 % of layers removed): ~35 % faster, peak memory "
              "15.7 -> 10.4 GiB")


def _quiet() -> None:
    """No "Loading weights" bars (lib.recipes.notebook.setup would also import matplotlib)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def removed_block(n_layers: int, fraction: float) -> list[int]:
    """A block of ``round(fraction * n_layers)`` layers (1 .. L-1) ending before the last."""
    k = min(max(int(fraction * n_layers + 0.5), 1), n_layers - 1)
    return list(range(n_layers - 1 - k, n_layers - 1))


def _timer(decoder: torch.nn.Module, removed: list[int], embeds: torch.Tensor,
           mask: torch.Tensor, new_tokens: int) -> Callable[[], dict[str, float]]:
    def run() -> dict[str, float]:
        with skip_layers(decoder, removed) if removed else contextlib.nullcontext():
            _, pre, dec = greedy_decode(decoder, embeds, mask, new_tokens)
        return {"prefill": pre, "decode": dec, "total": pre + dec}
    return run


def _speechllm_inputs(model: Any, batch: int, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    enc_dim = model.projector.net[0].in_features // model.projector.stack
    torch.manual_seed(0)
    feats = torch.randn(batch, frames, enc_dim)
    with torch.inference_mode():
        inputs = model.build_inputs(feats, torch.full((batch,), frames), None, left_pad=True)
    return inputs["inputs_embeds"], inputs["attention_mask"]


def offline_memory(decoder: str, encoder: str, batch: int, frames: int,
                   new_tokens: int) -> dict[str, float]:
    """In a fresh process: build the SpeechLLM, decode once; its decoder's parameters."""
    from lib.build.speechllm import build_speechllm

    _quiet()
    model = build_speechllm(ModelConfig(encoder=encoder, decoder=decoder, lora_rank=0))
    model.eval()
    embeds, mask = _speechllm_inputs(model, batch, frames)
    greedy_decode(model.decoder, embeds, mask, new_tokens)
    return {"params": sum(p.numel() for p in {id(p): p for p in
                                              model.decoder.parameters()}.values()),
            "param_bytes": parameter_bytes(model.decoder)}


def offline_rows(name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Part a: one decoder of the book, full and with each fraction of layers removed."""
    from lib.build.speechllm import build_speechllm

    model = build_speechllm(ModelConfig(encoder=args.encoder, decoder=name, lora_rank=0))
    model.eval()
    frames = int(args.seconds * 50)
    embeds, mask = _speechllm_inputs(model, args.batch, frames)
    dec = model.decoder
    big_l = dec.config.num_hidden_layers
    cfg = copy.deepcopy(dec.config)
    plans = {0.0: []} | {f: removed_block(big_l, f) for f in args.fractions}
    times = alternate_rounds({f: _timer(dec, r, embeds, mask, args.new_tokens)
                              for f, r in plans.items()}, args.rounds)
    shape = dict(prompt_tokens=embeds.shape[1], new_tokens=args.new_tokens, batch=args.batch)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-prune-") as tmp:
        for f, removed in plans.items():
            path = name
            if removed:  # the pruned model as a checkpoint of its own
                path = str(Path(tmp) / f"pruned-{f}")
                pruned = remove_layers(copy.deepcopy(dec), removed)
                pruned.save_pretrained(path)
                model.tokenizer.save_pretrained(path)
                del pruned
            mem, peak = run_isolated(offline_memory, path, args.encoder, args.batch, frames,
                                     args.new_tokens)
            measured = median_ratio(times[0.0], times[f], "total")
            ideal = ideal_speedup(cfg, removed, **shape)
            rows.append({"decoder": name, "removed_fraction": f, "removed_layers": removed,
                         "layers_kept": big_l - len(removed), "n_layers": big_l,
                         "params_m": mem["params"] / 1e6,
                         "time_s": median([t["total"] for t in times[f]]),
                         "measured_speedup": measured,
                         "ideal_speedup": ideal, "ratio": measured / ideal,
                         "peak_rss_mib": peak / 2**20, "param_mib": mem["param_bytes"] / 2**20,
                         **shape})
    return rows


def paper_memory(hub_id: str, n_removed: int, batches: list[int], prompt: int,
                 new_tokens: int) -> dict[str, float]:
    """In a fresh process: a ``hub_id``-shaped decoder with ``n_removed`` layers fewer (the
    shape :func:`remove_layers` leaves: Llama layers are all alike), bf16, random weights,
    decoding once at each batch; its parameter bytes."""
    from transformers import AutoModelForCausalLM

    fields = dict(PAPER_DECODERS[hub_id])
    fields["num_hidden_layers"] -= n_removed
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(make_config(fields), dtype=torch.bfloat16).eval()
    for b in batches:
        embeds = torch.randn(b, prompt, model.config.hidden_size, dtype=torch.bfloat16)
        greedy_decode(model, embeds, torch.ones(b, prompt, dtype=torch.long), new_tokens)
    return {"param_bytes": parameter_bytes(model)}


def paper_rows(hub_id: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Part b: a paper decoder's shape; prefill and decode apart, at each batch."""
    from transformers import AutoModelForCausalLM

    cfg = make_config(PAPER_DECODERS[hub_id])
    big_l = cfg.num_hidden_layers
    plans = {0.0: []} | {f: removed_block(big_l, f) for f in args.fractions}
    mems = {}
    for f, removed in plans.items():  # before the timed model exists: one model at a time
        mem, peak = run_isolated(paper_memory, hub_id, len(removed), args.paper_batches,
                                 args.paper_prompt, args.paper_new_tokens)
        mems[f] = (mem["param_bytes"], peak)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).eval()
    rows = []
    for b in args.paper_batches:
        embeds = torch.randn(b, args.paper_prompt, cfg.hidden_size, dtype=torch.bfloat16)
        mask = torch.ones(b, args.paper_prompt, dtype=torch.long)
        times = alternate_rounds({f: _timer(model, r, embeds, mask, args.paper_new_tokens)
                                  for f, r in plans.items()}, args.paper_rounds)
        shape = dict(prompt_tokens=args.paper_prompt, new_tokens=args.paper_new_tokens,
                     batch=b)
        for f, removed in plans.items():
            med = {k: median([t[k] for t in times[f]]) for k in ("prefill", "decode")}
            row = {"decoder": hub_id, "batch": b, "removed_fraction": f,
                   "layers_kept": big_l - len(removed), "n_layers": big_l,
                   "prefill_s": med["prefill"], "decode_s": med["decode"],
                   "param_gib": mems[f][0] / 2**30, "peak_rss_gib": mems[f][1] / 2**30}
            for part in ("prefill", "decode", "total"):
                row[f"{part}_speedup"] = median_ratio(times[0.0], times[f], part)
                row[f"{part}_ideal"] = ideal_speedup(cfg, removed, part=part, **shape)
            rows.append(row)
    return rows


def paper_reference(prompt: int, new_tokens: int) -> dict[str, Any]:
    """Llama-3.1-8B's parameter memory in bf16, full and with 13 of 32 layers removed."""
    cfg = make_config(PAPER_DECODERS["meta-llama/Llama-3.1-8B"])
    removed = removed_block(cfg.num_hidden_layers, 0.4)
    full = decoder_flops(cfg, new_tokens=1)["parameters"] * 2 / 2**30
    pruned = decoder_flops(cfg, new_tokens=1, removed=removed)["parameters"] * 2 / 2**30
    return {"paper_speedup": 1.35, "paper_peak_gib": [15.7, 10.4], "removed": len(removed),
            "n_layers": cfg.num_hidden_layers, "param_gib": [full, pruned],
            "ideal_speedup": ideal_speedup(cfg, removed, prompt, new_tokens)}


def _offline_line(r: dict[str, Any]) -> str:
    return (f"{r['decoder']:14s} {r['removed_fraction']:7.0%} "
            f"{r['layers_kept']:>3d}/{r['n_layers']:<2d} {r['params_m']:8.1f} "
            f"{r['time_s']:7.3f} {r['measured_speedup']:7.2f} {r['ideal_speedup']:6.2f} "
            f"{r['ratio']:10.2f} {r['peak_rss_mib']:12.0f} {r['param_mib']:9.0f}")


def _paper_line(r: dict[str, Any]) -> str:
    parts = " ".join(f"{r[p + '_speedup']:6.2f} ({r[p + '_ideal']:5.2f})"
                     for p in ("prefill", "decode", "total"))
    return (f"{r['decoder'].split('/')[-1]:12s} {r['batch']:5d} {r['removed_fraction']:7.0%} "
            f"{r['layers_kept']:>3d}/{r['n_layers']:<2d} {r['prefill_s']:9.3f} "
            f"{r['decode_s']:8.3f} {parts} {r['peak_rss_gib']:8.2f} {r['param_gib']:9.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--decoders", nargs="*", default=["smollm2-135m", "gemma3-270m"])
    ap.add_argument("--encoder", default="whisper-base", help="sets the feature width")
    ap.add_argument("--fractions", nargs="+", type=float, default=[0.25, 0.4, 0.6])
    ap.add_argument("--batch", type=int, default=8, help="utterances decoded together")
    ap.add_argument("--seconds", type=float, default=4.0, help="clip length (50 frames/s)")
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=3, help="alternated timing rounds")
    ap.add_argument("--paper", action="store_true", help="add Llama-3.2-1B/3B shapes (bf16)")
    ap.add_argument("--paper-models", nargs="+", default=list(PAPER_MODELS),
                    choices=list(PAPER_DECODERS), help="hub ids of the shapes (no download)")
    ap.add_argument("--paper-batches", nargs="+", type=int, default=[1, 16])
    ap.add_argument("--paper-prompt", type=int, default=64)
    ap.add_argument("--paper-new-tokens", type=int, default=8)
    ap.add_argument("--paper-rounds", type=int, default=2)
    ap.add_argument("--json", type=Path, help="also write the figures (with provenance)")
    args = ap.parse_args()
    _quiet()
    if any(not 0 < f < 1 for f in args.fractions):
        print(f"error: --fractions {args.fractions}: each must lie between 0 and 1",
              file=sys.stderr)
        sys.exit(1)
    out: dict[str, Any] = {"settings": {k: (str(v) if isinstance(v, Path) else v)
                                        for k, v in vars(args).items()}}
    try:
        print(f"device: {device_info()}  threads: {torch.get_num_threads()}")
        if args.decoders:
            print(f"\nSpeechLLM decoding, CPU float32: batch {args.batch}, {args.seconds:g} s of "
                  f"random {args.encoder} features, {args.new_tokens} new tokens (no early "
                  f"eos); speed-up = full / pruned time (prefill + decode), median of "
                  f"{args.rounds} alternated rounds; ideal = FLOP ratio; peak RSS: a fresh "
                  "process loading that model and decoding once")
            head = (f"{'decoder':14s} {'removed':>7s} {'layers':>6s} {'params M':>8s} "
                    f"{'time s':>7s} {'speedup':>7s} {'ideal':>6s} {'meas/ideal':>10s} "
                    f"{'peak RSS MiB':>12s} {'param MiB':>9s}")
            print(head + "\n" + "-" * len(head), flush=True)
            rows = []
            for name in args.decoders:
                rows += offline_rows(name, args)
                print("\n".join(_offline_line(r) for r in rows if r["decoder"] == name),
                      flush=True)
            print(f"prompt {rows[0]['prompt_tokens']} positions; target: meas/ideal >= 0.9")
            out["offline"] = rows
        if args.paper:
            print(f"\nPaper shapes, CPU bf16, random weights: prompt {args.paper_prompt} "
                  f"positions, {args.paper_new_tokens} new tokens, batches "
                  f"{args.paper_batches}, median of {args.paper_rounds} alternated rounds; "
                  f"speed-up (ideal) per part; peak RSS at the largest batch, fresh process")
            head = (f"{'decoder':12s} {'batch':>5s} {'removed':>7s} {'layers':>6s} "
                    f"{'prefill s':>9s} {'decode s':>8s} {'prefill x':>14s} "
                    f"{'decode x':>14s} {'total x':>14s} {'peak GiB':>8s} {'param GiB':>9s}")
            print(head + "\n" + "-" * len(head), flush=True)
            rows = []
            for hub_id in args.paper_models:
                rows += paper_rows(hub_id, args)
                print("\n".join(_paper_line(r) for r in rows if r["decoder"] == hub_id),
                      flush=True)
            ref = paper_reference(args.paper_prompt, args.paper_new_tokens)
            print(f"{PAPER_LINE}\n  Llama-3.1-8B bf16 parameters, {ref['removed']} of "
                  f"{ref['n_layers']} layers removed: {ref['param_gib'][0]:.1f} -> "
                  f"{ref['param_gib'][1]:.1f} GiB; ideal speed-up at batch 1 of this prompt "
                  f"and tokens {ref['ideal_speedup']:.2f}")
            out["paper"], out["paper_reference"] = rows, ref
    except CompanionError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    if args.json:
        save_json(args.json, {"provenance": provenance(), **out})
        print(f"\nwritten: {args.json}")


if __name__ == "__main__":
    main()
