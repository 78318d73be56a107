"""The multi-task SpeechLLM: each example reads its own task's prompt, a mix trains on each
example's own target with the CTC loss on the transcript, text can stand where the audio goes,
and the null inputs have the shapes of the inputs they stand for."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lib.build.speechllm import build_speechllm
from lib.config.sections import ModelConfig, TrainConfig
from lib.data.features import FeatureSet
from lib.errors import CompanionError
from lib.tasks import ASR, TASKS

ST = TASKS["st-en-es"]


@pytest.fixture(scope="module")
def model():
    return build_speechllm(ModelConfig(encoder="tiny-whisper", decoder="tiny-llama",
                                       projector_hidden=16, lora_rank=0), seed=0).eval()


def _with_translations(fs: FeatureSet) -> FeatureSet:
    utts = [dataclasses.replace(u, translation=f"uno dos {i}")
            for i, u in enumerate(fs.utterances)]
    return FeatureSet(utts, fs.feats)


def test_each_example_reads_its_own_tasks_prompt(model, random_features):
    """A mixed batch equals, row by row, the batches built with one task each."""
    fs = random_features(2, dim=64, base=20, step=0)
    feats, lengths, texts = fs.batch([0, 1])
    mixed = model.build_inputs(feats, lengths, texts, tasks=[ASR, ST])
    with model.asking(ST):
        alone_st = model.build_inputs(feats, lengths, texts)
    alone_asr = model.build_inputs(feats, lengths, texts)
    n0 = int(mixed["attention_mask"][0].sum())
    assert torch.equal(mixed["inputs_embeds"][0, :n0], alone_asr["inputs_embeds"][0, :n0])
    n1 = int(mixed["attention_mask"][1].sum())
    assert torch.equal(mixed["inputs_embeds"][1, :n1], alone_st["inputs_embeds"][1, :n1])
    assert model.task is ASR  # asking() gives the task back


def test_a_mix_batches_each_examples_own_target(random_features):
    fs = _with_translations(random_features(2, dim=8))
    mix = FeatureSet(fs.utterances * 2, fs.feats * 2, tasks=[ASR, ASR, ST, ST])
    assert mix.batch([0, 2])[2] == [fs.utterances[0].text, "uno dos 0"]
    assert mix.tasks_of([3, 1]) == [ST, ASR]
    assert mix.slice(2, None).tasks == [ST, ST]
    plain = FeatureSet(fs.utterances * 2, fs.feats * 2)
    assert plain.digest() != mix.digest()  # the tasks are part of a mix's content
    assert plain.digest() == FeatureSet(fs.utterances * 2, fs.feats * 2).digest()


def test_a_mix_trains_the_ctc_loss_on_the_transcripts(tmp_path, random_features):
    """The auxiliary loss sees each clip's transcript, never a translation."""
    from lib.train.loop import train_speechllm

    m = build_speechllm(ModelConfig(encoder="tiny-whisper", decoder="tiny-llama",
                                    projector_hidden=16, lora_rank=2, lora_alpha=4), seed=0)
    fs = _with_translations(random_features(2, dim=64, base=20, step=0, split="train"))
    mix = FeatureSet(fs.utterances * 2, fs.feats * 2, tasks=[ASR, ASR, ST, ST])
    seen: list[str] = []

    def aux(model, feats, lengths, texts):
        seen.extend(texts)
        return model.projector.net[0].weight.sum() * 0.0

    cfg = TrainConfig(steps=2, batch_size=4, warmup_steps=0, checkpoint_every=5,
                      precision="fp32")
    train_speechllm(m, mix, cfg, tmp_path / "run", aux_loss=aux)
    assert seen and set(seen) <= {u.text for u in fs.utterances}


def test_text_where_the_audio_goes_is_the_token_embeddings(model):
    """The reference: the decoder generating from the prompt's token ids directly."""
    tok = model.tokenizer
    text = "hello there"
    got = model.generate_from_text([text], max_new_tokens=4)
    ids = (model._prefix_ids + tok(" " + text, add_special_tokens=False).input_ids
           + model._suffix_ids)
    out = model.decoder.generate(input_ids=torch.tensor([ids]), max_new_tokens=4,
                                 do_sample=False, eos_token_id=model.eos_id,
                                 pad_token_id=model.pad_id)
    want = tok.decode(out[0, len(ids):], skip_special_tokens=True).strip()
    assert got == [want]


