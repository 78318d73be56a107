"""The synthetic corpus's text source: World English Bible sentences, read with
``diatheke``, cleaned and split into train and test; and the system tools it needs.

Stage: data. Explained in chapter 1 (book/01_building_a_speechllm.ipynb).
"""

from __future__ import annotations

import html
import os
from pathlib import Path
import random
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor


from lib.clock import track
from lib.data.spec import CorpusSpec
from lib.errors import CompanionError
from lib.paths import cache_subdir


BIBLE_MODULE = "engWEB2015eb"
"""SWORD module of the World English Bible installed by Debian's ``sword-text-web``."""

APT_PACKAGES = ("espeak-ng", "flite", "diatheke", "sword-text-web", "sword-text-sparv")
"""Debian packages the synthetic corpora need (flite's CMU voices, the Reina-Valera 1909 for
chapter 5)."""

SPANISH_MODULE = "spaRV1909eb"
"""SWORD module of the Reina-Valera 1909 installed by Debian's ``sword-text-sparv``."""

BIBLE_BOOKS = (
    "Genesis", "Exodus", "Leviticus", "Numbers", "Deuteronomy", "Joshua", "Judges",
    "Ruth", "1 Samuel", "2 Samuel", "1 Kings", "2 Kings", "1 Chronicles",
    "2 Chronicles", "Ezra", "Nehemiah", "Esther", "Job", "Psalms", "Proverbs",
    "Ecclesiastes", "Song of Solomon", "Isaiah", "Jeremiah", "Lamentations",
    "Ezekiel", "Daniel", "Hosea", "Joel", "Amos", "Obadiah", "Jonah", "Micah",
    "Nahum", "Habakkuk", "Zephaniah", "Haggai", "Zechariah", "Malachi", "Matthew",
    "Mark", "Luke", "John", "Acts", "Romans", "1 Corinthians", "2 Corinthians",
    "Galatians", "Ephesians", "Philippians", "Colossians", "1 Thessalonians",
    "2 Thessalonians", "1 Timothy", "2 Timothy", "Titus", "Philemon", "Hebrews",
    "James", "1 Peter", "2 Peter", "1 John", "2 John", "3 John", "Jude",
    "Revelation",
)  # fmt: skip
"""The 66 books exported one by one (one diatheke call for a long range stops early)."""

# --------------------------------------------------------------------------- system tools


def _missing_tools() -> list[str]:
    """Debian packages among :data:`APT_PACKAGES` that are not usable now."""
    missing = []
    missing += [tool for tool in ("espeak-ng", "flite") if shutil.which(tool) is None]
    if shutil.which("diatheke") is None:
        missing.append("diatheke")
        missing.append("sword-text-web")
    else:
        if not _bible_available():
            missing.append("sword-text-web")
        if not _bible_available(SPANISH_MODULE, "principio"):
            missing.append("sword-text-sparv")
    return missing


def _bible_available(module: str = BIBLE_MODULE, word: str = "beginning") -> bool:
    """Whether diatheke can read Genesis 1:1 of ``module`` (``word`` is in it)."""
    result = subprocess.run(
        ["diatheke", "-b", module, "-f", "plain", "-k", "Genesis 1:1"],
        capture_output=True,
        text=True,
    )
    return word in result.stdout


