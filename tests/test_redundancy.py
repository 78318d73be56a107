"""Redundancy scores, checked against slow independent references on constructed and tiny models."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from lib.config.sections import ModelConfig
from lib.errors import CompanionError
from lib.data.features import FeatureSet
from lib.prune.loss_curves import LossMeter
from lib.prune.losses import ablation_summary, rank_agreement
from lib.prune.profiles import block_profile
from lib.prune.surgery import skip_block
from lib.score.redundancy import agreement, capture_hidden_states, score_speech, score_text
from lib.score.stats import (RedundancyAccumulator, RedundancyResult, angular_distance,
                             default_cka_pairs)
from lib.build.components import find_decoder_layers, load_decoder
from lib.build.speechllm import build_speechllm

TEXTS = ["hello world", "a much longer sentence, with more words in it", "x y",
         "the cat sat on the mat"]


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-gemma"])
def lm(request):
    model, tok = load_decoder(request.param)
    return model, tok


@pytest.fixture(scope="module")
def speech_model():
    mc = ModelConfig(encoder="tiny-whisper", decoder="tiny-gemma", projector_hidden=32,
                     lora_rank=4, lora_alpha=8)
    m = build_speechllm(mc, seed=0)
    m.eval()
    return m


# ---------------------------------------------------------------- angular distance


def test_angular_distance_known_angles():
    a = torch.tensor([[1.0, 0.0]] * 5)
    s = math.sqrt(0.5)
    b = torch.tensor([[2.0, 0.0], [s, s], [0.0, 3.0], [-1.0, 0.0], [0.0, 0.0]])
    d, valid = angular_distance(a, b)
    assert valid.tolist() == [True, True, True, True, False]
    np.testing.assert_allclose(d[:4].numpy(), [0.0, 0.25, 0.5, 1.0], atol=1e-7)
    assert torch.isfinite(d).all()  # the zero vector gives no NaN
    # cosines a hair outside [-1, 1] (rounding) are clamped
    x = torch.tensor([[1e8, 1.0, 0.0]], dtype=torch.float64)
    d2, v2 = angular_distance(x, x * 3)
    assert v2.all() and torch.isfinite(d2).all() and float(d2) < 1e-6


# ---------------------------------------------------------------- streaming accumulator


def _slow_reference(batches, big_l):
    """Explicit python loops over sequences, positions, l and n."""
    s_all = np.zeros((big_l + 1, big_l + 1)); c_all = np.zeros_like(s_all)
    s_last = np.zeros_like(s_all); c_last = np.zeros_like(s_all)
    s_cos = np.zeros(big_l); c_cos = np.zeros(big_l)
    undefined = 0
    for states, mask in batches:
        b, t = mask.shape
        for i in range(b):
            pos = [p for p in range(t) if mask[i, p]]
            for p in pos:
                for l in range(big_l):
                    for n in range(1, big_l - l + 1):
                        x = states[l][i, p].double().numpy()
                        y = states[l + n][i, p].double().numpy()
                        nx, ny = np.linalg.norm(x), np.linalg.norm(y)
                        if nx == 0 or ny == 0:
                            undefined += 1
                            continue
                        c = min(1.0, max(-1.0, float(x @ y / (nx * ny))))
                        d = math.acos(c) / math.pi
                        s_all[l, n] += d; c_all[l, n] += 1
                        if n == 1:
                            s_cos[l] += c; c_cos[l] += 1
                        if p == pos[-1]:
                            s_last[l, n] += d; c_last[l, n] += 1
    with np.errstate(invalid="ignore"):
        return s_all / c_all, s_last / c_last, 1 - s_cos / c_cos, undefined, c_all


def test_accumulator_matches_slow_loop_padding_and_zero_vectors():
    g = torch.Generator().manual_seed(1)
    big_l, d = 3, 6
    batches = []
    for b, t in [(3, 5), (2, 4)]:
        states = [torch.randn(b, t, d, generator=g) for _ in range(big_l + 1)]
        mask = torch.ones(b, t, dtype=torch.bool)
        mask[0, 3:] = False  # right padding
        mask[1, :1] = False  # left padding
        batches.append((states, mask))
    # padding holds garbage (huge values): it must not leak into any score
    for states, mask in batches:
        for s in states:
            s[~mask] = 1e6
    # a zero vector at a counted position of layer 2 (also the last token of sequence 0)
    batches[0][0][2][0, 2] = 0.0
    batches[1][0][0][1, 1] = 0.0
    acc = RedundancyAccumulator(big_l)
    for states, mask in batches:
        acc.update(states, mask)
    res = acc.result("text", "all")
    ref_all, ref_last, ref_bi, ref_undef, ref_count = _slow_reference(batches, big_l)
    np.testing.assert_allclose(res.distance_all, ref_all, atol=1e-12, equal_nan=True)
    np.testing.assert_allclose(res.distance_last, ref_last, atol=1e-12, equal_nan=True)
    np.testing.assert_allclose(res.bi, ref_bi, atol=1e-12)
    np.testing.assert_array_equal(res.count_all, ref_count)
    assert res.n_undefined == ref_undef > 0
    assert res.n_tokens == int(sum(m.sum() for _, m in batches))
    assert res.n_sequences == 5
    assert np.isnan(res.distance_all[:, 0]).all() and np.isnan(res.distance_all[1, big_l])
    assert np.isfinite(res.distance_all[0, 1:]).all()


@pytest.mark.parametrize("chunk", [1, 3, 7])
def test_accumulator_chunks_and_stacked_buffer_give_the_same_sums(chunk):
    # 19 tokens in chunks of 1, 3 or 7 (the last chunk short), fed as a list and as one
    # [L+1, N, D] buffer, in float32 and float64, against a single float64 block.
    g = torch.Generator().manual_seed(4)
    big_l, n_tok, d = 4, 19, 5
    tokens = torch.randn(big_l + 1, n_tok, d, generator=g, dtype=torch.float64)
    tokens[2, 5] = 0.0  # an undefined direction inside a chunk
    last = torch.tensor([3, 11, 18])

    def run(tok, ch):
        acc = RedundancyAccumulator(big_l, chunk_tokens=ch)
        acc.update_tokens(tok, last, n_sequences=3)
        return acc.result("text", "all")

    ref = run(list(tokens), 10_000)
    for tok, atol in ((list(tokens), 1e-13), (tokens, 1e-13), (tokens.float(), 1e-6)):
        res = run(tok, chunk)
        np.testing.assert_allclose(res.distance_all, ref.distance_all, atol=atol,
                                   equal_nan=True)
        np.testing.assert_allclose(res.distance_last, ref.distance_last, atol=atol,
                                   equal_nan=True)
        np.testing.assert_allclose(res.bi, ref.bi, atol=atol)
        np.testing.assert_array_equal(res.count_all, ref.count_all)
        np.testing.assert_array_equal(res.count_last, ref.count_last)
        assert res.n_undefined == ref.n_undefined == big_l


def test_accumulator_rejects_bad_chunk_size():
    with pytest.raises(CompanionError, match="chunk_tokens=0"):
        RedundancyAccumulator(2, chunk_tokens=0)


def test_accumulator_rejects_only_padding():
    acc = RedundancyAccumulator(2)
    states = [torch.randn(2, 3, 4) for _ in range(3)]
    with pytest.raises(CompanionError, match="no counted tokens"):
        acc.update(states, torch.zeros(2, 3, dtype=torch.bool))


# ---------------------------------------------------------------- indexing convention


def test_hook_indexing_convention(lm):
    model, tok = lm
    ids = tok(["hello world"], return_tensors="pt").input_ids
    big_l = len(find_decoder_layers(model))
    norm_in = {}
    handle = model.model.norm.register_forward_pre_hook(
        lambda mod, args: norm_in.__setitem__("x", args[0]))
    try:
        with torch.no_grad(), capture_hidden_states(model) as st:
            out = model.model(input_ids=ids, output_hidden_states=True)
    finally:
        handle.remove()
    hs = out.hidden_states
    assert sorted(st) == list(range(big_l + 1)) and len(hs) == big_l + 1
    torch.testing.assert_close(st[0], model.get_input_embeddings()(ids))
    for l in range(big_l):
        torch.testing.assert_close(st[l], hs[l])
    # h_L is the last layer's output BEFORE the final norm = the input of the norm ...
    torch.testing.assert_close(st[big_l], norm_in["x"])
    # ... whereas transformers' hidden_states[L] is taken after the norm
    assert not torch.allclose(st[big_l], hs[big_l], atol=1e-3)
    torch.testing.assert_close(hs[big_l], out.last_hidden_state)


def test_score_text_matches_naive_all_layers_reference(lm):
    model, tok = lm
    big_l = len(find_decoder_layers(model))
    res = score_text(model, tok, TEXTS, batch_size=3)  # batches mix lengths -> padding
    # Naive: one unpadded text at a time, all states in memory, python loops.
    s_all = np.zeros((big_l + 1, big_l + 1)); c_all = np.zeros_like(s_all)
    s_last = np.zeros_like(s_all); c_last = np.zeros_like(s_all)
    cos1 = np.zeros(big_l); n_tok = 0
    for text in TEXTS:
        ids = tok([text], return_tensors="pt").input_ids
        pre = {}
        h = model.model.norm.register_forward_pre_hook(
            lambda mod, args: pre.__setitem__("x", args[0]))
        with torch.no_grad():
            out = model.model(input_ids=ids, output_hidden_states=True)
        h.remove()
        states = [x[0].double() for x in out.hidden_states[:big_l]] + [pre["x"][0].double()]
        t = ids.shape[1]
        n_tok += t
        for p in range(t):
            for l in range(big_l):
                for n in range(1, big_l - l + 1):
                    c = float(torch.nn.functional.cosine_similarity(
                        states[l][p], states[l + n][p], dim=0))
                    d = math.acos(max(-1.0, min(1.0, c))) / math.pi
                    s_all[l, n] += d; c_all[l, n] += 1
                    if n == 1:
                        cos1[l] += c
                    if p == t - 1:
                        s_last[l, n] += d; c_last[l, n] += 1
    with np.errstate(invalid="ignore"):
        ref_all, ref_last = s_all / c_all, s_last / c_last
    np.testing.assert_allclose(res.distance_all, ref_all, atol=1e-5, equal_nan=True)
    np.testing.assert_allclose(res.distance_last, ref_last, atol=1e-5, equal_nan=True)
    np.testing.assert_allclose(res.bi, 1 - cos1 / c_all[:big_l, 1], atol=1e-5)
    assert res.n_tokens == n_tok and res.n_sequences == len(TEXTS) and res.n_undefined == 0
    assert res.input_kind == "text"


# ---------------------------------------------------------------- CKA


def _cka_direct(x, y):
    x = x - x.mean(0); y = y - y.mean(0)
    return float(torch.linalg.matrix_norm(y.T @ x) ** 2
                 / (torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)))


def test_cka_streaming_properties_and_direct_formula():
    g = torch.Generator().manual_seed(0)
    d = 8
    x = torch.randn(200, d, generator=g, dtype=torch.float64) @ torch.randn(d, d, generator=g,
                                                                            dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    rand = torch.randn(200, d, generator=g, dtype=torch.float64)
    mixed = x + 2.0 * rand
    states = [x, x.clone(), x @ q, rand, mixed]  # 4 "layers" -> 5 hidden states
    pairs = [(0, 1), (0, 2), (0, 3), (0, 4), (2, 4)]
    acc = RedundancyAccumulator(4, cka_pairs=pairs)
    for s in range(0, 200, 64):  # streamed in uneven batches, as [1, N, D] with a full mask
        chunk = [st[s: s + 64].unsqueeze(0) for st in states]
        acc.update(chunk, torch.ones(1, chunk[0].shape[1], dtype=torch.bool))
    cka = acc.result("text", "all").cka
    assert cka[(0, 1)] == pytest.approx(1.0, abs=1e-10)
    assert cka[(0, 2)] == pytest.approx(1.0, abs=1e-10)  # invariant to orthogonal rotation
    assert cka[(0, 3)] < 0.15  # independent random
    for i, j in pairs:
        assert cka[(i, j)] == pytest.approx(_cka_direct(states[i], states[j]), abs=1e-10)
    assert 0.15 < cka[(0, 4)] < 0.95


def test_cka_pairs_on_model(lm):
    model, tok = lm
    big_l = len(find_decoder_layers(model))
    res = score_text(model, tok, TEXTS[:2], cka_pairs="default")
    assert set(res.cka) == set(default_cka_pairs(big_l))
    assert all(0.0 <= v <= 1.0 + 1e-9 for v in res.cka.values())
    assert score_text(model, tok, TEXTS[:2]).cka == {}
    with pytest.raises(CompanionError, match="out of range"):
        score_text(model, tok, TEXTS[:2], cka_pairs=[(0, big_l + 1)])


# ---------------------------------------------------------------- speech inputs


def test_score_speech_counts_positions(speech_model, random_features):
    data = random_features()
    # Positions counted from the prompt strings and the tokenizer, not from build_inputs:
    # audio = ceil(frames / stack); text = "<audio>" with BOS, "</audio> Transcribe the
    # audio:", then " transcript" and EOS.
    tok, stack = speech_model.tokenizer, speech_model.projector.stack
    prefix = len(tok("<audio>", add_special_tokens=True).input_ids)
    suffix = len(tok("</audio> Transcribe the audio:", add_special_tokens=False).input_ids)
    audio = sum(-(-len(f) // stack) for f in data.feats)
    target = sum(len(tok(" " + u.text, add_special_tokens=False).input_ids) + 1
                 for u in data.utterances)
    text = len(data) * (prefix + suffix) + target
    counts = {"all": audio + text, "audio": audio, "text": text}
    results = {}
    for pos in counts:
        r = score_speech(speech_model, data, batch_size=2, positions=pos)
        assert r.n_tokens == counts[pos], pos
        assert r.n_sequences == len(data) and r.input_kind == "speech" and r.positions == pos
        assert np.isfinite(r.distance_last[0, 1:]).all()
        results[pos] = r
    # "all" is the token-weighted mix of "audio" and "text"
    mix = (results["audio"].distance_all * counts["audio"]
           + results["text"].distance_all * counts["text"]) / counts["all"]
    np.testing.assert_allclose(results["all"].distance_all, mix, atol=1e-9, equal_nan=True)
    # without targets only the prompt's text positions are left
    r = score_speech(speech_model, data, batch_size=2, positions="text", with_targets=False)
    assert r.n_tokens == len(data) * (prefix + suffix)


def test_score_text_accepts_speechllm(speech_model):
    r = score_text(speech_model, None, TEXTS[:2], positions="text")
    r2 = score_text(speech_model.decoder, speech_model.tokenizer, TEXTS[:2])
    np.testing.assert_allclose(r.distance_all, r2.distance_all, equal_nan=True)


# ---------------------------------------------------------------- result object


def test_result_frame_best_blocks_save_load_agreement(lm, tmp_path):
    model, tok = lm
    r = score_text(model, tok, TEXTS, cka_pairs="default")
    big_l = r.n_layers
    df = r.to_frame()
    assert set(df["metric"]) == {"angular_last", "angular_all", "block_influence", "cka"}
    n_cells = big_l * (big_l + 1) // 2
    assert (df["metric"] == "angular_last").sum() == n_cells
    assert df["value"].notna().all()
    best = r.best_blocks()
    assert best["block_size"].tolist() == list(range(1, big_l + 1))
    for row in best.itertuples():
        n = int(row.block_size)
        col = [r.distance_last[l, n] for l in range(big_l - n + 1)]
        assert row.start == int(np.argmin(col)) and row.end == row.start + n
        assert row.distance == pytest.approx(min(col))
    path = r.save(tmp_path / "r.json", {"seed": 0})
    back = RedundancyResult.load(path)
    np.testing.assert_allclose(back.distance_last, r.distance_last, equal_nan=True)
    np.testing.assert_allclose(back.bi, r.bi)
    assert back.cka == pytest.approx(r.cka) and back.provenance == {"seed": 0}
    assert back.n_tokens == r.n_tokens and back.positions == r.positions
    same = agreement(r, back)
    assert same["spearman_pooled"] == pytest.approx(1.0) and same["overlap_mean"] == 1.0
    assert same["spearman_per_n_mean"] == pytest.approx(1.0)
    assert same["n_cells"] == n_cells
    other = score_text(model, tok, ["zz qq", "ab"], batch_size=1)
    ag = agreement(r, other, metric="angular_all")
    for n, ov in ag["overlap"].items():
        la, lb = ag["blocks_a"][n], ag["blocks_b"][n]
        assert ov == len(set(range(la, la + n)) & set(range(lb, lb + n))) / n
    # Spearman by hand over the cells valid in both (no ties among float distances):
    # rho = 1 - 6 sum(d^2) / (m (m^2 - 1)), d the difference of the two ranks.
    sa, sb = r.distance_all.ravel(), other.distance_all.ravel()
    ok = np.isfinite(sa) & np.isfinite(sb)
    ranks_a = np.argsort(np.argsort(sa[ok])).astype(float)
    ranks_b = np.argsort(np.argsort(sb[ok])).astype(float)
    m = int(ok.sum())
    assert ag["n_cells"] == m and len(set(sa[ok])) == m and len(set(sb[ok])) == m
    rho_hand = 1 - 6 * float(((ranks_a - ranks_b) ** 2).sum()) / (m * (m * m - 1))
    assert ag["spearman_pooled"] == pytest.approx(rho_hand, abs=1e-9)
    diff = np.abs(r.distance_all - other.distance_all)
    assert ag["mean_abs_diff"] == pytest.approx(float(np.nanmean(diff)))
    assert ag["max_abs_diff"] == pytest.approx(float(np.nanmax(diff)))
    assert same["mean_abs_diff"] == same["max_abs_diff"] == 0.0


# ---------------------------------------------------------------- ablation


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_ablation_matches_hand_pruned_model_and_restores(speech_model,
                                                        random_features):
    model = speech_model
    data = random_features()
    feats, lengths, texts = data.batch(range(len(data)))
    before = _state(model)
    layers_before = find_decoder_layers(model.decoder)
    cfg = model.decoder.config
    types_before = list(cfg.layer_types)
    with torch.no_grad():
        loss_before = float(model.loss(feats, lengths, texts))
    n = 2
    df = block_profile(LossMeter(model, data, batch_size=2, min_utterances=1), n).frame()
    big_l = len(layers_before)
    assert df["start"].tolist() == [-1] + list(range(big_l - n + 1))
    assert df.iloc[0]["loss"] == pytest.approx(loss_before, rel=1e-5)
    # Reference: deep copy, delete the layers by hand, renumber, fix the config.
    for l in range(big_l - n + 1):
        ref = copy.deepcopy(model)
        owner = ref.decoder.get_base_model().model
        keep = [i for i in range(big_l) if not l <= i < l + n]
        owner.layers = nn.ModuleList([owner.layers[i] for i in keep])
        for j, layer in enumerate(owner.layers):
            layer.self_attn.layer_idx = j
        ref.decoder.config.num_hidden_layers = len(keep)
        ref.decoder.config.layer_types = [types_before[i] for i in keep]
        tot = 0.0; ntok = 0
        for s in range(0, len(data), 2):
            f, ln, tx = data.batch(list(range(s, min(s + 2, len(data)))))
            k = int((ref.build_inputs(f, ln, tx)["labels"] != -100).sum())
            with torch.no_grad():
                tot += float(ref.loss(f, ln, tx)) * k
            ntok += k
        assert df.iloc[l + 1]["loss"] == pytest.approx(tot / ntok, rel=1e-5), l
        assert df.iloc[l + 1]["loss"] != pytest.approx(loss_before, rel=1e-6)
    # the original model is unchanged: weights, layer list, indices, config, outputs
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert find_decoder_layers(model.decoder) is layers_before
    assert [ly.self_attn.layer_idx for ly in layers_before] == list(range(big_l))
    assert cfg.num_hidden_layers == big_l and list(cfg.layer_types) == types_before
    with torch.no_grad():
        assert float(model.loss(feats, lengths, texts)) == loss_before
    # rank agreement: Spearman over l between d(l, n) and the ablation loss
    r = score_speech(model, data, batch_size=2)
    rho = rank_agreement(df, r, n)
    d = np.array([r.distance_last[l, n] for l in range(big_l - n + 1)])
    loss = df["loss"].to_numpy()[1:]
    assert np.isfinite(d).all() and len(set(d)) == len(d) and len(set(loss)) == len(loss)
    k = len(d)
    rank_d, rank_loss = np.argsort(np.argsort(d)), np.argsort(np.argsort(loss))
    rho_hand = 1 - 6 * float(((rank_d - rank_loss) ** 2).sum()) / (k * (k * k - 1))
    assert rho == pytest.approx(rho_hand, abs=1e-9)


def test_skip_block_restores_on_error(speech_model):
    layers = find_decoder_layers(speech_model.decoder)
    with pytest.raises(RuntimeError):
        with skip_block(speech_model.decoder, 1, 2):
            assert len(find_decoder_layers(speech_model.decoder)) == len(layers) - 2
            raise RuntimeError("boom")
    assert find_decoder_layers(speech_model.decoder) is layers
    assert speech_model.decoder.config.num_hidden_layers == len(layers)


# ---------------------------------------------------------------- errors


def test_errors(lm, speech_model, random_features):
    model, tok = lm
    with pytest.raises(CompanionError, match="empty list"):
        score_text(model, tok, [])
    with pytest.raises(CompanionError, match="text 1 is empty"):
        score_text(model, tok, ["ok", "  "])
    with pytest.raises(CompanionError, match="positions"):
        score_text(model, tok, ["ok"], positions="audio")
    with pytest.raises(CompanionError, match="Linear"):
        score_text(nn.Linear(3, 3), tok, ["ok"])
    with pytest.raises(CompanionError):
        score_speech(nn.Linear(3, 3), random_features())
    with pytest.raises(CompanionError, match="empty feature set"):
        score_speech(speech_model, FeatureSet([], []))
    data = random_features(2)
    data.feats[1] = data.feats[1][:0]
    with pytest.raises(CompanionError, match="u1"):
        score_speech(speech_model, data)
    full = random_features(2)
    for bad in (0, 4, 7):
        with pytest.raises(CompanionError, match="out of range"):
            block_profile(LossMeter(speech_model, full, min_utterances=1), bad)
    r = score_text(model, tok, ["ok"])
    with pytest.raises(CompanionError, match="out of range"):
        rank_agreement(block_profile(LossMeter(speech_model, full, min_utterances=1), 1).frame(),
                       r, 9)
    with pytest.raises(CompanionError):
        agreement(r, _other_depth())


def _other_depth():
    acc = RedundancyAccumulator(2)
    acc.update([torch.randn(1, 3, 4) for _ in range(3)], torch.ones(1, 3, dtype=torch.bool))
    return acc.result("text", "all")


def test_ablation_summary_by_hand():
    import pandas as pd

    big_l, n = 5, 2
    surf = np.full((big_l + 1, big_l + 1), np.nan)
    surf[:, n] = [0.30, 0.10, 0.20, 0.40, np.nan, np.nan]  # the score picks l = 1
    r = RedundancyResult(n_layers=big_l, distance_last=surf, distance_all=surf,
                         bi=np.zeros(big_l), cka={}, n_tokens=1, n_sequences=1,
                         n_undefined=0, input_kind="speech", positions="all")
    loss = {0: 5.0, 1: 3.5, 2: 3.2, 3: 6.0}  # removal: l = 2 is least harmful, l = 1 second
    df = pd.DataFrame([(-1, -1, 0, 3.0, 0.0, 10)] +
                      [(l, l + n, n, v, v - 3.0, 10) for l, v in loss.items()],
                      columns=["start", "end", "block_size", "loss", "delta", "n_tokens"])
    s = ablation_summary(df, r, n)
    assert s["chosen_start"] == 1 and s["chosen_rank"] == 2 and s["n_blocks"] == 4
    assert s["chosen_delta"] == pytest.approx(0.5)
    assert s["best_start"] == 2 and s["best_delta"] == pytest.approx(0.2)
    # d order 1 < 2 < 0 < 3 against loss order 2 < 1 < 0 < 3: Spearman 1 - 6*2/(4*15) = 0.8
    assert s["spearman"] == pytest.approx(0.8)
    with pytest.raises(CompanionError, match="no rows for block size 3"):
        ablation_summary(df, r, 3)
