"""Named data sources, so a chapter parameter can say where its speech comes from.

=============================  =========================================================
``synthetic:train`` / ``:test``  the offline synthetic corpus (built once, lib.data.corpus)
``real``                         the 10 real pocketsphinx-testdata utterances
``librispeech:<folder>``         a LibriSpeech split folder (or root + ``#split[,split]``)
``manifest:<file.jsonl>``        a manifest; ``#<split>`` keeps one split
=============================  =========================================================

Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

Stage: data.
"""

from __future__ import annotations

from lib.data.corpus import ensure_synthetic_corpus
from lib.data.spec import CorpusSpec
from lib.data.loaders import Utterance, load_librispeech, load_manifest, load_real_testset
from lib.errors import CompanionError

FORMS = "synthetic:train, synthetic:test, real, librispeech:<folder>[#split], " \
        "manifest:<file.jsonl>[#split]"


def load_source(name: str, corpus: CorpusSpec | None = None) -> list[Utterance]:
    """The utterances a source name stands for.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Args:
        name: a source name (table above).
        corpus: the synthetic corpus spec (sizes, seed) for ``synthetic:*``.

    Raises:
        CompanionError: unknown form, or a source with no utterances.
    """
    kind, _, rest = name.partition(":")
    path, _, split = rest.partition("#")
    if kind == "synthetic" and rest in {"train", "test"}:
        manifest = ensure_synthetic_corpus(corpus or CorpusSpec())
        utts = [u for u in load_manifest(manifest) if u.split == rest]
    elif name == "real":
        utts = load_real_testset()
    elif kind == "librispeech" and path:
        splits = [x for x in split.split(",") if x] or [None]
        utts = [u for sp in splits for u in load_librispeech(path, sp)]
    elif kind == "manifest" and path:
        utts = load_manifest(path)
        if split:
            utts = [u for u in utts if u.split == split]
    else:
        raise CompanionError(f"unknown data source '{name}': use one of {FORMS}")
    if not utts:
        raise CompanionError(f"data source '{name}' has no utterances: check its path/split")
    return utts
