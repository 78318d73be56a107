"""Training and decoding throughput of SpeechLLMs, printed as a table (``make bench``).

Measures, for each decoder, utterances per second for a training step (projector + LoRA,
forward and backward, AdamW) and for batched greedy decoding with the KV cache, on inputs
shaped like the corpus (a clip of ``--seconds`` seconds, ``--words`` words of target). On a
GPU it runs in bf16 and also reports peak memory; ``--paper`` adds randomly initialised
decoders with the paper's shapes (no download), which is how paper-scale speed is measured.

Usage::

    python scripts/benchmark.py                          # default offline decoders, CPU
    python scripts/benchmark.py --device cuda --paper    # + Llama/Qwen shapes on a GPU
    python scripts/benchmark.py --decoders tiny-llama --steps 2   # smoke test
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lib.recipes import notebook  # noqa: E402
from lib.assets import build_char_tokenizer  # noqa: E402
from lib.build.components import Projector, decoder_body
from lib.config.sections import ModelConfig
from lib.device import native_bf16, resolve_device, resolve_precision
from lib.errors import CompanionError  # noqa: E402
from lib.fileio import device_info, provenance, save_json  # noqa: E402
from lib.build.model_configs import PAPER_DECODERS, make_config
from lib.build.speechllm import SpeechLLM, add_lora, build_speechllm

TEXT = "samuel lay until the morning and opened the doors of the house of the lord today"


def paper_model(hub_id: str, device: str, enc_dim: int = 1024) -> SpeechLLM:
    """A SpeechLLM with a randomly initialised decoder of a paper model's shape."""
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    cfg = make_config(PAPER_DECODERS[hub_id])
    with torch.device(device):
        decoder = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    decoder.requires_grad_(False)
    decoder = add_lora(decoder, 8, 16, 0.05, ("q_proj", "k_proj", "v_proj", "o_proj"))
    tok = build_char_tokenizer()
    model = SpeechLLM(None, Projector(enc_dim, cfg.hidden_size, 5, 2048), decoder, tok)
    model.projector.to(device)
    return model


