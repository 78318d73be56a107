"""Building the SpeechLLM: its components (speech encoder, projector, decoder), the model and
its builder, the paper's model shapes, and saving / reloading it as a plain transformers
checkpoint. Stage: build. Explained in chapter 1 (book/01_building_a_speechllm.ipynb)."""
