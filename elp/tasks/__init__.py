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
    """The inventory stage 2 wrote for ``task``: a tokenizer (ASR) or a :class:`LabelMap`.

    Parameters
    ----------
    task : Task
        The recipe's task kind.
    lang_dir : str | Path
        The directory stage 2 wrote the inventory to.

    Returns
    -------
    object
        What :meth:`Task.load_inventory` returns.
    """
    return task.load_inventory(lang_dir)


def num_outputs(inventory) -> int:
    """Output units of a head over ``inventory``.

    Parameters
    ----------
    inventory : object
        A tokenizer (with ``vocab_size``) or a label map (with ``len``).

    Returns
    -------
    int
        Tokens including the CTC blank, or classes.

    Examples
    --------
    >>> from elp.data.inventory import LabelMap
    >>> num_outputs(LabelMap.from_values(["sad", "happy", "sad"]))
    2
    """
    return int(getattr(inventory, "vocab_size", None) or len(inventory))


__all__ = ["TASKS", "ASR", "SV", "CLASSIFY", "Task", "SpeechRecognition", "SpeakerVerification", "UtteranceClassification",
           "load_inventory", "num_outputs"]