def test_null_inputs_have_the_shapes_of_the_real_ones(model, random_features):
    from lib.score.controls import noise_features, random_texts

    fs = random_features(3, dim=64)
    noise = noise_features(fs, seed=1)
    assert [f.shape for f in noise.feats] == [f.shape for f in fs.feats]
    assert noise.feats[0].dtype == fs.feats[0].dtype
    assert not torch.equal(noise.feats[0], fs.feats[0])
    texts = ["one two three four", "five"]
    rand = random_texts(model.tokenizer, texts, seed=0)
    assert len(rand) == 2 and all(r.strip() for r in rand)
    assert rand == random_texts(model.tokenizer, texts, seed=0)  # seeded


def test_null_share_by_hand():
    from lib.report.rules import null_share, specific_verdict

    agr = {"spearman_per_n_mean": 0.9, "overlap_mean": 0.8,
           "chance": {"spearman_per_n_mean": 0.0, "overlap_mean": 0.6}}
    nulls = [{"spearman_per_n_mean": 0.45, "overlap_mean": 0.65}]
    assert null_share(agr, nulls) == pytest.approx(max(0.45 / 0.9, 0.05 / 0.2))
    assert specific_verdict("the same blocks", 0.5) == "the same blocks, beyond a null input"
    assert specific_verdict("the same blocks", 0.9) == "the same blocks, as a null input does"
    assert specific_verdict("partly the same blocks", 0.1) == "partly the same blocks"


def test_whisper_translates_into_english_only(random_features):
    from lib.evaluate.baselines import whisper_baseline

    with pytest.raises(CompanionError, match="Whisper translates into English only"):
        whisper_baseline("tiny-whisper", random_features(1), "t", task=ST)


def test_the_mix_continues_chapter_1s_model(tmp_path, monkeypatch, random_features):
    """multitask_start "chapter-1": at learning rate 0 the model after the mix is chapter 1's
    model weight for weight (an identity reference); "anew" is not, and the two runs are
    kept in two folders; without chapter 1's run, one line."""
    from lib.config.resolve import resolve
    from lib.recipes import multitask as mt
    from lib.recipes.pipeline import ModelRun
    from lib.train.loop import TrainRun

    monkeypatch.setenv("COMPANION_CACHE", str(tmp_path))
    cfg = resolve(5, preset="tiny", changes={"decoders": ["tiny-llama"], "multitask_steps": 3,
                                             "warmup_steps": 1, "dev_every": 0,
                                             "precision": "fp32"})
    still = dataclasses.replace(cfg.train, learning_rate=0.0, projector_learning_rate=0.0,
                                ctc_weight=0.0)  # the mix's schedule is chapter 1's
    cfg = dataclasses.replace(cfg, train=still)
    mc = cfg.models[0]
    fs = _with_translations(random_features(6, dim=64))
    data = mt.ParallelData(mix=FeatureSet(fs.utterances * 2, fs.feats * 2,
                                          tasks=[ASR] * 6 + [ST] * 6),
                           asr_only=FeatureSet(fs.utterances, fs.feats, tasks=[ASR] * 6),
                           audio=fs, dev={}, tests={})
    ch1 = build_speechllm(mc, seed=5)
    with torch.no_grad():  # chapter 1's trained weights: unlike any fresh build
        for p in ch1.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    want = ch1.trainable_state_dict()
    start = ModelRun(mc, ch1, TrainRun(tmp_path / "ch1-run", [], True, None, True, {}))

    run = mt.train_multitask(cfg, data, 0, start=start)
    got = run.model.trainable_state_dict()
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert run.start is start and len(run.train.log) == 3
    alone = mt.train_multitask(cfg, data, 0, start=start, asr_only=True)  # the control
    assert alone.train.run_dir != run.train.run_dir and alone.start is start
    assert len(alone.train.log) == len(run.train.log)  # the same budget
    assert all(torch.equal(alone.model.trainable_state_dict()[k], want[k]) for k in want)

    anew_cfg = dataclasses.replace(cfg, multitask=dataclasses.replace(cfg.multitask,
                                                                      start="anew"))
    anew = mt.train_multitask(anew_cfg, data, 0)
    assert anew.train.run_dir != run.train.run_dir
    other = anew.model.trainable_state_dict()
    assert not all(torch.equal(other[k], want[k]) for k in want)
    with pytest.raises(CompanionError, match="needs chapter 1's run of tiny-llama"):
        mt.train_multitask(cfg, data, 0)


