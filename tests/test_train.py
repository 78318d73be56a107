"""Training: learning happens, a killed run resumes to the same weights, runs are reused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from lib.config.sections import ModelConfig, TrainConfig
from lib.errors import CompanionError
from lib.data.features import FeatureSet
from lib.build.speechllm import build_speechllm
from lib.train.loop import train_speechllm


def _train_config(**fields):
    """A training section as these tests measured their references: float32 and one
    learning rate for every trainable weight (the defaults use bf16 where the CPU has it and
    a gentler projector rate), the rest as given."""
    return TrainConfig(**{"precision": "fp32", "projector_learning_rate": None, **fields})


def _model():
    mc = ModelConfig(encoder="tiny-whisper", decoder="tiny-llama", projector_hidden=32,
                     lora_rank=4, lora_alpha=8)
    return build_speechllm(mc, seed=0)


def test_training_moves_only_trainable_weights_and_lowers_the_loss(tmp_path,
                                                                   random_features):
    data = random_features(4, split="train", base=20, step=5)
    model = build_speechllm(ModelConfig(encoder="tiny-whisper", decoder="tiny-llama",
                                        projector_hidden=64, lora_rank=16, lora_alpha=32),
                            seed=0)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    cfg = _train_config(steps=30, batch_size=4, learning_rate=1e-2, warmup_steps=0,
                      checkpoint_every=100)
    run = train_speechllm(model, data, cfg, tmp_path / "run")
    assert run.finished and len(run.log) == 30
    # A random frozen tiny decoder cannot memorise much (measured: 4.66 -> ~4.1 nats);
    # a broken optimiser step or gradient path leaves the loss flat.
    assert run.log[-1]["loss"] < run.log[0]["loss"] - 0.3
    after = model.state_dict()
    for k, v in before.items():
        changed = not torch.equal(v, after[k])
        assert changed == (k in trainable), k


def test_killed_run_resumes_to_identical_weights(tmp_path, random_features):
    data = random_features(6, split="train", base=20, step=5)
    cfg = _train_config(steps=6, batch_size=2, grad_accum=2, learning_rate=1e-3,
                      warmup_steps=1, checkpoint_every=2)
    straight = train_speechllm(_model(), data, cfg, tmp_path / "a")
    ref = json.loads((tmp_path / "a" / "train_result.json").read_text())
    assert ref["steps"] == 6 and ref["provenance"]["seed"] == 0

    first = train_speechllm(_model(), data, cfg, tmp_path / "b", stop_after=4)
    assert not first.finished and not (tmp_path / "b" / "final").exists()
    resumed_model = _model()
    second = train_speechllm(resumed_model, data, cfg, tmp_path / "b")
    assert second.resumed_from == 4 and second.finished
    assert [r["step"] for r in second.log] == list(range(1, 7))
    a = _model()
    train_speechllm(a, data, cfg, tmp_path / "a")  # cached: loads the final weights
    for (k, va), (_, vb) in zip(sorted(a.trainable_state_dict().items()),
                                sorted(resumed_model.trainable_state_dict().items())):
        torch.testing.assert_close(va, vb, rtol=0, atol=0, msg=k)
    for ra, rb in zip(straight.log, second.log):
        assert ra["loss"] == pytest.approx(rb["loss"], abs=1e-6)


def test_finished_run_is_reused(tmp_path, capsys, random_features):
    data = random_features(4, split="train", base=20, step=5)
    cfg = _train_config(steps=2, batch_size=2, warmup_steps=0, checkpoint_every=1)
    train_speechllm(_model(), data, cfg, tmp_path / "r")
    again = train_speechllm(_model(), data, cfg, tmp_path / "r")
    assert again.cached and "cached result reused" in capsys.readouterr().out


def test_empty_training_set_is_an_error(tmp_path):
    empty = FeatureSet([], [])
    with pytest.raises(CompanionError, match="empty"):
        train_speechllm(_model(), empty, _train_config(steps=1), tmp_path / "e")


def test_checkpoint_from_another_config_is_refused(tmp_path, random_features):
    data = random_features(4, split="train", base=20, step=5)
    cfg = _train_config(steps=2, batch_size=2, warmup_steps=0, checkpoint_every=1)
    train_speechllm(_model(), data, cfg, tmp_path / "r", stop_after=1)
    other = build_speechllm(ModelConfig(encoder="tiny-whisper", decoder="tiny-llama",
                                        projector_hidden=16, lora_rank=0), seed=0)
    with pytest.raises(CompanionError, match="does not fit"):
        train_speechllm(other, data, cfg, tmp_path / "r")


@pytest.mark.slow
def test_two_processes_follow_the_same_schedule(tmp_path):
    """Under torchrun (2 CPU processes, gloo) the LR schedule counts global steps."""
    import os
    import subprocess
    import sys

    from lib.paths import REPO_ROOT, cache_dir

    env = {**os.environ, "COMPANION_CACHE": str(cache_dir()), "PYTHONPATH": str(REPO_ROOT),
           "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "-m", "lib.experiment", "--preset", "tiny", "-p", "decoders", "[tiny-llama]",
           "-p", "train_steps", "5", "-p", "warmup_steps", "1", "-p", "seed", "123"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    run_dir = Path(out.stdout.split("trained on 2 process(es) -> ")[1].split()[0])
    try:
        rows = [json.loads(x) for x in (run_dir / "train_log.jsonl").read_text().splitlines()]
    finally:
        shutil.rmtree(run_dir)  # retrain next session: the point is the 2-process run
    lrs = [r["lr"] for r in rows]
    peak = 1e-3  # tiny preset; linear warm-up over 1 step, then linear decay to 0 at 5
    assert lrs == pytest.approx([peak * (5 - s) / 4 for s in range(1, 6)])


def _first_step_grads(mc: ModelConfig, data, cfg: TrainConfig, out, **kw) -> dict:
    """The gradients AdamW sees at the first optimiser step of ``train_speechllm``."""
    model = build_speechllm(mc, seed=0)
    seen = {}
    orig = torch.optim.AdamW.step

    def capture(self, *a, **k):
        seen.update({n: p.grad.clone() for n, p in model.named_parameters()
                     if p.requires_grad and p.grad is not None})
        return orig(self, *a, **k)

    torch.optim.AdamW.step = capture
    try:
        train_speechllm(model, data, cfg, out, **kw)
    finally:
        torch.optim.AdamW.step = orig
    return seen


def test_accumulation_weights_tokens_not_micro_batches(tmp_path, random_features):
    """Two micro-batches of 2 give the gradient of one batch of 4, though their transcripts
    have different token counts (a per-micro-batch mean would weight them equally)."""
    data = random_features(4, split="train", base=20, step=5)
    assert len({len(u.text) for u in data.utterances}) > 1
    mc = ModelConfig(encoder="tiny-whisper", decoder="tiny-llama", projector_hidden=32,
                     lora_rank=4, lora_alpha=8, lora_dropout=0.0)
    cfg_one = _train_config(steps=1, batch_size=4, grad_accum=1, learning_rate=1e-2,
                          warmup_steps=0, checkpoint_every=10)
    cfg_two = _train_config(steps=1, batch_size=2, grad_accum=2, learning_rate=1e-2,
                          warmup_steps=0, checkpoint_every=10)
    # The reference: one plain full-batch gradient, computed by hand from summed token losses.
    ref = build_speechllm(mc, seed=0)
    ref.train()
    feats, lengths, texts = data.batch([0, 1, 2, 3])
    n_tok = sum(len(ref.target_ids(t)) for t in texts)
    (ref.loss(feats, lengths, texts, reduction="sum") / n_tok).backward()
    ref_grad = {n: p.grad.clone() for n, p in ref.named_parameters() if p.requires_grad}

    # batch order: a seeded permutation of 4 items, so both see all four utterances
    grads = {name: _first_step_grads(mc, data, cfg, tmp_path / name)
             for name, cfg in (("one", cfg_one), ("two", cfg_two))}
    for n, g in ref_grad.items():
        # Gradient clipping (max norm 1) scales both alike; compare directions and ratios.
        for name in ("one", "two"):
            got = grads[name][n]
            if g.norm() == 0:  # LoRA A starts with zero gradient (B is zero)
                assert got.norm() == 0, (name, n)
                continue
            cos = torch.nn.functional.cosine_similarity(got.flatten(), g.flatten(), dim=0)
            assert cos > 0.9999, (name, n)
        torch.testing.assert_close(grads["one"][n], grads["two"][n], rtol=1e-4, atol=1e-6)


def test_a_non_finite_loss_stops_training_and_caches_nothing(tmp_path, random_features):
    data = random_features(4, split="train", base=20, step=5)
    cfg = _train_config(steps=4, batch_size=2, learning_rate=float("inf"), warmup_steps=0,
                      checkpoint_every=1)
    with pytest.raises(CompanionError, match="not finite|loss is nan|loss is inf") as err:
        train_speechllm(_model(), data, cfg, tmp_path / "run")
    assert "\n" not in str(err.value) and "learning_rate" in str(err.value)
    assert not (tmp_path / "run" / "final").exists()
    assert not (tmp_path / "run" / "train_result.json").exists()


def test_dev_checks_are_logged_every_dev_every_steps_and_survive_a_resume(tmp_path,
                                                                          random_features):
    data = random_features(4, split="train", base=20, step=5)
    cfg = _train_config(steps=6, batch_size=2, learning_rate=1e-3, warmup_steps=0,
                      checkpoint_every=2, dev_every=2)
    calls = []

    def check(model):
        assert not model.training  # the check runs the model in eval mode
        calls.append(1)
        return {"dev_wer": 0.5 - 0.01 * len(calls), "dev_wer_ci95": [0.1, 0.9]}

    first = train_speechllm(_model(), data, cfg, tmp_path / "run", stop_after=3,
                            dev_check=check)
    assert [r["step"] for r in first.dev_log] == [2]
    second = train_speechllm(_model(), data, cfg, tmp_path / "run", dev_check=check)
    # Resumed from the checkpoint at step 2: steps 4 and 6 checked; 6 is also the end.
    assert [r["step"] for r in second.dev_log] == [2, 4, 6]
    minutes = [r["train_minutes"] for r in second.dev_log]
    assert minutes == sorted(minutes) and all(m >= 0 for m in minutes)
    reused = train_speechllm(_model(), data, cfg, tmp_path / "run")
    assert reused.cached and [r["step"] for r in reused.dev_log] == [2, 4, 6]


def test_an_auxiliary_loss_is_averaged_over_micro_batches(tmp_path, random_features):
    """With an auxiliary per-batch mean added, 2 micro-batches of 2 still give the
    gradient of one batch of 4 (the aux term must not be divided by grad_accum twice)."""
    data = random_features(4, split="train", base=20, step=5)
    mc = ModelConfig(encoder="tiny-whisper", decoder="tiny-llama", projector_hidden=32,
                     lora_rank=4, lora_alpha=8, lora_dropout=0.0)

    def aux(model, feats, lengths, texts):  # a mean over the micro-batch's utterances
        z, n = model.projector(feats, lengths)
        valid = (torch.arange(z.shape[1])[None] < n[:, None]).float()
        per_utt = (z.pow(2).mean(-1) * valid).sum(1) / valid.sum(1)
        return 10.0 * per_utt.mean()

    grads = {}
    for name, batch, accum in (("one", 4, 1), ("two", 2, 2)):
        cfg = _train_config(steps=1, batch_size=batch, grad_accum=accum, learning_rate=1e-2,
                          warmup_steps=0, checkpoint_every=10)
        grads[name] = _first_step_grads(mc, data, cfg, tmp_path / name, aux_loss=aux)
    name = "projector.net.0.weight"
    torch.testing.assert_close(grads["one"][name], grads["two"][name], rtol=1e-4, atol=1e-6)


def test_length_grouping_batches_neighbours_in_length_and_keeps_every_item():
    """16 items of lengths 1..16, batches of 4, one pool of 4 batches: every batch is four
    consecutive lengths (worked out by hand), and the epoch holds each item once."""
    import torch

    from lib.train.loop import length_grouped_permutation

    lengths = list(range(1, 17))
    perm = length_grouped_permutation(lengths, 4, 4, torch.Generator().manual_seed(3))
    assert sorted(perm) == list(range(16))
    batches = [sorted(lengths[i] for i in perm[k:k + 4]) for k in range(0, 16, 4)]
    assert sorted(batches) == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16]]
    # pool 1 is a plain seeded permutation
    plain = length_grouped_permutation(lengths, 4, 1, torch.Generator().manual_seed(3))
    assert plain == torch.randperm(16, generator=torch.Generator().manual_seed(3)).tolist()


@pytest.mark.parametrize("precision", ["fp32", "auto"])
def test_the_same_seed_gives_the_same_losses_and_weights(tmp_path, monkeypatch, random_features,
                                                        precision):
    """Chapter 1's recipe (CTC warm start, then the LLM stage with the CTC loss on) run twice
    from scratch in two folders and caches: every logged loss and every trained weight equal,
    bit for bit; so is a third whose warm start is read back from the first's cache (as
    chapter 1's levers leave it); another seed differs (so the comparison can fail)."""
    from lib.recipes.pipeline import train_run

    data = random_features(6, split="train", base=20, step=5)
    mc = ModelConfig(encoder="tiny-whisper", decoder="tiny-llama", projector_hidden=32,
                     lora_rank=4, lora_alpha=8)
    runs = {}
    for name, seed, cache in (("a", 0, "a"), ("b", 0, "b"), ("read back", 0, "a"),
                              ("c", 1, "c")):
        monkeypatch.setenv("COMPANION_CACHE", str(tmp_path / f"cache-{cache}"))
        cfg = TrainConfig(steps=4, batch_size=2, warmup_steps=1, checkpoint_every=2,
                          ctc_epochs=1, ctc_batch_size=2, precision=precision, seed=seed)
        model, warm, tr = train_run(mc, cfg, data, tmp_path / name, "cpu")
        assert warm.cached == (name == "read back")
        runs[name] = ([r["loss"] for r in warm.log], [r["loss"] for r in tr.log],
                      model.trainable_state_dict())
    (ctc_a, llm_a, w_a), *same, (ctc_c, llm_c, _) = runs.values()
    for ctc_b, llm_b, w_b in same:
        assert ctc_a == ctc_b and llm_a == llm_b
        for k in w_a:
            assert torch.equal(w_a[k], w_b[k]), k
    assert llm_a != llm_c and ctc_a != ctc_c


