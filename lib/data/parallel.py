"""The offline parallel corpus of chapter 5: verse-aligned English / Spanish pairs from two
public-domain Bibles, spoken in both languages.

Text: the World English Bible (``sword-text-web``) and the Reina-Valera 1909
(``sword-text-sparv``), read with ``diatheke`` book by book and aligned by book, chapter and
verse; both sides cleaned as chapter 1 cleans English (:func:`lib.data.text.clean_text`,
:func:`clean_spanish`), both within ``min_words..max_words``. The split is by verse: no verse
is in training and test, in either language. Test verses are never among chapter 1's
training sentences and training verses never among its test sentences, so chapter 1's
ASR-only model and the multi-task model meet only speech neither trained on.

Speech: Spanish by espeak-ng's ``es`` and ``es-419`` voices (variants, rate and pitch; the
test voices held out, as for English); English by chapter 1's English voices, except where a
training verse *is* one of chapter 1's training sentences: there chapter 1's recording is
reused (and its cached features with it, :func:`lib.recipes.ch05.parallel_features`).

Stage: data. Explained in chapter 5 (book/05_tasks_and_languages.ipynb).
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path


from lib.cache import say_once
from lib.clock import stage, track
from lib.data.corpus import _Job, ensure_synthetic_corpus, synthesise
from lib.data.loaders import Utterance, cached_manifest, load_manifest, write_manifest
from lib.data.spec import PARALLEL_VERSION, ParallelSpec
from lib.data.text import (BIBLE_BOOKS, BIBLE_MODULE, SPANISH_MODULE, _text_key, clean_text,
                           export_book, require_espeak, select_texts)
from lib.errors import CompanionError
from lib.paths import cache_subdir

_SPANISH_ALLOWED = re.compile(r"^[A-Za-zÁÉÍÓÚÜÑáéíóúüñ¿¡][A-Za-zÁÉÍÓÚÜÑáéíóúüñ ,.;:!?¿¡'-]*$")
_ENGLISH_ALLOWED = re.compile(r"^[A-Za-z][A-Za-z ,.;:!?'-]*$")


def clean_spanish(text: str) -> str:
    """Chapter 1's cleaning for a Spanish verse, and one more rule: a word written in
    capitals at the start of a chapter ("EN el principio") becomes a capitalised word."""
    text = text.translate(str.maketrans("«»\u2018\u2019\u201c\u201d", '""\'\'""'))
    text = clean_text(text)
    text = re.sub(r"\b([A-ZÁÉÍÓÚÑ])([A-ZÁÉÍÓÚÑ]+)\b",
                  lambda m: m.group(1) + m.group(2).lower(), text)
    text = re.sub(r"([¿¡])\s+", r"\1", text)
    return _capital(text)


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def check_parallel(source: Sequence[str], target: Sequence[str], name: str) -> None:
    """Two sides of a parallel file must pair line for line.

    Raises:
        CompanionError: the sides differ in length (naming ``name`` and both counts).
    """
    if len(source) != len(target):
        raise CompanionError(f"parallel file {name}: {len(source)} source lines but "
                             f"{len(target)} target lines: every line needs its translation")


ALIGNED_MIN = 0.9
"""Two Bibles aligned by verse reference must share at least this share of the smaller one's
verses (the two number a few psalm titles and chapter ends differently); fewer is another
versification or a damaged module, not a parallel corpus."""


def check_alignment(n_source: int, n_target: int, n_aligned: int, name: str) -> None:
    """Verse-aligned texts must share most of their verses.

    Raises:
        CompanionError: fewer than :data:`ALIGNED_MIN` of the smaller side's verses align.
    """
    if n_aligned < ALIGNED_MIN * min(n_source, n_target):
        raise CompanionError(f"parallel texts {name}: only {n_aligned} of {n_source} / "
                             f"{n_target} verses align by reference: use two texts with the "
                             "same versification, or reinstall the damaged module")


def _export(module: str, package: str) -> dict[str, str]:
    """``"Book C:V" -> raw verse text`` of a whole module, book by book."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        books = list(track(pool.map(lambda b: (b, export_book(b, module, package)),
                                    BIBLE_BOOKS), total=len(BIBLE_BOOKS), desc=module,
                           unit="book"))
    return {f"{book} {c}:{v}": text for book, verses in books for c, v, text in verses}


