"""The book's machinery: which chapters run with which parameters (``chapters``), running
them with papermill (``run``), what an executed page shows of its run (``executed``),
building the HTML (``build``) and the command line (``cli``, ``python -m lib.book``).
Stage: the book. Explained in the README (How the book is built)."""
