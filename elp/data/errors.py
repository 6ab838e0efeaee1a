"""The exception every data-side user error raises: one line naming the culprit and the fix.

:class:`DataError` is a :class:`ValueError`, so callers that catch ``ValueError`` keep working;
entry points (``recipes/validate_data.py``, the data-prep scripts) catch :class:`DataError`
and print its one-line message instead of a traceback.

Examples
--------
>>> try:
...     raise DataError("data/test/utt2label:3: utt 'u3' has an empty label; write one class per line")
... except ValueError as error:
...     print(error)
data/test/utt2label:3: utt 'u3' has an empty label; write one class per line
>>> issubclass(AudioNotFoundError, FileNotFoundError) and issubclass(AudioNotFoundError, DataError)
True
"""
from __future__ import annotations


class DataError(ValueError):
    """A data file, data dir or recording is unusable; the message (one line) names the
    file / line / utterance and says how to fix it."""


class AudioError(DataError):
    """A recording cannot be used: unsafe entry, unreadable, truncated or non-finite samples."""


class AudioNotFoundError(AudioError, FileNotFoundError):
    """A ``wav.scp`` entry names neither an existing file nor ``path.ark:offset``."""


class UndecodableAudioError(AudioError):
    """A file exists but soundfile cannot decode its format (e.g. m4a, shorten SPHERE)."""


class UnsafeEntryError(AudioError):
    """A ``wav.scp`` entry that would reach a shell (a command elp does not read natively,
    without ``allow_shell_pipes``) or standard input (``-``)."""