def bible_pairs() -> list[tuple[str, str, str]]:
    """Every verse in both Bibles as ``(reference, English, Spanish)``, cleaned, in canonical
    order; cached in ``<cache>/corpora/bible-pairs.jsonl``.

    Raises:
        CompanionError: diatheke or one of the two modules is missing.
    """
    cache = cache_subdir("corpora") / "bible-pairs.jsonl"
    if cache.is_file() and cache.stat().st_size > 0:
        return [tuple(json.loads(x)) for x in cache.read_text(encoding="utf-8").splitlines()]
    en = _export(BIBLE_MODULE, "sword-text-web")
    es = _export(SPANISH_MODULE, "sword-text-sparv")
    refs = [r for r in en if r in es]
    check_alignment(len(en), len(es), len(refs), "World English Bible / Reina-Valera 1909")
    pairs = [(r, _capital(clean_text(en[r])), clean_spanish(es[r])) for r in refs]
    partial = cache.with_name(f".{cache.name}.partial")
    partial.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs),
                       encoding="utf-8")
    partial.replace(cache)
    return pairs


def _usable(en: str, es: str, spec: ParallelSpec) -> bool:
    def fits(t: str) -> bool:
        return spec.min_words <= len(t.split()) <= spec.max_words
    return (fits(en) and fits(es) and bool(_ENGLISH_ALLOWED.match(en))
            and bool(_SPANISH_ALLOWED.match(es)))


def select_pairs(spec: ParallelSpec) -> tuple[list[tuple[str, str, str]],
                                               list[tuple[str, str, str]]]:
    """Disjoint training and test verse pairs, shuffled by ``spec.seed``.

    Test verses are drawn first, from the usable verses none of whose English is one of
    chapter 1's training sentences; training verses from the rest, none of which is one of
    chapter 1's test sentences, those chapter 1 already spoke first (their recordings and
    features are reused; the order within each group is the shuffle's).

    Raises:
        CompanionError: too few usable verses for ``n_train + n_test``.
    """
    ch1_train, ch1_test = select_texts(spec.english)
    train_keys = {_text_key(t) for t in ch1_train}
    test_keys = {_text_key(t) for t in ch1_test}
    seen: set[str] = set()
    usable = []
    for ref, en, es in bible_pairs():
        key = _text_key(en)
        if key not in seen and _usable(en, es, spec):
            seen.add(key)
            usable.append((ref, en, es))
    random.Random(f"parallel-{spec.seed}").shuffle(usable)
    test = [p for p in usable if _text_key(p[1]) not in train_keys][:spec.n_test]
    taken = {p[0] for p in test}
    rest = [p for p in usable if p[0] not in taken and _text_key(p[1]) not in test_keys]
    # Verses chapter 1 already spoke first: their clips and features are reused.
    train = sorted(rest, key=lambda p: _text_key(p[1]) not in train_keys)[:spec.n_train]
    if len(test) < spec.n_test or len(train) < spec.n_train:
        raise CompanionError(
            f"only {len(test)} test and {len(train)} training verse pairs of "
            f"{spec.min_words}-{spec.max_words} words ({spec.n_test} and {spec.n_train} "
            "asked): lower n_parallel_train / n_parallel_test")
    return train, test


def require_voice(language: str) -> None:
    """espeak-ng must have a voice for ``language``.

    Raises:
        CompanionError: it has none (naming the language and how to list the voices).
    """
    require_espeak()
    out = subprocess.run(["espeak-ng", f"--voices={language}"], capture_output=True,
                         text=True).stdout.splitlines()[1:]
    if not any(line.split()[1:2] == [language] for line in out if line.split()):
        raise CompanionError(f"espeak-ng has no voice for language {language!r}: pick one "
                             "that `espeak-ng --voices` lists")