def test_the_precision_probe_leaves_the_model_and_the_random_state_as_they_were(
        random_features):
    from lib.train.precision import training_speedup

    data = random_features(6, split="train", base=20, step=5)
    model = _model()
    model.eval()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    expected_draw = torch.get_rng_state()
    probe = training_speedup(model, data, batch_size=2, rounds=3, steps=2)
    assert torch.equal(torch.get_rng_state(), expected_draw)  # forked, not consumed
    assert not model.training  # left in the mode it came in
    assert all(p.grad is None for p in model.parameters())
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert probe["steps"] == 2 and probe["rounds"] == 3 and probe["batch_size"] == 2
    assert probe["fp32_s"] > 0 and probe["bf16_s"] > 0 and probe["speedup"] > 0
    assert len(probe["round_speedups"]) == 3  # the median is the middle round's ratio
    assert probe["speedup"] == pytest.approx(sorted(probe["round_speedups"])[1], abs=1e-3)


def test_the_precision_probe_times_the_training_loss_of_the_first_batches(random_features,
                                                                          monkeypatch):
    """Every timed step is the loop's loss summed over a real batch, then a backward pass:
    counted by wrapping the model's forward (2 batches x (warm-up + 3 rounds) x 2 precisions),
    and the bf16 steps are the ones run under autocast, with the loop's bf16 weights."""
    from lib.train.precision import training_speedup

    data = random_features(6, split="train", base=20, step=5)
    model = _model()
    seen, head = [], []
    forward = model.forward

    def counting(feats, lengths, texts, **kw):
        seen.append((tuple(texts), torch.is_autocast_enabled('cpu'), kw.get("reduction")))
        head.append(model.decoder.get_output_embeddings().weight.dtype)
        return forward(feats, lengths, texts, **kw)

    monkeypatch.setattr(model, "forward", counting)
    training_speedup(model, data, batch_size=2, rounds=3, steps=2)
    assert len(seen) == 2 * 4 * 2
    first_two = {tuple(u.text for u in data.utterances[i:i + 2]) for i in (0, 2)}
    assert {t for t, _, _ in seen} == first_two
    assert [b for _, b, _ in seen] == [False, False, True, True] * 4
    # each precision's step as the loop trains in it: bf16 copies of the frozen weights
    assert head == [torch.float32, torch.float32, torch.bfloat16, torch.bfloat16] * 4
    assert {r for _, _, r in seen} == {"sum"}
