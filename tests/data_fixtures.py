"""Helpers of the data-layer tests: tiny audio, corpus layouts built in tmp_path, shared data.

Import from a test module as ``from data_fixtures import ...`` (pytest puts tests/ on
sys.path). Nothing here copies ../shared/data into the project: fixtures link to it from
pytest's tmp_path only.
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from types import ModuleType
from typing import Dict, List, Sequence

import numpy as np
import pytest
import soundfile

PROJECT_ROOT = Path(__file__).resolve().parents[1]

from elp.runtime import shared_data_dir  # noqa: E402  (the one definition of the shared-data path)


def require_shared(*parts: str) -> Path:
    """Path inside the shared data, or skip the test when it is absent."""
    root = shared_data_dir()
    if root is None or not (root.joinpath(*parts)).exists():
        pytest.skip(f"shared data {'/'.join(parts)} not available (set ELP_SHARED_DATA)")
    return root.joinpath(*parts)


def write_noise(path: Path, seconds: float = 0.3, sample_rate: int = 16000, channels: int = 1,
                seed: int = 0) -> Path:
    """Write low-level white noise (format from the suffix: .wav, .flac, ...)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = int(round(seconds * sample_rate))
    noise = np.random.default_rng(seed).uniform(-0.1, 0.1, size=(frames, channels)).astype(np.float32)
    soundfile.write(str(path), noise if channels > 1 else noise[:, 0], sample_rate)
    return path


