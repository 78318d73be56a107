"""Model names -> folders: offline aliases, tiny models, local folders, hub ids.

:func:`resolve_model` says in one line what to do when a name cannot be loaded here
(no hub, not cached). Stage: building the SpeechLLM. Explained in chapter 1
(book/01_building_a_speechllm.ipynb).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

from lib.assets.offline import ensure_model
from lib.assets.registry import OFFLINE_MODELS, TINY_MODELS
from lib.assets.tiny import ensure_tiny
from lib.errors import CompanionError


HUB_PROBE_TIMEOUT_S = 3.0
# ------------------------------------------------------------------------ resolution


def _hub_offline_flag() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is set (now, or when huggingface_hub loaded)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return env in {"1", "ON", "YES", "TRUE"} or bool(constants.HF_HUB_OFFLINE)


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub endpoint opens within ``timeout`` s.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    DNS and connect run in a daemon thread, so a hanging resolver cannot hold the
    caller longer than ``timeout``.

    Args:
        timeout: Seconds to wait at most.

    Returns:
        True when the endpoint answered.
    """
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme != "http" else 80)
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            ok.append(False)

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(ok and ok[0])


def _in_hf_cache(repo_id: str) -> bool:
    """Whether the local HF cache already holds ``repo_id``'s config."""
    from huggingface_hub import try_to_load_from_cache

    for name in ("config.json", "preprocessor_config.json"):
        with contextlib.suppress(Exception):
            hit = try_to_load_from_cache(repo_id, name)
            if isinstance(hit, str):
                return True
    return False


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_model(name_or_path: str) -> str:
    """Turn a model name into something ``from_pretrained`` can load here.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    * an offline alias (``"smollm2-135m"``) -> its converted folder;
    * a tiny alias (``"tiny-llama"``) -> its folder;
    * a local folder holding a ``config.json`` -> itself;
    * a hub id (``"meta-llama/Llama-3.2-1B"``) -> itself, when it is in the local HF
      cache or the hub answers within a few seconds; otherwise a fast, clear error.

    Args:
        name_or_path: Alias, folder or hub id.

    Returns:
        A folder path or a hub id, as a string.

    Raises:
        CompanionError: For an unknown alias, a missing folder, a folder that is not a
            checkpoint (no ``config.json``), or a hub id that cannot be reached.
    """
    name = str(name_or_path).strip()
    if name in OFFLINE_MODELS:
        return str(ensure_model(name))
    if name in TINY_MODELS:
        return str(ensure_tiny(name))
    path = Path(name).expanduser()
    known = ", ".join([*OFFLINE_MODELS, *TINY_MODELS])
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CompanionError(
                f"Model folder {name!r} is not a transformers checkpoint (it has no "
                f"config.json): pass a folder written by save_pretrained, a hub id, or one "
                f"of: {known}."
            )
        return str(path)
    looks_like_path = name.startswith((".", "/", "~")) or os.sep in name.strip("/")
    if not _HUB_ID.match(name):
        if looks_like_path:
            raise CompanionError(
                f"Model folder {name!r} does not exist; pass a folder written by "
                f"save_pretrained, a hub id, or one of: {known}."
            )
        raise CompanionError(f"Unknown model alias {name!r}; known aliases: {known}.")
    if _in_hf_cache(name):
        return name
    reason = (
        "HF_HUB_OFFLINE=1 is set"
        if _hub_offline_flag()
        else None if hub_reachable() else "the Hugging Face hub cannot be reached"
    )
    if reason is None:
        return name
    raise CompanionError(
        f"Cannot load hub model {name!r}: {reason} and it is not in the local HF "
        f"cache; pass a local folder written by save_pretrained instead, or one of "
        f"the offline aliases: {known}."
    )
