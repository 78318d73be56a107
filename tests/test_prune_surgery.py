"""Pruning surgery, pruning strategies and WER-vs-cut curves, checked against independent
references: decoders rebuilt by hand from a hand-written config and remapped weights,
layers made exact identities, slow per-utterance loss loops, hand-made WER curves."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from lib.config.sections import EvalConfig
from lib.assets.tiny import ensure_tiny
from lib.config.sections import ModelConfig
from lib.data.loaders import Utterance
from lib.errors import CompanionError
from lib.data.features import FeatureSet
from references import rebuild_decoder
from lib.build.components import pruned_layers
from lib.prune.surgery import (block_layers, check_layers, receiving_layers, remove_layers,
                               skip_block, skip_layers)
from lib.prune.loss_curves import LossMeter
from lib.score.stats import RedundancyResult
from lib.build.speechllm import SpeechLLM, build_speechllm
from lib.prune.strategies import (angular_layers, block_influence_layers, check_strategies,
                                  cut_sizes, gromov_layers, oracle_layers, random_layers,
                                  sleb_order, strategy_layers)
from lib.prune.rule import relative_change, within_threshold

S, F = "sliding_attention", "full_attention"
PROMPT = "the quick brown fox jumps over the lazy dog, again and again"  # > sliding window


# ------------------------------------------------------------------------------ helpers


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a shared CPU the threads' waiting
    makes these tests several times slower; restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _load(alias: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = ensure_tiny(alias)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(folder)
    return model.eval(), tok


@pytest.fixture(scope="module")
def llama():
    return _load("tiny-llama")


@pytest.fixture(scope="module")
def gemma():
    return _load("tiny-gemma")


@pytest.fixture(scope="module")
def gemma6(gemma):
    """A 6-layer Gemma 3 with an interleaved pattern and a short window (built here)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    _, tok = gemma
    cfg = Gemma3TextConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=6,
        num_attention_heads=4, num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16,
        sliding_window=8, layer_types=[S, F, S, S, F, S], max_position_embeddings=512,
        tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = Gemma3ForCausalLM(cfg)
        # random (not zero) norm weights, so that the norms matter too
        for name, p in model.named_parameters():
            if "norm" in name:
                p.data.normal_(0, 0.3)
    return model.eval(), tok


def _ids(tok, text=PROMPT):
    return tok(text, return_tensors="pt", add_special_tokens=False).input_ids


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def _generate(model, tok, ids, new=8, **kw):
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                             min_new_tokens=new, do_sample=False, num_beams=1,
                             pad_token_id=tok.pad_token_id, **kw)
    return out[0, ids.shape[1]:].tolist()




def _make_identity(decoder, layer: int) -> None:
    """Zero the weights that write into the residual stream: attention out and MLP down."""
    ly = decoder.model.layers[layer]
    with torch.no_grad():
        ly.self_attn.o_proj.weight.zero_()
        ly.mlp.down_proj.weight.zero_()
    assert ly.self_attn.o_proj.bias is None and ly.mlp.down_proj.bias is None


def _attn_indices(decoder):
    body = decoder.get_base_model().model if hasattr(decoder, "get_base_model") else decoder.model
    return [ly.self_attn.layer_idx for ly in body.layers]


# ------------------------------------------------ 1. identity layers removed: no change


@pytest.mark.parametrize("alias, drop", [("tiny-llama", [1, 2]), ("tiny-llama", [0, 2]),
                                         ("tiny-gemma", [1]), ("tiny-gemma", [0, 2])])
