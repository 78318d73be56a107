"""Training the SpeechLLM: the CTC warm start of the projector (``ctc``) and the projector +
LoRA training loop (``loop``). Stage: training. Explained in chapter 1
(book/01_building_a_speechllm.ipynb)."""
