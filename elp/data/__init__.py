"""Data layer: Kaldi-style data directories and audio reading.

- :mod:`elp.data.kaldi_dir`: read/write/validate data dirs, hand them to SpeechBrain.
- :mod:`elp.data.audio`: read a ``wav.scp`` entry as a 16 kHz mono float32 waveform.
- :mod:`elp.data.pipes`: ``wav.scp`` pipe entries: standard decoder commands read natively,
  others run only with ``allow_shell_pipes``.
- :mod:`elp.data.dirs`: data-dir utilities in the Kaldi idiom (subset, combine, copy, filter,
  perturb speed; the ``elp data`` command).
- :mod:`elp.data.augment`: SpeechBrain augmentation CSVs (noises, RIRs) from Kaldi data dirs.
- :mod:`elp.data.inventory`: token / label inventories (stage 2) and their checks.
- :mod:`elp.data.errors`: :class:`DataError`, the one exception of data-side user errors.
- :mod:`elp.data.prep`: shared plumbing of the corpus data-preparation scripts
  (``egs/<corpus>/<task>/local/data_prep.py``).

Examples
--------
>>> import tempfile
>>> from pathlib import Path
>>> data_dir = Path(tempfile.mkdtemp()) / "train"
>>> _ = write_data_dir(data_dir, wav_scp={"u1": "/corpus/u1.flac"}, utt2spk={"u1": "spk1"})
>>> sorted(p.name for p in data_dir.iterdir())
['spk2utt', 'utt2spk', 'wav.scp']
>>> read_data_dir(data_dir).utt2spk
{'u1': 'spk1'}
"""

from __future__ import annotations

from elp.data.audio import (
    AudioInfo,
    audio_info,
    check_audio,
    check_entry,
    num_samples,
    read_audio,
)
from elp.data.errors import (
    AudioError,
    AudioNotFoundError,
    DataError,
    UndecodableAudioError,
    UnsafeEntryError,
)
from elp.data.kaldi_dir import (
    DataDir,
    DataDirError,
    Segment,
    Trial,
    data_dir_to_dict,
    read_data_dir,
    read_mapping,
    read_trials,
    utterance_lengths,
    validate_data_dir,
    write_data_dir,
    write_mapping,
    write_trials,
)
from elp.data.pipes import NativeRead, parse_pipe

__all__ = [
    "AudioInfo", "audio_info", "check_audio", "check_entry", "num_samples", "read_audio",
    "AudioError", "AudioNotFoundError", "DataError", "UndecodableAudioError", "UnsafeEntryError",
    "utterance_lengths", "NativeRead", "parse_pipe",
    "DataDir", "DataDirError", "Segment", "Trial", "data_dir_to_dict", "read_data_dir",
    "read_mapping", "read_trials", "validate_data_dir", "write_data_dir", "write_mapping",
    "write_trials",
]
