"""Tests for lib.data: audio I/O, manifests, loaders, and the synthetic corpus."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from lib.data.audio import DataWarning, SAMPLE_RATE, read_audio
from lib.data.loaders import (
    Utterance,
    load_librispeech,
    load_manifest,
    write_manifest,
)
from lib.errors import CompanionError


def _sine(freq: float, seconds: float, rate: int, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spectrum)])


# --------------------------------------------------------------------------- read_audio


def test_read_audio_stereo_44k_to_mono_16k(tmp_path: Path) -> None:
    rate = 44100
    left = _sine(440.0, 1.0, rate, 0.6)
    right = _sine(440.0, 1.0, rate, 0.2)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), rate, subtype="FLOAT")
    audio = read_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - SAMPLE_RATE) <= 2
    assert abs(_peak_hz(audio, SAMPLE_RATE) - 440.0) < 3.0
    # The mix is the mean of the channels: amplitude (0.6 + 0.2) / 2.
    assert np.max(np.abs(audio[1000:-1000])) == pytest.approx(0.4, abs=0.01)


def test_read_audio_16k_mono_is_unchanged(tmp_path: Path) -> None:
    wave = _sine(1000.0, 0.5, SAMPLE_RATE)
    path = tmp_path / "mono.flac"
    sf.write(path, wave, SAMPLE_RATE, subtype="PCM_24")
    np.testing.assert_allclose(read_audio(path), wave, atol=1e-5)


def test_read_audio_errors_name_the_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty_file.wav"
    empty.write_bytes(b"")
    corrupt = tmp_path / "corrupt_file.wav"
    corrupt.write_bytes(b"RIFF this is not audio at all" * 10)
    silent = tmp_path / "silent_file.wav"
    sf.write(silent, np.zeros(SAMPLE_RATE, dtype=np.float32), SAMPLE_RATE)
    no_samples = tmp_path / "no_samples.wav"
    sf.write(no_samples, np.zeros(0, dtype=np.float32), SAMPLE_RATE)
    cases = {
        tmp_path / "missing_file.wav": "not found",
        empty: "empty",
        corrupt: "cannot read",
        silent: "silent",
        no_samples: "no samples",
    }
    for path, words in cases.items():
        with pytest.raises(CompanionError) as info:
            read_audio(path)
        message = str(info.value)
        assert path.name in message and words in message
        assert "\n" not in message


# --------------------------------------------------------------------------- LibriSpeech


def _make_librispeech(root: Path) -> dict[str, tuple[str, float]]:
    """Two speakers x two chapters of test-clean; returns id -> (text, duration)."""
    expected = {}
    for speaker in ("1089", "121"):
        for chapter in ("134686", "121726"):
            folder = root / "test-clean" / speaker / chapter
            folder.mkdir(parents=True)
            lines = []
            for utt in range(2):
                utt_id = f"{speaker}-{chapter}-{utt:04d}"
                seconds = 0.5 + 0.25 * utt + (0.1 if speaker == "121" else 0.0)
                wave = _sine(300.0 + 50 * utt, seconds, SAMPLE_RATE)
                sf.write(folder / f"{utt_id}.flac", wave, SAMPLE_RATE)
                text = f"WORDS OF {speaker} {chapter} NUMBER {utt}"
                lines.append(f"{utt_id} {text}")
                expected[utt_id] = (text, seconds)
            (folder / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    return expected


def test_load_librispeech_root_and_split_folder(tmp_path: Path) -> None:
    expected = _make_librispeech(tmp_path)
    utts = load_librispeech(tmp_path, split="test-clean")
    assert [u.id for u in utts] == sorted(expected)
    for utt in utts:
        text, seconds = expected[utt.id]
        assert utt.text == text
        assert utt.duration == pytest.approx(seconds, abs=1e-3)
        assert utt.split == "test-clean" and utt.source == "librispeech"
        assert utt.voice == f"librispeech:{utt.id.split('-')[0]}"
        assert Path(utt.audio).is_absolute() and Path(utt.audio).is_file()
    direct = load_librispeech(tmp_path / "test-clean")
    assert [(u.id, u.split) for u in direct] == [(u.id, u.split) for u in utts]
    from_root = load_librispeech(tmp_path)
    assert {u.split for u in from_root} == {"test-clean"}


def test_load_librispeech_skips_bad_rows_with_one_line(tmp_path: Path) -> None:
    expected = _make_librispeech(tmp_path)
    chapter = tmp_path / "test-clean" / "1089" / "134686"
    (chapter / "1089-134686-0001.flac").unlink()
    trans = tmp_path / "test-clean" / "121" / "121726" / "121-121726.trans.txt"
    lines = trans.read_text().splitlines()
    lines[0] = "121-121726-0000 "
    trans.write_text("\n".join(lines) + "\n")
    with pytest.warns(DataWarning) as record:
        utts = load_librispeech(tmp_path, split="test-clean")
    messages = [str(w.message) for w in record]
    assert len(messages) == 2
    assert all("\n" not in m for m in messages)
    assert any("1089-134686-0001" in m and "not found" in m for m in messages)
    assert any("121-121726-0000" in m and "empty transcript" in m for m in messages)
    assert len(utts) == len(expected) - 2


def test_load_librispeech_empty_folder_explains_layout(tmp_path: Path) -> None:
    (tmp_path / "test-clean").mkdir()
    with pytest.raises(CompanionError, match="trans.txt"):
        load_librispeech(tmp_path, split="test-clean")
    with pytest.raises(CompanionError, match="not found"):
        load_librispeech(tmp_path, split="dev-other")


# --------------------------------------------------------------------------- manifests


def _utt(folder: Path, name: str, text: str = "hello world") -> Utterance:
    path = folder / f"{name}.wav"
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, _sine(220.0, 0.3, SAMPLE_RATE), SAMPLE_RATE)
    return Utterance(name, str(path), text, 0.3, "espeak:en+m1:r150:p50", "train", "manifest")


def test_manifest_round_trip_relative_paths(tmp_path: Path) -> None:
    inside = [_utt(tmp_path / "corpus" / "wavs", f"u{i}") for i in range(3)]
    outside = _utt(tmp_path / "elsewhere", "far", "far away")
    path = write_manifest(tmp_path / "corpus" / "manifest.jsonl", [*inside, outside])
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows[0]["audio"] == "wavs/u0.wav"
    assert rows[3]["audio"] == str(Path(outside.audio).resolve())
    assert set(rows[0]) == {"id", "audio", "duration", "text", "voice", "split", "source"}
    assert load_manifest(path) == [*inside, outside]
    # The folder can move: relative paths follow it.
    moved = tmp_path / "moved"
    shutil.move(str(tmp_path / "corpus"), moved)
    loaded = load_manifest(moved / "manifest.jsonl")
    assert loaded[0].audio == str(moved / "wavs" / "u0.wav")
    assert not list(moved.glob(".manifest.jsonl.*"))  # no temp file left behind


def test_manifest_skips_missing_audio_and_empty_text(tmp_path: Path) -> None:
    utts = [_utt(tmp_path / "wavs", f"u{i}") for i in range(3)]
    path = write_manifest(tmp_path / "m.jsonl", utts)
    Path(utts[1].audio).unlink()
    rows = path.read_text().splitlines()
    row = json.loads(rows[2])
    row["text"] = "  "
    path.write_text("\n".join([rows[0], rows[1], json.dumps(row)]) + "\n")
    with pytest.warns(DataWarning) as record:
        loaded = load_manifest(path)
    assert [u.id for u in loaded] == ["u0"]
    messages = sorted(str(w.message) for w in record)
    assert len(messages) == 2
    assert "u1" in messages[0] and "u1.wav" in messages[0]
    assert "u2" in messages[1] and "empty transcript" in messages[1]


def test_manifest_defaults_for_hand_written_rows(tmp_path: Path) -> None:
    utt = _utt(tmp_path / "wavs", "mine")
    path = tmp_path / "own.jsonl"
    path.write_text(json.dumps({"id": "mine", "audio": "wavs/mine.wav", "text": "hi"}))
    (loaded,) = load_manifest(path)
    assert loaded.duration == pytest.approx(utt.duration, abs=1e-3)
    assert loaded.source == "manifest" and loaded.voice == "unknown"


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (None, "not found"),
        ("", "empty"),
        ("\n  \n", "empty"),
        ('{"id": "a", "audio": "a.wav"', "malformed"),
        ('["a", "b"]', "malformed"),
        ('{"id": "a", "text": "x"}', "audio"),
    ],
)
def test_manifest_file_errors(tmp_path: Path, content: str | None, words: str) -> None:
    path = tmp_path / "bad.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(CompanionError, match=words) as info:
        load_manifest(path)
    assert "bad.jsonl" in str(info.value)


def test_manifest_with_no_usable_row_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"id": "a", "audio": "gone.wav", "text": "x"}) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        with pytest.raises(CompanionError, match="no usable"):
            load_manifest(path)


# --------------------------------------------------------------------------- synthetic corpus


def _need(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")


@pytest.fixture(scope="session")
def bible_text(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cleaned WEB sentences, exported once per test session (~10 s)."""
    _need("espeak-ng", "diatheke")
    from lib.data.text import bible_sentences

    cache = tmp_path_factory.mktemp("bible-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COMPANION_CACHE", str(cache))
        sentences = bible_sentences()
    assert len(sentences) > 30000
    assert "In the beginning, God created the heavens and the earth." in sentences
    return cache / "corpora" / "web-sentences.txt"


