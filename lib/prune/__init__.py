"""Pruning: layer surgery (``surgery``), what removing layers costs in loss (``losses``), which
layers each strategy removes (``strategies``), how many the paper's rule allows (``rule``),
WER against the cut (``curves``) and what pruning buys in time and memory (``cost``).
Stage: prune. Explained in chapter 3 (book/03_pruning.ipynb)."""
