"""What a decoder costs to run: analytic FLOPs of generation, measured time and peak memory.

:func:`decoder_flops` counts the forward FLOPs of greedy generation with the KV cache from a
transformers config alone (no weights), so :func:`ideal_speedup` says what removing layers
can save at best; :func:`greedy_decode` times the prefill and the decode steps apart, and
:func:`run_isolated` runs a measurement in a fresh process so that its peak resident set size
is its own. Stage: prune. Explained in chapter 4 (book/04_healing.ipynb).

Counting conventions (2 FLOPs per multiply-add; elementwise work -- norms, rotary
embeddings, softmax, activations, residual adds, biases -- is left out, under 1 % here):

- per layer and position: the q/k/v/o projections (k and v are ``num_key_value_heads *
  head_dim`` wide, grouped-query attention), the gated MLP (gate, up and down: three
  ``hidden x intermediate`` matrices, as in Llama, Qwen2 and Gemma), and the attention
  products ``QK^T`` and ``AV`` (``4 * heads * head_dim`` per key attended to). A position
  attends to every key up to itself (``c`` keys at context length ``c``; causal, so the
  prefill counts ``P (P + 1) / 2`` query-key pairs, not ``P^2``), capped at the window of
  a sliding-attention layer (``config.layer_types``);
- the LM head (``hidden x vocab``) once per generated token: ``generate()`` in
  transformers 5.x passes ``logits_to_keep=1`` to the prefill forward
  (``generation/utils.py``, "set it to 1 to avoid computing the whole logit matrix"), so the
  prefill computes logits at its last position only;
- the input embedding is a gather: 0 FLOPs (its parameters still count in memory).

``new_tokens`` means what ``generate(max_new_tokens=...)`` means: the prefill's logits give
the first new token, then ``new_tokens - 1`` decode steps of one position each follow.
"""

from __future__ import annotations

import inspect
import multiprocessing as mp
import resource
import sys
import time
import traceback
from typing import Any, Callable, Sequence

import torch
from torch import nn

from lib.clock import count_elsewhere, own_cpu_s, stage
from lib.errors import CompanionError


def _dims(config: Any) -> dict[str, int]:
    heads = int(config.num_attention_heads)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return {"hidden": int(config.hidden_size), "inter": int(config.intermediate_size),
            "heads": heads, "kv_heads": int(getattr(config, "num_key_value_heads", None) or heads),
            "head_dim": int(head_dim), "vocab": int(config.vocab_size)}


def _window(config: Any, layer: int) -> int | None:
    """The attention window of ``layer`` (None: it attends to the whole context)."""
    types = getattr(config, "layer_types", None) or []
    if layer < len(types) and types[layer] == "sliding_attention":
        return int(getattr(config, "sliding_window", None) or 0) or None
    return None


def _keys(contexts: range, window: int | None) -> int:
    """Query-key pairs of queries at the context lengths ``contexts``."""
    return sum(contexts) if window is None else sum(min(c, window) for c in contexts)


