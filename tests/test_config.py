"""Parameters resolved once into a run: one line naming a bad parameter, one field per
parameter found by its name, sections the stages take whole."""

from __future__ import annotations

import dataclasses
import warnings

import pytest

from lib.config.defaults import CHAPTER_PARAMS, defaults, own_names, param_names
from lib.config.presets import load_preset, preset_names
from lib.config.resolve import field_of, resolve, resolve_values
from lib.config.sections import SECTIONS, EvalConfig, Record, TrainConfig, section_fields
from lib.device import resolve_precision
from lib.errors import CompanionError
from lib.fileio import config_hash


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_resolves_every_chapter(name):
    for n in CHAPTER_PARAMS:
        run = resolve(n, preset=name)
        assert run.models and run.source["preset"] == name and run.chapter == n
        assert (run.multitask is None) == (n < 5) and (run.score is None) == (n < 2)


@pytest.mark.parametrize("over,match", [
    ({"train_steps": 0}, "train_steps=0"),
    ({"batch_size": "8"}, "batch_size='8'"),
    ({"learning_rate": -1}, "learning_rate=-1"),
    ({"warmup_steps": 100}, "warmup_steps=100"),
    ({"decoders": []}, "decoders"),
    ({"device": "tpu"}, "device='tpu'"),
    ({"max_test_utterances": 0}, "max_test_utterances=0"),
    ({"rescore_beams": -1}, "rescore_beams=-1"),
    ({"rescore_weights": [0.5, 1.5]}, r"rescore_weights=\[0.5, 1.5\].*weights in \[0, 1\]"),
    ({"rescore_weights": []}, "rescore_weights=\\[\\]"),
    ({"recipe": "fast"}, "recipe='fast'.*ctc-warmstart, plain"),
    ({"precision": "fp8"}, "precision='fp8'.*auto, bf16, fp32"),
    ({"levers": ["text", "loud"]}, r"levers=\['text', 'loud'\].*unknown lever 'loud'.*name=amount"),
    ({"levers": ["text=1.5"]}, r"lever 'text=1.5'.*number in \(0, 1\].*text_fraction"),
    ({"levers": ["noise=often"]}, r"lever 'noise=often'.*augment_prob"),
    ({"levers": ["clean=0.5"]}, "lever 'clean=0.5' takes no amount"),
])
def test_bad_values_name_the_parameter(over, match):
    with pytest.raises(CompanionError, match=match) as err:
        resolve(1, preset="tiny", changes=over)
    assert "\n" not in str(err.value)


def test_unknown_and_missing_parameters():
    with pytest.raises(CompanionError, match="unknown parameter.*trian_steps"):
        resolve(1, preset="tiny", changes={"trian_steps": 3})
    ns = _namespace(1)
    del ns["seed"]
    with pytest.raises(CompanionError, match="missing parameter.*seed"):
        resolve(1, ns)


def test_unknown_preset():
    with pytest.raises(CompanionError, match="unknown preset 'nope'.*tiny"):
        load_preset("nope")


def test_config_hash_changes_with_config():
    a = resolve(1, preset="tiny")
    b = resolve(1, preset="tiny", changes={"train_steps": 7})
    assert config_hash(a.train) != config_hash(b.train)
    assert config_hash(a.train) == config_hash(resolve(1, preset="tiny").train)


@pytest.mark.parametrize("over,match", [
    ({"prune_strategies": ["angular", "magic"]}, "prune_strategies.*unknown 'magic'"),
    ({"prune_fractions": [0.2, 1.0]}, "prune_fractions"),
    ({"prune_fractions": []}, "prune_fractions"),
    ({"prune_threshold": 0}, "prune_threshold=0"),
    ({"prune_threshold": 1.5}, "prune_threshold=1.5"),
    ({"heal_seeds": 0}, "heal_seeds=0"),
    ({"prune_loss_threshold": 1}, "prune_loss_threshold=1"),
    ({"heal_variants": ["both", "all"]}, "heal_variants.*unknown 'all'"),
    ({"heal_fraction": 0}, "heal_fraction=0"),
    ({"heal_steps": 0}, "heal_steps=0"),
    ({"heal_lora_rank": -1}, "heal_lora_rank=-1"),
    ({"tasks": ["asr", "summarise"]}, "tasks.*unknown 'summarise'; use any of asr, asr-es"),
    ({"tasks": ["asr-es", "st-es-en"]}, "tasks=.*include asr"),
    ({"n_parallel_train": 0}, "n_parallel_train=0"),
    ({"multitask_steps": 1}, "multitask_steps=1: must be above warmup_steps=1"),
])
def test_bad_later_chapter_values_name_the_parameter(over, match):
    with pytest.raises(CompanionError, match=match) as err:
        resolve(5, preset="tiny", changes=over)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------ how values resolve


