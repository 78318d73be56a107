"""Parameter counts of the paper's models against a by-hand formula."""

from __future__ import annotations

import pytest

from lib.build.model_configs import PAPER_DECODERS, count_on_meta, make_config, split_table


def _by_hand(c: dict) -> int:
    """Llama/Qwen2 parameter count written out: embeddings, attention, MLP, norms, head."""
    d, L, inter, V = c["hidden_size"], c["num_hidden_layers"], c["intermediate_size"], \
        c["vocab_size"]
    h, kv = c["num_attention_heads"], c["num_key_value_heads"]
    hd = c.get("head_dim", d // h)
    attn = d * h * hd + 2 * d * kv * hd + h * hd * d
    if c["model_type"] == "qwen2":  # q, k, v carry biases
        attn += h * hd + 2 * kv * hd
    mlp = 3 * d * inter
    per_layer = attn + mlp + 2 * d  # two RMSNorms
    head = 0 if c["tie_word_embeddings"] else V * d
    return V * d + L * per_layer + d + head


@pytest.mark.parametrize("hub_id", list(PAPER_DECODERS))
def test_decoder_counts_match_formula(hub_id):
    fields = PAPER_DECODERS[hub_id]
    assert count_on_meta(make_config(fields)) == _by_hand(fields)


def test_published_sizes():
    # Model cards: Llama 3.1 8B has 8.03B parameters, Qwen2.5-7B 7.61B (7.62 incl. rounding).
    assert round(count_on_meta(make_config(PAPER_DECODERS["meta-llama/Llama-3.1-8B"])) / 1e9,
                 2) == 8.03
    assert round(count_on_meta(make_config(PAPER_DECODERS["Qwen/Qwen2.5-7B"])) / 1e9, 1) == 7.6


def test_split_table_against_independent_counts():
    """Each share from its own reference: the projector and decoder by hand, the encoder
    from the WavLM paper (Chen et al. 2022, Table 1: WavLM Large has 316.62M parameters;
    transformers' WavLMModel without the pre-training heads counts 0.4 % fewer)."""
    df = split_table([("microsoft/wavlm-large", "Qwen/Qwen2.5-7B")], hidden=2048)
    row = df.iloc[0]
    # Linear(1024 * 5 -> 2048) + bias, GELU, Linear(2048 -> 3584) + bias.
    projector = 1024 * 5 * 2048 + 2048 + 2048 * 3584 + 3584
    assert row["projector"] == projector
    assert row["decoder"] == _by_hand(PAPER_DECODERS["Qwen/Qwen2.5-7B"])
    assert row["encoder"] == pytest.approx(316.62e6, rel=0.01)
    total = row["encoder"] + projector + _by_hand(PAPER_DECODERS["Qwen/Qwen2.5-7B"])
    assert row["total"] == total
    assert row["decoder share (%)"] == pytest.approx(
        100 * _by_hand(PAPER_DECODERS["Qwen/Qwen2.5-7B"]) / total)
