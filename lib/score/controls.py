"""Null inputs: what a decoder's redundancy surface looks like for inputs that carry no task.

Shuffling a surface over the start layer is a weak chance level: any two inputs to the same
decoder may mark the same blocks simply because the decoder does. These controls give that
floor directly: the surface of random token ids read as text, and of Gaussian noise where
the audio features go (through the projector, with no target), scored on the same numbers
of utterances and tokens as the real inputs. An agreement between two real inputs means
something about them only where it exceeds what a null input already reaches
(:func:`lib.report.rules.null_share`).

Stage: redundancy scores (controls). Explained in chapter 5
(book/05_tasks_and_languages.ipynb), and applied to chapter 2's comparisons there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from lib.score.redundancy import agreement, score_speech, score_text
from lib.score.stats import RedundancyResult

if TYPE_CHECKING:
    from lib.build.speechllm import SpeechLLM
    from lib.data.features import FeatureSet

NULL_INPUTS = ("random tokens", "noise audio")
"""The two null inputs, in the order the pages show them."""


def random_texts(tokenizer: Any, texts: list[str], seed: int = 0) -> list[str]:
    """For each text, as many random token ids as it has tokens, decoded back to a string
    (ids drawn from the ordinary vocabulary: no special tokens)."""
    g = torch.Generator().manual_seed(seed)
    special = set(getattr(tokenizer, "all_special_ids", []))
    out = []
    for t in texts:
        n = max(1, len(tokenizer(t, add_special_tokens=False).input_ids))
        ids = torch.randint(0, len(tokenizer), (4 * n,), generator=g).tolist()
        ids = [i for i in ids if i not in special][:n]
        out.append(tokenizer.decode(ids).strip() or tokenizer.decode([ids[0]]) or "x")
    return out


def noise_features(data: "FeatureSet", seed: int = 0) -> "FeatureSet":
    """The same utterances with Gaussian noise of each clip's length and the features'
    overall mean and spread in place of its features."""
    from lib.data.features import FeatureSet

    g = torch.Generator().manual_seed(seed)
    flat = torch.cat([f.float() for f in data.feats])
    mean, std = float(flat.mean()), float(flat.std())
    feats = [(torch.randn(f.shape, generator=g) * std + mean).to(f.dtype) for f in data.feats]
    return FeatureSet(data.utterances, feats)


def null_surfaces(model: "SpeechLLM", data: "FeatureSet", texts: list[str],
                  batch_size: int = 8, seed: int = 0) -> dict[str, RedundancyResult]:
    """The surfaces of the two null inputs (:data:`NULL_INPUTS`) for ``model``:
    random tokens through its decoder (transcript positions) and noise audio through the
    whole SpeechLLM (every position, no target)."""
    return {
        "random tokens": score_text(model, None, random_texts(model.tokenizer, texts, seed),
                                    batch_size=batch_size, positions="transcript"),
        "noise audio": score_speech(model, noise_features(data, seed), batch_size=batch_size,
                                    positions="all", with_targets=False),
    }


def null_agreement(result: RedundancyResult, nulls: dict[str, RedundancyResult],
                   draws: int = 0, seed: int = 0) -> dict[str, dict[str, Any]]:
    """:func:`lib.score.redundancy.agreement` of ``result`` with each null input."""
    return {name: agreement(result, null, chance_draws=draws, seed=seed)
            for name, null in nulls.items()}
