"""Tasks as data: what the SpeechLLM is asked to do, what it learns, how it is scored.

A :class:`Task` names its instruction (read after the audio), the utterance field that holds
its target text, and its metric, the way lm-evaluation-harness describes a task by prompt,
target and metric. ASR (target: the transcript, metric: WER) is the book's task today;
speech translation (target: a translation field, metric: BLEU) is the next one and needs only
a new entry in :data:`TASKS` and its metric in :func:`lib.evaluate.metrics.score_task`.

The default ASR task gives exactly the prompt the book has always used, so cached runs and
evaluations keep their keys (``tests/test_tasks.py`` pins them). Stage: building the
SpeechLLM (its prompt) and evaluation (its metric). Explained in chapter 1
(book/01_building_a_speechllm.ipynb).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lib.errors import CompanionError

ASR_INSTRUCTION = " Transcribe the audio:"
"""The ASR instruction, read after the audio (the paper's; part of every evaluation key)."""


@dataclass(frozen=True)
class Prompt:
    """The text around the audio embeddings.

    Explained in chapter 1 (book/01_building_a_speechllm.ipynb).
    """

    audio_start: str = "<audio>"  # boundary marker before the audio embeddings
    audio_end: str = "</audio>"  # boundary marker after them
    instruction: str = ASR_INSTRUCTION  # the task, read after the audio


@dataclass(frozen=True)
class Task:
    """One task: its instruction, the field of its target text, and its metric."""

    name: str  # short name, e.g. "asr"
    instruction: str  # read after the audio, e.g. " Transcribe the audio:"
    target: str = "text"  # the Utterance field the model learns and is scored against
    metric: str = "wer"  # "wer" (ASR) or "bleu" (translation; chrF beside it)
    hears: str = "en"  # the language of the audio (the utterances' ``language``)
    writes: str = "en"  # the language of the target text (picks the WER normaliser)

    def prompt(self) -> Prompt:
        """The prompt a SpeechLLM reads for this task (markers unchanged)."""
        return Prompt(instruction=self.instruction)

    def targets(self, utterances: Sequence[Any]) -> list[str]:
        """The target text of each utterance (its ``target`` field).

        Raises:
            CompanionError: an utterance has no such field, or it is empty (a source
                without translations for a translation task), naming the utterance.
        """
        try:
            out = [getattr(u, self.target) for u in utterances]
        except AttributeError:
            raise CompanionError(f"task {self.name!r}: the utterances have no field "
                                 f"{self.target!r}: use a data source that provides it") from None
        empty = [u.id for u, t in zip(utterances, out) if not str(t).strip()]
        if empty:
            raise CompanionError(
                f"task {self.name!r}: utterance {empty[0]} ({len(empty)} of {len(out)}) has "
                f"no {self.target!r}: use a data source that provides it (e.g. the "
                "parallel corpus, lib.data.parallel)")
        return out


ASR = Task(name="asr", instruction=ASR_INSTRUCTION)
"""Speech recognition: transcribe the audio; scored by WER after Whisper's normaliser."""

TASKS: dict[str, Task] = {
    "asr": ASR,
    "asr-es": Task(name="asr-es", instruction=ASR_INSTRUCTION, hears="es", writes="es"),
    "st-en-es": Task(name="st-en-es", instruction=" Translate the audio into Spanish:",
                     target="translation", metric="bleu", hears="en", writes="es"),
    "st-es-en": Task(name="st-es-en", instruction=" Translate the audio into English:",
                     target="translation", metric="bleu", hears="es", writes="en"),
    # CoVoST 2's directions at paper scale (lib.data.covost; the paper presets)
    "asr-fr": Task(name="asr-fr", instruction=ASR_INSTRUCTION, hears="fr", writes="fr"),
    "st-en-de": Task(name="st-en-de", instruction=" Translate the audio into German:",
                     target="translation", metric="bleu", hears="en", writes="de"),
    "st-fr-en": Task(name="st-fr-en", instruction=" Translate the audio into English:",
                     target="translation", metric="bleu", hears="fr", writes="en"),
}
"""The tasks by name, in the order the chapters show them."""


def get_task(name: str) -> Task:
    """The task called ``name``, or a one-line error listing the known ones."""
    if name not in TASKS:
        raise CompanionError(f"unknown task {name!r}: use one of {', '.join(TASKS)}")
    return TASKS[name]


def serves(task: Task, pair: str) -> bool:
    """A language pair ``<src>_<tgt>`` (CoVoST 2's) gives ``task`` its examples: the task
    hears ``src`` and transcribes it, or translates it into ``tgt``."""
    src, _, tgt = pair.partition("_")
    return task.hears == src and (task.target == "text" or task.writes == tgt)


CONTRASTS = ("heard", "written", "both")
"""What a pair of tasks changes in the 2 x 2 of language heard x language written: the
language heard only, the language written only, or both (such a pair is not "across tasks"
or "across languages" alone)."""


def contrast(a: Task, b: Task) -> str:
    """What tasks ``a`` and ``b`` differ in: ``"heard"``, ``"written"`` or ``"both"``
    (:data:`CONTRASTS`); ``"neither"`` for two tasks that hear and write the same languages.
    Explained in chapter 5 (book/05_tasks_and_languages.ipynb)."""
    heard, written = a.hears != b.hears, a.writes != b.writes
    if heard and written:
        return "both"
    return "heard" if heard else "written" if written else "neither"
