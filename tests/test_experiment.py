"""Chapter-level helpers: scores saved beside a run reload with their provenance."""

from __future__ import annotations

import pandas as pd

from lib.score.records import save_scores
from lib.score.redundancy import score_text
from lib.score.stats import RedundancyResult
from lib.build.components import load_decoder


def test_save_scores_round_trip(tmp_path):
    llm, tok = load_decoder("tiny-llama")
    res = score_text(llm, tok, ["the cat sat on the mat", "a dog"], batch_size=2)
    out = save_scores({"text, pretrained LLM": res}, tmp_path)
    back = RedundancyResult.load(out / "text-pretrained-LLM.json")
    assert back.n_tokens == res.n_tokens
    assert ((back.distance_last == res.distance_last) | pd.isna(res.distance_last)).all()
    table = pd.read_csv(out / "scores.csv")
    assert set(table["input"]) == {"text, pretrained LLM"}
    assert {"layer", "block_size", "metric", "value"} <= set(table.columns)
    import json
    prov = json.loads((out / "text-pretrained-LLM.json").read_text())["provenance"]
    assert "git_hash" in prov and "versions" in prov


def test_training_change_is_zero_for_untrained_adapters_and_grows_with_them():
    """LoRA's B starts at zero: the trained decoder is then the pretrained LLM, exactly."""
    import pytest
    import torch

    from lib.config.sections import ModelConfig
    from lib.recipes.ch02 import training_change
    from lib.build.speechllm import build_speechllm
    from lib.build.adapters import pretrained_decoder

    m = build_speechllm(ModelConfig(encoder="tiny-whisper", decoder="tiny-llama",
                                    projector_hidden=8, lora_rank=4), seed=0)
    m.eval()
    texts = ["the cat sat on the mat", "a dog ran", "one two three four"]

    def scores():
        with pretrained_decoder(m):
            pre = score_text(m, None, texts, batch_size=2)
        return pre, score_text(m, None, texts, batch_size=2)

    pre, trained = scores()
    row = training_change(m, pre, trained, trained)
    assert row["adapted matrices"] == 4 * len(m.decoder_layers)
    assert row["update, mean (%)"] == row["update, max (%)"] == 0.0
    assert row["|Δd| training, mean"] == row["|Δd| training, max"] == 0.0
    d = pre.distance_last[:, 1:]
    assert row["spread of d"] == pytest.approx(float(pd.DataFrame(d).max().max()
                                                     - pd.DataFrame(d).min().min()))
    with torch.no_grad():
        for name, p in m.decoder.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    pre2, trained2 = scores()
    row2 = training_change(m, pre2, trained2, pre2)
    assert row2["update, mean (%)"] > 0 and row2["|Δd| training, mean"] > 0
    assert row2["|Δd| text → speech, mean"] == pytest.approx(row2["|Δd| training, mean"])