def _namespace(chapter: int, **over):
    """A notebook's namespace as its parameters cell leaves it, then ``over``."""
    ns = {"preset": "tiny", "record": "hand", "overrides": {}}
    ns.update({k: v for k, v in defaults(chapter).items() if k in own_names(chapter)})
    ns.update(over)
    return ns


def test_defaults_then_preset_then_cell_then_changes():
    """Chapter 3 inherits chapter 1's training from tiny.yaml (6 steps, not the default
    300); a value the cell edits wins over the preset; a -p change wins over both; a cell
    holding a default leaves the preset's value."""
    tiny = load_preset("tiny")
    assert tiny["train_steps"] == 6 and "prune_fractions" in tiny
    run = resolve(3, _namespace(3, prune_threshold=0.1, calibration_utterances=7,
                                overrides={"train_steps": 4, "calibration_utterances": 5}))
    assert run.prune.threshold == 0.1  # the cell's edit (tiny leaves it at the default)
    assert run.prune.calibration_utterances == 5  # -p over the cell's 7
    assert run.train.steps == 4  # -p over tiny's 6
    assert run.train.batch_size == tiny["batch_size"] != defaults(1)["batch_size"]
    assert run.prune.fractions == tuple(tiny["prune_fractions"])  # cell holds the default
    assert run.models[0].decoder == "tiny-llama"
    summary = " ".join(run.summary().split())
    assert "preset tiny" in summary and "changes train_steps=4, calibration_utterances=5" in summary
    assert "own parameters, set by the preset or a change: prune_fractions=" in summary
    assert "set in the parameters cell: prune_threshold=0.1 records:" in summary
    assert f"batch_size={tiny['batch_size']}" in summary.split("inherited defaults")[0]
    assert "grad_accum=1" in summary.split("inherited defaults")[1]


@pytest.mark.parametrize("ns,match", [
    ({"overrides": {"heal_steps": 3}}, "unknown parameter.*heal_steps.*chapter 3 takes"),
    ({"overrides": [1]}, "overrides=\\[1\\]: use a mapping"),
    ({"preset": "nope"}, "unknown preset 'nope'"),
    ({"record": "published"}, "record='published': use hand"),
])
def test_bad_namespaces_are_one_line(ns, match):
    with pytest.raises(CompanionError, match=match) as err:
        resolve(3, _namespace(3, **ns))
    assert "\n" not in str(err.value)


def test_a_missing_own_parameter_is_named():
    ns = _namespace(3)
    del ns["prune_loss_threshold"]
    with pytest.raises(CompanionError, match="missing parameter.*prune_loss_threshold"):
        resolve(3, ns)


def test_the_run_says_what_it_records():
    """By hand: a trial named by-hand, said in one line; the runner's run and trial."""
    assert resolve(2, _namespace(2)).record == Record("hand", "by-hand")
    line = resolve(2, _namespace(2)).record.line("tiny")
    assert "run by hand" in line and "results/tiny/trials/by-hand/" in line
    assert resolve(2, _namespace(2, record="run:20261204T0000Z-1")).record.kind == "run"
    trial = resolve(2, _namespace(2, record="trial:chapter-02")).record
    assert trial == Record("trial", "chapter-02")


# ------------------------------------------------------------------ one field per parameter


