"""A pruned SpeechLLM as a product: saved as a plain transformers checkpoint plus its
projector (:func:`lib.build.checkpoint.save_speechllm`) with a model card written from its
results, reloaded in a fresh process and checked to give the outputs of the model in memory.

From any trained SpeechLLM of the book (a training run folder, which keeps its model's
config in ``model_config.json``), one command:

    python -m lib.prune.export RUN_FOLDER --layers 7,8 --out FOLDER

removes the layers, saves, writes the card and checks the reload. Chapter 6 exports its
pruned and healed multi-task backbone through the same functions. Stage: prune (the
pruned model's checkpoint). Explained in chapter 6 (book/06_one_backbone.ipynb).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from lib.errors import CompanionError

MODEL_CONFIG = "model_config.json"
"""The file of a training run folder that says which SpeechLLM it trained."""

CARD = "README.md"
"""The model card's file name beside the saved model (a hub's model card)."""


def keep_model_config(run_dir: Path, mc: Any) -> None:
    """Write ``run_dir/model_config.json`` (the :class:`lib.config.sections.ModelConfig`
    a run trained) once, so that the run can be exported on its own."""
    import dataclasses

    from lib.fileio import save_json

    path = Path(run_dir) / MODEL_CONFIG
    if not path.is_file() and Path(run_dir).is_dir():
        save_json(path, dataclasses.asdict(mc))


def load_run(run_dir: Path, device: str = "cpu") -> Any:
    """The trained SpeechLLM of a training run folder: its config, its final weights.

    Raises:
        CompanionError: not a finished training run of the book (one line, what to do).
    """
    from lib.build.speechllm import build_speechllm
    from lib.config.sections import ModelConfig
    from lib.fileio import load_tensors

    run_dir = Path(run_dir)
    final = run_dir / "final" / "trainable.safetensors"
    if not (run_dir / MODEL_CONFIG).is_file() or not final.is_file():
        raise CompanionError(f"{run_dir} is not a finished training run of the book (no "
                             f"{MODEL_CONFIG} or final/trainable.safetensors): give a folder "
                             "under <cache>/runs/ that a chapter trained")
    raw = model_config_of(run_dir)
    mc = ModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
    model = build_speechllm(mc, device=device)
    model.load_trainable_state_dict(load_tensors(final, finite=True))
    return model.eval()


def check_out_folder(folder: Path) -> Path:
    """An export goes to a new or empty folder, never over anything.

    Raises:
        CompanionError: the folder exists and is not empty, or is a file.
    """
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise CompanionError(f"export folder {folder} exists and is not empty: give a new or "
                             "empty folder (nothing was written)")
    return folder


def model_card(facts: dict[str, Any]) -> str:
    """The model card (markdown) from an export's facts: what it is, which layers went and
    by which rule, each task's score with its interval, speed and memory on the machine that
    measured them, and how to load it."""
    lines = [f"# {facts.get('name', 'A pruned SpeechLLM')}", "",
             f"A SpeechLLM ({facts.get('encoder', '?')} features -> projector -> "
             f"{facts.get('decoder', '?')}) with decoder layers "
             f"{', '.join(map(str, facts.get('removed', []))) or 'none'} removed "
             f"({len(facts.get('removed', []))} of {facts.get('n_layers', '?')}).", "",
             f"- How the cut was chosen: {facts.get('rule', 'given by hand')}.",
             f"- Healing: {facts.get('healing', 'none')}.",
             f"- Made by: {facts.get('made_by', 'python -m lib.prune.export')}."]
    scores = facts.get("scores", {})
    if scores:
        lines += ["", "## Scores (95 % bootstrap intervals)", "",
                  "| task | metric | full model | this model |", "|---|---|---|---|"]
        lines += [f"| {t} | {s['metric']} | {s['full']} | {s['this']} |"
                  for t, s in scores.items()]
    cost = facts.get("cost")
    if cost:
        lines += ["", "## Speed and memory", "",
                  f"On {cost.get('machine', 'this machine')}: decoding {cost['speedup']:.2f}x "
                  f"faster than the full model (ideal from FLOPs {cost['ideal_speedup']:.2f}x), "
                  f"decoder parameters {cost['params_full_m']:.0f} M -> "
                  f"{cost['params_pruned_m']:.0f} M, peak memory of a fresh process "
                  f"{cost['peak_mib_full']:.0f} -> {cost['peak_mib_pruned']:.0f} MiB."]
    lines += ["", "## Loading it", "", "```python",
              "from lib.build.checkpoint import load_speechllm",
              "model = load_speechllm(folder)  # decoder: AutoModelForCausalLM.from_pretrained",
              "```", "", "The decoder alone is `decoder/`, a plain transformers checkpoint; "
              "the projector is `projector.safetensors`; `speechllm.json` lists every file "
              "with its sha256 and the provenance."]
    return "\n".join(lines) + "\n"


def export_model(model: Any, folder: Path, facts: dict[str, Any]) -> Path:
    """Save ``model`` (its adapters merged in place) into ``folder`` (new or empty) with
    its model card; ``facts`` go into ``speechllm.json`` too."""
    from lib.build.checkpoint import save_speechllm

    folder = check_out_folder(folder)
    save_speechllm(model, folder, overwrite=True, extra={"card": facts})
    (folder / CARD).write_text(model_card(facts))
    return folder


def outputs(model: Any, feats: torch.Tensor, lengths: torch.Tensor, texts: list[str],
            new_tokens: int) -> dict[str, torch.Tensor]:
    """What the reload check compares: every item's summed target loss and the greedy
    tokens of the batch (fp32, no autocast)."""
    from lib.build.components import eval_mode
    from lib.prune.cost import greedy_decode

    with torch.no_grad(), eval_mode(model):
        loss = torch.stack([model.loss(feats[i:i + 1, : int(lengths[i])], lengths[i:i + 1],
                                       [texts[i]], reduction="sum")
                            for i in range(len(texts))])
        batch = model.build_inputs(feats, lengths, None, left_pad=True)
        ids, _, _ = greedy_decode(model.decoder, batch["inputs_embeds"],
                                  batch["attention_mask"], new_tokens)
    return {"loss": loss.detach().cpu(), "ids": ids.detach().cpu()}


def _reloaded_outputs(folder: str, feats: torch.Tensor, lengths: torch.Tensor,
                      texts: list[str], new_tokens: int) -> dict[str, Any]:
    """In a fresh process: load the saved model with plain transformers, then
    :func:`outputs`, returned as numpy arrays (pickled by value: a tensor would travel as a
    shared-memory handle that may close when the process ends before it is read)."""
    from lib.build.checkpoint import load_speechllm

    out = outputs(load_speechllm(folder), feats, lengths, texts, new_tokens)
    return {k: v.numpy() for k, v in out.items()}


def reload_check(model: Any, folder: Path, feats: torch.Tensor, lengths: torch.Tensor,
                 texts: list[str], new_tokens: int = 16) -> dict[str, Any]:
    """The saved model, loaded in a fresh process, against ``model`` in memory on the same
    inputs: the largest difference of an item's loss, and whether the greedy tokens are the
    same (``exact`` when both are identical)."""
    from lib.prune.cost import run_isolated

    mine = outputs(model, feats, lengths, texts, new_tokens)
    raw, _ = run_isolated(_reloaded_outputs, str(folder), feats, lengths, texts, new_tokens)
    back = {k: torch.from_numpy(v) for k, v in raw.items()}
    gap = float((mine["loss"] - back["loss"]).abs().max())
    same = bool(torch.equal(mine["ids"], back["ids"]))
    return {"max_loss_gap": gap, "same_tokens": same, "exact": gap == 0.0 and same,
            "items": len(texts), "new_tokens": new_tokens}


def saved_full(model: Any, run_dir: Path, encoder: str) -> tuple[Any, Path]:
    """The unpruned model with its adapters merged (``model`` is kept) and its saved copy
    ``<run_dir>/export-full`` (saved once; a damaged one is set aside and saved again):
    what a pruned model's speed and memory are measured against."""
    from lib.build.adapters import merged_copy
    from lib.build.checkpoint import reuse_saved, save_speechllm

    full, folder = merged_copy(model), Path(run_dir) / "export-full"
    if not reuse_saved(folder):
        save_speechllm(full, folder, extra={"encoder": encoder})
    return full, folder


