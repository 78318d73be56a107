"""Waveform augmentation (lib.data.augment) checked against what each operation must do to
a tone, by hand: its pitch, length, level, band and decay; and the corpus it writes."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from lib.data import augment
from lib.data.audio import SAMPLE_RATE, read_audio
from lib.data.loaders import Utterance, load_manifest, write_manifest
from lib.data.spec import AUGMENTATIONS, CorpusSpec
from lib.errors import CompanionError

RATE = SAMPLE_RATE


def _tone(freq: float, seconds: float = 1.0) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * freq * np.arange(int(seconds * RATE)) / RATE)).astype(
        np.float32)


def _peak_hz(wave: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / RATE)[np.argmax(spectrum)])


def test_speed_moves_pitch_and_length_together() -> None:
    out = augment.speed(_tone(440), 1.1)
    assert len(out) == round(RATE / 1.1)
    assert _peak_hz(out) == pytest.approx(484, abs=3)


def test_tempo_keeps_the_pitch_and_changes_the_length() -> None:
    for factor in (0.85, 1.15):
        out = augment.tempo(_tone(440), factor)
        assert len(out) == round(RATE / factor)
        assert _peak_hz(out) == pytest.approx(440, abs=3)


def test_noise_lands_at_the_requested_snr() -> None:
    wave, noise = _tone(300), np.random.default_rng(0).standard_normal(RATE)
    out = augment.add_noise(wave, 10.0, noise)
    added = out - wave
    snr = 10 * np.log10(np.mean(wave.astype(float) ** 2) / np.mean(added.astype(float) ** 2))
    assert snr == pytest.approx(10.0, abs=0.01)


def test_band_limit_removes_what_a_telephone_cannot_carry() -> None:
    out = augment.band_limit(_tone(1000) + _tone(6000) + _tone(100), 3400)
    spectrum = np.abs(np.fft.rfft(out)) / (RATE / 4)  # a 0.5 tone's bin reads 1.0
    freqs = np.fft.rfftfreq(RATE, 1 / RATE)
    assert spectrum[freqs == 1000][0] == pytest.approx(1.0, abs=1e-3)
    assert spectrum[freqs == 6000][0] < 1e-6 and spectrum[freqs == 100][0] < 1e-6


def test_gain_in_decibels_and_clipped() -> None:
    assert np.max(augment.gain(_tone(200), -6.0)) == pytest.approx(0.5 * 10 ** -0.3, rel=1e-3)
    assert np.max(augment.gain(_tone(200), 20.0)) == 1.0


def test_room_response_decays_60_db_in_rt60() -> None:
    rir = augment.room_response(0.5, np.random.default_rng(1))
    tail = rir[1:].astype(float) ** 2  # Schroeder's backward integral of the tail
    decay = 10 * np.log10(np.cumsum(tail[::-1])[::-1] / tail.sum())
    t = np.arange(1, len(rir)) / RATE
    fit = np.polyfit(t[(decay < -5) & (decay > -35)], decay[(decay < -5) & (decay > -35)], 1)
    assert -60 / fit[0] == pytest.approx(0.5, rel=0.1)


def test_reverb_is_the_room_response_convolved_sample_by_sample() -> None:
    wave = _tone(200)[:4000]
    wet = augment.reverb(wave, 0.05, np.random.default_rng(3))
    rir = augment.room_response(0.05, np.random.default_rng(3))
    direct = [sum(wave[t - k] * rir[k] for k in range(min(t + 1, len(rir))))
              for t in range(0, len(wave), 97)]  # the definition, every 97th sample
    scale = np.max(np.abs(wave)) / np.max(np.abs(np.convolve(wave, rir)[: len(wave)]))
    assert wet.shape == wave.shape
    assert np.allclose(wet[::97], np.array(direct) * scale, atol=1e-5)


def test_each_clip_draws_by_its_id_and_probability_one_applies_all() -> None:
    spec = CorpusSpec(augment=tuple(AUGMENTATIONS), augment_prob=1.0)
    a = augment.augment_clip(_tone(300), spec, augment.clip_rng(0, "train-00001"))
    b = augment.augment_clip(_tone(300), spec, augment.clip_rng(0, "train-00001"))
    c = augment.augment_clip(_tone(300), spec, augment.clip_rng(0, "train-00002"))
    assert [d.split()[0] for d in a[1]] == list(AUGMENTATIONS)
    assert np.array_equal(a[0], b[0]) and a[1] == b[1] and a[1] != c[1]


@pytest.mark.parametrize("change, message", [
    ({"augment": ("echo",)}, "unknown augmentation 'echo': use some of speed, tempo"),
    ({"snr_range": (5.0, 90.0)}, r"snr_range=\(5.0, 90.0\) must satisfy"),
    ({"speed_range": (1.2, 1.1)}, "speed_range"),
    ({"augment_prob": 0.0}, r"augment_prob=0.0 must be in \(0, 1\]"),
    ({"engines": ("espeak", "flite")}, "engines must be among 'espeak', 'piper'"),
    ({"flite_fraction": 0.2, "flite_voices": ("bob",)}, r"flite_voices \['bob'\]: use some of kal16"),
    ({"flite_fraction": 0.95}, "piper_fraction \\+ flite_fraction must be <= 1"),
])
def test_bad_augmentation_settings_are_one_line(change, message) -> None:
    with pytest.raises(CompanionError, match=message) as err:
        CorpusSpec(**change)
    assert "\n" not in str(err.value)


def test_augmentation_never_moves_the_clean_corpus_folder() -> None:
    clean = CorpusSpec()
    assert CorpusSpec(augment=("noise",), snr_range=(0.0, 10.0)).digest() == clean.digest()
    assert CorpusSpec(flite_fraction=0.1).digest() \
        != clean.digest()
    assert augment.augment_digest(replace(clean, augment=("noise",))) != \
        augment.augment_digest(replace(clean, augment=("reverb",)))


def test_augment_corpus_changes_training_clips_only(tmp_path: Path) -> None:
    rows = []
    for i, split in enumerate(["train", "train", "train", "test"]):
        path = tmp_path / f"{split}-{i}.wav"
        sf.write(path, _tone(500 + 100 * i, 0.5), RATE)
        rows.append(Utterance(f"{split}-{i}", str(path), "a b c d", 0.5, "v", split, "x"))
    manifest = write_manifest(tmp_path / "manifest.jsonl", rows)
    spec = CorpusSpec(augment=("gain", "band"), augment_prob=1.0)
    out = augment.augment_corpus(manifest, spec)
    utts = {u.id: u for u in load_manifest(out)}
    assert utts["test-3"].audio == str(tmp_path / "test-3.wav")  # the test voice stays clean
    changed = read_audio(utts["train-0"].audio)
    assert np.max(np.abs(changed)) < np.max(np.abs(read_audio(rows[0].audio)))
    log = [json.loads(line) for line in (out.parent / "log.jsonl").read_text().splitlines()]
    assert [row["id"] for row in log] == ["train-0", "train-1", "train-2"]
    shutil.rmtree(out.parent / "wavs")  # a manifest whose clips are gone is rebuilt
    assert augment.augment_corpus(manifest, spec) == out and Path(utts["train-0"].audio).is_file()
    assert augment.augment_corpus(manifest, CorpusSpec()) == manifest


def test_flite_voices_take_their_share_and_leave_the_rest_as_they_were() -> None:
    from lib.data.corpus import plan_jobs

    texts = [f"sentence number {i} of the corpus" for i in range(200)]
    base = plan_jobs(CorpusSpec(), texts, texts[:10])
    spec = CorpusSpec(flite_fraction=0.2)
    jobs = plan_jobs(spec, texts, texts[:10])
    flite = [j for j in jobs if j.engine == "flite"]
    assert len(flite) == 40 and {j.split for j in flite} == {"train"}
    assert {j.voice for j in flite} == set(spec.flite_voices)
    # Piper's rows and the test voices are where they were without flite
    assert [j.id for j in jobs if j.engine == "piper"] == [j.id for j in base if j.engine == "piper"]
    assert [j for j in jobs if j.split == "test"] == [j for j in base if j.split == "test"]


def test_flite_speaks_a_clip(tmp_path: Path) -> None:
    from lib.data.corpus import _Job, _synthesise

    if shutil.which("flite") is None:
        pytest.skip("flite is not installed")
    job = _Job("train-00001", "The party you are trying to reach is busy.", "train", "flite",
               "slt")
    path = str(tmp_path / "x.wav")
    ((_, seconds),) = _synthesise(((job,), (path,), ""))
    assert 1.5 < seconds < 4 and sf.info(path).samplerate == SAMPLE_RATE
    assert job.voice_id == "flite:slt" and not list(tmp_path.glob("*.flite.wav"))


def test_a_missing_voice_engine_is_one_line(monkeypatch) -> None:
    from lib.data import text

    monkeypatch.setattr(text.shutil, "which", lambda tool: None)
    with pytest.raises(CompanionError, match="flite not found: install it with `apt-get "
                       "install flite`.*flite_fraction 0") as err:
        text.require_flite()
    assert "\n" not in str(err.value)


FORTUNE = """You will be married within a year.
%
Never put off till tomorrow what you can do today.
		-- Anonymous
