"""Configuration: every default with its reason (``defaults``), presets and how a chapter's
values resolve (``presets``), the typed sections the stages take whole (``sections``), and
validation (``build``). Stage: all (configuration). Explained in chapter 1
(book/01_building_a_speechllm.ipynb)."""