def test_the_multitask_decoders_are_chosen_among_the_runs_decoders():
    from lib.config.resolve import resolve
    from lib.recipes.multitask import chosen_models

    cfg = resolve(5, preset="tiny", changes={"multitask_decoders": ["tiny-gemma"]})
    assert [cfg.models[i].decoder for i in chosen_models(cfg)] == ["tiny-gemma"]
    every = resolve(5, preset="tiny", changes={"multitask_decoders": []})
    assert len(chosen_models(every)) == len(every.models) == 2
    with pytest.raises(CompanionError, match="multitask_decoders.*not among decoders") as err:
        resolve(5, preset="tiny", changes={"multitask_decoders": ["gemma3-270m"]})
    assert "\n" not in str(err.value)


def test_the_control_trains_on_the_mixs_english_asr_alone(tmp_path, monkeypatch):
    """parallel_data's budget-matched set: every fit verse's English clip, task ASR, and
    nothing of the dev or test verses."""
    from lib.data.loaders import Utterance
    from lib.recipes import multitask as mt

    def utt(lang: str, split: str, i: int) -> Utterance:
        return Utterance(id=f"{lang}-{split}-{i}", audio="x.wav", text=f"{lang} {i}",
                         duration=1.0, voice="v", split=split, source="manifest",
                         language=lang, translation=f"other {i}")

    utts = [utt(lang, split, i) for split, n in (("train", 6), ("test", 2))
            for i in range(n) for lang in ("es", "en")]
    feats = {u.id: torch.zeros(3, 4) for u in utts}
    monkeypatch.setattr(mt, "load_manifest", lambda _: utts)
    monkeypatch.setattr(mt, "ensure_parallel_corpus", lambda _: "m.jsonl")
    monkeypatch.setattr(mt, "_features", lambda cfg, u, ch1: feats)
    from lib.config.resolve import resolve

    cfg = resolve(5, preset="tiny", changes={"task_dev_utterances": 2})
    data = mt.parallel_data(cfg, FeatureSet([], []))
    assert [u.id for u in data.asr_only.utterances] == [f"en-train-{i}" for i in range(4)]
    assert set(t.name for t in data.asr_only.tasks) == {"asr"}
    asr_in_mix = [u.id for u, t in zip(data.mix.utterances, data.mix.tasks) if t.name == "asr"]
    assert asr_in_mix == [u.id for u in data.asr_only.utterances]


def test_dev_verses_are_ones_chapter_1_did_not_train_on():
    """The held-out verses are the last ones whose English clip is not chapter 1's, in
    their order; with too few such verses, the last ones; none with n = 0."""
    from lib.data.loaders import Utterance
    from lib.recipes.multitask import _hold_out

    def pair(i: int) -> dict:
        return {lang: Utterance(id=f"{lang}{i}", audio="x.wav", text="t", duration=1.0,
                                voice="v", split="train", source="manifest", language=lang)
                for lang in ("es", "en")}

    train = [pair(i) for i in range(8)]
    fit, dev = _hold_out(train, 2, seen={"en0", "en1", "en3", "en5", "en6", "en7"})
    assert [p["en"].id for p in dev] == ["en2", "en4"]
    assert [p["en"].id for p in fit] == ["en0", "en1", "en3", "en5", "en6", "en7"]
    fit, dev = _hold_out(train, 3, seen={f"en{i}" for i in range(7)})
    assert [p["en"].id for p in dev] == ["en5", "en6", "en7"] and len(fit) == 5
    assert _hold_out(train, 0, seen=set()) == (train, [])