%
Call 555-1234 now! It's a fine day for a walk in the park.
%
"""


def test_fortunes_are_parsed_into_plain_sentences() -> None:
    from lib.data.text import parse_fortunes

    assert parse_fortunes(FORTUNE) == [  # by hand: the attribution and the digits are out
        "You will be married within a year.",
        "Never put off till tomorrow what you can do today.",
        "It's a fine day for a walk in the park."]


def test_the_text_lever_swaps_training_sentences_and_keeps_the_test_set(monkeypatch) -> None:
    from lib.data import text

    bible = [f"And the lord spoke unto him number {w}." for w in
             ("one two three four five six seven eight nine ten eleven twelve thirteen "
              "fourteen fifteen sixteen seventeen eighteen nineteen twenty").split()]
    modern = [f"Please call me back about item {w} today." for w in "abcdefghij"]
    monkeypatch.setattr(text, "bible_sentences", lambda: bible)
    monkeypatch.setattr(text, "fortune_sentences", lambda: modern)
    clean = CorpusSpec(n_train=10, n_test=4)
    train0, test0 = text.select_texts(clean)
    train, test = text.select_texts(replace(clean, text_fraction=0.5))
    assert test == test0 and len(train) == 10
    assert sum(t in modern for t in train) == 5 and set(train) - set(modern) <= set(train0)