def load_data_prep(corpus: str, task: str) -> ModuleType:
    """Import ``egs/<corpus>/<task>/local/data_prep.py`` as a module."""
    path = PROJECT_ROOT / "egs" / corpus / task / "local" / "data_prep.py"
    spec = importlib.util.spec_from_file_location(f"{corpus}_{task}_data_prep", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- LibriSpeech
LIBRI_TRANSCRIPTS = {
    ("dev-clean", "1272", "128104"): ["MISTER QUILTER IS THE APOSTLE", "NOR IS MISTER QUILTER'S MANNER"],
    ("dev-clean", "84", "121123"): ["GO DO YOU HEAR", "BUT IN LESS THAN FIVE MINUTES"],
    ("test-clean", "1089", "134686"): ["HE HOPED THERE WOULD BE STEW FOR DINNER"],
}


def make_librispeech(root: Path) -> Path:
    """``root/LibriSpeech/{dev-clean,test-clean}/<spk>/<chapter>/`` with flac + trans.txt.

    dev-clean: speakers 1272 and 84, two utterances each, plus one flac without transcript
    line (84-121123-0002) to be dropped.
    """
    corpus = root / "LibriSpeech"
    for (subset, spk, chapter), lines in LIBRI_TRANSCRIPTS.items():
        chapter_dir = corpus / subset / spk / chapter
        chapter_dir.mkdir(parents=True)
        with open(chapter_dir / f"{spk}-{chapter}.trans.txt", "w") as handle:
            for index, line in enumerate(lines):
                utt = f"{spk}-{chapter}-{index:04d}"
                handle.write(f"{utt} {line}\n")
                write_noise(chapter_dir / f"{utt}.flac", seconds=0.1, seed=index)
    write_noise(corpus / "dev-clean" / "84" / "121123" / "84-121123-0002.flac", seconds=0.1)
    return corpus


# --------------------------------------------------------------------------- VoxCeleb
FSDD_SPEAKERS = {"george": "id10001", "jackson": "id10002", "lucas": "id10270", "nicolas": "id10271"}
"""FSDD speaker -> VoxCeleb-style id; lucas and nicolas are the test (trial-list) speakers."""


def make_voxceleb_from_fsdd(root: Path, recordings: Path, digits: Sequence[int] = (0, 1),
                            indices: Sequence[int] = (0, 1, 2)) -> Path:
    """Arrange real FSDD speech as ``root/wav/<id>/<youtube-id>/<NNNNN>.wav`` (symlinks).

    Youtube id = ``yt-D_<digit>`` (with '-' and '_' as real ids have), file = index + 1.
    Writes ``veri_test2.txt`` over the two test speakers: for each test utterance of digit 0
    index 0 (enroll) against the other files of both test speakers, except that
    ``id10271/yt-D_1/00003.wav`` is left out of every trial (an unused utterance).
    """
    for name, spk in FSDD_SPEAKERS.items():
        for digit in digits:
            for index in indices:
                target = root / "wav" / spk / f"yt-D_{digit}" / f"{index + 1:05d}.wav"
                target.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(recordings / f"{digit}_{name}_{index}.wav", target)
    lines = []
    test_speakers = ["id10270", "id10271"]
    for enroll_spk in test_speakers:
        enroll = f"{enroll_spk}/yt-D_0/00001.wav"
        for test_spk in test_speakers:
            for digit in digits:
                for index in indices:
                    test = f"{test_spk}/yt-D_{digit}/{index + 1:05d}.wav"
                    if test == enroll or test == "id10271/yt-D_1/00003.wav":
                        continue
                    lines.append(f"{int(test_spk == enroll_spk)} {enroll} {test}\n")
    (root / "veri_test2.txt").write_text("".join(lines))
    return root


# --------------------------------------------------------------------------- IEMOCAP
EMO_HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
EVALUATOR_LINES = "C-E2:\tNeutral state;\t()\nC-E4:\tNeutral state;\t()\nA-E3:\tval 3; act 2; dom  2;\t()\n\n"


def iemocap_labels(session: int) -> Dict[str, str]:
    """The utterances and corpus labels the IEMOCAP fixture writes for one session."""
    ses = f"Ses{session:02d}"
    return {
        f"{ses}F_impro01_F000": "neu",
        f"{ses}F_impro01_F001": "exc",
        f"{ses}F_impro01_M000": "ang",
        f"{ses}F_impro01_M001": "xxx",
        f"{ses}M_script01_1_F000": "sad",
        f"{ses}M_script01_1_M000": "hap",
        f"{ses}M_script01_1_M001": "fru",
        f"{ses}M_script01_1_M002": "neu",
    }


def make_iemocap(root: Path, sessions: Sequence[int] = (1, 2, 3)) -> Path:
    """``root/IEMOCAP_full_release/Session{n}`` with wavs and real-format EmoEvaluation files.

    Session 1 also holds macOS ``._*`` resource forks and one wav without a label line.
    """
    release = root / "IEMOCAP_full_release"
    for session in sessions:
        session_dir = release / f"Session{session}"
        by_dialog: Dict[str, List[str]] = {}
        for utt in iemocap_labels(session):
            by_dialog.setdefault(utt.rsplit("_", 1)[0], []).append(utt)
        for dialog, utts in by_dialog.items():
            lines = [EMO_HEADER]
            for index, utt in enumerate(utts):
                write_noise(session_dir / "sentences" / "wav" / dialog / f"{utt}.wav", seconds=0.1, seed=index)
                start = 1.5 * index + 6.2901
                lines.append(f"[{start:.4f} - {start + 1.2:.4f}]\t{utt}\t{iemocap_labels(session)[utt]}\t"
                             f"[2.5000, 2.5000, 2.5000]\n" + EVALUATOR_LINES)
            emo_dir = session_dir / "dialog" / "EmoEvaluation"
            emo_dir.mkdir(parents=True, exist_ok=True)
            (emo_dir / f"{dialog}.txt").write_text("".join(lines))
        (session_dir / "dialog" / "EmoEvaluation" / "Categorical").mkdir()
        if session == 1:  # macOS resource forks (shipped in some copies) and a wav without label
            (session_dir / "dialog" / "EmoEvaluation" / "._Ses01F_impro01.txt").write_bytes(b"\x00\x05junk")
            (session_dir / "sentences" / "wav" / "Ses01F_impro01" / "._Ses01F_impro01_F000.wav").write_bytes(b"\x00")
            write_noise(session_dir / "sentences" / "wav" / "Ses01F_impro01" / "Ses01F_impro01_F009.wav", seconds=0.1)
    return release


# --------------------------------------------------------------------------- SLURP
def make_slurp(root: Path, split_lines: Dict[str, Sequence[str]], absent: Sequence[str] = ()) -> Path:
    """``root/dataset/slurp/<split>.jsonl`` holding the given lines, and ``root/slurp_real/``
    with a tiny flac per listed recording, except the file names in ``absent``."""
    annotations = root / "dataset" / "slurp"
    annotations.mkdir(parents=True)
    for split, lines in split_lines.items():
        (annotations / f"{split}.jsonl").write_text("".join(line.rstrip("\n") + "\n" for line in lines))
        for line in lines:
            for recording in json.loads(line)["recordings"]:
                if recording["file"] not in absent:
                    write_noise(root / "slurp_real" / recording["file"], seconds=0.05)
    (root / "slurp_real").mkdir(exist_ok=True)
    return root
