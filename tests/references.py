"""Independent references shared by the tests: a decoder rebuilt from scratch, a removal
profile constructed with known costs, a tiny SpeechLLM whose adapters look trained."""

from __future__ import annotations

import re

import torch


def rebuild_decoder(decoder, keep, layer_types=None):
    """An independent reference: a fresh model of the same class whose config is written
    by hand (``len(keep)`` layers, ``layer_types`` as given) and whose weights are the kept
    layers' weights, renamed ``layers.<orig>`` -> ``layers.<new>``."""
    d = decoder.config.to_dict()
    d["num_hidden_layers"] = len(keep)
    if layer_types is not None:
        d["layer_types"] = list(layer_types)
    for k in ("pruned_layers", "unpruned_num_hidden_layers"):
        d.pop(k, None)
    cfg = type(decoder.config).from_dict(d)
    with torch.random.fork_rng(devices=[]):
        fresh = type(decoder)(cfg)
    new_of = {orig: new for new, orig in enumerate(keep)}
    sd = {}
    for k, v in decoder.state_dict().items():
        m = re.match(r"^(model\.layers\.)(\d+)(\..*)$", k)
        if m is None:
            sd[k] = v.clone()
        elif int(m.group(2)) in new_of:
            sd[f"{m.group(1)}{new_of[int(m.group(2))]}{m.group(3)}"] = v.clone()
    missing, unexpected = fresh.load_state_dict(sd, strict=False)
    assert not unexpected and all("lm_head" in k for k in missing), (missing, unexpected)
    return fresh.eval()


def constructed_profile(costs, noise: float, seed: int, u: int = 32, tokens: float = 5.0,
                        n: int = 2):
    """A removal profile whose answer is known: every item's cost per token of block ``b``
    is ``costs[b]`` plus Gaussian noise of scale ``noise``."""
    import numpy as np

    from lib.prune.loss_curves import UtteranceLosses
    from lib.prune.profiles import BlockProfile

    rng = np.random.default_rng(seed)
    tok = np.full(u, tokens)
    full = UtteranceLosses(np.full(u, 10.0), tok)
    per_token = np.asarray(costs)[:, None] + noise * rng.standard_normal((len(costs), u))
    return BlockProfile(n, np.arange(len(costs)), full, full.sums + per_token * tok)


def adapted_speechllm(decoder: str = "tiny-llama", dropout: float = 0.0, seed: int = 1):
    """A tiny SpeechLLM (LoRA rank 4) whose adapters look trained: every ``lora_B`` drawn at
    random (``seed``), so that the adapters change what the decoder computes."""
    from lib.build.speechllm import build_speechllm
    from lib.config.sections import ModelConfig

    mc = ModelConfig(encoder="tiny-whisper", decoder=decoder, projector_hidden=32,
                     lora_rank=4, lora_alpha=8, lora_dropout=dropout)
    model = build_speechllm(mc, seed=0)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.decoder.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model
