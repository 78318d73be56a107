"""Speech data, one module per job (stage: data; explained in chapter 1,
book/01_building_a_speechllm.ipynb).

============  ==================================================================
module        what it does
============  ==================================================================
``audio``     audio I/O: float32 mono 16 kHz in, whole WAV files out
``loaders``   the :class:`~lib.data.loaders.Utterance` record, manifests, the
              LibriSpeech loader
``real``      real recorded speech from Debian packages (four speakers, three
              sources, a held-out dev part)
``spec``      what the synthetic corpus is made of (:class:`CorpusSpec`); light,
              so configs can name a corpus without the audio stack
``text``      the synthetic corpus's text source (World English Bible sentences)
``corpus``    the synthetic corpus itself (espeak-ng and Piper voices)
``sources``   data-source names used by chapter parameters (``synthetic:train`` ...)
============  ==================================================================

Nothing is imported here, so ``lib.data.spec`` stays light: import from the module that
holds a name (``from lib.data.loaders import Utterance``).
"""
