"""Cost of scoring redundancy: streaming d(l, n) vs a bare forward vs the common approach.

For each decoder, over the same batches of text, three variants each run in a fresh
subprocess (so peak memory is comparable):

- ``bare``: the decoder's forward and nothing else;
- ``stream``: :func:`lib.score.redundancy.score_text`, every (l, n) from one pass per batch;
- ``naive``: ``output_hidden_states=True`` and one pass per block size n, keeping every
  layer's states (what many public implementations do).

Printed, all measured in one run: peak memory above the loaded model and of the whole
process (CPU: resident set size; GPU: allocated), each variant in a fresh process; the wall
time of bare and stream alternated over several rounds in one process (median ratio); and
the wall time of one cold pass of the common approach against one of streaming.

Usage::

    python scripts/benchmark_scores.py                       # offline decoders, CPU
    python scripts/benchmark_scores.py --device cuda --texts 256 --batch 16
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SENTENCE = ("and the lord spoke to moses saying speak to the children of israel and tell "
            "them that they shall make a fringe upon the borders of their garments")


def _texts(n: int) -> list[str]:
    words = SENTENCE.split()
    return [" ".join(words[: 8 + (i * 7) % (len(words) - 8)]) for i in range(n)]


def _batches(tok, texts: list[str], batch: int, device: str) -> list[dict]:
    return [tok(texts[i:i + batch], return_tensors="pt", padding=True).to(device)
            for i in range(0, len(texts), batch)]


def _bare(body, batches: list[dict]) -> None:
    for enc in batches:
        body(**enc, use_cache=False)


def _naive(body, batches: list[dict], n_layers: int) -> None:
    import torch

    for enc in batches:
        for n in range(1, n_layers + 1):  # one pass per block size, all states kept
            hs = body(**enc, output_hidden_states=True, use_cache=False).hidden_states
            mask = enc["attention_mask"].bool()
            for layer in range(0, n_layers + 1 - n):
                a, b = hs[layer][mask], hs[layer + n][mask]
                cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
                torch.arccos(cos.clamp(-1, 1)).mean()


def run_variant(variant: str, decoder: str, n_texts: int, batch: int, device: str,
                repeats: int) -> dict:
    """Run one variant in this process and return its figures.

    ``bare`` / ``stream`` / ``naive``: one cold pass over the batches; wall time and peak
    memory above the loaded model. ``timing``: bare and stream alternated ``repeats`` times
    in this one process after a warm-up pass of each (the order flips every round), so that
    drift and noise hit both alike; the per-round ratios and their median are returned.
    """
    import statistics

    import torch

    from lib.recipes import notebook
    from lib.build.components import decoder_body, load_decoder
    from lib.score.redundancy import score_text

    notebook.setup()
    model, tok = load_decoder(decoder)
    model.to(device)
    model.eval()
    texts = _texts(n_texts)
    body = decoder_body(model)
    n_layers = model.config.num_hidden_layers
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    batches = _batches(tok, texts, batch, device)
    n_tokens = int(sum(int(b["attention_mask"].sum()) for b in batches))
    run = {"bare": lambda: _bare(body, batches),
           "stream": lambda: score_text(model, tok, texts, batch_size=batch),
           "naive": lambda: _naive(body, batches, n_layers)}

    def timed(name: str) -> float:
        sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            run[name]()
        sync()
        return time.perf_counter() - t0

    out = {"variant": variant, "decoder": decoder, "layers": n_layers, "tokens": n_tokens}
    if variant == "timing":
        timed("bare"), timed("stream")  # warm-up
        bare, stream = [], []
        for r in range(repeats):
            for name in (("bare", "stream") if r % 2 == 0 else ("stream", "bare")):
                (bare if name == "bare" else stream).append(timed(name))
        ratios = [s / b for s, b in zip(stream, bare)]
        return {**out, "bare_s": statistics.median(bare),
                "stream_s": statistics.median(stream), "ratios": ratios,
                "ratio": statistics.median(ratios)}
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    wall = timed(variant)
    if cuda:
        total = torch.cuda.max_memory_allocated()
    else:
        total = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {**out, "wall_s": wall, "peak_mib": (total - base) / 2**20,
            "total_mib": total / 2**20}


def _child(variant: str, dec: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--variant", variant, "--decoders", dec,
           "--texts", str(args.texts), "--batch", str(args.batch), "--device", args.device,
           "--repeats", str(args.repeats)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        print(f"error: the {variant} run for {dec} failed: "
              f"{(out.stderr.strip().splitlines() or ['?'])[-1]}", file=sys.stderr)
        sys.exit(1)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--decoders", nargs="*", default=["smollm2-135m", "gemma3-270m"])
    ap.add_argument("--texts", type=int, default=96)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5,
                    help="bare/stream rounds for the wall-time ratio")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-naive", action="store_true",
                    help="skip the slow common approach")
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path,
                    help="also write the figures with provenance (the CPU page renders them)")
    args = ap.parse_args()
    if args.variant:  # child process: one measurement, JSON on the last line
        print(json.dumps(run_variant(args.variant, args.decoders[0], args.texts, args.batch,
                                     args.device, args.repeats)))
        return
    mem = "GPU allocated" if args.device.startswith("cuda") else "resident set size"
    print(f"{args.texts} texts, batch {args.batch}, device {args.device}; memory: peak {mem} "
          f"above the loaded model (and the whole process's peak), each variant in a fresh "
          f"process; wall ratio: median of {args.repeats} alternated rounds in one process")
    out: dict[str, Any] = {"settings": {k: (str(v) if isinstance(v, Path) else v)
                                        for k, v in vars(args).items()}, "decoders": {}}
    for dec in args.decoders:
        res = {v: _child(v, dec, args)
               for v in ("bare", "stream") + (() if args.no_naive else ("naive",))}
        t = _child("timing", dec, args)
        b, s = res["bare"], res["stream"]
        out["decoders"][dec] = {**res, "timing": t}
        print(f"\n{dec}: {b['layers']} layers, {b['tokens']} tokens")
        print(f"  wall, bare vs streaming (median of {args.repeats}): {t['bare_s']:.2f} s vs "
              f"{t['stream_s']:.2f} s -> stream/bare {t['ratio']:.3f} "
              f"(rounds {', '.join(f'{r:.3f}' for r in t['ratios'])})")
        print(f"  peak memory above the model: bare {b['peak_mib']:.0f} MiB, stream "
              f"{s['peak_mib']:.0f} MiB -> stream/bare {s['peak_mib'] / b['peak_mib']:.3f}")
        print(f"  whole-process peak: bare {b['total_mib']:.0f} MiB, stream "
              f"{s['total_mib']:.0f} MiB -> stream/bare {s['total_mib'] / b['total_mib']:.3f}")
        if "naive" in res:
            n = res["naive"]
            print(f"  common approach (one pass per n, all states kept): {n['wall_s']:.1f} s, "
                  f"{n['peak_mib']:.0f} MiB above the model -> naive/stream wall "
                  f"{n['wall_s'] / s['wall_s']:.1f}x (target >= L/2 = {b['layers'] / 2:g})")
        sys.stdout.flush()
    if args.json:
        from lib.fileio import provenance, save_json

        save_json(args.json, {"provenance": provenance(), **out})
        print(f"\nwritten: {args.json}")


if __name__ == "__main__":
    main()