SPOT = {"heal_steps": "heal.steps", "heal_batch_size": "heal.batch_size",
        "train_steps": "train.steps", "batch_size": "train.batch_size",
        "eval_batch_size": "eval.batch_size", "eval_precision": "eval.precision",
        "max_test_utterances": "eval.max_test_utterances",
        "n_score_utterances": "score.n_score_utterances", "score_batch_size": "score.batch_size",
        "chance_draws": "score.chance_draws", "prune_threshold": "prune.threshold",
        "heal_seeds": "heal.seeds",
        "prune_loss_threshold": "prune.loss_threshold", "heal_lora_rank": "heal.lora_rank",
        "lora_rank": "models.lora_rank", "cost_rounds": "heal.cost_rounds",
        "multitask_steps": "multitask.steps", "multitask_start": "multitask.start",
        "task_dev_utterances": "multitask.task_dev_utterances", "n_train": "corpus.n_train",
        "decoders": "models[].decoder", "dev_utterances": "dev_utterances"}


def test_parameters_map_to_fields_by_the_written_rule():
    """Spot checks written by hand from the rule (prefix dropped, else the same name)."""
    for name, where in SPOT.items():
        assert field_of(name) == where, name


def _another(name: str, value, run):
    """A valid value of ``name`` that differs from ``value``."""
    special = {"encoder": "other-encoder", "decoders": ["tiny-llama", "b"], "train_data": "manifest:x",
               "test_data": ["manifest:y"], "recipe": "plain" if value != "plain" else
               "ctc-warmstart", "device": "cpu" if value != "cpu" else "auto",
               "max_test_utterances": 3, "tasks": ["asr", "asr-es"],
               "multitask_decoders": ["tiny-gemma"],
               "multitask_start": "anew" if value != "anew" else "chapter-1",
               "heal_variants": ["both"], "prune_strategies": ["angular"],
               "projector_learning_rate": 0.123,
               "multitask_corpus": ["covost2:/x#en_es", "covost2:/y#es_en"],
               "transfer_encoders": ["tiny-whisper", "tiny-whisper@random"],
               "transfer_decoder": "tiny-gemma", "backbone_chosen_on": "asr",
               "backbone_heal_variant": "both", "corpus_recipe": "rule", "flite_fraction": 0.15, "text_fraction": 0.25,
               "augment": ["noise"],
               "levers": ["all"], "speed_range": [0.95, 1.05], "tempo_range": [0.9, 1.1],
               "rt60_range": [0.3, 0.5], "snr_range": [10.0, 20.0],
               "band_range": [4000.0, 6000.0], "gain_range": [-10.0, -5.0]}
    if name in special:
        return special[name]
    if name in ("precision", "eval_precision"):
        return "fp32" if resolve_precision("auto", "cpu") == "bf16" else "bf16"
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2
    if isinstance(value, (list, tuple)) and all(isinstance(x, float) for x in value):
        return [0.15, 0.35]
    raise AssertionError(f"no other value for {name}={value!r}")


def _fields(run) -> dict[str, object]:
    """Every leaf field of a run, by dotted path (models: the first one's)."""
    out = {"corpus." + k: v for k, v in dataclasses.asdict(run.corpus).items()}
    for attr in ("device", "dev_utterances", "train_data", "test_data", "levers", "lever_seeds",
                 "corpus_recipe"):
        out[attr] = getattr(run, attr)
    for attr in SECTIONS:
        sec = getattr(run, attr)
        sec = sec[0] if attr == "models" else sec
        if sec is not None:
            out.update({f"{attr}.{k}": v for k, v in dataclasses.asdict(sec).items()})
    out["models[].decoder"] = tuple(m.decoder for m in run.models)
    out.pop("models.decoder")
    return out


def test_each_parameter_moves_exactly_its_own_field():
    """Changing one parameter changes exactly the field :func:`field_of` names (nothing
    else, no field twice), and the run reads back every parameter's value."""
    last = max(CHAPTER_PARAMS)
    given = {"corpus_recipe": "given"}  # the corpus fields set one at a time, by hand
    base = resolve(last, preset="tiny", changes=given)
    before = _fields(base)
    values, _ = resolve_values(last, "tiny", given)
    seen = set()
    for name in param_names(CHAPTER_PARAMS[last]):
        other = _another(name, values[name], base)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run = resolve(last, preset="tiny", changes={**given, name: other})
        after = _fields(run)
        moved = {k for k in before if before[k] != after[k]}
        assert moved == {field_of(name)}, (name, moved)
        assert field_of(name) not in seen
        seen.add(field_of(name))


