"""Cost of scoring redundancy: streaming d(l, n) vs a bare forward vs the common approach.

For each decoder, over the same batches of text, three variants each run in a fresh
subprocess (so peak memory is comparable):

- ``bare``: the decoder's forward and nothing else;
- ``stream``: :func:`lib.redundancy.score_text`, every (l, n) from one pass per batch;
- ``naive``: ``output_hidden_states=True`` and one pass per block size n, keeping every
  layer's states (what many public implementations do).

Printed: wall time, peak memory above the loaded model (CPU: resident set size; GPU:
allocated), and the ratios stream/bare and naive/stream, measured in one run.

Usage::

    python scripts/benchmark_scores.py                       # offline decoders, CPU
    python scripts/benchmark_scores.py --device cuda --texts 256
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SENTENCE = ("and the lord spoke to moses saying speak to the children of israel and tell "
            "them that they shall make a fringe upon the borders of their garments")


def _texts(n: int) -> list[str]:
    words = SENTENCE.split()
    return [" ".join(words[: 8 + (i * 7) % (len(words) - 8)]) for i in range(n)]


def run_variant(variant: str, decoder: str, n_texts: int, batch: int, device: str) -> dict:
    """Run one variant in this process and return its figures."""
    import torch

    from lib import notebook
    from lib.redundancy import score_text
    from lib.speechllm import load_decoder

    notebook.setup()
    model, tok = load_decoder(decoder)
    model.to(device)
    texts = _texts(n_texts)
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    n_layers = model.config.num_hidden_layers
    t0 = time.perf_counter()
    with torch.no_grad():
        if variant == "stream":
            score_text(model, tok, texts, batch_size=batch)
        else:
            body = model.get_decoder()
            for i in range(0, len(texts), batch):
                enc = tok(texts[i:i + batch], return_tensors="pt", padding=True).to(device)
                if variant == "bare":
                    body(**enc)
                    continue
                for n in range(1, n_layers + 1):  # naive: one pass per block size
                    hs = body(**enc, output_hidden_states=True).hidden_states
                    mask = enc["attention_mask"].bool()
                    for layer in range(0, n_layers + 1 - n):
                        a, b = hs[layer][mask], hs[layer + n][mask]
                        cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
                        torch.arccos(cos.clamp(-1, 1)).mean()
    sync()
    wall = time.perf_counter() - t0
    if cuda:
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"variant": variant, "decoder": decoder, "layers": n_layers, "wall_s": wall,
            "peak_mib": peak / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--decoders", nargs="*", default=["smollm2-135m", "gemma3-270m"])
    ap.add_argument("--texts", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:  # child process: one measurement, JSON on the last line
        print(json.dumps(run_variant(args.variant, args.decoders[0], args.texts, args.batch,
                                     args.device)))
        return
    print(f"{args.texts} texts, batch {args.batch}, device {args.device}")
    print(f"{'decoder':16s} {'L':>3s} {'bare s':>8s} {'stream s':>9s} {'naive s':>9s} "
          f"{'stream/bare':>11s} {'naive/stream':>12s} {'bare MiB':>9s} {'stream MiB':>10s} "
          f"{'naive MiB':>9s}")
    for dec in args.decoders:
        res = {}
        for variant in ("bare", "stream", "naive"):
            cmd = [sys.executable, __file__, "--variant", variant, "--decoders", dec,
                   "--texts", str(args.texts), "--batch", str(args.batch),
                   "--device", args.device]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                print(f"error: {variant} run for {dec} failed: "
                      f"{(out.stderr.strip().splitlines() or ['?'])[-1]}", file=sys.stderr)
                sys.exit(1)
            res[variant] = json.loads(out.stdout.strip().splitlines()[-1])
        b, s, n = res["bare"], res["stream"], res["naive"]
        print(f"{dec:16s} {b['layers']:3d} {b['wall_s']:8.2f} {s['wall_s']:9.2f} "
              f"{n['wall_s']:9.2f} {s['wall_s'] / b['wall_s']:11.2f} "
              f"{n['wall_s'] / s['wall_s']:12.1f} {b['peak_mib']:9.0f} {s['peak_mib']:10.0f} "
              f"{n['peak_mib']:9.0f}", flush=True)


if __name__ == "__main__":
    main()
