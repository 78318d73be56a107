"""Chapter-level helpers: scores saved beside a run reload with their provenance."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd

from lib.experiment import save_scores
from lib.redundancy import RedundancyResult, score_text
from lib.speechllm import load_decoder


def test_save_scores_round_trip(tmp_path):
    llm, tok = load_decoder("tiny-llama")
    res = score_text(llm, tok, ["the cat sat on the mat", "a dog"], batch_size=2)
    run = SimpleNamespace(train=SimpleNamespace(run_dir=tmp_path))
    out = save_scores({"text, pretrained LLM": res}, run, {"note": "test"})
    back = RedundancyResult.load(out / "text-pretrained-LLM.json")
    assert back.n_tokens == res.n_tokens
    assert ((back.distance_last == res.distance_last) | pd.isna(res.distance_last)).all()
    table = pd.read_csv(out / "scores.csv")
    assert set(table["input"]) == {"text, pretrained LLM"}
    assert {"layer", "block_size", "metric", "value"} <= set(table.columns)
    import json
    prov = json.loads((out / "text-pretrained-LLM.json").read_text())["provenance"]
    assert prov["config"] == {"note": "test"} and "git_hash" in prov