def _jobs(spec: ParallelSpec, train: list, test: list,
          reused: dict[str, Utterance]) -> list[_Job]:
    """Spanish speech of every verse, English speech of the verses chapter 1 did not
    speak; voices dealt round-robin as chapter 1 deals them, test voices held out."""
    rng = random.Random(f"parallel-voices-{spec.seed}")
    out: list[_Job] = []
    for lang, voices in (("es", (spec.train_voices, spec.test_voices)),
                         ("en", (spec.english.train_voices, spec.english.test_voices))):
        for split, pairs, pool in (("test", test, list(voices[1])),
                                   ("train", train, list(voices[0]))):
            rng.shuffle(pool)
            for i, (_ref, en, es) in enumerate(pairs):
                if lang == "en" and split == "train" and _text_key(en) in reused:
                    continue
                rate = rng.randint(*spec.rate_range)
                pitch = rng.randint(*spec.pitch_range)
                out.append(_Job(f"{lang}-{split}-{i:05d}", es if lang == "es" else en, split,
                                "espeak", pool[i % len(pool)], rate, pitch))
    return out


@stage("corpus")
def ensure_parallel_corpus(spec: ParallelSpec | None = None) -> Path:
    """Build (once) the spoken parallel corpus of a spec and return its manifest.

    Every verse pair gives two utterances: its Spanish speech (``language="es"``, ``text``
    Spanish, ``translation`` English) and its English speech (the other way round); ids are
    ``es-<split>-NNNNN`` / ``en-<split>-NNNNN``, an English training utterance that reuses
    chapter 1's recording keeps chapter 1's id and audio. Interrupt-safe as chapter 1's
    corpus: a wav appears only when complete, the manifest is written last.

    Raises:
        CompanionError: a tool, a Bible module or a Spanish voice is missing, or there are
            too few verses.
    """
    spec = spec or ParallelSpec()
    folder = cache_subdir("corpora", f"parallel-{spec.digest()}")
    manifest = folder / "manifest.jsonl"
    if cached_manifest(manifest, 2 * (spec.n_train + spec.n_test)) is not None:
        say_once(f"parallel corpus: cached ({2 * (spec.n_train + spec.n_test)} utterances)")
        return manifest
    for lang in sorted({lang.split("-")[0] for lang in spec.languages}):
        require_voice(lang)
    start = time.perf_counter()
    train, test = select_pairs(spec)
    ch1 = [u for u in load_manifest(ensure_synthetic_corpus(spec.english)) if u.split == "train"]
    reused = {_text_key(u.text): u for u in ch1}
    jobs = _jobs(spec, train, test, reused)
    (folder / "spec.json").write_text(json.dumps(
        {**asdict(spec), "version": PARALLEL_VERSION}, indent=1, default=str) + "\n")
    paths, durations = synthesise(jobs, folder / "wavs")
    spoken = {job.id: job for job in jobs}
    utts = []
    for split, pairs in (("train", train), ("test", test)):
        for i, (ref, en, es) in enumerate(pairs):
            for lang, text, other in (("es", es, en), ("en", en, es)):
                job_id = f"{lang}-{split}-{i:05d}"
                if job_id in spoken:
                    utts.append(Utterance(
                        id=job_id, audio=paths[job_id], text=text,
                        duration=durations[job_id], voice=spoken[job_id].voice_id,
                        split=split, source="synthetic-espeak", language=lang,
                        translation=other))
                else:  # chapter 1's recording of the same sentence
                    u = reused[_text_key(en)]
                    utts.append(Utterance(id=u.id, audio=u.audio, text=u.text,
                                          duration=u.duration, voice=u.voice, split=split,
                                          source=u.source, language="en", translation=es))
    write_manifest(manifest, utts)
    n_reused = sum(1 for u in utts if u.id in {x.id for x in ch1})
    print(f"parallel corpus: built {len(jobs)} utterances, reused {n_reused} of chapter 1's, "
          f"in {time.perf_counter() - start:.0f} s -> {folder}")
    return manifest