def decoder_flops(config: Any, n_layers: int | None = None, prompt_tokens: int = 64,
                  new_tokens: int = 16, batch: int = 1,
                  removed: Sequence[int] = ()) -> dict[str, Any]:
    """Forward FLOPs of greedy generation: a prefill of ``prompt_tokens``, then decoding.

    Args:
        config: a transformers config of a decoder-only LM (Llama, Qwen2, Gemma3 ...).
        n_layers: layers of the decoder (default ``config.num_hidden_layers``).
        prompt_tokens: prompt length ``P`` (for a SpeechLLM: prompt text + audio frames).
        new_tokens: tokens generated, as ``generate(max_new_tokens=new_tokens)``.
        batch: sequences decoded together (every count scales with it).
        removed: indices of layers taken out (counted as absent).

    Returns:
        ``prefill``, ``decode`` and ``total`` FLOPs; ``layers`` (the layer stack's part of
        ``total``), ``head`` (the LM head's), ``per_layer`` (each kept layer's total, in
        order), ``layer_share`` (``layers / total``), ``n_layers`` (kept) and ``parameters``
        (embedding + layer matrices + an untied head; norms left out).
    """
    big_l = int(config.num_hidden_layers if n_layers is None else n_layers)
    drop = set(int(i) for i in removed)
    if prompt_tokens < 1 or new_tokens < 1 or batch < 1:
        raise CompanionError(f"prompt_tokens={prompt_tokens}, new_tokens={new_tokens}, "
                             f"batch={batch}: each must be at least 1")
    if any(not 0 <= i < big_l for i in drop) or len(drop) >= big_l:
        raise CompanionError(f"removed={sorted(drop)} does not fit a {big_l}-layer decoder: "
                             f"use indices 0..{big_l - 1} and keep at least one layer")
    d = _dims(config)
    h, q_w, kv_w = d["hidden"], d["heads"] * d["head_dim"], d["kv_heads"] * d["head_dim"]
    matrices = h * q_w * 2 + h * kv_w * 2 + 3 * h * d["inter"]  # q, o; k, v; gate, up, down
    attn = 4 * d["heads"] * d["head_dim"]  # QK^T and AV, per query-key pair
    p, n = int(prompt_tokens), int(new_tokens)
    pre_ctx, dec_ctx = range(1, p + 1), range(p + 1, p + n)  # keys seen by each query
    pre, dec, per_layer = 0, 0, []
    for i in range(big_l):
        if i in drop:
            continue
        w = _window(config, i)
        lp = 2 * matrices * p + attn * _keys(pre_ctx, w)
        ld = 2 * matrices * (n - 1) + attn * _keys(dec_ctx, w)
        per_layer.append(batch * (lp + ld))
        pre, dec = pre + batch * lp, dec + batch * ld
    head_one = 2 * h * d["vocab"] * batch  # one position's logits
    head = head_one * n  # prefill: last position only (logits_to_keep=1); decode: each step
    pre, dec = pre + head_one, dec + head_one * (n - 1)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    params = d["vocab"] * h * (1 if tied else 2) + matrices * (big_l - len(drop))
    total = pre + dec
    return {"prefill": pre, "decode": dec, "total": total, "layers": sum(per_layer),
            "head": head, "per_layer": per_layer, "layer_share": sum(per_layer) / total,
            "n_layers": big_l - len(drop), "parameters": params}


def ideal_speedup(config: Any, removed: Sequence[int], prompt_tokens: int = 64,
                  new_tokens: int = 16, batch: int = 1, part: str = "total") -> float:
    """``FLOPs(full) / FLOPs(without removed)`` of ``part``: prefill, decode or total.

    The speed-up removing ``removed`` would give if time followed FLOPs; the embedding,
    the LM head and (for a SpeechLLM) the prompt stay, so it is below ``L / (L - k)``.
    """
    if part not in ("prefill", "decode", "total"):
        raise CompanionError(f"part={part!r}: use prefill, decode or total")
    kw = dict(prompt_tokens=prompt_tokens, new_tokens=new_tokens, batch=batch)
    full = decoder_flops(config, **kw)[part]
    pruned = decoder_flops(config, removed=removed, **kw)[part]
    return full / pruned if pruned else float("nan")


