#!/usr/bin/env python3
"""How fast audio loads: seconds of audio per wall second ("x real time"), per format and path.

Writes ``--utterances`` files of ``--seconds`` seconds of synthetic audio (the noisy harmonic
signal of ``tools/synthetic_data.py``; no speech) as 16-bit FLAC and as 16-bit WAV at 16 kHz,
then reads every file of one format, ``--repeats`` times, three ways:

* ``soundfile.read``: the decoder alone;
* ``elp.data.audio.read_audio``: what a recipe calls per utterance (one open, header checks);
* ``loader, N workers``: the recipes' training loader: the task's dataset
  (:meth:`elp.tasks.base.Task.dataset`), :func:`elp.train.recipe.loader_kwargs` with
  ``num_workers: N`` and SpeechBrain's ``make_dataloader`` (padded batches of 8 in random
  order, as on CPU), one pass over all batches from the creation of the loader (worker start-up
  included), for each ``--workers``.

The files are read from the page cache (just written), so this is decoding speed, not disk
speed. Prints one markdown row per format and path: the median rate over the repeats (audio
seconds per wall second), the lowest and highest, and the median rate per CPU second (this
process and its loader workers together): on a machine that other jobs keep busy the wall-clock
rates drop, the CPU-second rates much less.

Usage::

    python tools/loader_throughput.py --utterances 40 --seconds 15 --workers 0 1 2 --repeats 3
"""

from __future__ import annotations

import argparse
import gc
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_data import SAMPLE_RATE, synthetic_audio  # noqa: E402

FORMATS = {"flac": "FLAC", "wav": "WAV"}


def write_corpus(out: Path, fmt: str, utterances: int, seconds: float) -> Path:
    """A validated Kaldi data dir ``out/<fmt>`` of ``utterances`` files in ``fmt`` (one class); its path."""
    from elp.data.kaldi_dir import validate_data_dir, write_data_dir

    data_dir = out / fmt
    (data_dir / "audio").mkdir(parents=True)
    rng = np.random.default_rng(0)
    wav_scp = {}
    for index in range(utterances):
        utt = f"utt{index:05d}"
        path = data_dir / "audio" / f"{utt}.{fmt}"
        soundfile.write(path, synthetic_audio(rng, seconds), SAMPLE_RATE, format=FORMATS[fmt], subtype="PCM_16")
        wav_scp[utt] = str(path)
    write_data_dir(data_dir, wav_scp=wav_scp, utt2spk={u: u for u in wav_scp},
                   utt2label={u: "class0" for u in wav_scp})
    validate_data_dir(data_dir)  # what stage 1 does: utt2num_samples
    return data_dir


def cpu_seconds() -> float:
    """CPU seconds used so far by this process and by its children that have ended (loader workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed_passes(read_all, repeats: int) -> list[tuple[float, float]]:
    """(wall seconds, CPU seconds) of ``repeats`` calls of ``read_all()``.

    Each call must return the samples it read and end its worker processes before it returns
    (their CPU time counts once they have ended).
    """
    seconds = []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), cpu_seconds()
        samples = read_all()
        seconds.append((time.perf_counter() - wall, cpu_seconds() - cpu))
        if samples <= 0:
            raise RuntimeError("a pass read no audio")
    return seconds


def training_loader_pass(data_dir: Path, workers: int):
    """A function running one pass of the recipes' training loader over ``data_dir`` with
    ``workers`` workers; it returns the valid samples it read."""
    from speechbrain.dataio.dataloader import make_dataloader

    from elp.data.inventory import LabelMap
    from elp.tasks.classify import UtteranceClassification
    from elp.train.recipe import RUN_DEFAULTS, loader_kwargs

    task = UtteranceClassification()
    dataset = task.dataset(data_dir, "train", LabelMap(["class0"]))
    hparams = dict(RUN_DEFAULTS, seed=0, device="cpu", task=task, num_workers=workers)

    def one_pass() -> int:
        samples = 0
        loader = make_dataloader(dataset, **loader_kwargs(hparams, dataset, train=True))
        for batch in loader:
            samples += int((batch.sig.lengths * batch.sig.data.shape[1]).round().sum())
        del loader  # its (persistent) workers end here
        gc.collect()
        return samples

    return one_pass


def measure(utterances: int, seconds: float, workers: list[int], repeats: int) -> list[dict]:
    """Every format and path of the module docstring: one dict per row.

    ``rates``: x real time per pass (audio seconds per wall second); ``cpu_rates``: audio seconds
    per CPU second of the pass (this process and its loader workers), which other load on the
    machine changes little.
    """
    from elp.data.audio import read_audio

    rows = []
    audio_s = utterances * seconds
    with tempfile.TemporaryDirectory(prefix="elp-loader-") as tmp:
        for fmt in FORMATS:
            data_dir = write_corpus(Path(tmp), fmt, utterances, seconds)
            paths = sorted(str(p) for p in (data_dir / "audio").iterdir())
            readers = {
                "soundfile.read": lambda: sum(len(soundfile.read(p, dtype="float32")[0]) for p in paths),
                "read_audio": lambda: sum(len(read_audio(p)) for p in paths),
            }
            for count in workers:
                readers[f"loader, {count} workers"] = training_loader_pass(data_dir, count)
            for path, read_all in readers.items():
                passes = timed_passes(read_all, repeats)
                rows.append({"format": fmt, "path": path, "audio_s": audio_s,
                             "rates": [audio_s / wall for wall, _ in passes],
                             "cpu_rates": [audio_s / cpu for _, cpu in passes]})
    return rows


def format_table(rows: list[dict]) -> str:
    """Markdown table of :func:`measure`'s rows.

    Examples
    --------
    >>> print(format_table([{"format": "wav", "path": "read_audio", "audio_s": 30.0, "rates": [900.0, 1100.0, 1000.0],
    ...                      "cpu_rates": [2000.0, 2100.0, 1900.0]}]))
    | format | path | audio s per pass | x real time (median) | lowest - highest | x real time per CPU second (median) |
    |---|---|---:|---:|---:|---:|
    | wav | read_audio | 30 | 1,000 | 900 - 1,100 | 2,000 |
    """
    lines = ["| format | path | audio s per pass | x real time (median) | lowest - highest "
             "| x real time per CPU second (median) |", "|---|---|---:|---:|---:|---:|"]
    for row in rows:
        rates = row["rates"]
        lines.append(f"| {row['format']} | {row['path']} | {row['audio_s']:g} | {statistics.median(rates):,.0f} | "
                     f"{min(rates):,.0f} - {max(rates):,.0f} | {statistics.median(row['cpu_rates']):,.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Measure and print the table (module docstring); returns 0."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--utterances", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=15.0, help="length of every utterance")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="loader worker counts to run")
    parser.add_argument("--repeats", type=int, default=3, help="passes per format and path")
    args = parser.parse_args(argv)
    if args.utterances < 1 or args.seconds <= 0 or args.repeats < 1 or min(args.workers) < 0:
        parser.error("--utterances, --seconds and --repeats must be positive, --workers >= 0")
    print(format_table(measure(args.utterances, args.seconds, args.workers, args.repeats)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
