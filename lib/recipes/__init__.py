"""One recipe per chapter (``ch01`` ... ``ch04``): each notebook section is one call; the
pipeline every chapter starts from (``pipeline``); what a section shows (``section``) and
the kernel's set-up (``notebook``). Stage: the chapters' recipes. Explained in chapter 1
(book/01_building_a_speechllm.ipynb)."""
