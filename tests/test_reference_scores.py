"""The independent check of issue 8: text scores of a tiny decoder equal a slow float64
reference built without the library's capture or accumulator code.

The reference runs a float64 copy of the decoder on one text at a time (no padding), reads
``h_0 .. h_{L-1}`` with its own forward pre-hooks on the layers and ``h_L`` with a forward
hook on the last layer, and averages ``arccos(cos) / pi`` per token in numpy.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from lib.build.components import load_decoder
from lib.score.redundancy import score_text

TEXTS = ["hello world", "a much longer sentence, with more words in it", "x y",
         "the cat sat on the mat", "numbers like 12 and 345 too"]


def _reference(model, tok, texts):
    m64 = copy.deepcopy(model).double().eval()
    layers = m64.model.layers
    big_l = len(layers)
    s_all = np.zeros((big_l + 1, big_l + 1)); c_all = np.zeros_like(s_all)
    s_last = np.zeros_like(s_all); c_last = np.zeros_like(s_all)
    for text in texts:
        states = {}
        hooks = [layer.register_forward_pre_hook(
            (lambda i: lambda mod, args, kw: states.__setitem__(
                i, (args[0] if args else kw["hidden_states"])[0].numpy().copy()))(i),
            with_kwargs=True) for i, layer in enumerate(layers)]
        hooks.append(layers[-1].register_forward_hook(
            lambda mod, args, out: states.__setitem__(
                big_l, (out[0] if isinstance(out, tuple) else out)[0].numpy().copy())))
        try:
            ids = tok(text, return_tensors="pt").input_ids  # one text: no padding
            with torch.no_grad():
                m64(input_ids=ids, use_cache=False)
        finally:
            for h in hooks:
                h.remove()
        t = ids.shape[1]
        for l in range(big_l):
            for n in range(1, big_l - l + 1):
                a, b = states[l], states[l + n]
                cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
                d = np.arccos(np.clip(cos, -1, 1)) / np.pi
                s_all[l, n] += d.sum(); c_all[l, n] += t
                s_last[l, n] += d[-1]; c_last[l, n] += 1
    with np.errstate(invalid="ignore"):
        return s_all / c_all, s_last / c_last


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gemma"])
def test_text_scores_equal_a_slow_float64_reference(name):
    model, tok = load_decoder(name)
    ref_all, ref_last = _reference(model, tok, TEXTS)
    # the library, batched with padding, on the decoder as loaded (fp32) ...
    res = score_text(model, tok, TEXTS, batch_size=2)
    np.testing.assert_allclose(res.distance_all, ref_all, atol=1e-6, rtol=0, equal_nan=True)
    np.testing.assert_allclose(res.distance_last, ref_last, atol=1e-6, rtol=0,
                               equal_nan=True)
    # ... and on a float64 copy, where only summation order differs
    res64 = score_text(copy.deepcopy(model).double(), tok, TEXTS, batch_size=2)
    np.testing.assert_allclose(res64.distance_all, ref_all, atol=1e-10, rtol=0,
                               equal_nan=True)


PARAGRAPHS = [
    "And the LORD spake unto Moses, saying, Speak unto the children of Israel, that they "
    "bring me an offering: of every man that giveth it willingly with his heart ye shall "
    "take my offering.",
    "Elinor, this eldest daughter, whose advice was so effectual, possessed a strength of "
    "understanding, and coolness of judgment, which qualified her, though only nineteen, to "
    "be the counsellor of her mother.",
    "A redundancy score compares the hidden state that enters a block of layers with the "
    "one that leaves it; blocks that hardly rotate the residual stream can be removed.",
]


def test_smollm2_text_scores_equal_the_float64_reference():
    """The same check on the real SmolLM2-135M (fp32 as loaded), over three paragraphs,
    to 1e-4: deeper and wider than the tiny models, so rounding has more room."""
    model, tok = load_decoder("smollm2-135m")
    ref_all, ref_last = _reference(model, tok, PARAGRAPHS)
    res = score_text(model, tok, PARAGRAPHS, batch_size=2)
    np.testing.assert_allclose(res.distance_all, ref_all, atol=1e-4, rtol=0, equal_nan=True)
    np.testing.assert_allclose(res.distance_last, ref_last, atol=1e-4, rtol=0,
                               equal_nan=True)
