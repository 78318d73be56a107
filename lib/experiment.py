"""``python -m lib.experiment``: chapter 1's training and evaluation outside a notebook.

For long runs and for several GPUs (``accelerate launch`` / ``torchrun``): the corpora are
made once, each process encodes and decodes its share (:mod:`lib.ranks`), training splits
its batches (DDP); the runs land in the cache the chapters read, so a chapter then reuses
them. The steps are
:mod:`lib.recipes.pipeline`'s. Stage: the pipeline (command line). Explained in the README
(Models and data of your own).
"""

from __future__ import annotations



def main(argv: list[str] | None = None) -> int:
    """Train and evaluate every model of a preset from the command line.

    The same steps as chapter 1, for long runs and for several GPUs::

        python -m lib.experiment --preset default -p train_steps 600
        accelerate launch -m lib.experiment --preset paper-qwen2.5-7b
        torchrun --nproc_per_node 4 -m lib.experiment --preset paper-qwen2.5-7b
        python -m lib.experiment --preset paper-qwen2.5-7b --plan

    Results land in the same cache the chapter reads, so the chapter then reuses them.
    ``--plan`` trains nothing: it prints the data's size, the features' size on disk and the
    time of an epoch and of the run, from a short probe (:mod:`lib.recipes.plan`).
    """
    import argparse

    import torch
    from accelerate import PartialState

    from lib.config.resolve import resolve
    from lib.errors import exit_status
    from lib.params import add_parameter_option, parse_parameters
    from lib.paths import slug
    from lib.ranks import together
    from lib.recipes.pipeline import (encode_sources, load_sources, ready_models,
                                      train_and_evaluate)

    ap = argparse.ArgumentParser(prog="python -m lib.experiment", description=main.__doc__)
    ap.add_argument("--preset", default="default")
    ap.add_argument("--plan", action="store_true",
                    help="print the data's size, the features' size on disk and the time of "
                         "an epoch and of the run (a short probe), then stop")
    add_parameter_option(ap)
    args = ap.parse_args(argv)
    state = PartialState(cpu=not torch.cuda.is_available())  # gloo on CPU, nccl on GPUs

    def body() -> int:
        # YAML values; a name chapter 1 does not take is an error
        cfg = resolve(1, preset=args.preset, changes=parse_parameters(args.parameter))
        if args.plan:  # the main process probes and prints; nothing is trained or cached
            if state.is_main_process:
                from lib.recipes.plan import plan_run, plan_text

                print(plan_text(plan_run(cfg, processes=state.num_processes), cfg))
            return 0
        with state.main_process_first():  # models and corpora made (the recipe chosen) once
            ready_models(cfg)
            sources = load_sources(cfg)
        with together():  # each process encodes its share of every set (lib.ranks)
            train, tests = encode_sources(cfg, sources)
        for mc in cfg.models:  # trained with DDP; each process decodes its share
            run = train_and_evaluate(mc, cfg, train, tests)
            if state.is_main_process:
                print(f"{slug(mc.decoder)}: trained on {state.num_processes} process(es) "
                      f"-> {run.train.run_dir}")
            for test, s in run.scores.items() if state.is_main_process else ():
                print(f"{slug(mc.decoder)} {test}: WER {100 * s['wer']:.2f} % "
                      f"({s['n_utterances']} utterances)")
        return 0

    return exit_status(body)


if __name__ == "__main__":
    raise SystemExit(main())
