"""Named data sources, so a chapter parameter can say where its speech comes from.

=============================  =========================================================
``synthetic:train`` / ``:test``  the offline synthetic corpus (built once, lib.data.corpus)
``real`` / ``real:<source>``     real recordings from Debian packages (lib.data.real);
                                 ``real:dev`` the held-out prompts that choose a recipe
``librispeech:<folder>``         a LibriSpeech split folder (or root + ``#split[,split]``)
``manifest:<file.jsonl>``        a manifest; ``#<split>`` keeps one split
``covost2:<root>#<pair>:<split>``  one split of a CoVoST 2 pair (lib.data.covost), e.g.
                                 ``covost2:/data/cv/fr#fr_en:test``
=============================  =========================================================

:func:`shared_sources` finds a test source that holds utterances of the training source
(the same split named two ways, a manifest and one of its splits), which chapter 1's config
warns about.

Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

Stage: data.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from lib.data.corpus import ensure_synthetic_corpus
from lib.data.spec import CorpusSpec
from lib.data.loaders import Utterance, load_librispeech, load_manifest
from lib.data.real import REAL_NAMES, load_real
from lib.errors import CompanionError

FORMS = "synthetic:train, synthetic:test, real[:dev|:pocketsphinx|:asterisk|:alsa], " \
        "librispeech:<folder>[#split], " \
        "manifest:<file.jsonl>[#split], covost2:<folder>#<src>_<tgt>:<split>"


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
    elif name in REAL_NAMES:
        utts = load_real(name)
    elif kind == "librispeech" and path:
        splits = [x for x in split.split(",") if x] or [None]
        utts = [u for sp in splits for u in load_librispeech(path, sp)]
    elif kind == "covost2" and path and ":" in split:
        from lib.data.covost import load_covost

        pair, _, part = split.partition(":")
        utts = load_covost(path, pair, part)
    elif kind == "manifest" and path:
        utts = load_manifest(path)
        if split:
            utts = [u for u in utts if u.split == split]
    else:
        raise CompanionError(f"unknown data source '{name}': use one of {FORMS}")
    if not utts:
        raise CompanionError(f"data source '{name}' has no utterances: check its path/split")
    return utts


class DataOverlapWarning(UserWarning):
    """The training data and a test set share utterances (one line naming both)."""


def _locations(source: str) -> set[str]:
    """Where a data source's utterances live, as normalised ``where#what`` strings.

    ``librispeech:<root>#a,b`` becomes one location per split folder, so that a root with
    ``#test-clean`` and the ``test-clean`` folder itself are the same location.
    """
    if source.strip() == "real":  # every real test source (real:dev is apart)
        return {name for name in REAL_NAMES if name not in {"real", "real:dev"}}
    kind, _, rest = source.strip().partition(":")
    path, _, split = rest.partition("#")
    if kind not in {"librispeech", "manifest"} or not path:
        return {source.strip()}  # synthetic:train, synthetic:test, real, unknown forms
    full = os.path.abspath(os.path.expanduser(path))
    splits = [x.strip() for x in split.split(",") if x.strip()]
    if kind == "librispeech":
        return {os.path.join(full, x) for x in splits} if splits else {full}
    return {f"{full}#{x}" for x in splits} if splits else {full}


def _overlaps(a: str, b: str) -> bool:
    """Two locations share utterances: equal, one inside the other, or a whole manifest."""
    if a == b:
        return True
    a_file, b_file = a.split("#")[0], b.split("#")[0]
    if a_file == b_file and ("#" not in a or "#" not in b):  # a whole manifest and a split
        return True
    if "#" in a or "#" in b:
        return False
    return a.startswith(b.rstrip(os.sep) + os.sep) or b.startswith(a.rstrip(os.sep) + os.sep)


def shared_sources(train_data: str, test_data: Sequence[str]) -> list[str]:
    """The test sources that hold utterances of the training source.

    The same name twice (``real`` and ``real``), the same LibriSpeech split named as the
    root with ``#split`` or as its folder, a whole manifest and one of its splits.

    Args:
        train_data: the training data source (a :mod:`lib.data.sources` name).
        test_data: the test data sources.

    Returns:
        The overlapping test sources, in the order given.
    """
    train = _locations(train_data)
    return [test for test in test_data
            if any(_overlaps(a, b) for a in train for b in _locations(test))]
