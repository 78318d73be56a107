"""Real recorded speech (lib.data.real): the selection rule on stand-in package folders,
and the three Debian packages themselves when the archive answers."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from lib.data import real
from lib.data.audio import SAMPLE_RATE, read_audio
from lib.data.sources import load_source, shared_sources
from lib.errors import CompanionError

PROMPTS = """; Core Asterisk Sounds in English
a-one: Please enter your number followed by the pound key.
a-two: [ascending tones]
a-three: Press 1 to mute.
a-four: Thank you.
a-five: ...to leave the conference.
a-six: The party you are trying to reach is busy.
a-seven: Call-Forward on Busy, please hold.
a-eight: Your call cannot be completed as dialed.
"""


def test_asterisk_prompts_keep_plain_sentences_of_four_words_or_more() -> None:
    kept = real.asterisk_prompts(PROMPTS.splitlines())
    assert kept == [  # by hand: brackets, digits and "Thank you." (2 words) are out
        ("a-eight", "Your call cannot be completed as dialed."),
        ("a-five", "to leave the conference."),
        ("a-one", "Please enter your number followed by the pound key."),
        ("a-seven", "Call-Forward on Busy, please hold."),
        ("a-six", "The party you are trying to reach is busy."),
    ]


def _stand_in(cache: Path) -> None:
    """The three packages' folders as dpkg -x leaves them, with tiny clips."""
    tone = (0.1 * np.sin(np.arange(8000) / 8000 * 2 * np.pi * 220)).astype(np.float32)
    root = cache / "corpora" / "real-asterisk"
    wavs = root / "usr/share/asterisk/sounds/en_US_f_Allison"
    wavs.mkdir(parents=True)
    for name, _ in real.asterisk_prompts(PROMPTS.splitlines()):
        sf.write(wavs / f"{name}.wav", tone, 8000)
    doc = root / "usr/share/doc/asterisk-core-sounds-en"
    doc.mkdir(parents=True)
    (doc / "core-sounds-en.txt.gz").write_bytes(gzip.compress(PROMPTS.encode()))
    alsa = cache / "corpora" / "real-alsa" / "usr/share/sounds/alsa"
    alsa.mkdir(parents=True)
    for name in ("Front_Left", "Rear_Right", "Noise"):
        sf.write(alsa / f"{name}.wav", tone, 48000)


def test_dev_and_test_prompts_never_share_a_recording(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("COMPANION_CACHE", str(tmp_path))
    _stand_in(tmp_path)
    test = load_source("real:asterisk")
    dev = load_source("real:dev")
    # sorted: eight, five, one, seven, six -> test every third from 0, dev from 1
    assert [u.id for u in test] == ["allison-a-eight", "allison-a-seven"]
    assert [u.id for u in dev] == ["allison-a-five", "allison-a-six"]
    assert {u.split for u in test} == {"real"} and {u.split for u in dev} == {"real-dev"}
    alsa = load_source("real:alsa")
    assert [(u.id, u.text) for u in alsa] == [("alsa-Front_Left", "front left"),
                                               ("alsa-Rear_Right", "rear right")]
    assert read_audio(alsa[0].audio).size == pytest.approx(SAMPLE_RATE / 6, abs=2)
    assert alsa[0].voice == "alsa:alsa" and test[0].voice == "asterisk:allison"


def test_real_names_and_overlaps() -> None:
    with pytest.raises(CompanionError, match="unknown real-speech source 'real:nope'"):
        real.load_real("real:nope")
    assert shared_sources("real:dev", ["real", "real:asterisk"]) == []
    assert shared_sources("real:asterisk", ["real", "synthetic:test"]) == ["real"]


def test_a_missing_tool_is_one_line(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda tool: None)
    with pytest.raises(CompanionError, match="apt-get and dpkg not found: .*alsa-utils"):
        real.extract_debian(("alsa-utils",), tmp_path / "x")


def test_the_real_packages(tmp_path, monkeypatch) -> None:
    """The three Debian packages: 78 test utterances from four speakers, 40 dev prompts."""
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        pytest.skip("apt-get and dpkg are needed")
    monkeypatch.setenv("COMPANION_CACHE", os.environ.get("COMPANION_CACHE", str(tmp_path)))
    try:
        utts = real.load_real("real")
    except CompanionError as exc:
        if "apt-get download" in str(exc):
            pytest.skip(f"package archive unreachable: {exc}")
        raise
    counts = {s: sum(u.source == s for u in utts) for s in real.REAL_SOURCES}
    assert counts == {"pocketsphinx": 10, "asterisk": 60, "alsa": 8}
    assert len({u.voice for u in utts}) == 4
    texts = {u.id: u.text for u in utts}
    assert texts["librivox-sense_and_sensibility_01_austen_64kb-0880"] == (
        "he was not an ill disposed young man")
    assert texts["cards-001"] == "ten of clubs" and texts["alsa-Front_Center"] == "front center"
    dev = real.load_real("real:dev")
    assert len(dev) == 40 and not {u.audio for u in dev} & {u.audio for u in utts}
    assert sf.info(utts[0].audio).samplerate == SAMPLE_RATE
    assert sum(u.duration for u in utts if u.source == "pocketsphinx") == pytest.approx(34, abs=1)
