"""Run trained model packages on audio files: one line per file per task.

Usage::

    elp infer --package exp/asr_elp/adapters a.wav b.flac
    elp infer --package exp/er_elp/adapters --package exp/asr_l_only/adapters --wav-scp data/test/wav.scp \\
        --jsonl out.jsonl
    elp infer --package exp/asr_elp/adapters --beam-size 10 --lm lm.arpa a.wav
    elp infer --package exp/er_mine/adapters --trust-head-module local.my_head a.wav   # a user head

Several packages trained on the same backbone run together (:mod:`elp.serve.multitask`: the CNN
once per file, one shared transformer pass for weighted_sum / l_only); packages of different
backbones are refused with the commands to run instead, one per backbone. Output lines:
``<utt> <name> (<task kind>) <result>``: ``<utt>`` is the file as given or the utterance id of
``--wav-scp``; ``<name>`` the directory holding the package (:attr:`elp.serve.package.Package.name`:
the tag of ``exp/<tag>/adapters``, the task of a joint run's ``exp/<tag>/<task>/adapters``, the
fold of ``exp/<tag>/fold<k>/adapters``; a repeated name gets ``#2``, ``#3``...); ``<result>`` what
the predictor summarises (:meth:`elp.serve.inference.Predictor.summary`: the transcript, the label
and its probability, or the embedding's size and norm). For example, in the joint recipe
``elp infer --package exp/mini_elp/ic/adapters a.flac`` printed
``a.flac ic (classify) weather_query 0.9967`` (docs/INFERENCE.md names the file).

Inputs are read lazily, batch by batch (``--batch-size`` utterances and ``--max-batch-seconds``
of padded audio at most); a bad input (unreadable, empty, too short, NaN/inf samples) stops
the run with one line naming it. A package whose head is a user's own module runs only with
``--trust-head-module MODULE`` (:mod:`elp.serve.head_registry`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``elp infer`` to ``parser``."""
    parser.add_argument("--package", action="append", required=True, metavar="DIR",
                        help="model package directory (repeat for several tasks on one backbone)")
    parser.add_argument("files", nargs="*", help="audio files (any soundfile format)")
    parser.add_argument("--wav-scp", help="Kaldi wav.scp (<utt> <path or ark:offset>) instead of FILES")
    parser.add_argument("--backbone-source", help="backbone checkpoint directory or hub id "
                        "(default: the one recorded in the package)")
    parser.add_argument("--jsonl", help="also write one JSON object per file to this file")
    parser.add_argument("--batch-size", type=int, default=8, help="utterances per forward pass at most")
    parser.add_argument("--max-batch-seconds", type=float, default=None,
                        help="padded audio per forward pass at most, in seconds (default 60; routed tasks count "
                        "seconds x tasks)")
    parser.add_argument("--trust-head-module", action="append", default=[], metavar="MODULE",
                        help="run the code of a user head a package holds (its module, e.g. local.my_head)")
    parser.add_argument("--beam-size", type=int, default=None, help="ASR: CTC prefix beam search (default greedy)")
    parser.add_argument("--lm", help="ASR: word n-gram LM (ARPA) for beam search")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-progress", action="store_true")


def read_inputs(args) -> list[tuple[str, str]]:
    """Return (utterance id, audio entry) pairs from FILES (the file name twice) or --wav-scp.

    A wav.scp is read and checked as stage 1 reads data directories
    (:func:`elp.data.kaldi_dir.read_mapping`: UTF-8 without a byte-order mark, one line per
    utterance; :func:`elp.data.audio.check_entry`: decoder pipes elp reads natively are
    accepted, other commands refused). Only the entries are read here; the audio is read
    lazily, batch by batch.

    Raises
    ------
    SystemExit
        With no input, both kinds of input, a missing file, or a wav.scp that stage 1 would refuse.

    Examples
    --------
    >>> import tempfile
    >>> scp = Path(tempfile.mkdtemp()) / "wav.scp"
    >>> _ = scp.write_text("u1 a.wav\\n\\nu2 b.ark:12\\n")
    >>> read_inputs(argparse.Namespace(files=[], wav_scp=str(scp)))
    [('u1', 'a.wav'), ('u2', 'b.ark:12')]
    >>> _ = scp.write_text("u1 a.wav\\nu1 b.wav\\n")
    >>> read_inputs(argparse.Namespace(files=[], wav_scp=str(scp)))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    SystemExit: elp infer: .../wav.scp: key 'u1' occurs more than once ('a.wav' and 'b.wav'); keep one line per key ...
    """
    from elp.data.audio import check_entry
    from elp.data.errors import DataError

    if args.wav_scp and args.files:
        raise SystemExit("elp infer: give audio FILES or --wav-scp, not both")
    if args.wav_scp:
        from elp.data.kaldi_dir import read_mapping

        path = Path(args.wav_scp)
        if not path.is_file():
            raise SystemExit(f"elp infer: --wav-scp {path} does not exist")
        try:
            pairs = list(read_mapping(path).items())
            for utt, entry in pairs:
                check_entry(entry, utt, where=f"{path}: ")
        except DataError as err:
            raise SystemExit(f"elp infer: {err}") from None
        if not pairs:
            raise SystemExit(f"elp infer: --wav-scp {path} lists no utterance")
        return pairs
    if not args.files:
        raise SystemExit("elp infer: no input: give audio FILES or --wav-scp")
    for name in args.files:
        if not Path(name).is_file():
            raise SystemExit(f"elp infer: audio file {name} does not exist")
    return [(name, name) for name in args.files]