def _use_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bible: Path) -> None:
    """Point COMPANION_CACHE at tmp_path, seeded with the exported Bible text."""
    monkeypatch.setenv("COMPANION_CACHE", str(tmp_path))
    (tmp_path / "corpora").mkdir(exist_ok=True)
    shutil.copy(bible, tmp_path / "corpora" / bible.name)


def test_clean_text_keeps_words_apart() -> None:
    from lib.data.text import clean_text

    raw = (
        " God   created ,\u201c Let there be light ,\u201d  God\u2019s  "
        "Spirit\u2014and  the  sons\u2019 "
    )
    assert clean_text(raw) == "God created, Let there be light, God's Spirit, and the sons"
    assert clean_text("Jude,a servant (of Jesus).") == "Jude, a servant of Jesus."


def test_synthetic_corpus_tiny(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bible_text: Path
) -> None:
    from lib.data.corpus import ensure_synthetic_corpus, voice_family
    from lib.data.spec import CorpusSpec

    _use_cache(tmp_path, monkeypatch, bible_text)
    spec = CorpusSpec(n_train=6, n_test=3, engines=("espeak",), seed=3)
    manifest = ensure_synthetic_corpus(spec)
    assert manifest.name == "manifest.jsonl"
    assert manifest.parent.parent == tmp_path / "corpora"
    utts = load_manifest(manifest)
    train = [u for u in utts if u.split == "train"]
    test = [u for u in utts if u.split == "test"]
    assert (len(train), len(test)) == (6, 3)
    train_voices = {voice_family(u.voice) for u in train}
    test_voices = {voice_family(u.voice) for u in test}
    assert not train_voices & test_voices
    assert test_voices <= {f"espeak:{v}" for v in spec.test_voices}
    assert not {u.text for u in train} & {u.text for u in test}
    for utt in utts:
        assert spec.min_words <= len(utt.text.split()) <= spec.max_words
        info = sf.info(utt.audio)
        assert info.samplerate == SAMPLE_RATE and info.channels == 1
        assert info.subtype == "PCM_16"
        assert utt.duration == pytest.approx(info.frames / SAMPLE_RATE, abs=1e-3)
        assert utt.source == "synthetic-espeak"
        assert read_audio(utt.audio).size > SAMPLE_RATE // 2
    # Rerun: cached, so nothing is rewritten (same manifest, same files, same mtimes).
    stamps = {p: p.stat().st_mtime_ns for p in manifest.parent.rglob("*") if p.is_file()}
    assert ensure_synthetic_corpus(spec) == manifest
    assert {p: p.stat().st_mtime_ns for p in manifest.parent.rglob("*") if p.is_file()} == stamps
    # Interrupted run: no manifest, some wavs present -> they are reused, not rewritten.
    kept = Path(train[0].audio)
    stamp = kept.stat().st_mtime_ns
    manifest.unlink()
    Path(train[1].audio).unlink()
    assert ensure_synthetic_corpus(spec) == manifest
    assert kept.stat().st_mtime_ns == stamp
    assert load_manifest(manifest) == utts
    # Another seed gives other sentences and another folder.
    other = CorpusSpec(n_train=6, n_test=3, engines=("espeak",), seed=4)
    assert other.digest() != spec.digest()