def parameter_bytes(model: nn.Module) -> int:
    """Bytes of ``model``'s parameters, tied weights counted once (buffers left out)."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel() * p.element_size()
    return total


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far.

    On Linux ``VmHWM`` of ``/proc/self/status``: ``getrusage``'s ``ru_maxrss`` would not do
    for a child, since ``execve`` carries the forking process's peak over into it (a child
    of a process holding a model reports at least that model). Elsewhere ``ru_maxrss``.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def _isolated_child(fn: Callable[..., Any], args: tuple, kwargs: dict, queue: Any) -> None:
    try:
        out = fn(*args, **kwargs)
        queue.put(("ok", out, peak_rss_bytes(), own_cpu_s(children=False)))
    except BaseException as err:  # noqa: BLE001 - reported to the parent, which raises
        msg = str(err) if isinstance(err, CompanionError) else traceback.format_exc()
        queue.put(("error", msg, peak_rss_bytes(), own_cpu_s(children=False)))


ISOLATED_PRELOAD = ("lib.prune.cost", "lib.build.checkpoint", "lib.build.speechllm",
                    "transformers.modeling_utils", "peft")
"""What the server that starts isolated runs imports once: each run is forked from it
instead of importing torch, transformers and peft again (5.3 of a run's 7.7 s of imports
here; the model's own module still loads in the run)."""


def run_isolated(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, int]:
    """Run ``fn(*args, **kwargs)`` in a fresh process; return its result and peak RSS.

    The process is forked from a server that imported :data:`ISOLATED_PRELOAD` and nothing
    else (multiprocessing's ``forkserver``, started once, itself a fresh interpreter); where
    there is none (Windows), spawned. The peak (:func:`peak_rss_bytes`) is read in the child
    when ``fn`` returns, so it covers the imports (a forked child starts at its server's
    resident size), whatever ``fn`` loads and builds, and its run, and nothing of the
    calling process. ``fn``, its arguments and its result must pickle (a module-level
    function, plain values).
    """
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(list(ISOLATED_PRELOAD))
    else:
        ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_isolated_child, args=(fn, args, kwargs, queue))
    proc.start()
    try:
        status, out, peak, cpu_s = queue.get()
    finally:
        proc.join()
    if ctx.get_start_method() == "forkserver":  # its parent is the server: uncounted here
        count_elsewhere(cpu_s)
    if status != "ok":
        raise CompanionError(f"the isolated run of {getattr(fn, '__name__', fn)} failed: "
                             f"{out.strip().splitlines()[-1] if out.strip() else '?'}")
    return out, peak


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def greedy_decode(decoder: nn.Module, inputs_embeds: torch.Tensor,
                  attention_mask: torch.Tensor,
                  new_tokens: int) -> tuple[torch.Tensor, float, float]:
    """Greedy decoding with the KV cache, by hand, timing the prefill and the decode apart.

    The prefill is one forward over the prompt (logits at its last position only, as
    ``generate()`` asks); each of the ``new_tokens - 1`` decode steps feeds the token just
    chosen with the cache. Exactly ``new_tokens`` tokens come out whatever they are (eos
    does not stop it), so every configuration does the same work: speed does not depend on
    the values, and random inputs would otherwise end at a random step.

    Returns:
        The token ids ``[B, new_tokens]``, the prefill seconds and the decode seconds.
    """
    keep = ({"logits_to_keep": 1}
            if "logits_to_keep" in inspect.signature(decoder.forward).parameters else {})
    mask = attention_mask.long()
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    dev = inputs_embeds.device
    _sync(dev)
    t0 = time.perf_counter()
    out = decoder(inputs_embeds=inputs_embeds, attention_mask=mask, position_ids=pos,
                  use_cache=True, **keep)
    tok = out.logits[:, -1].argmax(-1, keepdim=True)
    _sync(dev)
    t1 = time.perf_counter()
    ids, past, last = [tok], out.past_key_values, pos[:, -1:]
    for _ in range(new_tokens - 1):
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], 1)
        last = last + 1
        out = decoder(input_ids=tok, attention_mask=mask, position_ids=last,
                      past_key_values=past, use_cache=True)
        past, tok = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        ids.append(tok)
    _sync(dev)
    return torch.cat(ids, 1), t1 - t0, time.perf_counter() - t1


def alternate_rounds(runs: dict[str, Callable[[], dict[str, float]]],
                     rounds: int) -> dict[str, list[dict[str, float]]]:
    """Call every run once to warm up, then ``rounds`` times each, the order rotating.

    Alternating the configurations within each round makes drift and noise of the machine
    hit them alike; ratios are then taken per round (see :func:`median_ratio`).
    """
    names = list(runs)
    for name in names:
        runs[name]()
    out: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            out[name].append(runs[name]())
    return out


def median(values: Sequence[float]) -> float:
    """The median (the mean of the middle two for an even count)."""
    xs = sorted(values)
    if not xs:
        raise CompanionError("no rounds to take the median of: use rounds >= 1")
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def median_ratio(num: list[dict[str, float]], den: list[dict[str, float]], key: str) -> float:
    """Median over rounds of ``num[r][key] / den[r][key]`` (e.g. full time / pruned time)."""
    return median([a[key] / b[key] for a, b in zip(num, den)])


# ------------------------------------------------------------ a SpeechLLM before and after


def _decode_saved(folder: str, feats: torch.Tensor, lengths: torch.Tensor,
                  new_tokens: int) -> int:
    """Load a saved SpeechLLM and decode one batch (run in a fresh process for its peak)."""
    from lib.build.checkpoint import load_speechllm

    model = load_speechllm(folder)
    batch = model.build_inputs(feats, lengths, None, left_pad=True)
    ids, _, _ = greedy_decode(model.decoder, batch["inputs_embeds"], batch["attention_mask"],
                              new_tokens)
    return int(ids.numel())


def peak_summary(peaks: dict[str, list[float]]) -> dict[str, Any]:
    """Medians of the peak memory (MiB) of fresh processes per model, beside the rounds.

    Args:
        peaks: ``{"full": [...], "pruned": [...]}``, one peak per process (round).

    Returns:
        ``peak_mib_full`` and ``peak_mib_pruned`` (medians; NaN for no rounds) and the rounds
        themselves as ``peak_mib_full_rounds`` / ``peak_mib_pruned_rounds``, whose spread
        (:func:`lib.report.rules.peak_spread`) a change of the medians is judged against.
    """
    out: dict[str, Any] = {}
    for name in ("full", "pruned"):
        rounds = list(peaks.get(name, []))
        out[f"peak_mib_{name}"] = median(rounds) if rounds else float("nan")
        out[f"peak_mib_{name}_rounds"] = rounds
    return out


