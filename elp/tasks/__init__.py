"""Task kinds: one module each, and the registry that names them.

========================= ======================================================
``asr``                   :class:`elp.tasks.asr.SpeechRecognition` (CTC, WER)
``sv``                    :class:`elp.tasks.sv.SpeakerVerification` (EER, minDCF)
``classify``              :class:`elp.tasks.classify.UtteranceClassification` (accuracy)
========================= ======================================================

A recipe's YAML instantiates one (``task: !new:elp.tasks.UtteranceClassification``); a new
kind is a new module here with a :class:`elp.tasks.base.Task` subclass and one registry line.

Examples
--------
>>> sorted(TASKS)
['asr', 'classify', 'sv']
>>> num_outputs(LabelMap(["a", "b", "c"]))
3
"""

from __future__ import annotations

from pathlib import Path

from elp.data.inventory import LabelMap  # noqa: F401  (doctest)
from elp.tasks.asr import SpeechRecognition
from elp.tasks.base import Task
from elp.tasks.classify import UtteranceClassification
from elp.tasks.sv import SpeakerVerification

#: the registry's names of the kinds (use these, not string literals, outside elp/tasks)
ASR, SV, CLASSIFY = SpeechRecognition.kind, SpeakerVerification.kind, UtteranceClassification.kind
#: kind -> class
TASKS: dict[str, type[Task]] = {cls.kind: cls for cls in (SpeechRecognition, SpeakerVerification,
                                                          UtteranceClassification)}


def load_inventory(task: Task, lang_dir: str | Path):
    """Return the inventory stage 2 wrote for ``task``: a tokenizer (ASR) or a :class:`LabelMap`."""
    return task.load_inventory(lang_dir)


def task_class(kind: str) -> type[Task]:
    """Return the task class of a registry name (a key of :data:`TASKS`).

    Raises
    ------
    ValueError
        For an unknown kind (one line listing the known ones).

    Examples
    --------
    >>> task_class("sv").__name__
    'SpeakerVerification'
    >>> task_class("tts")
    Traceback (most recent call last):
    ...
    ValueError: task kind 'tts' is not one of ['asr', 'classify', 'sv']
    """
    if kind not in TASKS:
        raise ValueError(f"task kind {kind!r} is not one of {sorted(TASKS)}")
    return TASKS[kind]


def task_from_package(config: dict) -> Task:
    """Return the task a model package's ``package.json`` describes: its kind and ``task_options``.

    Packages without ``task_options`` get the kind's defaults.

    Examples
    --------
    >>> task_from_package({"task": "sv", "task_options": {"window_seconds": 2.0}}).window_seconds
    2.0
    """
    return task_class(config["task"])(**(config.get("task_options") or {}))


def num_outputs(inventory) -> int:
    """Return the output units of a head over ``inventory``: tokens including the CTC blank, or classes.

    ``inventory`` is a tokenizer (with ``vocab_size``) or a label map (with ``len``).

    Examples
    --------
    >>> from elp.data.inventory import LabelMap
    >>> num_outputs(LabelMap.from_values(["sad", "happy", "sad"]))
    2
    """
    return int(getattr(inventory, "vocab_size", None) or len(inventory))


__all__ = ["TASKS", "ASR", "SV", "CLASSIFY", "Task", "SpeechRecognition", "SpeakerVerification", "UtteranceClassification",
           "load_inventory", "num_outputs", "task_class", "task_from_package"]
