"""Evaluation: metrics with their intervals (``metrics``), decoding and scoring a test set
(``decode``), and the baselines beside every SpeechLLM (``baselines``). Stage: evaluation.
Explained in chapter 1 (book/01_building_a_speechllm.ipynb)."""
