"""Bad input fails loud, in one line, and nothing already written is lost or changed.

Each test feeds one mistake through a public entry point: the config functions, the book's
command line (:func:`lib.cli.main`), the scoring functions and the model builders. Book runs
use a throwaway layout in a temporary folder and papermill with a stand-in engine that needs
no kernel (one test, marked ``slow``, starts a real kernel).
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import nbformat
import numpy as np
import papermill
import pytest
from papermill.engines import Engine, papermill_engines

from lib.book import chapters, cli
from lib.config.resolve import resolve
from lib.data.sources import DataOverlapWarning
from lib.config.presets import load_preset
from lib.params import parse_parameters
from lib.errors import CompanionError

# --------------------------------------------------------------------------- helpers


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The single line written to stderr (fails when there are none or several)."""
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    return lines[0]


def _message(err: pytest.ExceptionInfo[CompanionError]) -> str:
    text = str(err.value)
    assert "\n" not in text and text.strip(), repr(text)
    return text


def _tiny(**over: Any) -> Any:
    """Chapter 1's run of preset tiny with ``over`` changed."""
    return resolve(1, preset="tiny", changes=over)


class _NoKernel(Engine):
    """Papermill's engine interface without a kernel: a code cell "runs" by its text.

    ``raise <message>`` gives a ValueError output (papermill then raises, as after a real
    failure); ``interrupt`` is Ctrl-C in this process; ``kernel-interrupt`` is Ctrl-C that
    reached the kernel (a KeyboardInterrupt output); anything else prints ``ran``.
    """

    @classmethod
    def execute_managed_notebook(cls, nb_man: Any, kernel_name: str, **kwargs: Any) -> None:
        for index, cell in enumerate(nb_man.nb.cells):
            nb_man.cell_start(cell, index)
            if cell.cell_type != "code":
                nb_man.cell_complete(cell, index)
                continue
            source = cell.source.strip()
            if source == "interrupt":
                raise KeyboardInterrupt
            if source.startswith("raise ") or source == "kernel-interrupt":
                ename = "ValueError" if source.startswith("raise ") else "KeyboardInterrupt"
                evalue = source.removeprefix("raise ") if ename == "ValueError" else ""
                cell.outputs = [nbformat.v4.new_output(
                    "error", ename=ename, evalue=evalue, traceback=[])]
                nb_man.cell_exception(cell, index)
                nb_man.cell_complete(cell, index)
                return
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="ran\n")]
            nb_man.cell_complete(cell, index)


papermill_engines.register("no-kernel", _NoKernel)


