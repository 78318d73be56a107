"""Redundancy scores: the angular distance of every block of layers from one pass
(``redundancy``, ``stats``), whether two surfaces mark the same blocks (``agreement``), and a
run's saved scores (``records``). Stage: score. Explained in chapter 2
(book/02_where_redundancy_lies.ipynb)."""