def test_no_hidden_constants():
    """Every field of every section is a parameter's or one of its named CONSTANTS."""
    every = {field_of(n) for n in param_names(CHAPTER_PARAMS[max(CHAPTER_PARAMS)])}
    for attr, section in SECTIONS.items():
        for f in section_fields(section):
            assert f"{attr}.{f}" in every or (attr, f) == ("models", "decoder"), (attr, f)
        for c in section.CONSTANTS:
            assert c in {f.name for f in dataclasses.fields(section)}


@pytest.mark.parametrize("native, want", [(True, "bf16"), (False, "fp32")])
def test_auto_decodes_and_trains_in_bf16_only_where_the_cpu_runs_it_natively(monkeypatch,
                                                                              native, want):
    """On a CPU ``auto`` follows native bf16 for both uses (decoding too, since the frozen
    weights are cast once); a GPU takes bf16; a named precision is kept as given."""
    import lib.device

    monkeypatch.setattr(lib.device, "native_bf16", lambda: native)
    assert resolve_precision("auto", "cpu") == want
    assert resolve_precision("auto", "cuda:0") == "bf16"
    assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
    run = resolve(1, preset="default", changes={"device": "cpu"})
    assert (run.train.precision, run.eval.precision) == (want, want)
    with pytest.raises(CompanionError, match="precision 'fp16': use one of auto, bf16, fp32"):
        resolve_precision("fp16", "cpu")


def test_the_stages_take_their_sections_whole():
    """A section built without arguments is the default preset's (its defaults are the
    parameters'), and the run is made of exactly those sections."""
    run = resolve(1, preset="default")
    d = defaults(1)
    assert run.eval.precision == run.train.precision == resolve_precision("auto", "cpu")
    evalc = dataclasses.replace(run.eval, precision=d["eval_precision"])
    assert evalc == EvalConfig(
        batch_size=d["eval_batch_size"], max_new_tokens=d["max_new_tokens"],
        precision=d["eval_precision"], max_test_utterances=d["max_test_utterances"],
        rescore_beams=d["rescore_beams"], rescore_weights=tuple(d["rescore_weights"]))
    assert evalc == EvalConfig()
    assert dataclasses.replace(run.train, precision="auto") == TrainConfig()


def test_the_healing_and_mix_schedules():
    """Healing trains chapter 1's loop with its own budget and fixed choices; the mix is
    chapter 1's schedule at its own steps (checked field by field, written out here)."""
    from lib.heal.healing import schedule as heal_schedule
    from lib.recipes.multitask import schedule as mix_schedule

    run = resolve(5, preset="tiny", changes={"heal_steps": 3, "checkpoint_every": 10})
    h = heal_schedule(run.heal, run.train)
    assert (h.steps, h.batch_size, h.learning_rate, h.warmup_steps) == (
        3, run.heal.batch_size, run.heal.learning_rate, run.heal.warmup_steps)
    assert (h.grad_accum, h.recipe, h.dev_every, h.ctc_weight, h.weight_decay,
            h.projector_learning_rate, h.checkpoint_every) == (1, "plain", 0, 0.0, 0.0, None, 3)
    assert (h.seed, h.precision, h.length_grouping) == (
        run.train.seed, run.train.precision, run.train.length_grouping)
    m = mix_schedule(run.multitask, run.train)
    assert m == dataclasses.replace(run.train, steps=run.multitask.steps,
                                    checkpoint_every=min(10, run.multitask.steps),
                                    dev_every=max(1, run.multitask.steps // 8))
    long = resolve(5, preset="tiny", changes={"multitask_steps": 400})
    assert mix_schedule(long.multitask, long.train).dev_every == 50
    quiet = resolve(5, preset="tiny", changes={"dev_every": 0})
    assert mix_schedule(quiet.multitask, quiet.train).dev_every == 0
