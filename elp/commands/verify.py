"""Speaker verification of one trial with an SV model package: score and decision.

Usage::

    elp verify --package exp/sv_elp/adapters enroll.wav test.wav

Prints ``<score> accept|reject (threshold T)``; without a calibrated threshold only the
cosine score (exit status 0 either way). Utterances longer than the package's SV window are
embedded in windows, as stage 4 embedded them (:class:`elp.serve.inference.SpeakerVerifier`).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``elp verify`` to ``parser``."""
    parser.add_argument("--package", required=True, metavar="DIR", help="SV model package directory")
    parser.add_argument("enroll", help="audio of the claimed speaker")
    parser.add_argument("test", help="audio to verify")
    parser.add_argument("--backbone-source", help="backbone checkpoint directory or hub id")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--trust-head-module", metavar="MODULE",
                        help="run the code of a user head the package holds (its module, e.g. local.my_head)")


def run(args: argparse.Namespace) -> int:
    """Score one trial, print the score and decision, and return 0.

    Raises
    ------
    SystemExit
        If an audio file or the package is missing or unusable (one line naming it).

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> import soundfile as sf
    >>> from elp.cli import main
    >>> from elp.testing import make_tiny_package
    >>> package = make_tiny_package(tempfile.mkdtemp(), task="sv", method="lora")
    >>> wav = Path(tempfile.mkdtemp()) / "a.wav"
    >>> sf.write(wav, np.zeros(16000, dtype=np.float32), 16000)
    >>> main(["verify", "--package", str(package), str(wav), str(wav)])
    1.000000 (no decision: the package has no calibrated threshold)
    0
    """
    from elp.commands.infer import quiet_libraries

    quiet_libraries()
    from elp.serve.inference import AudioInputError, SpeakerVerifier
    from elp.serve.package import PackageError, PackageNotFoundError

    for name in (args.enroll, args.test):
        if not Path(name).is_file():
            raise SystemExit(f"elp verify: audio file {name} does not exist")
    try:
        verifier = SpeakerVerifier.from_package(args.package, args.backbone_source, args.device,
                                                trust_head_module=args.trust_head_module)
        trial = verifier.verify(args.enroll, args.test)
    except (PackageNotFoundError, PackageError, AudioInputError, ValueError) as err:
        raise SystemExit(f"elp verify: {err}")
    if trial.accepted is None:
        print(f"{trial.score:.6f} (no decision: the package has no calibrated threshold)")
    else:
        print(f"{trial.score:.6f} {'accept' if trial.accepted else 'reject'} (threshold {trial.threshold:.6f})")
    return 0
