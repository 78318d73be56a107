"""The parallel corpus: Spanish cleaned as English is, pairs split by verse away from
chapter 1's sentences, manifests carrying language and translation, one-line bad input."""

from __future__ import annotations

import json

import pytest

from lib.data.corpus import CorpusSpec
from lib.data.loaders import Utterance, load_manifest, write_manifest
from lib.data.parallel import check_parallel, clean_spanish, require_voice, select_pairs
from lib.data.spec import ParallelSpec
from lib.data.text import _text_key, select_texts
from lib.errors import CompanionError


def test_spanish_is_cleaned_like_english_and_capitals_lose_their_shout():
    assert clean_spanish("EN el principio crió Dios los cielos  y la tierra .") == (
        "En el principio crió Dios los cielos y la tierra.")
    assert clean_spanish("Y dijo: ¿ Quién eres ?") == "Y dijo: ¿Quién eres?"
    assert clean_spanish("«Sea la luz» —dijo") == "Sea la luz, dijo"


def test_a_parallel_file_with_sides_of_other_lengths_is_one_line():
    with pytest.raises(CompanionError, match="parallel file x.tsv: 3 source lines but 2 "
                                             "target lines"):
        check_parallel(["a", "b", "c"], ["a", "b"], "x.tsv")


def test_a_language_without_an_espeak_voice_is_one_line():
    require_voice("es")
    with pytest.raises(CompanionError, match="no voice for language 'xx'"):
        require_voice("xx")


def test_manifests_keep_language_and_translation_and_english_rows_stay_as_they_were(tmp_path):
    wav = tmp_path / "a.wav"
    wav.write_bytes(b"")
    es = Utterance(id="es-1", audio=str(wav), text="Hola mundo", duration=1.0, voice="v",
                   split="test", source="synthetic-espeak", language="es",
                   translation="Hello world")
    en = Utterance(id="en-1", audio=str(wav), text="Hello world", duration=1.0, voice="v",
                   split="test", source="synthetic-espeak")
    path = write_manifest(tmp_path / "m.jsonl", [es, en])
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert rows[0]["language"] == "es" and rows[0]["translation"] == "Hello world"
    assert "language" not in rows[1] and "translation" not in rows[1]
    assert load_manifest(path) == [es, en]


@pytest.mark.slow
def test_pairs_are_split_by_verse_away_from_chapter_1s_sentences():
    english = CorpusSpec(n_train=300, n_test=30)
    spec = ParallelSpec(n_train=200, n_test=40, english=english)
    train, test = select_pairs(spec)
    assert len(train) == 200 and len(test) == 40
    assert not {r for r, _, _ in train} & {r for r, _, _ in test}
    ch1_train, ch1_test = select_texts(english)
    assert not {_text_key(e) for _, e, _ in test} & {_text_key(t) for t in ch1_train}
    assert not {_text_key(e) for _, e, _ in train} & {_text_key(t) for t in ch1_test}
    for _, en, es in train + test:
        assert 4 <= len(en.split()) <= 15 and 4 <= len(es.split()) <= 15
    with pytest.raises(CompanionError, match="lower n_parallel_train"):
        select_pairs(ParallelSpec(n_train=9000, n_test=40, english=english))


def test_verse_alignment_that_leaves_most_verses_out_is_one_line():
    from lib.data.parallel import check_alignment

    check_alignment(100, 98, 95, "a / b")
    with pytest.raises(CompanionError, match="parallel texts a / b: only 50 of 100 / 98") as e:
        check_alignment(100, 98, 50, "a / b")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("drop,match", [
    ("en-test-1", r"m.jsonl \(test, es / en\): 2 source lines but 1 target lines"),
    (None, r"verse 0 has no pair of a Spanish and an English clip"),
])
def test_a_parallel_manifest_with_a_missing_side_is_one_line(drop, match):
    """The real input the chapter reads: the manifest of a parallel corpus, one side of a
    verse missing (the counts differ), or the two clips of a verse out of order."""
    from lib.data.loaders import Utterance
    from lib.recipes.multitask import _by_pair

    def utt(lang: str, i: int) -> Utterance:
        return Utterance(id=f"{lang}-test-{i}", audio="x.wav", text="t", duration=1.0,
                         voice="v", split="test", source="manifest", language=lang)

    rows = [utt(lang, i) for i in range(2) for lang in ("es", "en")]
    assert len(_by_pair(rows, "test", "m.jsonl")) == 2
    if drop:
        rows = [u for u in rows if u.id != drop]
    else:
        rows = [rows[0], rows[2], rows[1], rows[3]]  # es0, es1, en0, en1
    with pytest.raises(CompanionError, match=match) as err:
        _by_pair(rows, "test", "m.jsonl")
    assert "\n" not in str(err.value)