def ensure_system_tools() -> None:
    """Make sure espeak-ng, diatheke and the World English Bible are installed.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    When something is missing and we run as root with apt-get, installs
    ``espeak-ng flite diatheke sword-text-web sword-text-sparv`` (running ``apt-get update`` first if the plain
    install fails). Otherwise raises an error naming the command to run.

    Raises:
        CompanionError: A tool is missing and cannot be installed from here.
    """
    missing = _missing_tools()
    if not missing:
        return
    command = f"apt-get install -y -q {' '.join(APT_PACKAGES)}"
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    if not is_root or shutil.which("apt-get") is None:
        raise CompanionError(
            f"missing {', '.join(missing)}: install with `sudo {command}` (Debian/Ubuntu)"
        )
    args = ["apt-get", "install", "-y", "-q", *APT_PACKAGES]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"installing {' '.join(APT_PACKAGES)} with apt-get ...")
    result = subprocess.run(args, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env)
        result = subprocess.run(args, capture_output=True, text=True, env=env)
    missing = _missing_tools()
    if result.returncode != 0 or missing:
        detail = (result.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise CompanionError(
            f"could not install {', '.join(missing or APT_PACKAGES)} ({detail}): "
            f"run `{command}` yourself"
        )


def require_espeak() -> None:
    """Raise a CompanionError when espeak-ng is not on PATH."""
    if shutil.which("espeak-ng") is None:
        raise CompanionError(
            "espeak-ng not found: install it with `apt-get install espeak-ng` "
            "(Debian/Ubuntu), or call lib.data.text.ensure_system_tools() as root"
        )


def require_flite() -> None:
    """Raise a CompanionError when flite is not on PATH."""
    if shutil.which("flite") is None:
        raise CompanionError(
            "flite not found: install it with `apt-get install flite` (Debian/Ubuntu), or "
            "drop 'flite' from the corpus engines (flite_fraction 0)")


def _require_bible() -> None:
    """Raise a CompanionError when diatheke or the WEB module is missing."""
    if shutil.which("diatheke") is None or not _bible_available():
        raise CompanionError(
            "diatheke or the World English Bible module not found: install them with "
            "`apt-get install diatheke sword-text-web` (Debian/Ubuntu)"
        )


# --------------------------------------------------------------------------- text

_VERSE_PREFIX = re.compile(r"^(.*?) \d+:\d+: ")
_TAG = re.compile(r"<[^>]*>")
_SPEAKER_LABEL = re.compile(r"\s{2,}(?:<w>)?(?:Beloved|Lover|Friends)(?:</w>)?\s{2,}")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_ALLOWED = re.compile(r"^[A-Za-z][A-Za-z ,.;:!?'-]*$")


def export_book(book: str, module: str = BIBLE_MODULE,
                package: str = "sword-text-web") -> list[tuple[int, int, str]]:
    """One book of a SWORD Bible module as (chapter, verse, text with markup removed).

    OSIS output keeps each word in a ``<w>`` element; the plain format drops the markup
    but glues neighbouring words ("Godcreated"). Here every tag becomes a space. Exported
    book by book: one diatheke call for a long range stops early, silently.

    Raises:
        CompanionError: diatheke gives no text (naming the module and the package).
    """
    result = subprocess.run(
        ["diatheke", "-b", module, "-f", "OSIS", "-k", book],
        capture_output=True,
        text=True,
    )
    lines = result.stdout.splitlines()
    label = _VERSE_PREFIX.match(lines[0]) if lines else None
    if result.returncode != 0 or label is None:
        raise CompanionError(
            f"diatheke returned no text for {book!r} of {module}: reinstall it with "
            f"`apt-get install --reinstall diatheke {package}`"
        )
    verse = re.compile(re.escape(label.group(1)) + r" (\d+):(\d+): (.*)$")
    verses = []
    for line in lines:
        match = verse.search(line)  # text before the label is a psalm title: dropped
        if not match:
            continue
        raw = re.split(r" {8,}", match.group(3))[0]  # the glossary after Rev 22:21
        raw = _SPEAKER_LABEL.sub(" ", raw)  # Song of Solomon speaker headings
        raw = re.sub(r"<note\b.*?</note>|<title\b.*?</title>", " ", raw)
        verses.append((int(match.group(1)), int(match.group(2)),
                       html.unescape(_TAG.sub(" ", raw))))
    return verses


def clean_text(text: str) -> str:
    """Normalise Bible text into a plain transcript a TTS engine reads as written.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Curly quotes become ASCII; quotation marks are dropped (they are not spoken) while
    apostrophes inside words stay ("God's", "don't"); dashes become commas; brackets go;
    spaces before punctuation go and one space follows it, so words never glue.

    Args:
        text: Verse text with markup already removed.

    Returns:
        The cleaned text on one line.
    """
    text = text.translate(str.maketrans("\u2018\u2019\u201c\u201d", "''\"\""))
    text = re.sub(r"(?<=[A-Za-z])'(?=[A-Za-z])", "\x00", text)
    text = text.replace("'", " ").replace('"', " ").replace("\x00", "'")
    text = re.sub(r"\s*[\u2014\u2013]\s*", ", ", text)
    text = re.sub(r"[()\[\]{}]", " ", text)
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s+([,.;:!?])", r"\1", text)
    text = re.sub(r"([,;:])(?:\s*[,;:])+", r"\1", text)
    text = re.sub(r"[,;:]\s*([.!?])", r"\1", text)
    text = re.sub(r"([,.;:!?])(?=[A-Za-z])", r"\1 ", text)
    return text.strip()


def bible_sentences() -> list[str]:
    """All cleaned sentences of the World English Bible (66 books), in canonical order.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Exported book by book with diatheke, chapters joined and split into sentences, so a
    sentence that spans verses stays whole. Cached in ``<cache>/corpora/web-sentences.txt``.

    Returns:
        Sentences containing only letters, spaces, apostrophes, hyphens and ``,.;:!?``.
    """
    cache = cache_subdir("corpora") / "web-sentences.txt"
    if cache.is_file() and cache.stat().st_size > 0:
        return cache.read_text(encoding="utf-8").splitlines()
    _require_bible()
    with ThreadPoolExecutor(max_workers=4) as pool:
        books = list(
            track(
                pool.map(export_book, BIBLE_BOOKS),
                total=len(BIBLE_BOOKS),
                desc="World English Bible",
                unit="book",
            )
        )
    sentences: list[str] = []
    for verses in books:
        chapters: dict[int, list[str]] = {}
        for chapter, _verse, text in verses:
            chapters.setdefault(chapter, []).append(text)
        for texts in chapters.values():
            for sentence in _SENTENCE_END.split(clean_text(" ".join(texts))):
                sentence = re.sub(r"^[\s,.;:!?-]+", "", sentence).strip()
                sentence = re.sub(r"[,;:-]+$", ".", sentence)
                if sentence and _ALLOWED.match(sentence):
                    sentences.append(sentence[0].upper() + sentence[1:])
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_name(f".{cache.name}.partial")
    partial.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    os.replace(partial, cache)
    return sentences


FORTUNES_PACKAGE = "fortunes"
"""Debian's fortune-mod quotations (BSD licence): modern English of every register, the
text lever of chapter 1 (the Bible's vocabulary lacks most words people say today)."""

_FORTUNES = Path("usr/share/games/fortunes")


def parse_fortunes(text: str) -> list[str]:
    """The sentences of one fortune file: entries split at ``%`` lines, attribution lines
    (``-- Name``, or indented deep) dropped, cleaned and filtered as the Bible's are."""
    sentences = []
    for entry in re.split(r"\n%\n", text):
        lines = [line.strip() for line in entry.splitlines()
                 if not line.strip().startswith("--") and not line.startswith("\t\t")]
        for sentence in _SENTENCE_END.split(clean_text(" ".join(lines))):
            sentence = sentence.strip()
            if sentence and _ALLOWED.match(sentence):
                sentences.append(sentence)
    return sentences


def fortune_sentences() -> list[str]:
    """Every sentence of Debian's ``fortunes`` (fetched once with ``apt-get download``, no
    root), cached in ``<cache>/corpora/fortune-sentences.txt``.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).
    """
    cache = cache_subdir("corpora") / "fortune-sentences.txt"
    if cache.is_file() and cache.stat().st_size > 0:
        return cache.read_text(encoding="utf-8").splitlines()
    from lib.data.real import extract_debian

    target = cache_subdir("corpora") / "text-fortunes"
    if not (target / _FORTUNES).is_dir():
        extract_debian((FORTUNES_PACKAGE,), target)
    sentences = [s for path in sorted((target / _FORTUNES).iterdir())
                 if path.is_file() and "." not in path.name
                 for s in parse_fortunes(path.read_text(encoding="utf-8", errors="ignore"))]
    partial = cache.with_name(f".{cache.name}.partial")
    partial.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    os.replace(partial, cache)
    return sentences


def _text_key(text: str) -> str:
    """Comparison key: lower-case letters and spaces only."""
    return " ".join(re.sub(r"[^a-z' ]", " ", text.lower()).split())


def select_texts(spec: CorpusSpec) -> tuple[list[str], list[str]]:
    """Pick disjoint train and test sentences for a spec.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).

    Sentences of ``min_words..max_words`` words, de-duplicated (ignoring case and
    punctuation), shuffled with ``spec.seed``; the first ``n_test`` go to test, the next
    ``n_train`` to train. With ``text_fraction`` that share of the training sentences comes
    from :func:`fortune_sentences` instead (the test sentences stay the Bible's).

    Args:
        spec: The corpus spec.

    Returns:
        (train texts, test texts).

    Raises:
        CompanionError: The Bible has too few sentences of that length.
    """
    unique: dict[str, str] = {}
    for sentence in bible_sentences():
        if spec.min_words <= len(sentence.split()) <= spec.max_words:
            unique.setdefault(_text_key(sentence), sentence)
    texts = list(unique.values())
    need = spec.n_train + spec.n_test
    if need > len(texts):
        raise CompanionError(
            f"only {len(texts)} sentences of {spec.min_words}-{spec.max_words} words, "
            f"{need} requested: lower n_train/n_test or widen the word range"
        )
    random.Random(spec.seed).shuffle(texts)
    train, test = texts[spec.n_test : need], texts[: spec.n_test]
    n_other = round(spec.text_fraction * spec.n_train)
    if n_other:  # the text lever: a share of TRAIN from the fortunes, never a test sentence
        taken = {_text_key(t) for t in test}
        other = {_text_key(t): t for t in fortune_sentences()
                 if spec.min_words <= len(t.split()) <= spec.max_words}
        pool = [t for k, t in other.items() if k not in taken]
        random.Random(f"text-{spec.seed}").shuffle(pool)
        train = train[: spec.n_train - n_other] + pool[:n_other]
        random.Random(f"mix-{spec.seed}").shuffle(train)
    return train, test