def test_removing_identity_layers_leaves_outputs_unchanged(alias, drop, llama, gemma):
    base, tok = llama if alias == "tiny-llama" else gemma
    model = copy.deepcopy(base)
    for i in drop:
        _make_identity(model, i)
    if alias == "tiny-gemma":  # the sandwich norms of Gemma 3 map a zero vector to zero
        ly = model.model.layers[drop[0]]
        with torch.no_grad():
            ly.post_attention_layernorm.weight.normal_()
            ly.post_feedforward_layernorm.weight.normal_()
            z = torch.zeros(2, 5, model.config.hidden_size)
            assert torch.equal(ly.post_attention_layernorm(z), z)
            assert torch.equal(ly.post_feedforward_layernorm(z), z)
        # and the layer as a whole is the identity on real hidden states
        x = torch.randn(1, 6, model.config.hidden_size)
        pos = torch.arange(6)[None]
        emb = model.model.rotary_emb(x, pos, model.config.layer_types[drop[0]])
        with torch.no_grad():
            y = ly(x, position_embeddings=emb, attention_mask=None, position_ids=pos)
        y = y[0] if isinstance(y, tuple) else y
        assert torch.equal(y, x)
    ids = _ids(tok)
    want = _logits(model, ids)
    want_tokens = _generate(model, tok, ids)
    pruned = remove_layers(copy.deepcopy(model), drop)
    assert len(pruned.model.layers) == 4 - len(drop)
    torch.testing.assert_close(_logits(pruned, ids), want, rtol=0, atol=1e-5)
    assert _generate(pruned, tok, ids) == want_tokens
    # the layers were not identities before: removing them from the base model changes it
    changed = remove_layers(copy.deepcopy(base), drop)
    assert not torch.allclose(_logits(changed, ids), _logits(base, ids), atol=1e-3)


# ------------------------------------- 2. generate with and without the KV cache agree


CACHE_CASES = [
    # alias, removed, layer_types after (written out by hand; None for Llama)
    ("tiny-llama", [1], None),
    ("tiny-llama", [0, 2], None),
    ("tiny-gemma", [1], [S, S, F]),            # the full layer moves from 3 to 2
    ("tiny-gemma", [0, 2], [S, F]),            # non-contiguous
    ("tiny-gemma", [3], [S, S, S]),            # the only full layer goes
    ("gemma6", [1, 3], [S, S, F, S]),          # non-contiguous, pattern changes
    ("gemma6", [0, 4, 5], [F, S, S]),
]


@pytest.mark.parametrize("alias, drop, types", CACHE_CASES)
def test_pruned_model_generates_the_same_with_and_without_cache(alias, drop, types, llama,
                                                                gemma, gemma6):
    base, tok = {"tiny-llama": llama, "tiny-gemma": gemma, "gemma6": gemma6}[alias]
    big_l = base.config.num_hidden_layers
    keep = [i for i in range(big_l) if i not in drop]
    pruned = remove_layers(copy.deepcopy(base), drop)
    cfg = pruned.config
    assert cfg.num_hidden_layers == len(keep) == len(pruned.model.layers)
    assert _attn_indices(pruned) == list(range(len(keep)))
    ids = _ids(tok)
    if types is not None:
        assert list(cfg.layer_types) == types
        assert [ly.self_attn.sliding_window is not None for ly in pruned.model.layers] == \
            [t == S for t in types]
        assert ids.shape[1] + 8 > cfg.sliding_window  # the window is exercised
    with_cache = _generate(pruned, tok, ids, use_cache=True)
    no_cache = _generate(pruned, tok, ids, use_cache=False)
    assert with_cache == no_cache
    # and both are what a model built by hand with those layers produces
    ref = rebuild_decoder(base, keep, types)
    assert _generate(ref, tok, ids) == with_cache
    torch.testing.assert_close(_logits(pruned, ids), _logits(ref, ids), rtol=0, atol=1e-5)


# ----------------------------------------------- 3. a reloaded pruned decoder is the same


