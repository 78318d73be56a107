"""Configuration: every default with its reason (``defaults``), presets (``presets``), the
run and the typed sections the stages take whole (``sections``), and a chapter's values
resolved once into its run (``resolve``), each parameter's check (``checks``). Stage: all (configuration). Explained in chapter 1
(book/01_building_a_speechllm.ipynb)."""