def test_piper_clips_are_the_same_in_every_build_and_after_an_interruption(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Piper draws noise on every call: the same text spoken twice by one session differs,
    yet a clip is fixed by its group's seed, whichever worker speaks it and whether or not
    the build was interrupted (reference: the bytes of an uninterrupted build)."""
    pytest.importorskip("piper")
    from lib.data import corpus
    from lib.data.corpus import _Job, _load_piper, _piper_audio, piper_voice_dir, synthesise

    voice_dir = piper_voice_dir()
    monkeypatch.setenv("COMPANION_PIPER_VOICE", str(voice_dir))
    monkeypatch.setattr(corpus, "PIPER_GROUP", 3)
    texts = ["In the beginning.", "Let there be light.", "And it was so.", "Amen.", "Selah."]
    jobs = [_Job(f"train-{i:05d}", t, "train", "piper", "joe") for i, t in enumerate(texts)]
    voice = _load_piper(voice_dir, seed=7)
    first, again = (_piper_audio(voice, jobs[0])[0] for _ in range(2))
    assert first.shape != again.shape or not np.array_equal(first, again)  # noise drawn

    def build(name: str) -> dict[str, bytes]:
        paths, _ = synthesise(list(reversed(jobs)), tmp_path / name)
        return {k: Path(v).read_bytes() for k, v in paths.items()}

    reference = build("a")
    assert build("b") == reference
    for k in ("train-00004", "train-00001"):  # interrupted builds: a clip of the second
        (tmp_path / "b" / f"{k}.wav").unlink()  # group missing, then one of the first
        assert build("b") == reference


def test_synthetic_corpus_piper_one_utterance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bible_text: Path
) -> None:
    pytest.importorskip("piper")
    from lib.data.corpus import ensure_synthetic_corpus, piper_voice_dir
    from lib.data.spec import CorpusSpec

    # Resolve the voice in the usual cache (downloaded once), then build in tmp_path.
    monkeypatch.setenv("COMPANION_PIPER_VOICE", str(piper_voice_dir()))
    _use_cache(tmp_path, monkeypatch, bible_text)
    spec = CorpusSpec(n_train=1, n_test=0, engines=("piper",), piper_fraction=1.0)
    (utt,) = load_manifest(ensure_synthetic_corpus(spec))
    assert utt.voice == "piper:joe" and utt.source == "synthetic-piper"
    assert utt.split == "train"
    assert sf.info(utt.audio).samplerate == SAMPLE_RATE
    assert 0.5 < utt.duration < 15.0
    assert read_audio(utt.audio).size == pytest.approx(utt.duration * SAMPLE_RATE, abs=2)


def test_corpus_spec_rejects_bad_values() -> None:
    from lib.data.spec import CorpusSpec

    with pytest.raises(CompanionError, match="test_voices"):
        CorpusSpec(test_voices=("en+zz9",))
    with pytest.raises(CompanionError, match="train-only"):
        CorpusSpec(engines=("piper",))
    with pytest.raises(CompanionError, match="min_words"):
        CorpusSpec(min_words=9, max_words=3)


def test_default_spec_holds_out_test_voices() -> None:
    from lib.data.corpus import plan_jobs
    from lib.data.spec import CorpusSpec

    spec = CorpusSpec(piper_fraction=0.25)
    assert not set(spec.train_voices) & set(spec.test_voices)
    # Every accent and every variant is still heard in training.
    assert {v.split("+")[0] for v in spec.train_voices} == set(spec.languages)
    assert {v.split("+")[1] for v in spec.train_voices} == set(spec.variants)
    train = [f"train sentence {i}" for i in range(400)]
    test = [f"test sentence {i}" for i in range(40)]
    jobs = plan_jobs(spec, train, test)
    piper = [j for j in jobs if j.engine == "piper"]
    assert len(piper) == 100 and all(j.split == "train" for j in piper)  # 0.25 x 400
    assert {j.voice for j in jobs if j.split == "test"} <= set(spec.test_voices)
    assert plan_jobs(spec, train, test) == jobs  # deterministic
    assert {j.voice for j in jobs if j.split == "train" and j.engine == "espeak"} <= set(
        spec.train_voices)


def test_a_sentence_sounds_the_same_in_every_corpus_of_a_seed() -> None:
    """Another corpus that keeps a sentence (in another place, beside other sentences) gives
    it the same voice, rate and pitch, so the two corpora share that clip; another seed
    does not."""
    import random

    from lib.data.corpus import plan_jobs
    from lib.data.spec import CorpusSpec

    spec = CorpusSpec(piper_fraction=0.0)
    train = [f"train sentence {i}" for i in range(300)]
    other = train[:200] + [f"another sentence {i}" for i in range(100)]
    random.Random(3).shuffle(other)

    def sound(s: CorpusSpec, texts: list[str]) -> dict[str, tuple]:
        return {j.text: (j.voice, j.rate, j.pitch) for j in plan_jobs(s, texts, [])}

    a, b = sound(spec, train), sound(spec, other)
    assert all(a[t] == b[t] for t in train[:200])
    c = sound(CorpusSpec(piper_fraction=0.0, seed=1), train)
    assert sum(a[t] == c[t] for t in train) < 30


def test_missing_espeak_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lib.data import text
    from lib.data.corpus import ensure_synthetic_corpus
    from lib.data.spec import CorpusSpec

    monkeypatch.setenv("COMPANION_CACHE", str(tmp_path))
    monkeypatch.setattr(text.shutil, "which", lambda name: None)
    with pytest.raises(CompanionError, match="apt-get install espeak-ng"):
        ensure_synthetic_corpus(CorpusSpec(n_train=2, n_test=1))
    monkeypatch.setattr(text.os, "geteuid", lambda: 1000)
    with pytest.raises(CompanionError, match="sword-text-web"):
        text.ensure_system_tools()


def test_a_clip_another_corpus_spoke_is_linked_not_spoken_again(tmp_path: Path) -> None:
    """The same sentence, voice, rate and pitch under another id in another corpus: the wav
    is the other corpus's file (same inode), and every clip has the bytes of a build that
    borrowed nothing (the reference); another rate is spoken anew."""
    _need("espeak-ng")
    from dataclasses import replace as change

    from lib.data.corpus import CLIPS_FILE, _Job, clip_key, spoken_clips, synthesise

    first = [_Job("train-00000", "In the beginning.", "train", "espeak", "en-us+m3", 170, 50),
             _Job("train-00001", "Let there be light.", "train", "espeak", "en+f2", 150, 40)]
    paths, _ = synthesise(first, tmp_path / "synthetic-a" / "wavs")
    (tmp_path / "synthetic-a" / CLIPS_FILE).write_text(json.dumps(
        {clip_key(j): Path(paths[j.id]).name for j in first}))
    second = [change(first[1], id="train-00007"),  # the same clip under another id
              change(first[0], id="train-00003", rate=120),  # another rate: another clip
              _Job("train-00004", "And it was so.", "train", "espeak", "en+f2", 150, 40)]
    donors = spoken_clips(tmp_path, tmp_path / "synthetic-b")
    got, durations = synthesise(second, tmp_path / "synthetic-b" / "wavs", donors)
    alone, _ = synthesise(second, tmp_path / "reference" / "wavs")
    assert Path(got["train-00007"]).stat().st_ino == Path(paths["train-00001"]).stat().st_ino
    assert Path(got["train-00003"]).stat().st_ino != Path(paths["train-00000"]).stat().st_ino
    for job in second:
        assert Path(got[job.id]).read_bytes() == Path(alone[job.id]).read_bytes(), job.id
    assert durations["train-00007"] > 0.5
    # a damaged index lends nothing
    (tmp_path / "synthetic-a" / CLIPS_FILE).write_text("{not json")
    assert spoken_clips(tmp_path, tmp_path / "synthetic-b") == {}