@pytest.mark.parametrize("which", ["llama", "gemma"])
def test_saved_pruned_decoder_reloads_to_the_same_logits(which, tmp_path, llama, gemma):
    from transformers import AutoModelForCausalLM

    base, tok = llama if which == "llama" else gemma
    pruned = copy.deepcopy(base)
    remove_layers(pruned, [1])
    assert pruned_layers(pruned) == [1]
    remove_layers(pruned, [1])  # the second call's 1 is the original 2
    assert pruned_layers(pruned) == [1, 2]
    assert pruned.config.unpruned_num_hidden_layers == 4
    if which == "gemma":
        assert list(pruned.config.layer_types) == [S, F]
    pruned.save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert saved["pruned_layers"] == [1, 2] and saved["num_hidden_layers"] == 2
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32).eval()
    assert pruned_layers(back) == [1, 2]
    assert _attn_indices(back) == [0, 1]
    ids = _ids(tok)
    torch.testing.assert_close(_logits(back, ids), _logits(pruned, ids), rtol=0, atol=1e-6)
    assert _generate(back, tok, ids) == _generate(pruned, tok, ids)
    # the original model's layers 0 and 3
    ref = rebuild_decoder(base, [0, 3], [S, F] if which == "gemma" else None)
    torch.testing.assert_close(_logits(back, ids), _logits(ref, ids), rtol=0, atol=1e-5)


# ------------------------------------------------- 4. LoRA carried through vs merged first


