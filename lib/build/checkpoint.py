"""Saving and reloading a SpeechLLM: the decoder as a plain transformers checkpoint, the
projector beside it.

:func:`save_speechllm` writes ``decoder/`` with ``save_pretrained`` (adapters merged, so
plain ``AutoModelForCausalLM.from_pretrained`` loads it, pruned or not),
``projector.safetensors`` and ``speechllm.json``; :func:`load_speechllm` reads them back.
Stage: building the SpeechLLM (its checkpoint). Explained in chapter 4
(book/04_healing.ipynb).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from lib.build.speechllm import SpeechLLM
from lib.build.adapters import merge_adapters
from safetensors import SafetensorError

from lib.errors import CompanionError, io_reason
from lib.fileio import (CorruptFile, file_sha256, first_nonfinite, load_json, load_tensors,
                        provenance, save_json, save_tensors)
from lib.build.components import pruned_layers


def save_speechllm(model: "SpeechLLM", folder: Path, overwrite: bool = False,
                   extra: dict[str, Any] | None = None) -> Path:
    """Save a (pruned, healed) SpeechLLM: ``decoder/`` by ``save_pretrained`` (adapters
    merged, so plain transformers loads it), ``projector.safetensors`` and
    ``speechllm.json`` (projector shape, task, encoder features it expects, provenance).

    Written into a temporary folder first and moved in place: a failed save leaves an
    existing folder untouched. An existing folder is replaced only with ``overwrite``.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise CompanionError(f"{folder} is a file, not a folder: save the SpeechLLM into a "
                             "folder (nothing was written)")
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise CompanionError(f"{folder} already exists: pass overwrite=True or choose another "
                             "folder (nothing was written)")
    merge_adapters(model)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write(model, tmp, extra)
    except (OSError, SafetensorError) as err:  # a full disk, a read-only folder
        shutil.rmtree(tmp, ignore_errors=True)
        raise CompanionError(f"could not save the SpeechLLM into {folder} "
                             f"({io_reason(err)}): free space or choose a writable folder "
                             "(nothing was written)") from None
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def _write(model: "SpeechLLM", tmp: Path, extra: dict[str, Any] | None) -> None:
    """Every file of a saved SpeechLLM into ``tmp``; ``speechllm.json`` last, with the
    sha256 of each of the others (``files``), which :func:`check_saved` verifies."""
    tmp.mkdir(parents=True)
    model.decoder.save_pretrained(tmp / "decoder")
    model.tokenizer.save_pretrained(tmp / "decoder")
    save_tensors(tmp / "projector.safetensors",
                 {k: v.detach().cpu().contiguous() for k, v in model.projector.state_dict().items()})
    lin = model.projector.net[0]
    save_json(tmp / "speechllm.json", {
        "projector": {"in_dim": lin.in_features // model.projector.stack,
                      "out_dim": model.projector.net[2].out_features,
                      "stack": model.projector.stack, "hidden": lin.out_features},
        "task": model.task.name, "pruned_layers": pruned_layers(model.decoder),
        **(extra or {}), "files": _file_digests(tmp), "provenance": provenance()})