def separate_commands_advice(groups) -> str:
    """Return the fix for packages of several backbones given to one ``elp infer``: one command per backbone.

    Parameters
    ----------
    groups : list of list of path
        The packages given, grouped by backbone weights
        (:attr:`elp.serve.multitask.MixedBackbonesError.groups`).

    Examples
    --------
    >>> separate_commands_advice([["exp/a/adapters", "exp/c/adapters"], ["../sv/exp/b/adapters"]])
    'run separate elp infer commands, one per backbone: elp infer --package exp/a/adapters --package exp/c/adapters ...; elp infer --package ../sv/exp/b/adapters ...'
    """
    commands = ["elp infer " + " ".join(f"--package {directory}" for directory in group) + " ..." for group in groups]
    return "run separate elp infer commands, one per backbone: " + "; ".join(commands)


def quiet_libraries() -> None:
    """Silence per-load progress bars and known framework warnings on the command line."""
    import warnings

    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", message="Support for mismatched key_padding_mask")


def run(args: argparse.Namespace) -> int:
    """Run every package on every input, print one line per input and task, and return 0.

    Raises
    ------
    SystemExit
        If an input or a package is missing or unusable (one line naming it).

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> import soundfile as sf
    >>> from elp.cli import main
    >>> from elp.testing import make_tiny_package
    >>> package = make_tiny_package(Path(tempfile.mkdtemp()) / "er", task="classify")
    >>> wav = Path(tempfile.mkdtemp()) / "a.wav"
    >>> sf.write(wav, np.zeros(16000, dtype=np.float32), 16000)
    >>> main(["infer", "--package", str(package), "--no-progress", str(wav)])  # doctest: +ELLIPSIS
    /.../a.wav er (classify) neutral 0.39...
    0
    """
    quiet_libraries()
    from elp.serve.inference import MAX_BATCH_SECONDS, AudioInputError
    from elp.serve.multitask import MixedBackbonesError, MultiTask
    from elp.serve.package import PackageError, PackageNotFoundError

    pairs = read_inputs(args)
    try:
        try:
            tasks = MultiTask(args.package, backbone_source=args.backbone_source, device=args.device,
                              trust_head_module=args.trust_head_module)
        except MixedBackbonesError as err:
            raise err.with_advice(separate_commands_advice(err.groups)) from None
        if args.lm and args.beam_size is None:
            args.beam_size = 10
        max_seconds = MAX_BATCH_SECONDS if args.max_batch_seconds is None else args.max_batch_seconds
        outputs = tasks.outputs([entry for _, entry in pairs], batch_size=args.batch_size,
                                progress=False if args.no_progress else None, max_batch_seconds=max_seconds,
                                names=[utt for utt, _ in pairs])
    except (PackageNotFoundError, PackageError, AudioInputError, FileNotFoundError, ValueError) as err:
        raise SystemExit(f"elp infer: {err}")
    jsonl = open(args.jsonl, "w", encoding="utf-8") if args.jsonl else None
    try:
        for index, (utt, _) in enumerate(pairs):
            record = {"utt": utt}
            for task_index, (name, predictor) in enumerate(zip(tasks.names, tasks.predictors)):
                result = predictor.result(outputs[task_index][index], beam_size=args.beam_size, lm=args.lm)
                text, value = predictor.summary(result)
                print(f"{utt} {name} ({predictor.kind}) {text}".rstrip())
                record[name] = {"task": predictor.kind, "result": value}
            if jsonl:
                jsonl.write(json.dumps(record) + "\n")
    finally:
        if jsonl:
            jsonl.close()
    sys.stdout.flush()
    return 0