def measure(model: SpeechLLM, device: str, batch: int, seconds: float, words: int,
            steps: int, new_tokens: int, enc_dim: int, decode_batch: int = 32,
            precision: str = "fp32", rounds: int = 3) -> dict[str, float]:
    """Seconds per training step (and per bare decoder step), per decode batch.

    The SpeechLLM step (projector + prompt assembly + decoder with LoRA, forward and
    backward, AdamW) is timed against a *bare* step of the same decoder over the same
    tokens: the assembled ``inputs_embeds`` fed straight to the decoder, the same target
    positions, backward into the same LoRA weights and AdamW. Their ratio is the overhead
    of everything a SpeechLLM adds around its decoder. Rounds alternate the two, and the
    ratio is the median of the per-round ratios (single runs here vary by +-10 %).
    """
    cuda = device.startswith("cuda")
    amp = torch.autocast(device.split(":")[0], dtype=torch.bfloat16,
                         enabled=cuda or precision == "bf16")
    frames = int(seconds * 50)
    feats = torch.randn(batch, frames, enc_dim, device=device)
    lengths = torch.full((batch,), frames, device=device)
    texts = [" ".join(TEXT.split()[:words])] * batch
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    with torch.no_grad():
        fixed = model.build_inputs(feats, lengths, texts)
    labels = fixed["labels"]
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != -100
    body = decoder_body(model.decoder)
    head = model.decoder.get_output_embeddings()

    def step() -> None:
        with amp:
            loss = model(feats, lengths, texts)
        loss.backward()
        opt.step()
        opt.zero_grad()

    def bare() -> None:
        with amp:
            out = body(inputs_embeds=fixed["inputs_embeds"],
                       attention_mask=fixed["attention_mask"], use_cache=False)
            logits = head(out.last_hidden_state[keep]).float()
            loss = torch.nn.functional.cross_entropy(logits, labels[:, 1:][keep[:, :-1]])
        loss.backward()
        opt.step()
        opt.zero_grad()

    def timed(fn) -> float:
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        sync()
        return (time.perf_counter() - t0) / steps

    model.train()
    step()
    bare()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    pairs = [(timed(step), timed(bare)) for _ in range(rounds)]
    train_s = sorted(a for a, _ in pairs)[rounds // 2]
    bare_s = sorted(b for _, b in pairs)[rounds // 2]
    ratio = sorted(a / b for a, b in pairs)[rounds // 2]
    train_mem = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    model.eval()
    feats = torch.randn(decode_batch, frames, enc_dim, device=device)
    lengths = torch.full((decode_batch,), frames, device=device)
    def decode(bf16: bool) -> float:
        """Seconds for one batch of greedy decoding, under bf16 autocast or not (on a GPU
        the weights are bf16 already: autocast is on for both)."""
        with torch.no_grad(), torch.autocast(device.split(":")[0], dtype=torch.bfloat16,
                                             enabled=cuda or bf16):
            sync()
            t0 = time.perf_counter()
            model.generate(feats, lengths, new_tokens)
            sync()
        return time.perf_counter() - t0

    with torch.no_grad():
        model.generate(feats, lengths, 4)  # warm-up
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    # decoding in float32 and under bf16 autocast, alternating rounds (what
    # eval_precision chooses between), the ratio per round
    dec = [(decode(False), decode(True)) for _ in range(rounds)]
    decode_s = sorted(a for a, _ in dec)[rounds // 2]
    decode_ratio = sorted(a / b for a, b in dec)[rounds // 2]
    decode_mem = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    return {"train_utt_s": batch / train_s, "train_step_s": train_s, "bare_step_s": bare_s,
            "overhead": ratio, "decode_utt_s": decode_batch / decode_s,
            "decode_bf16_speedup": decode_ratio,
            "train_peak_gib": train_mem, "decode_peak_gib": decode_mem}


def measure_ctc(model: SpeechLLM, device: str, batch: int, seconds: float, words: int,
                vocab: int, enc_dim: int, rounds: int = 3) -> dict[str, float]:
    """Seconds per CTC warm-start step (projector + CTC head over ``vocab`` word pieces,
    forward, backward, AdamW) in float32 and under bf16 autocast; median of alternating
    rounds and the median per-round ratio."""
    from lib.build.ctc_head import CTCHead
    from lib.train.ctc import ctc_loss

    table = model.decoder.get_input_embeddings()
    ids = list(range(min(vocab, table.weight.shape[0])))
    head = CTCHead(ids, table.weight.detach()[ids].float()).to(device)
    frames = int(seconds * 50)
    feats = torch.randn(batch, frames, enc_dim, device=device)
    lengths = torch.full((batch,), frames, device=device)
    # targets: `words` word pieces each, drawn from the head's classes
    texts = [model.tokenizer.decode(ids[1 + (i * 7) % (len(ids) - 1):][:words])
             for i in range(batch)]
    opt = torch.optim.AdamW(model.projector.parameters(), lr=1e-4)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def step(bf16: bool) -> float:
        sync()
        t0 = time.perf_counter()
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
            loss = ctc_loss(model, head, feats, lengths, texts)
        loss.backward()
        opt.step()
        opt.zero_grad()
        sync()
        return time.perf_counter() - t0

    step(False), step(True)
    pairs = [(step(False), step(True)) for _ in range(rounds)]
    return {"fp32_s": sorted(a for a, _ in pairs)[rounds // 2],
            "bf16_s": sorted(b for _, b in pairs)[rounds // 2],
            "speedup": sorted(a / b for a, b in pairs)[rounds // 2]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--decoders", nargs="*", default=["smollm2-135m", "gemma3-270m"])
    ap.add_argument("--encoder", default="whisper-base", help="sets the feature width")
    ap.add_argument("--paper", action="store_true", help="add the paper's decoder shapes")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch", type=int, default=8, help="training batch")
    ap.add_argument("--decode-batch", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=3.1, help="clip length (corpus mean)")
    ap.add_argument("--words", type=int, default=11)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                    help="training autocast (auto: bf16 where the hardware has it)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating timing rounds")
    ap.add_argument("--ctc-batch", type=int, default=64, help="CTC warm-start batch")
    ap.add_argument("--ctc-vocab", type=int, default=5000,
                    help="word pieces in the CTC head (the default corpus uses ~5k)")
    ap.add_argument("--json", type=Path,
                    help="also write the figures with provenance (the CPU page renders them)")
    args = ap.parse_args()
    out: dict[str, Any] = {"settings": {k: (str(v) if isinstance(v, Path) else v)
                                        for k, v in vars(args).items()},
                           "decoders": {}, "ctc": {}}
    notebook.setup()  # quiet transformers' loading bars and peft's deprecation notice
    try:
        device = resolve_device(args.device)
        print(f"device: {device_info()}  threads: {torch.get_num_threads()}")
        print(f"training batch {args.batch}, decoding batch {args.decode_batch}; "
              f"{args.seconds:.1f} s clips, {args.words}-word targets, {args.steps} timed "
              f"steps, {args.new_tokens} new tokens decoded (no early eos)")
        precision = resolve_precision(args.precision, device)
        print(f"training precision {precision}; 'bare' = the decoder alone over the same "
              f"tokens (forward, backward into LoRA, AdamW); median of {args.rounds} "
              "alternating rounds")
        native = native_bf16()
        print(f"decode utt/s in float32; bf16/fp32 = decoding speed under bf16 autocast over "
              f"float32, per round (this CPU {'runs' if native else 'does not run'} bf16 "
              "natively; eval_precision auto decodes in float32 on a CPU, bf16 on a GPU)")
        header = (f"{'decoder':28s} {'train utt/s':>11s} {'s/step':>7s} {'bare s/step':>11s}"
                  f" {'step/bare':>9s} {'decode utt/s':>12s} {'bf16/fp32':>9s}"
                  f" {'train GiB':>9s}"
                  f" {'decode GiB':>10s}")
        print(header)
        print("-" * len(header))
        jobs = [(d, "offline") for d in args.decoders]
        ctc_rows = []
        if args.paper:
            jobs += [(h, "paper") for h in PAPER_DECODERS]
        for name, kind in jobs:
            torch.manual_seed(0)
            if kind == "paper":
                model, enc_dim = paper_model(name, device), 1024
            else:
                model = build_speechllm(ModelConfig(encoder=args.encoder, decoder=name),
                                        device=device)
                enc_dim = model.projector.net[0].in_features // model.projector.stack
            r = measure(model, device, args.batch, args.seconds, args.words, args.steps,
                        args.new_tokens, enc_dim, args.decode_batch, precision,
                        args.rounds)
            mem = (f"{r['train_peak_gib']:9.2f} {r['decode_peak_gib']:10.2f}"
                   if device.startswith("cuda") else f"{'n/a':>9s} {'n/a':>10s}")
            print(f"{name:28s} {r['train_utt_s']:11.2f} {r['train_step_s']:7.3f} "
                  f"{r['bare_step_s']:11.3f} {r['overhead']:9.2f} "
                  f"{r['decode_utt_s']:12.2f} {r['decode_bf16_speedup']:9.2f} {mem}",
                  flush=True)
            out["decoders"][name] = {**r, "kind": kind}
            if kind == "offline":
                c = measure_ctc(model, device, args.ctc_batch, args.seconds, args.words,
                                args.ctc_vocab, enc_dim, args.rounds)
                out["ctc"][name] = c
                ctc_rows.append(f"{name:28s} {c['fp32_s'] * 1e3:9.2f} {c['bf16_s'] * 1e3:9.2f} "
                                f"{c['speedup']:10.2f} {args.ctc_batch / c['bf16_s']:9.1f}")
            del model
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
        if ctc_rows:
            print(f"\nCTC warm-start step ({args.ctc_batch} utterances, head over up to "
                  f"{args.ctc_vocab} word pieces): float32 vs bf16 autocast")
            head = (f"{'decoder':28s} {'fp32 ms':>9s} {'bf16 ms':>9s} {'fp32/bf16':>10s} "
                    f"{'bf16 utt/s':>9s}")
            print(head)
            print("-" * len(head))
            print("\n".join(ctc_rows))
    except CompanionError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    if args.json:
        save_json(args.json, {"provenance": provenance(), **out})
        print(f"\nwritten: {args.json}")


if __name__ == "__main__":
    main()