def _peft(base, seed=3):
    from peft import LoraConfig, get_peft_model

    m = copy.deepcopy(base)
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, bias="none",
                     target_modules=["q_proj", "v_proj", "o_proj", "gate_proj", "down_proj"])
    m = get_peft_model(m, cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_" in n:  # seeded, B nonzero: the adapters change the outputs
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return m.eval()


@pytest.mark.parametrize("which, drop, types", [("llama", [1], None),
                                                ("gemma", [0, 2], [S, F])])
def test_pruning_through_peft_then_merging_equals_merging_then_pruning(which, drop, types,
                                                                        llama, gemma):
    base, tok = llama if which == "llama" else gemma
    ids = _ids(tok)
    keep = [i for i in range(4) if i not in drop]
    wrapped = _peft(base)
    assert not torch.allclose(_logits(wrapped, ids), _logits(base, ids), atol=1e-3)
    merged_first = rebuild_decoder(copy.deepcopy(wrapped).merge_and_unload(), keep, types)
    want = _logits(merged_first, ids)
    # skip_layers through the wrapper, then everything back
    before = _logits(wrapped, ids)
    with skip_layers(wrapped, drop):
        torch.testing.assert_close(_logits(wrapped, ids), want, rtol=0, atol=1e-5)
        assert _attn_indices(wrapped) == list(range(len(keep)))
    torch.testing.assert_close(_logits(wrapped, ids), before, rtol=0, atol=0)
    assert _attn_indices(wrapped) == [0, 1, 2, 3]
    # remove_layers through the wrapper, then merge
    remove_layers(wrapped, drop)
    assert pruned_layers(wrapped) == drop
    n_lora = sum(1 for n, _ in wrapped.named_parameters() if "lora_A" in n)
    assert n_lora == 5 * len(keep)  # the adapters went with their layers
    carried = wrapped.merge_and_unload()
    assert pruned_layers(carried) == drop and carried.config.num_hidden_layers == len(keep)
    torch.testing.assert_close(_logits(carried, ids), want, rtol=0, atol=1e-5)
    # and the other order through the library: merge, then remove
    other = remove_layers(copy.deepcopy(_peft(base)).merge_and_unload(), drop)
    torch.testing.assert_close(_logits(other, ids), _logits(carried, ids), rtol=0, atol=1e-5)
    assert _generate(other, tok, ids) == _generate(carried, tok, ids)


# ------------------------------------------------------------- 8. receiving layers by hand


@pytest.mark.parametrize("drop, n_layers, want", [
    ([3, 4, 7], 10, [3, 5]),   # original 5 -> 3, original 8 -> 5
    ([8, 9], 10, [7]),         # a run at the end: the last kept layer (original 7)
    ([0], 10, [0]),            # original 1 is the new 0
    ([0, 1, 2], 4, [0]),
    ([1, 3], 4, [1]),          # both runs hand to original 2 (new 1): one receiver
    ([2, 5, 6, 9], 10, [2, 4, 5]),   # 3 -> 2, 7 -> 4, the end -> last kept 8 -> 5
])
def test_receiving_layers_by_hand(drop, n_layers, want):
    assert receiving_layers(drop, n_layers) == want


# ----------------------------------------------------------------------- 9. bad input


def _one_line(exc, *needles):
    msg = str(exc.value)
    assert "\n" not in msg
    for s in needles:
        assert s in msg, (s, msg)


@pytest.mark.parametrize("layers, needle", [
    ([0, 1, 2, 3], "all 4 layers"), ([2, 1], "[2, 1]"), ([1, 1], "[1, 1]"),
    ([1, 2, 2, 3], "[1, 2, 2, 3]"), ([4], "[4]"), ([-1, 2], "[-1, 2]"), ([], "no layers"),
    (["a"], "'a'"), ([1.5], "1.5"),
])
def test_bad_layer_lists_are_one_line_errors(layers, needle, llama):
    with pytest.raises(CompanionError) as e:
        check_layers(layers, 4)
    _one_line(e, needle)
    model = copy.deepcopy(llama[0])
    with pytest.raises(CompanionError):
        remove_layers(model, layers)
    assert len(model.model.layers) == 4 and model.config.num_hidden_layers == 4
    assert _attn_indices(model) == [0, 1, 2, 3] and pruned_layers(model) == []
    with pytest.raises(CompanionError):
        with skip_layers(model, layers):
            pass
    assert len(model.model.layers) == 4


@pytest.mark.parametrize("start, n", [(3, 2), (0, 4), (-1, 2), (0, 0)])
def test_block_past_the_end_is_an_error(start, n, llama):
    with pytest.raises(CompanionError) as e:
        block_layers(start, n, 4)
    _one_line(e, f"[{start}, {start + n})")
    with pytest.raises(CompanionError):
        with skip_block(llama[0], start, n):
            pass
    assert len(llama[0].model.layers) == 4


def test_unknown_strategy_and_bad_fractions_are_errors():
    with pytest.raises(CompanionError) as e:
        strategy_layers("greedy", [1], 4)
    _one_line(e, "'greedy'")
    with pytest.raises(CompanionError) as e:
        check_strategies(["gromov", "bogus"])
    _one_line(e, "'bogus'")
    for f in (0, 1, 0.0, 1.0, -0.2):
        with pytest.raises(CompanionError) as e:
            cut_sizes([0.25, f], 8)
        _one_line(e, repr(f))


# ------------------------------------------------------------ 5. the threshold rule


def test_the_papers_rule_by_hand():
    """Relative degradation (WER up, BLEU down) and the threshold with its rounding margin."""
    assert relative_change(0.20, 0.25).tolist() == pytest.approx(0.25)
    assert relative_change(20.0, 18.0, higher_is_better=True).tolist() == pytest.approx(0.1)
    assert relative_change(0.0, 0.0).tolist() == 0.0 and relative_change(0.0, 0.1) == np.inf
    assert within_threshold(0.25, 0.25) and not within_threshold(0.2501, 0.25)


def test_cut_sizes_by_hand():
    assert cut_sizes([0.1, 0.2, 0.3, 0.5], 30) == [3, 6, 9, 15]
    assert cut_sizes([0.05, 0.3, 0.9], 4) == [1, 3]  # at least 1; 3.6 -> 4 -> at most 3
    assert cut_sizes([0.26, 0.24], 4) == [1]  # both round to 1: one cut


# ------------------------------------------------------------- 7. strategies by hand


def _result(n_layers, bi=None, dist=None):
    nan = np.full((n_layers + 1, n_layers + 1), np.nan)
    return RedundancyResult(
        n_layers=n_layers, distance_last=nan.copy() if dist is None else dist,
        distance_all=nan.copy(), bi=np.zeros(n_layers) if bi is None else np.asarray(bi),
        cka={}, n_tokens=10, n_sequences=2, n_undefined=0, input_kind="speech",
        positions="all")


def test_gromov_and_random_by_hand():
    assert gromov_layers(10, 3) == [6, 7, 8]
    assert gromov_layers(10, 1) == [8]
    assert gromov_layers(4, 2) == [1, 2]
    assert strategy_layers("gromov", [1, 3], 10) == {1: [8], 3: [6, 7, 8]}
    starts = set()
    for seed in range(200):
        a = random_layers(12, 4, seed)
        assert a == random_layers(12, 4, seed)  # seeded
        assert a == list(range(a[0], a[0] + 4)) and 0 <= a[0] and a[-1] <= 11
        starts.add(a[0])
    assert starts == set(range(9))  # every start 0..L-n can be drawn
    assert strategy_layers("random", [4], 12, seed=7) == {4: random_layers(12, 4, 7)}


def test_block_influence_picks_the_n_smallest():
    bi = [0.50, 0.02, 0.30, 0.01, 0.02, 0.90, 0.05, 0.40]
    r = _result(8, bi=bi)
    by_hand = {1: [3], 2: [1, 3], 3: [1, 3, 4], 4: [1, 3, 4, 6], 5: [1, 2, 3, 4, 6]}
    for n, want in by_hand.items():
        assert block_influence_layers(r, n) == want
    assert strategy_layers("block-influence", [2, 4], 8, speech_scores=r) == \
        {2: [1, 3], 4: [1, 3, 4, 6]}
    with pytest.raises(CompanionError):
        block_influence_layers(_result(8, bi=[np.nan] + bi[1:]), 2)
    with pytest.raises(CompanionError):
        strategy_layers("block-influence", [2], 6, speech_scores=r)  # wrong size
    with pytest.raises(CompanionError):
        strategy_layers("angular", [2], 8)  # no scores


def test_angular_picks_the_argmin_of_the_surface():
    big_l = 7
    rng = np.random.default_rng(0)
    dist = np.full((big_l + 1, big_l + 1), np.nan)
    for l in range(big_l):
        for n in range(1, big_l - l + 1):
            dist[l, n] = rng.uniform(0.1, 1.0)
    r = _result(big_l, dist=dist)
    for n in range(1, big_l):
        best, start = np.inf, None
        for l in range(big_l - n + 1):  # by hand
            if dist[l, n] < best:
                best, start = dist[l, n], l
        assert angular_layers(r, n) == list(range(start, start + n)), n
    assert strategy_layers("angular", [2], big_l, speech_scores=r)[2] == angular_layers(r, 2)


# ------------------------------------------- loss-driven strategies on a tiny SpeechLLM

TEXTS = ["red green blue", "a cat sat", "hello there world", "the sky", "up and down we go"]


def _features(n=5, dim=64, seed=0, texts=TEXTS):
    g = torch.Generator().manual_seed(seed)
    utts = [Utterance(id=f"u{i}", audio=f"/nonexistent/u{i}.wav", text=texts[i % len(texts)],
                      duration=1.0, voice="v", split="test", source="manifest")
            for i in range(n)]
    feats = [torch.randn(12 + 7 * i, dim, generator=g).half() for i in range(n)]
    return FeatureSet(utts, feats)


@pytest.fixture(scope="module")
def speech():
    """The tiny Gemma SpeechLLM, adapters merged (a plain decoder)."""
    m = build_speechllm(ModelConfig(encoder="tiny-whisper", decoder="tiny-gemma",
                                    projector_hidden=32, lora_rank=4, lora_alpha=8), seed=0)
    m.decoder = m.decoder.merge_and_unload()
    return m.eval()


def _utterance_loss(model, data):
    """Mean loss over all target tokens: one utterance at a time, weighted by its tokens."""
    tot, ntok = 0.0, 0
    for i in range(len(data)):
        f, ln, tx = data.batch([i])
        k = len(model.target_ids(tx[0]))
        with torch.no_grad():
            tot += float(model.loss(f, ln, tx)) * k
        ntok += k
    return tot / ntok


def _own_targets(model, n=5):
    """Utterances whose targets are the model's own greedy transcripts: the full model fits
    them better than any model with a working layer removed (on a random tiny model and
    random targets, removing a layer can lower the loss by chance)."""
    data = _features(n)
    hyps = [model.generate(*data.batch([i])[:2], max_new_tokens=12)[0] for i in range(n)]
    assert all(h.strip() for h in hyps)
    return _features(n, texts=hyps)


def _speech_without(model, drop):
    """A SpeechLLM whose decoder is rebuilt by hand without ``drop``."""
    big_l = model.decoder.config.num_hidden_layers
    keep = [i for i in range(big_l) if i not in drop]
    types = [model.decoder.config.layer_types[i] for i in keep]
    return SpeechLLM(None, model.projector, rebuild_decoder(model.decoder, keep, types),
                     model.tokenizer).eval()


def test_the_strategies_loss_is_the_token_weighted_mean(speech):
    """What SLEB and the oracle rank by: a LossMeter's mean, against each utterance alone
    and a decoder rebuilt by hand without the layers."""
    data = _features()
    f = LossMeter(speech, data, batch_size=2, min_utterances=1)
    assert f.tokens.sum() == sum(len(speech.target_ids(t)) for t in TEXTS)
    assert f().mean == pytest.approx(_utterance_loss(speech, data), rel=1e-5)
    v = f.without([1, 3]).mean
    assert v == pytest.approx(_utterance_loss(_speech_without(speech, [1, 3]), data), rel=1e-5)
    assert f().mean == pytest.approx(_utterance_loss(speech, data), rel=1e-5)
    with pytest.raises(CompanionError):
        LossMeter(speech, data, batch_size=0)


def test_sleb_removes_an_identity_layer_first(speech):
    model = copy.deepcopy(speech)
    _make_identity(model.decoder, 2)
    data = _own_targets(model)
    full = _utterance_loss(model, data)
    slow = {c: _utterance_loss(_speech_without(model, [c]), data) for c in range(4)}
    assert slow[2] == pytest.approx(full, rel=1e-6)  # removing an identity changes nothing
    assert min(slow, key=slow.get) == 2  # and every other removal costs (measured margin)
    assert sorted(slow.values())[1] > full + 1e-3
    order = sleb_order(model, data, max_removed=2, batch_size=2)
    assert order[0][0] == 2 and order[0][1] == pytest.approx(full, rel=1e-5)
    # the second step, by hand, on top of layer 2
    slow2 = {c: _utterance_loss(_speech_without(model, sorted([2, c])), data)
             for c in (0, 1, 3)}
    second = min(slow2, key=slow2.get)
    assert order[1][0] == second and order[1][1] == pytest.approx(slow2[second], rel=1e-5)
    plan = strategy_layers("sleb", [1, 2], 4, model=model, dev=data, batch_size=2)
    assert plan == {1: [2], 2: sorted([2, second])}
    assert len(model.decoder_layers) == 4  # nothing removed for good
    with pytest.raises(CompanionError):
        sleb_order(model, data, max_removed=4)
    with pytest.raises(CompanionError):
        strategy_layers("sleb", [1], 4)  # no model


@pytest.mark.parametrize("n", [1, 2])
def test_oracle_is_the_argmin_of_slow_ablation(n, speech):
    data = _features()
    model = speech
    slow = {}
    for l in range(4 - n + 1):
        with skip_block(model.decoder, l, n):
            slow[l] = _utterance_loss(model, data)
    ranked = sorted(slow, key=slow.get)
    assert slow[ranked[1]] - slow[ranked[0]] > 1e-4  # a clear winner on this model
    assert oracle_layers(model, data, n, batch_size=2) == list(range(ranked[0], ranked[0] + n))
    assert strategy_layers("oracle", [n], 4, model=model, dev=data) == \
        {n: list(range(ranked[0], ranked[0] + n))}
    # the oracle finds a block made of identities
    ident = copy.deepcopy(model)
    for i in range(1, 1 + n):
        _make_identity(ident.decoder, i)
    own = _own_targets(ident)
    assert oracle_layers(ident, own, n, batch_size=3) == list(range(1, 1 + n))


# ---------------------------------------------------- 10. evaluate_cut and the curves


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_evaluate_cut_caches_and_restores_the_model(speech, tmp_path, monkeypatch):
    import lib.prune.curves as curves

    model = speech
    data = _features(3)
    f, ln, tx = data.batch(range(3))
    before_state = _state(model)
    with torch.no_grad():
        before = float(model.loss(f, ln, tx))
    # float32 as the reference decodes (``auto`` would take bf16 autocast on a CPU that
    # runs it natively, and a tiny random model's near-ties can then flip)
    rec = curves.evaluate_cut(model, data, [1, 3], tmp_path, "clean",
                              EvalConfig(batch_size=2, max_new_tokens=5, precision="fp32"))
    assert rec["layers"] == [1, 3] and rec["n_removed"] == 2
    assert rec["removed_fraction"] == 0.5 and rec["n_layers"] == 4
    # the hypotheses are those of a decoder rebuilt by hand without layers 1 and 3
    ref = _speech_without(model, [1, 3])
    want = [ref.generate(*data.batch([i])[:2], max_new_tokens=5)[0] for i in range(3)]
    assert [h["hyp"] for h in rec["hypotheses"]] == want
    assert [h["ref"] for h in rec["hypotheses"]] == [t for t in tx]
    # the model has all its layers back
    assert len(model.decoder_layers) == 4 and model.decoder.config.num_hidden_layers == 4
    assert list(model.decoder.config.layer_types) == [S, S, S, F]
    assert [ly.self_attn.layer_idx for ly in model.decoder_layers] == [0, 1, 2, 3]
    after = model.state_dict()
    assert all(torch.equal(before_state[k], after[k]) for k in before_state)
    with torch.no_grad():
        assert float(model.loss(f, ln, tx)) == before
    files = sorted((tmp_path / "cuts").iterdir())
    assert len(files) == 1

    def no_decoding(*a, **k):
        raise AssertionError("decoded again")

    monkeypatch.setattr(curves, "transcribe", no_decoding)
    again = curves.evaluate_cut(model, data, [1, 3], tmp_path, "clean",
                                EvalConfig(batch_size=2, max_new_tokens=5, precision="fp32"))
    assert again == rec
    # another layer set or another max_new_tokens is another point: it decodes
    with pytest.raises(AssertionError, match="decoded again"):
        curves.evaluate_cut(model, data, [1, 2], tmp_path, "clean",
                            EvalConfig(batch_size=2, max_new_tokens=5, precision="fp32"))
    with pytest.raises(AssertionError, match="decoded again"):
        curves.evaluate_cut(model, data, [1, 3], tmp_path, "clean",
                            EvalConfig(batch_size=2, max_new_tokens=6, precision="fp32"))
    # reuse=False decodes even when the point is cached
    with pytest.raises(AssertionError, match="decoded again"):
        curves.evaluate_cut(model, data, [1, 3], tmp_path, "clean",
                            EvalConfig(batch_size=2, max_new_tokens=5, precision="fp32"), reuse=False)
    assert len(model.decoder_layers) == 4  # restored after a failed decoding too
    monkeypatch.undo()
    r2 = curves.evaluate_cut(model, data, [1, 2], tmp_path, "clean",
                             EvalConfig(batch_size=2, max_new_tokens=5, precision="fp32"))
    r3 = curves.evaluate_cut(model, data, [1, 3], tmp_path, "clean",
                             EvalConfig(batch_size=2, max_new_tokens=6, precision="fp32"))
    names = {p.name for p in (tmp_path / "cuts").iterdir()}
    assert len(names) == 3 and r2["layers"] == [1, 2] and r3["layers"] == [1, 3]