def _file_digests(folder: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``folder`` but ``speechllm.json``."""
    return {p.relative_to(folder).as_posix(): file_sha256(p)
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "speechllm.json"}


def check_saved(folder: Path) -> dict[str, Any]:
    """The manifest (``speechllm.json``) of a saved SpeechLLM whose files are all there and
    all match the digests written with them, with nothing added to ``decoder/`` (which
    transformers would read); other files beside the model (scores of it) are its users'.

    Raises:
        CompanionError: no manifest, a manifest without digests (saved before they were
            kept), a file missing, added or changed (one line naming the first).
    """
    folder = Path(folder)
    meta_path = folder / "speechllm.json"
    if not meta_path.is_file():
        raise CompanionError(f"{folder} is not a saved SpeechLLM (no speechllm.json): save "
                             "one with lib.build.checkpoint.save_speechllm")
    try:
        meta = load_json(meta_path)
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or not isinstance(meta.get("files"), dict):
        raise CompanionError(f"{meta_path} lists no digests of the model's files (damaged, or "
                             "saved by an older version): save the model again")
    on_disk = _file_digests(folder)  # beside the model, results may be kept (chapter 4's)
    extra = {n for n in on_disk if n.startswith("decoder/")} - set(meta["files"])
    for name in sorted(set(meta["files"]) | extra):
        if name not in on_disk:
            raise CompanionError(f"{folder}: {name} is missing: save the model again")
        if name not in meta["files"]:
            raise CompanionError(f"{folder}: {name} was not saved with the model: remove it "
                                 "or save the model again")
        if on_disk[name] != meta["files"][name]:
            raise CompanionError(f"{folder}: {name} does not match the digest saved with it "
                                 "(damaged or edited): save the model again")
    return meta


def reuse_saved(folder: Path) -> bool:
    """Whether ``folder`` holds an intact saved SpeechLLM a cache may reuse; a damaged one
    is set aside (``<name>.corrupt``, in one line) so the caller saves it again."""
    folder = Path(folder)
    if not folder.exists():
        return False
    try:
        check_saved(folder)
        return True
    except CompanionError as err:
        target = folder.with_name(folder.name + ".corrupt")
        shutil.rmtree(target, ignore_errors=True)
        folder.rename(target)
        reason = str(err).replace(f"{folder}: ", "").replace(str(folder), folder.name)
        print(f"cached model {folder.name} fails its check ({reason}): set aside as "
              f"{target.name} and saved again")
        return False


def load_speechllm(folder: Path, device: str = "cpu") -> "SpeechLLM":
    """Load what :func:`save_speechllm` wrote: the decoder with plain
    ``AutoModelForCausalLM.from_pretrained``, the projector from its weights.

    Strict: the weights must cover exactly the model the configs describe.

    Raises:
        CompanionError: no ``speechllm.json``; a file missing, added or not matching its
            digest (:func:`check_saved`); non-finite decoder weights; a decoder checkpoint
            whose weights miss some
            of the model's, carry others or have other shapes (an edited ``config.json``);
            a projector whose weights do not fit ``speechllm.json`` (one line naming the
            folder and the first mismatching key).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lib.build.components import Projector
    from lib.build.speechllm import SpeechLLM
    from lib.tasks import get_task

    folder = Path(folder)
    meta = check_saved(folder)
    decoder = _strict_decoder(folder / "decoder", AutoModelForCausalLM)
    bad = first_nonfinite(decoder.named_parameters())
    if bad is not None:
        raise CompanionError(f"{folder}: the decoder's {bad} holds NaN or infinite values: "
                             "save the model again")
    tok = AutoTokenizer.from_pretrained(folder / "decoder")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    p = meta["projector"]
    projector = Projector(p["in_dim"], p["out_dim"], p["stack"], p["hidden"])
    try:
        weights = load_tensors(folder / "projector.safetensors")
        own = projector.state_dict()
        bad = next((k for k in sorted(set(own) | set(weights))
                    if k not in own or k not in weights or own[k].shape != weights[k].shape),
                   None)
        if bad is not None:
            raise CompanionError(f"{folder}: the projector's weights do not fit "
                                 f"speechllm.json (first mismatch: {bad}): save the model "
                                 "again rather than editing its files")
        projector.load_state_dict(weights)
    except CorruptFile as err:
        raise CompanionError(f"{err}: save the model again") from None
    model = SpeechLLM(None, projector, decoder, tok, task=get_task(meta["task"]))
    model.requires_grad_(False)
    model.to(device)
    return model.eval()


def _strict_decoder(folder: Path, auto: Any) -> Any:
    """``auto.from_pretrained(folder)`` that refuses, in one line, weights that do not cover
    the model its ``config.json`` describes (missing, unexpected or reshaped keys)."""
    try:
        decoder, info = auto.from_pretrained(folder, dtype=torch.float32,
                                             output_loading_info=True)
    except Exception as err:  # a size mismatch, an unreadable file: say which folder
        first = " ".join(str(err).split())[:160]
        raise CompanionError(f"{folder} does not load as its config.json describes ({first}):"
                             " save the model again rather than editing its files") from None
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        keys = sorted(str(k) for k in info.get(kind, []))
        if keys:
            raise CompanionError(
                f"{folder}: the weights do not cover the model its config.json describes "
                f"({len(keys)} {kind.replace('_', ' ')}, first {keys[0]}): save the model "
                "again rather than editing its files")
    return decoder
