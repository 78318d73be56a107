"""Real recorded speech with transcripts, from Debian packages that ship it as data.

Explained in chapter 1 (book/01_building_a_speechllm.ipynb). Stage: data.

No registry ships a speech corpus, but three Debian packages ship transcribed recordings of
real people; each is fetched once with ``apt-get download`` and unpacked with ``dpkg -x`` (no
root needed) into ``<cache>/corpora/real-<name>/``:

==============  ===================================================  ==========  ============
source          what                                                 licence     utterances
==============  ===================================================  ==========  ============
``pocketsphinx``  ``pocketsphinx-testdata``: a LibriVox reader (five  BSD-2       10 (test)
                  *Sense and Sensibility* sentences) and a speaker
                  reading five card names, 16 kHz
``asterisk``      ``asterisk-core-sounds-en(-wav)``: the telephone    CC-BY-SA-3  60 test, 40 dev
                  prompts of Allison Smith, 8 kHz (band-limited),
                  transcripts in ``core-sounds-en.txt``
``alsa``          ``alsa-utils``: the speaker-test voice naming       GPL-2       8 (test)
                  each channel ("front left"), 48 kHz
==============  ===================================================  ==========  ============

Source names (:mod:`lib.data.sources`): ``real`` is every test utterance (78, four
speakers), ``real:<source>`` one source's, ``real:dev`` the 40 asterisk prompts held out
for choosing a recipe (never in a test set). Asterisk prompts qualify when they are 4 to 25
words of plain text (no digits, brackets or symbols); sorted by name, every third is a test
prompt and the next ones after those dev prompts, so the two never share a recording.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lib.data.audio import audio_duration, warn_skipped
from lib.data.loaders import Utterance
from lib.errors import CompanionError
from lib.paths import cache_subdir


@dataclass(frozen=True)
class RealSource:
    """One Debian package (or two) of transcribed real speech."""

    name: str
    packages: tuple[str, ...]
    licence: str
    speakers: str
    read: Callable[[Path], list[tuple[str, str, str, str]]]  # (id, wav, text, part)


def extract_debian(packages: tuple[str, ...], target: Path) -> None:
    """Download Debian ``packages`` without root and unpack them all into ``target``.

    Raises:
        CompanionError: apt-get or dpkg missing, or a download or unpack that fails.
    """
    missing = [tool for tool in ("apt-get", "dpkg") if shutil.which(tool) is None]
    if missing:
        raise CompanionError(
            f"{' and '.join(missing)} not found: real speech comes from the Debian "
            f"package(s) {', '.join(packages)}; run on Debian/Ubuntu, or unpack them "
            f"yourself into {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as temp:
        work = Path(temp)
        result = subprocess.run(["apt-get", "download", *packages], cwd=work,
                                capture_output=True, text=True)
        debs = sorted(work.glob("*.deb"))
        if result.returncode != 0 or len(debs) < len(packages):
            detail = (result.stderr.strip().splitlines() or ["no .deb produced"])[-1]
            raise CompanionError(f"apt-get download {' '.join(packages)} failed ({detail}): "
                                 "run `apt-get update` (as root) and try again")
        unpacked = work / "unpacked"
        for deb in debs:
            result = subprocess.run(["dpkg", "-x", str(deb), str(unpacked)],
                                    capture_output=True, text=True)
            if result.returncode != 0:
                detail = (result.stderr.strip().splitlines() or ["unknown error"])[-1]
                raise CompanionError(f"dpkg -x {deb.name} failed: {detail}")
        if target.exists():
            shutil.rmtree(target)
        os.replace(unpacked, target)


# ------------------------------------------------------------------------- the sources

_SPHINX = Path("usr/share/pocketsphinx/test/data")
_SPHINX_LINE = re.compile(r"^<s>\s*(?P<text>.*?)\s*</s>\s*\((?P<id>[^)\s]+)\)\s*$")


def _read_pocketsphinx(root: Path) -> list[tuple[str, str, str, str]]:
    rows = []
    for sub, trans in (("librivox", "transcription"), ("cards", "cards.transcription")):
        for line in (root / _SPHINX / sub / trans).read_text().splitlines():
            match = _SPHINX_LINE.match(line.strip())
            if match:
                rows.append((f"{sub}-{match['id']}", str(root / _SPHINX / sub /
                             f"{match['id']}.wav"), match["text"], "test"))
    return rows


_ASTERISK_TEXT = Path("usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
_ASTERISK_WAVS = Path("usr/share/asterisk/sounds/en_US_f_Allison")
_PLAIN = re.compile(r"^[A-Za-z ,.;:!?'.-]+$")
ASTERISK_TEST, ASTERISK_DEV = 60, 40


def asterisk_prompts(lines: list[str]) -> list[tuple[str, str]]:
    """The prompts that qualify (4-25 words of plain text), sorted by name."""
    rows = []
    for line in lines:
        name, colon, text = line.partition(":")
        text = " ".join(text.replace("...", " ").split())
        if line.startswith(";") or not colon or not _PLAIN.match(text or "0"):
            continue
        if 4 <= len(text.split()) <= 25:
            rows.append((name.strip(), text))
    return sorted(rows)


def _read_asterisk(root: Path) -> list[tuple[str, str, str, str]]:
    lines = gzip.decompress((root / _ASTERISK_TEXT).read_bytes()).decode().splitlines()
    usable = [(n, t) for n, t in asterisk_prompts(lines) if (root / _ASTERISK_WAVS /
                                                            f"{n}.wav").is_file()]
    test, dev = usable[0::3][:ASTERISK_TEST], usable[1::3][:ASTERISK_DEV]
    return [(f"allison-{n}", str(root / _ASTERISK_WAVS / f"{n}.wav"), t, part)
            for part, rows in (("test", test), ("dev", dev)) for n, t in rows]


_ALSA = Path("usr/share/sounds/alsa")


def _read_alsa(root: Path) -> list[tuple[str, str, str, str]]:
    return [(f"alsa-{wav.stem}", str(wav), wav.stem.replace("_", " ").lower(), "test")
            for wav in sorted((root / _ALSA).glob("*_*.wav"))]


REAL_SOURCES = {
    "pocketsphinx": RealSource("pocketsphinx", ("pocketsphinx-testdata",), "BSD-2-Clause",
                               "a LibriVox reader; a speaker of card names", _read_pocketsphinx),
    "asterisk": RealSource("asterisk", ("asterisk-core-sounds-en", "asterisk-core-sounds-en-wav"),
                           "CC-BY-SA-3.0", "Allison Smith (telephone prompts, 8 kHz)",
                           _read_asterisk),
    "alsa": RealSource("alsa", ("alsa-utils",), "GPL-2", "the ALSA speaker-test voice",
                       _read_alsa),
}
"""Every source of real speech, by name (the table above)."""

REAL_NAMES = ("real", "real:dev", *(f"real:{name}" for name in REAL_SOURCES))
"""The source names this module answers."""


def _source_rows(source: RealSource) -> list[tuple[str, str, str, str]]:
    """The rows of one source, unpacking its packages first when they are not there."""
    target = cache_subdir("corpora") / f"real-{source.name}"
    try:
        rows = source.read(target) if target.is_dir() else []
    except (OSError, EOFError):
        rows = []
    if not rows:
        extract_debian(source.packages, target)
        rows = source.read(target)
    return rows


def load_real(name: str = "real") -> list[Utterance]:
    """The real utterances a source name stands for (``real``, ``real:dev``,
    ``real:<source>``; table in the module docstring).

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Returns:
        Utterances with ``split`` ``"real"`` (test) or ``"real-dev"``, ``source`` the source's
        name and ``voice`` ``"<source>:<speaker>"``.

    Raises:
        CompanionError: an unknown name, missing Debian tools, a failed download, or a
            source with no usable utterance.
    """
    if name not in REAL_NAMES:
        raise CompanionError(f"unknown real-speech source {name!r}: use one of "
                             f"{', '.join(REAL_NAMES)}")
    sub = name.partition(":")[2]
    part = "dev" if sub == "dev" else "test"
    chosen = [REAL_SOURCES["asterisk"]] if sub == "dev" else (
        [REAL_SOURCES[sub]] if sub else list(REAL_SOURCES.values()))
    utts = []
    for source in chosen:
        for utt_id, wav, text, where in _source_rows(source):
            text = " ".join(text.split())
            if where != part:
                continue
            if not Path(wav).is_file() or not text:
                warn_skipped(f"skipped {source.name} {utt_id}: missing audio {wav} or no text")
                continue
            speaker = utt_id.split("-")[0]
            utts.append(Utterance(id=utt_id, audio=wav, text=text,
                                  duration=audio_duration(wav), voice=f"{source.name}:{speaker}",
                                  split="real" if part == "test" else "real-dev",
                                  source=source.name))
    if not utts:
        raise CompanionError(f"no utterances found for {name}: delete "
                             f"{cache_subdir('corpora')}/real-* and run again")
    return utts


def load_all_real() -> list[Utterance]:
    """Every real utterance, test and dev (the setup step fetches them all once)."""
    return load_real("real") + load_real("real:dev")