@pytest.fixture
def no_kernel(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Run papermill with :class:`_NoKernel`; returns the parameters of each call."""
    real = papermill.execute_notebook
    calls: list[dict[str, Any]] = []

    def execute(*args: Any, **kwargs: Any) -> Any:
        calls.append(dict(kwargs.get("parameters") or {}))
        return real(*args, engine_name="no-kernel", **kwargs)

    monkeypatch.setattr(papermill, "execute_notebook", execute)
    return calls


def _notebook(path: Path, parameters: str, *bodies: str) -> Path:
    """A chapter: a markdown title, the parameters cell, then one code cell per body."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Py"}
    nb.cells = [
        nbformat.v4.new_markdown_cell(f"# {path.stem}"),
        nbformat.v4.new_code_cell(parameters, metadata={"tags": ["parameters"]}),
        *[nbformat.v4.new_code_cell(body) for body in bodies],
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    """Two chapters, preset ``tiny``, and a last good executed copy of chapter 01."""
    first = _notebook(tmp_path / "book/01_first.ipynb", "steps = 1\nlr = 0.1", "print(steps)")
    _notebook(tmp_path / "book/02_second.ipynb", "seed = 0", "print(seed)")
    (tmp_path / "params").mkdir()
    (tmp_path / "params/tiny.yaml").write_text("steps: 5\nlr: 0.5\nseed: 7\n")
    good = tmp_path / "_build/tiny/executed/01_first.ipynb"
    good.parent.mkdir(parents=True)
    shutil.copy(first, good)
    with good.open("a") as f:
        f.write("\n")  # not the source's bytes: a copy that must survive
    return tmp_path


def _good(layout: Path) -> Path:
    return layout / "_build/tiny/executed/01_first.ipynb"


# --------------------------------------------------------------------------- configs


@pytest.mark.parametrize("text,value", [
    ("1e-3", 0.001), ("1E5", 100000.0), (".5", 0.5), ("-2e-4", -0.0002),
    ("1.0e+3", 1000.0), ("+.5", 0.5), ("2.5", 2.5), ("50", 50),
])
def test_numbers_in_usual_notations_are_numbers(text: str, value: float) -> None:
    parsed = parse_parameters([("x", text)])["x"]
    assert parsed == value and type(parsed) is type(value)


@pytest.mark.parametrize("text", ["1.2.3", "e5", "1e", "smollm2-135m", "'1e-3'"])
def test_other_values_stay_strings(text: str) -> None:
    assert isinstance(parse_parameters([("x", text)])["x"], str)


def test_a_preset_reads_numbers_the_same_way(tmp_path: Path) -> None:
    text = (Path(__file__).parents[1] / "params/tiny.yaml").read_text()
    preset = tmp_path / "mine.yaml"
    preset.write_text(text + "learning_rate: 2e-3  # YAML 1.2 reads this as a float\n")
    values = load_preset(str(preset))
    assert values["learning_rate"] == 0.002 and isinstance(values["learning_rate"], float)
    cfg = resolve(1, preset=str(preset))
    assert cfg.train.learning_rate == 0.002


def test_p_value_in_e_notation_reaches_the_chapter_as_a_float(layout: Path, no_kernel,
                                                              capsys) -> None:
    status = cli.main(["run", "--preset", "tiny", "--chapter", "01", "-p", "lr", "1e-3"],
                       root=layout)
    assert status == 0, capsys.readouterr().err
    assert no_kernel == [{"steps": 5, "lr": 0.001}]
    assert isinstance(no_kernel[0]["lr"], float)


def test_preset_with_an_unknown_key(tmp_path: Path) -> None:
    preset = tmp_path / "typo.yaml"
    preset.write_text((Path(__file__).parents[1] / "params/tiny.yaml").read_text()
                      + "trian_steps: 6\n")
    with pytest.raises(CompanionError) as err:
        load_preset(str(preset))
    text = _message(err)
    assert "unknown parameter trian_steps (did you mean train_steps?)" in text
    assert str(preset) in text


def test_preset_with_an_unknown_key_from_the_command_line(layout: Path, no_kernel,
                                                          capsys) -> None:
    (layout / "params/tiny.yaml").write_text("stpes: 5\nlr: 0.5\nseed: 7\n")
    before = _good(layout).read_bytes()
    assert cli.main(["run", "--preset", "tiny"], root=layout) == 1
    line = _one_line(capsys)
    assert line.startswith("error: unknown parameter stpes (did you mean steps?)")
    assert "tiny.yaml" in line
    assert no_kernel == [] and _good(layout).read_bytes() == before


def test_malformed_preset(tmp_path: Path) -> None:
    preset = tmp_path / "broken.yaml"
    preset.write_text("seed: 0\nlearning_rate: [1e-3\ntrain_steps: 6\n")
    with pytest.raises(CompanionError) as err:
        load_preset(str(preset))
    text = _message(err)
    assert str(preset) in text and "not valid YAML" in text
    assert "line 3, column" in text  # where PyYAML notices the unclosed bracket


def test_preset_with_a_key_twice(tmp_path: Path) -> None:
    preset = tmp_path / "twice.yaml"
    preset.write_text("seed: 0\ntrain_steps: 6\nseed: 1\n")
    with pytest.raises(CompanionError) as err:
        load_preset(str(preset))
    assert "line 3, column 1: key 'seed' appears twice" in _message(err)


@pytest.mark.parametrize("value", ["[a, b", "{x", "a: b: c", '"open'])
def test_malformed_p_value(layout: Path, no_kernel, capsys, value: str) -> None:
    before = _good(layout).read_bytes()
    assert cli.main(["run", "--preset", "tiny", "-p", "lr", value], root=layout) == 1
    line = _one_line(capsys)
    assert line.startswith(f"error: -p lr {value!r} is not valid YAML (line 1, column ")
    assert no_kernel == [] and _good(layout).read_bytes() == before


def test_p_name_given_twice() -> None:
    with pytest.raises(CompanionError) as err:
        parse_parameters([("lr", "0.1"), ("lr", "0.2")])
    assert "lr is given twice" in _message(err)


@pytest.mark.parametrize("selector", ["2.5", "1.0", "01_fir", "first", "001x"])
def test_chapter_selector_must_name_a_chapter(layout: Path, no_kernel, capsys,
                                             selector: str) -> None:
    before = _good(layout).read_bytes()
    assert cli.main(["run", "--preset", "tiny", "--chapter", selector], root=layout) == 1
    line = _one_line(capsys)
    assert line.startswith(f"error: unknown chapter {selector!r}")
    assert line.endswith("chapters: 01_first, 02_second")
    assert no_kernel == [] and _good(layout).read_bytes() == before


@pytest.mark.parametrize("selector", ["01", "1", "01_first", "01_first.ipynb",
                                      "book/01_first.ipynb"])
def test_chapter_selectors_that_name_a_chapter(layout: Path, selector: str) -> None:
    assert chapters.select_chapters([selector], layout) == [layout / "book/01_first.ipynb"]


@pytest.mark.parametrize("train,test", [
    ("real", ["real"]),
    ("real", "real"),
    ("synthetic:test", ["synthetic:test"]),
    ("librispeech:/data/LS#train-clean-100", ["librispeech:/data/LS/train-clean-100"]),
    ("librispeech:/data/LS#train-clean-100,test-clean", ["librispeech:/data/LS/#test-clean"]),
    ("manifest:/data/m.jsonl", ["manifest:/data/m.jsonl#test"]),
])
def test_train_and_test_overlap_warns(train: str, test: Any) -> None:
    with pytest.warns(DataOverlapWarning) as record:
        _tiny(train_data=train, test_data=test)
    (warning,) = record
    text = str(warning.message)
    assert "\n" not in text and "share utterances" in text
    assert repr(train) in text


@pytest.mark.parametrize("train,test", [
    ("synthetic:train", ["synthetic:test", "real"]),
    ("librispeech:/data/LS#train-clean-100", ["librispeech:/data/LS#test-clean"]),
    ("manifest:/data/m.jsonl#train", ["manifest:/data/m.jsonl#test"]),
])
def test_disjoint_train_and_test_do_not_warn(train: str, test: list[str]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataOverlapWarning)
        _tiny(train_data=train, test_data=test)


# --------------------------------------------------------------------------- library


def test_score_asr_wants_lists_of_strings() -> None:
    from lib.evaluate.metrics import score_asr

    with pytest.raises(CompanionError) as err:
        score_asr("hello", "hallo")
    assert _message(err).startswith("score_asr: refs is one string ('hello'), not a list")
    with pytest.raises(CompanionError) as err:
        score_asr(["hello"], None)
    assert _message(err).startswith("score_asr: hyps is None")
    with pytest.raises(CompanionError) as err:
        score_asr(["hello", "world"], ["hello", None])
    assert _message(err).startswith("score_asr: hyps[1] is None, not a string")


@pytest.fixture(scope="module")
def tiny_llama() -> tuple[Any, Any]:
    from lib.build.components import load_decoder

    return load_decoder("tiny-llama")


def test_score_text_wants_a_list_of_texts(tiny_llama) -> None:
    from lib.score.redundancy import score_text

    model, tok = tiny_llama
    with pytest.raises(CompanionError) as err:
        score_text(model, tok, "hello")
    assert _message(err).startswith("score_text: texts is one string ('hello'), not a list")
    with pytest.raises(CompanionError) as err:
        score_text(model, tok, ["hello", 3])
    assert _message(err).startswith("score_text: texts[1] is 3, not a string")


@pytest.mark.parametrize("kwargs,name", [
    ({"stack": 2.5}, "projector_stack=2.5"),
    ({"stack": True}, "projector_stack=True"),
    ({"stack": "5"}, "projector_stack='5'"),
    ({"stack": 0}, "projector_stack=0"),
    ({"hidden": 16.0}, "projector_hidden=16.0"),
])
def test_projector_wants_positive_integers(kwargs: dict[str, Any], name: str) -> None:
    from lib.build.components import Projector

    with pytest.raises(CompanionError) as err:
        Projector(4, 4, **kwargs)
    assert _message(err).startswith(f"{name}: use a positive integer")


def test_projector_takes_numpy_integers() -> None:
    from lib.build.components import Projector

    assert Projector(4, 4, stack=np.int64(3), hidden=8).stack == 3


def test_decoder_folder_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    from lib.build.components import load_decoder

    empty = tmp_path / "empty"
    empty.mkdir()
    tokenizer_only = tmp_path / "tokenizer-only"
    tokenizer_only.mkdir()
    (tokenizer_only / "tokenizer.json").write_text("{}")
    for folder in (empty, tokenizer_only):
        with pytest.raises(CompanionError) as err:
            load_decoder(str(folder))
        text = _message(err)
        assert f"{str(folder)!r} is not a transformers checkpoint (it has no config.json)" \
            in text
        assert "save_pretrained" in text and "sentencepiece" not in text


def test_decoder_folder_without_a_tokenizer(tmp_path: Path) -> None:
    from lib.assets import resolve_model
    from lib.build.components import load_decoder

    shutil.copy(Path(resolve_model("tiny-llama")) / "config.json", tmp_path / "config.json")
    with pytest.raises(CompanionError) as err:
        load_decoder(str(tmp_path))
    assert "has no tokenizer files" in _message(err)


def test_llm_as_encoder_and_speech_model_as_decoder() -> None:
    from lib.build.components import build_encoder, load_decoder

    with pytest.raises(CompanionError) as err:
        build_encoder("tiny-llama")
    text = _message(err)
    assert text.startswith("encoder 'tiny-llama' is a llama model, a text language model")
    assert "whisper-base" in text
    with pytest.raises(CompanionError) as err:
        load_decoder("tiny-whisper")
    assert _message(err).startswith("decoder 'tiny-whisper' is a whisper speech model")


# --------------------------------------------------------------------------- book runs


@pytest.mark.parametrize("command", ["run", "build"])
def test_build_folder_is_a_file(tmp_path: Path, no_kernel, capsys, command: str) -> None:
    _notebook(tmp_path / "book/01_first.ipynb", "steps = 1", "print(steps)")
    (tmp_path / "params").mkdir()
    (tmp_path / "params/tiny.yaml").write_text("steps: 5\n")
    (tmp_path / "_build").mkdir()
    blocker = tmp_path / "_build/tiny"
    blocker.write_bytes(b"not a folder\n")
    assert cli.main([command, "--preset", "tiny"], root=tmp_path) == 1
    line = _one_line(capsys)
    assert line.startswith(f"error: {blocker} is a file, not a folder")
    assert blocker.read_bytes() == b"not a folder\n"
    assert no_kernel == []


@pytest.mark.parametrize("how", ["interrupt", "kernel-interrupt"])
def test_ctrl_c_keeps_the_last_good_copy(layout: Path, no_kernel, capsys, how: str) -> None:
    _notebook(layout / "book/01_first.ipynb", "steps = 1\nlr = 0.1", "print(steps)", how,
              "print(2)")
    good = _good(layout)
    before = good.read_bytes()
    assert cli.main(["run", "--preset", "tiny"], root=layout) == 130
    failed = good.with_name("01_first.failed.ipynb")
    assert _one_line(capsys) == (f"interrupted: chapter 01 stopped; partial run kept at "
                                 f"{failed}; {good} is unchanged")
    assert good.read_bytes() == before
    assert not good.with_name("01_first.running.ipynb").exists()
    partial = nbformat.read(failed, 4)
    assert "ran" in str(partial.cells)  # the cells before Ctrl-C, with their output
    assert len(no_kernel) == 1  # chapter 02 never started


def test_failed_chapter_names_the_source_cell(layout: Path, no_kernel, capsys) -> None:
    # Cells of the source: 1 markdown, 2 parameters, 3 print, 4 markdown, 5 the raise.
    nb = nbformat.read(_notebook(layout / "book/01_first.ipynb", "steps = 1\nlr = 0.1",
                                 "print(steps)", "raise boom"), 4)
    nb.cells.insert(3, nbformat.v4.new_markdown_cell("Next, the failure."))
    nbformat.write(nb, layout / "book/01_first.ipynb")
    before = _good(layout).read_bytes()
    assert cli.main(["run", "--preset", "tiny"], root=layout) == 1
    failed = _good(layout).with_name("01_first.failed.ipynb")
    assert _one_line(capsys) == (f"error: chapter 01 failed in cell 5: ValueError: boom "
                                 f"(partial run kept at {failed})")
    assert _good(layout).read_bytes() == before
    assert not _good(layout).with_name("01_first.running.ipynb").exists()


def _tags(cell: Any) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def test_executed_copy_shows_the_parameters_once(layout: Path, no_kernel, capsys) -> None:
    _notebook(layout / "book/01_first.ipynb", "# Steps.\nsteps = 1  # how many\nlr = 0.1",
              "print(steps)")
    source = nbformat.read(layout / "book/01_first.ipynb", 4)
    assert cli.main(["run", "--preset", "tiny", "--chapter", "01", "-p", "steps", "9"],
                     root=layout) == 0
    executed = nbformat.read(_good(layout), 4)
    # Same cells as the source; the parameters cell shows the values it ran with, comments
    # kept, in papermill's injected cell.
    assert len(executed.cells) == len(source.cells)
    assert [_tags(c) for c in executed.cells] == [[], ["injected-parameters"], []]
    assert executed.cells[1].source.splitlines() == [
        "# Parameters this page was run with (preset tiny; -p steps=9)",
        "# Steps.", "steps = 9  # how many", "lr = 0.5",
    ]
    for ran, src in zip(executed.cells, source.cells):
        if "parameters" not in _tags(src):
            assert ran.source == src.source


def test_executed_copy_keeps_the_defaults_a_preset_does_not_set(layout: Path, no_kernel,
                                                                capsys) -> None:
    (layout / "params/partial.yaml").write_text("steps: 5\n")
    (layout / "params/none.yaml").write_text("seed: 1\n")  # nothing for chapter 01
    assert cli.main(["run", "--preset", "partial", "--chapter", "01"], root=layout) == 0
    cells = nbformat.read(layout / "_build/partial/executed/01_first.ipynb", 4).cells
    assert [_tags(c) for c in cells] == [[], ["injected-parameters"], []]
    assert cells[1].source.splitlines() == [
        "# Parameters this page was run with (preset partial)", "steps = 5", "lr = 0.1"]

    assert cli.main(["run", "--preset", "none", "--chapter", "01"], root=layout) == 0
    cells = nbformat.read(layout / "_build/none/executed/01_first.ipynb", 4).cells
    assert [_tags(c) for c in cells] == [[], ["parameters"], []]
    assert cells[1].source == "steps = 1\nlr = 0.1"


@pytest.mark.slow
def test_failed_chapter_with_a_real_kernel(layout: Path, capsys) -> None:
    """The cell number with papermill's own engine: markdown counted, injected cell not."""
    _notebook(layout / "book/01_first.ipynb", "steps = 1\nlr = 0.1", "print(steps)",
              "raise ValueError(f'boom {steps}')")
    before = _good(layout).read_bytes()
    assert cli.main(["run", "--preset", "tiny", "--chapter", "01"], root=layout) == 1
    failed = _good(layout).with_name("01_first.failed.ipynb")
    assert _one_line(capsys) == (f"error: chapter 01 failed in cell 4: ValueError: boom 5 "
                                 f"(partial run kept at {failed})")
    assert _good(layout).read_bytes() == before


# -- issue 11: the training recipe ---------------------------------------------------------


@pytest.mark.parametrize("name,value,hint", [
    ("recipe", "ctc", "ctc-warmstart, plain"),
    ("precision", "fp16", "auto, bf16, fp32"),
    ("ctc_epochs", 0, "positive number"),
    ("dev_every", -1, "non-negative integer"),
])
def test_recipe_parameters_are_checked(name: str, value: Any, hint: str) -> None:
    with pytest.raises(CompanionError) as err:
        _tiny(**{name: value})
    msg = _message(err)
    assert f"{name}={value!r}" in msg and hint in msg


def test_a_corpus_too_small_for_the_dev_subset(random_features) -> None:
    from lib.recipes.pipeline import split_dev

    data = random_features(3, split="train")
    with pytest.raises(CompanionError) as err:
        split_dev(data, 3)
    msg = _message(err)
    assert "dev_utterances=3" in msg and "3 training utterances" in msg
    fit, dev = split_dev(data, 1)
    assert [u.id for u in fit.utterances] == ["u0", "u1"]
    assert [u.id for u in dev.utterances] == ["u2"]


def test_transcripts_longer_than_the_audio_cannot_warm_start(tmp_path: Path,
                                                            random_features) -> None:
    """Four encoder frames at projector_stack=5 are one position: no word fits twice."""
    from lib.config.sections import ModelConfig, TrainConfig
    from lib.train.ctc import ctc_warm_start
    from lib.build.speechllm import build_speechllm

    model = build_speechllm(ModelConfig(encoder="tiny-whisper", decoder="tiny-llama",
                                        projector_hidden=16, lora_rank=0), seed=0)
    data = random_features(2, split="train", base=4, step=0)
    with pytest.raises(CompanionError) as err:
        ctc_warm_start(model, data, TrainConfig(ctc_epochs=1, ctc_learning_rate=1e-3,
                                                ctc_batch_size=2), tmp_path / "ws")
    msg = _message(err)
    assert "projector_stack=5" in msg and "recipe plain" in msg
    assert not (tmp_path / "ws").exists()


# -- issue 7: bad input at the new homes -----------------------------------------------------


def test_a_synthetic_corpus_too_small_for_the_recipe_fails_at_config_time() -> None:
    """dev_utterances would take every synthetic training utterance: caught before the
    corpus is built, naming both parameters."""
    with pytest.raises(CompanionError) as err:
        _tiny(n_train=12, dev_utterances=12)
    msg = _message(err)
    assert "dev_utterances=12" in msg and "12 synthetic training utterances" in msg
    assert "n_train" in msg
    assert _tiny(n_train=12, dev_utterances=11).dev_utterances == 11


def test_a_transcript_with_no_tokens_is_named() -> None:
    import torch

    from lib.config.sections import ModelConfig
    from lib.build.speechllm import build_speechllm

    model = build_speechllm(ModelConfig(encoder="tiny-whisper", decoder="tiny-llama",
                                        projector_hidden=8, lora_rank=0), seed=0)
    feats, lengths = torch.zeros(2, 10, 64), torch.tensor([10, 10])
    with pytest.raises(CompanionError) as err:
        model.build_inputs(feats, lengths, ["hello", "   "])
    msg = _message(err)
    assert "(item 1, ' ')" in msg and "drop utterances without text" in msg


@pytest.mark.parametrize("alias,samples", [("tiny-whisper", 399), ("tiny-wavlm", 399)])
def test_a_clip_shorter_than_one_frame_is_named(alias: str, samples: int) -> None:
    """400 samples (25 ms) is one frame of either front end; one sample less is none."""
    import numpy as np

    from lib.build.components import build_encoder

    enc = build_encoder(alias)
    clip = np.full(samples, 0.1, dtype=np.float32)
    with pytest.raises(CompanionError) as err:
        enc([np.full(800, 0.1, dtype=np.float32), clip])
    msg = _message(err)
    assert f"{samples} samples" in msg and "0.1 s" in msg
    _, lengths = enc([np.full(samples + 1, 0.1, dtype=np.float32)])
    assert lengths.tolist() == [1]


def test_a_recipe_that_does_not_exist_is_named_with_the_known_ones() -> None:
    with pytest.raises(CompanionError) as err:
        _tiny(recipe="warmstart")
    msg = _message(err)
    assert "recipe='warmstart'" in msg and "ctc-warmstart, plain" in msg
