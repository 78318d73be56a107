"""Reporting: every verdict rule and threshold (``rules``), the numbers of record
(``results``), the README's tables (``readme``, ``python -m lib.report``) and the figures
(``plotting``). Stage: report. Explained in chapter 1 (book/01_building_a_speechllm.ipynb)."""