def _layers(text: str) -> list[int]:
    try:
        return sorted({int(x) for x in text.replace(" ", "").split(",") if x})
    except ValueError:
        raise CompanionError(f"--layers {text!r}: give layer indices separated by commas, "
                             "e.g. 7,8") from None


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lib.prune.export RUN_FOLDER --layers 7,8 --out FOLDER``."""
    from lib.build.components import find_decoder_layers
    from lib.prune.surgery import check_layers, prune_speechllm

    p = argparse.ArgumentParser(prog="python -m lib.prune.export",
                                description="Remove decoder layers from a trained SpeechLLM "
                                            "and export it as a plain transformers "
                                            "checkpoint with its projector and a model card.")
    p.add_argument("run", type=Path, help="a training run folder (<cache>/runs/...)")
    p.add_argument("--layers", required=True, help="decoder layers to remove, e.g. 7,8")
    p.add_argument("--out", type=Path, required=True, help="a new or empty folder")
    args = p.parse_args(argv)
    try:
        check_out_folder(args.out)
        model = load_run(args.run)
        big_l = len(find_decoder_layers(model.decoder))
        layers = check_layers(_layers(args.layers), big_l)
        prune_speechllm(model, layers)
        mc = model_config_of(args.run)
        facts = {"name": f"{args.run.name}, {len(layers)} layers removed",
                 "encoder": mc.get("encoder"), "decoder": mc.get("decoder"),
                 "removed": layers, "n_layers": big_l, "rule": "given by hand (--layers)",
                 "made_by": f"python -m lib.prune.export {args.run} --layers "
                            f"{','.join(map(str, layers))}"}
        folder = export_model(model, args.out, facts)
        g = torch.Generator().manual_seed(0)
        dim = model.projector.net[0].in_features // model.projector.stack
        feats = torch.randn(2, 40, dim, generator=g)
        check = reload_check(model, folder, feats, torch.tensor([40, 30]), ["one two", "three"])
    except CompanionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"exported to {folder}: reloaded in a fresh process, "
          f"{'the same outputs exactly' if check['exact'] else 'outputs differ'} "
          f"(largest loss gap {check['max_loss_gap']:.1e}, same tokens {check['same_tokens']})")
    return 0 if check["exact"] else 1


def model_config_of(run_dir: Path) -> dict[str, Any]:
    """The model config a training run folder keeps (empty when it keeps none)."""
    from lib.fileio import load_json

    path = Path(run_dir) / MODEL_CONFIG
    return load_json(path) if path.is_file() else {}


if __name__ == "__main__":
    sys.exit(main())
