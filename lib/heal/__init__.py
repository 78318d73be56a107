"""Healing a pruned SpeechLLM: the variants and their training (``healing``). Stage: heal.
Explained in chapter 4 (book/04_healing.ipynb)."""
