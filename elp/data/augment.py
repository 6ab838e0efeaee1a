"""Noise and room-impulse-response sets for SpeechBrain's augmentation, from Kaldi data dirs.

SpeechBrain's ``AddNoise`` and ``AddReverb`` (``speechbrain.augment.time_domain``) read their
recordings from a CSV (``ID,duration,wav,wav_format,wav_opts``) through SpeechBrain's own
audio reader. :func:`augmentation_csv` writes that CSV from a Kaldi data dir of noises or
RIRs (MUSAN, the RIRS_NOISES corpus, ... prepared the Kaldi way): a whole plain file at
16 kHz mono is listed as it is; anything else (another rate or several channels, a decoder
pipe, ``path.ark:offset``, a ``segments`` cut) is read with :func:`elp.data.audio.read_audio`
(16 kHz mono) and written once as a WAV next to the CSV.

A recipe names it in its YAML (the CSV is written when the YAML loads)::

    augmentation: !new:speechbrain.augment.augmenter.Augmenter
        augmentations:
            - !new:speechbrain.augment.time_domain.AddNoise
                csv_file: !apply:elp.data.augment.augmentation_csv
                    - /corpora/musan_noise_kaldi     # a Kaldi data dir (wav.scp)
                    - !ref <output_folder>/noise.csv

Examples
--------
>>> import tempfile, numpy as np, soundfile as sf
>>> from pathlib import Path
>>> from elp.data.kaldi_dir import write_data_dir
>>> root = Path(tempfile.mkdtemp())
>>> sf.write(root / "n1.wav", np.zeros(16000, dtype="float32"), 16000)
>>> sf.write(root / "n2.flac", np.zeros((8000, 2), dtype="float32"), 8000)
>>> noises = write_data_dir(root / "noise", wav_scp={"n1": str(root / "n1.wav"),
...                                                  "n2": f"flac -c -d -s {root / 'n2.flac'} |"})
>>> csv_file = augmentation_csv(noises, root / "exp" / "noise.csv")
>>> [line.split(",")[:2] for line in Path(csv_file).read_text().splitlines()]
[['ID', 'duration'], ['n1', '1'], ['n2', '1']]
"""
from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

import soundfile

from elp.data.audio import audio_info, read_audio
from elp.data.errors import DataError
from elp.data.kaldi_dir import PathLike, read_data_dir
from elp.data.pipes import pipe_kind
from elp.runtime import SAMPLE_RATE, atomic_write

logger = logging.getLogger(__name__)


def augmentation_csv(data_dir: PathLike, csv_file: PathLike, allow_shell_pipes: bool = False) -> str:
    """Write SpeechBrain's augmentation CSV for the recordings of a Kaldi data dir.

    Parameters
    ----------
    data_dir
        A Kaldi data dir of noises or RIRs (``wav.scp``, ``utt2spk``; ``segments`` allowed).
    csv_file
        The CSV to write; converted audio goes to ``<csv_file stem>_wav/`` beside it.
    allow_shell_pipes
        Run ``wav.scp`` commands elp does not read natively (:mod:`elp.data.pipes`).

    Returns
    -------
    str
        ``csv_file`` (for ``csv_file: !apply:elp.data.augment.augmentation_csv [...]``).

    Raises
    ------
    DataError
        The data dir is unusable or empty, or a recording cannot be read (naming it).
    """
    data = read_data_dir(data_dir)
    csv_file = Path(csv_file)
    audio_dir = csv_file.with_name(csv_file.stem + "_wav")
    rows = []
    for utt in data.utterances:
        segment = data.segments.get(utt) if data.segments is not None else None
        entry = data.wav_scp[segment.recording if segment is not None else utt]
        where = f"{Path(data_dir) / 'wav.scp'}: {utt!r}: "
        try:
            info = audio_info(entry, utt, allow_shell_pipes)
            plain = (segment is None and pipe_kind(entry) is None and info.sample_rate == SAMPLE_RATE
                     and info.num_channels == 1 and os.path.isfile(entry))
            if plain:
                path, seconds = os.path.abspath(entry), info.num_frames / info.sample_rate
            else:
                waveform = read_audio(entry, segment=segment.as_tuple() if segment else None, utt=utt,
                                      allow_shell_pipes=allow_shell_pipes)
                path = str((audio_dir / f"{utt}.wav").resolve())
                audio_dir.mkdir(parents=True, exist_ok=True)
                soundfile.write(path, waveform.numpy(), SAMPLE_RATE, subtype="FLOAT")
                seconds = waveform.shape[0] / SAMPLE_RATE
        except DataError as error:
            raise DataError(f"{where}{error}") from None
        rows.append((utt, f"{seconds:.6g}", path, Path(path).suffix.lstrip("."), ""))
    if not rows:
        raise DataError(f"{data_dir}: no recordings; an augmentation set needs at least one")
    csv_file.parent.mkdir(parents=True, exist_ok=True)
    def write(path: Path) -> None:
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(("ID", "duration", "wav", "wav_format", "wav_opts"))
            writer.writerows(rows)

    atomic_write(csv_file, write)
    logger.info("%s: %d recording(s) of %s for augmentation", csv_file, len(rows), data_dir)
    return str(csv_file)