@stage("timing")
def compare_decoding(full: Any, pruned: Any, data: Any, new_tokens: int = 16,
                     rounds: int = 3, full_folder: Any = None,
                     pruned_folder: Any = None, memory_rounds: int = 3) -> dict[str, float]:
    """A SpeechLLM before and after pruning, decoding the same batch on this machine.

    Both decode all of ``data`` as one batch (the prompt, the projected audio, then exactly
    ``new_tokens`` greedy tokens with the KV cache: :func:`greedy_decode`), alternating over
    ``rounds`` rounds after a warm-up; the speed-up is the median over rounds of the full
    model's time over the pruned one's, beside the ideal speed-up from the FLOPs actually
    removed (:func:`ideal_speedup`; embedding and LM head counted). With the saved folders
    (:func:`lib.build.checkpoint.save_speechllm`), each is loaded and decoded in a fresh process whose
    peak resident memory is recorded, ``memory_rounds`` times alternated, and the median is
    reported (one process's peak varies by ~100-200 MiB from run to run here, as much as a
    small cut saves).

    Returns:
        ``speedup``, ``ideal_speedup``, ``speedup_over_ideal``, ``seconds_full``,
        ``seconds_pruned`` (medians), ``params_full_m``, ``params_pruned_m`` (decoder
        parameters, millions), ``param_mib_full``, ``param_mib_pruned``, the peak memory
        figures of :func:`peak_summary` (NaN without folders), ``batch``, ``prompt_tokens``,
        ``new_tokens``.
    """
    from lib.build.components import eval_mode
    from lib.build.components import pruned_layers

    if new_tokens < 1 or rounds < 1 or memory_rounds < 1:
        raise CompanionError(f"new_tokens={new_tokens}, rounds={rounds}, memory_rounds="
                             f"{memory_rounds}: use positive integers")
    feats, lengths, _ = data.batch(list(range(len(data))))
    inputs = {name: m.build_inputs(feats, lengths, None, left_pad=True)
              for name, m in (("full", full), ("pruned", pruned))}

    def run(name: str, model: Any) -> Callable[[], dict[str, float]]:
        b = inputs[name]

        def once() -> dict[str, float]:
            _, pre, dec = greedy_decode(model.decoder, b["inputs_embeds"], b["attention_mask"],
                                        new_tokens)
            return {"prefill": pre, "decode": dec, "total": pre + dec}
        return once

    with eval_mode(full, pruned):
        res = alternate_rounds({"full": run("full", full), "pruned": run("pruned", pruned)},
                               rounds)
    prompt = int(inputs["full"]["inputs_embeds"].shape[1])
    removed = pruned_layers(pruned.decoder)
    ideal = ideal_speedup(full.decoder.config, removed, prompt_tokens=prompt,
                          new_tokens=new_tokens, batch=len(data))
    speed = median_ratio(res["full"], res["pruned"], "total")
    mib = 2.0 ** 20
    peaks: dict[str, list[float]] = {"full": [], "pruned": []}
    for _ in range(memory_rounds):  # alternated, like the timing rounds
        for name, folder in (("full", full_folder), ("pruned", pruned_folder)):
            if folder is not None:
                peaks[name].append(run_isolated(_decode_saved, str(folder), feats, lengths,
                                                new_tokens)[1] / mib)
    peak = peak_summary(peaks)
    n_full = sum(p.numel() for n, p in full.decoder.named_parameters() if "lora_" not in n)
    n_pruned = sum(p.numel() for n, p in pruned.decoder.named_parameters() if "lora_" not in n)
    return {"speedup": speed, "ideal_speedup": ideal, "speedup_over_ideal": speed / ideal,
            "seconds_full": median([r["total"] for r in res["full"]]),
            "seconds_pruned": median([r["total"] for r in res["pruned"]]),
            "params_full_m": n_full / 1e6, "params_pruned_m": n_pruned / 1e6,
            "param_mib_full": parameter_bytes(full.decoder) / mib,
            "param_mib_pruned": parameter_bytes(pruned.decoder) / mib,
            **peak, "batch": len(data), "prompt_tokens": prompt, "new_tokens": new_tokens}
