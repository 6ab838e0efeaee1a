"""Fault injection on the data side (issue 8: bad input, issue 11: I/O): one probe per fault.

Every probe builds a small data dir in tmp, injects one fault and asserts the outcome: an
error whose one-line text names the culprit (file:line and/or utterance) and the fix, or
exactly the right result. Stage 1 is driven through ``recipes/validate_data.py`` (in
process, and once as a subprocess to check the one-line, no-traceback contract), stage 2
through :mod:`elp.data.inventory`, loading through :func:`elp.data.audio.read_audio`.
"""
from __future__ import annotations

import importlib.util
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

import elp
from data_fixtures import write_noise

ROOT = Path(elp.__file__).resolve().parents[1]


def load_validate_data():
    spec = importlib.util.spec_from_file_location("validate_data_cli", ROOT / "recipes" / "validate_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_stage1(capsys, caplog, *argv) -> tuple[int, str]:
    """Run stage 1 in process; returns (exit status, everything it printed or logged)."""
    caplog.clear()
    try:
        rc = load_validate_data().main(list(map(str, argv)))
    except SystemExit as exit_:
        rc = exit_.code
    captured = capsys.readouterr()
    return rc, captured.out + captured.err + caplog.text


def make_dir(root: Path, name: str = "train", n: int = 4, text: dict | None = None,
             labels: dict | None = None, wavs: dict | None = None) -> Path:
    """A data dir of ``n`` 0.05 s utterances ``spk<i%2>-u<i:02d>`` (+ optional text/labels)."""
    from elp.data.kaldi_dir import write_data_dir

    utts = [f"spk{i % 2}-u{i:02d}" for i in range(n)]
    wav_scp = {u: str(write_noise(root / "audio" / name / f"{u}.wav", seconds=0.05, seed=i))
               for i, u in enumerate(utts)}
    wav_scp.update(wavs or {})
    return write_data_dir(root / "data" / name, wav_scp=wav_scp, utt2spk={u: u.split("-")[0] for u in utts},
                          text=text, utt2label=labels)


def float_wav(path: Path, value: float, frames: int = 1600, at: int = 800) -> str:
    samples = np.full(frames, 0.01, dtype=np.float32)
    samples[at] = value
    soundfile.write(str(path), samples, 16000, subtype="FLOAT")
    return str(path)


def set_entry(data_dir: Path, utt: str, entry: str) -> None:
    lines = (data_dir / "wav.scp").read_text().splitlines()
    (data_dir / "wav.scp").write_text("".join(
        (f"{utt} {entry}" if line.split()[0] == utt else line) + "\n" for line in lines))


# --------------------------------------------------------------------------- audio content
@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_wav_fails_stage1_naming_utt(tmp_path, capsys, caplog, value):
    d = make_dir(tmp_path)
    bad = float_wav(tmp_path / "bad.wav", value)
    set_entry(d, "spk1-u01", bad)
    rc, out = run_stage1(capsys, caplog, d)
    assert rc == 1
    assert "spk1-u01" in out and bad in out and "non-finite" in out and "re-create it or remove" in out
    assert not (d / "utt2num_samples").exists()


def test_truncated_wav_data_chunk_fails_stage1(tmp_path, capsys, caplog):
    d = make_dir(tmp_path)
    path = tmp_path / "cut.wav"
    write_noise(path, seconds=0.2)  # 3200 frames of PCM_16
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 3000])  # header still declares 3200 frames
    set_entry(d, "spk0-u02", str(path))
    rc, out = run_stage1(capsys, caplog, d)
    assert rc == 1
    assert "spk0-u02" in out and "truncated" in out and "declares 3200 frames but the file holds 1700" in out


def test_non_finite_test_utterance_refused_at_load(tmp_path):
    from elp.data.audio import read_audio

    bad = float_wav(tmp_path / "bad.wav", float("nan"))
    with pytest.raises(ValueError, match=r"utt 'test-u7': audio '.*bad.wav' holds 1 non-finite sample"):
        read_audio(bad, utt="test-u7")


def test_nan_in_segmented_recording_names_recording_and_utts(tmp_path, capsys, caplog):
    from elp.data.kaldi_dir import Segment, write_data_dir

    reco = float_wav(tmp_path / "reco.wav", float("nan"), frames=16000, at=12000)
    d = write_data_dir(tmp_path / "seg", wav_scp={"reco": reco},
                       segments={"reco-a": Segment("reco", 0.0, 0.5), "reco-b": Segment("reco", 0.5, -1)})
    rc, out = run_stage1(capsys, caplog, d)
    assert rc == 1 and "wav.scp:1" in out and "'reco'" in out and "non-finite" in out and "0.750 s" in out


# --------------------------------------------------------------------------- labels
@pytest.mark.parametrize("line,what", [("spk1-u01", "empty label"), ("spk1-u01 neu sad", "2 tokens")])
def test_bad_label_names_file_line_utt(tmp_path, capsys, caplog, line, what):
    d = make_dir(tmp_path, labels={f"spk{i % 2}-u{i:02d}": "neu" for i in range(4)})
    lines = (d / "utt2label").read_text().splitlines()
    assert lines[2].startswith("spk1-u01 ")  # sorted: spk0-u00, spk0-u02, spk1-u01, spk1-u03
    lines[2] = line
    (d / "utt2label").write_text("\n".join(lines) + "\n")
    rc, out = run_stage1(capsys, caplog, d)
    assert rc == 1
    assert f"{d / 'utt2label'}:3" in out and "'spk1-u01'" in out and what in out and "one token" in out


def test_unseen_test_label_caught_in_stage2(tmp_path):
    from elp.data.inventory import LabelMap, check_label_coverage

    labels = {f"spk{i % 2}-u{i:02d}": "neu" if i % 2 else "ang" for i in range(4)}
    LabelMap.from_values(labels.values()).save(tmp_path / "lang")
    test_labels = dict(labels, **{"spk0-u02": "hap"})
    test = make_dir(tmp_path, "test", labels=test_labels)
    dev = make_dir(tmp_path, "dev", labels=labels)
    check_label_coverage(tmp_path / "lang", [dev])
    with pytest.raises(ValueError) as error:
        check_label_coverage(tmp_path / "lang", [dev, test])
    message = str(error.value)
    assert f"{test / 'utt2label'}" in message and "'spk0-u02'" in message and "'hap'" in message
    assert "\n" not in message


def test_unseen_test_character_caught_in_stage2(tmp_path):
    from elp.data.inventory import CharTokenizer, check_transcript_coverage

    train_text = {"spk0-u00": "AB", "spk1-u01": "BA", "spk0-u02": "A B", "spk1-u03": "B"}
    CharTokenizer.from_texts(train_text.values()).save(tmp_path / "lang")
    test = make_dir(tmp_path, "test", text=dict(train_text, **{"spk1-u03": "BQ"}))
    with pytest.raises(ValueError) as error:
        check_transcript_coverage(tmp_path / "lang", [test])
    message = str(error.value)
    assert f"{test / 'text'}" in message and "'spk1-u03'" in message and "'Q'" in message


# --------------------------------------------------------------------------- encodings
@pytest.mark.parametrize("name", ["text", "utt2label", "trials"])
def test_non_utf8_names_file_and_line(tmp_path, capsys, caplog, name):
    utts = [f"spk{i % 2}-u{i:02d}" for i in range(4)]
    d = make_dir(tmp_path, text={u: "A" for u in utts}, labels={u: "neu" for u in utts})
    path = d / name
    if name == "trials":
        path.write_bytes(b"spk0-u00 spk1-u01 target\nspk0-u00 spk1-u03 caf\xe9\n")
    else:
        lines = path.read_bytes().splitlines()
        lines[2] = lines[2] + b"\xe9"
        path.write_bytes(b"\n".join(lines) + b"\n")
    rc, out = run_stage1(capsys, caplog, d)
    assert rc == 1
    assert f"{path}:{2 if name == 'trials' else 3}" in out and "UTF-8" in out and "iconv" in out
    assert "Traceback" not in out and "UnicodeDecodeError" not in out


# --------------------------------------------------------------------------- entries and shells
PIPED = ["sox in.wav -t wav - reverse |", "gunzip -c x.wav.gz |", "| cat in.wav", "cat in.wav |:0", "a.wav|b.wav",
         "-", "-:12", "gunzip -c x.wav.gz"]  # standard decoder pipes are read natively (tests/test_kaldi_pipes.py)


@pytest.mark.parametrize("entry", PIPED)
def test_unsafe_entry_names_file_line_and_fix(tmp_path, capsys, caplog, entry):
    d = make_dir(tmp_path)
    set_entry(d, "spk1-u01", entry)
    rc, out = run_stage1(capsys, caplog, d)
    assert rc == 1
    assert f"{d / 'wav.scp'}:3" in out and "'spk1-u01'" in out  # line 3 in sorted order and "convert the audio to files first" in out


@pytest.mark.parametrize("entry", PIPED)
def test_unsafe_entry_refused_by_read_audio(entry):
    from elp.data.audio import read_audio

    with pytest.raises(ValueError, match="convert the audio to files first"):
        read_audio(entry)


def test_no_entry_reaches_a_shell(tmp_path, capsys, caplog):
    """``./evil |:0`` passes an existence check of the file ``./evil |`` and kaldiio would run
    ``./evil`` through a shell: the canary must never be written."""
    canary = tmp_path / "CANARY"
    evil = tmp_path / "evil"
    evil.write_text(f"#!/bin/sh\ntouch {canary}\n")
    evil.chmod(evil.stat().st_mode | stat.S_IXUSR)
    (tmp_path / "evil |").write_bytes(b"x")
    d = make_dir(tmp_path)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        set_entry(d, "spk0-u00", "./evil |:0")
        rc, out = run_stage1(capsys, caplog, d)
        from elp.data.audio import read_audio
        with pytest.raises(ValueError):
            read_audio("./evil |:0")
    finally:
        os.chdir(cwd)
    assert not canary.exists()
    assert rc == 1 and f"{d / 'wav.scp'}:1" in out


def test_pipe_entry_of_segmented_recording(tmp_path, capsys, caplog):
    from elp.data.kaldi_dir import Segment, write_data_dir

    d = write_data_dir(tmp_path / "seg", wav_scp={"reco": "sox long.flac -t wav - reverse |"},
                       segments={"reco-a": Segment("reco", 0.0, 0.5)})
    rc, out = run_stage1(capsys, caplog, d)
    assert rc == 1 and f"{d / 'wav.scp'}:1" in out and "'reco'" in out and "|" in out
    assert "allow_shell_pipes" in out


# --------------------------------------------------------------------------- --fix policy
def truncate(path: Path, keep: int) -> None:
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:keep]))


def test_fix_never_applies_to_test_sets(tmp_path, capsys, caplog):
    train = make_dir(tmp_path, "train", n=6)
    test = make_dir(tmp_path, "test", n=60)
    truncate(test / "wav.scp", 24)
    before = (test / "utt2spk").read_text()
    rc, out = run_stage1(capsys, caplog, "--fix", train, "--test", test)
    assert rc == 1
    assert str(test) in out and "36 utterance(s)" in out and "wav.scp" in out and "--fix-test" in out
    assert (test / "utt2spk").read_text() == before and len((test / "wav.scp").read_text().splitlines()) == 24


def test_fix_test_dropping_too_much_is_an_error(tmp_path, capsys, caplog):
    test = make_dir(tmp_path, "test", n=60)
    truncate(test / "wav.scp", 24)
    before = (test / "utt2spk").read_text()
    rc, out = run_stage1(capsys, caplog, "--fix-test", "--test", test)
    assert rc == 1
    assert "remove 36 of 60 utterance(s)" in out and "missing from wav.scp: 36" in out and "--max-drop" in out
    assert (test / "utt2spk").read_text() == before


def test_fix_dropping_too_much_of_train_is_an_error(tmp_path, capsys, caplog):
    train = make_dir(tmp_path, "train", n=60)
    truncate(train / "wav.scp", 24)
    rc, out = run_stage1(capsys, caplog, "--fix", train)
    assert rc == 1 and "remove 36 of 60 utterance(s)" in out
    assert len((train / "utt2spk").read_text().splitlines()) == 60


def test_fix_small_drop_is_done_and_listed(tmp_path, capsys, caplog):
    utts = [f"spk{i % 2}-u{i:02d}" for i in range(60)]
    train = make_dir(tmp_path, "train", n=60, text={u: "A" for u in utts})
    lines = (train / "text").read_text().splitlines()
    (train / "text").write_text("".join(line + "\n" for line in lines if not line.startswith("spk1-u07 ")))
    rc, out = run_stage1(capsys, caplog, "--fix", train)
    assert rc == 0
    assert "removing utterance 'spk1-u07': missing from text" in out and "1 of 60" in out and "text: 1" in out
    assert len((train / "utt2spk").read_text().splitlines()) == 59


# --------------------------------------------------------------------------- transcripts
@pytest.mark.parametrize("transcript,culprit", [("HELLO world", "'w'"), ("HELLO, WORLD", "','")])
def test_case_and_punctuation_do_not_grow_the_inventory(tmp_path, transcript, culprit):
    from elp.data.inventory import check_transcripts

    text = {f"spk{i % 2}-u{i:02d}": "HELLO WORLD" for i in range(4)}
    text["spk1-u03"] = transcript
    d = make_dir(tmp_path, text=text)
    with pytest.raises(ValueError) as error:
        check_transcripts(d)
    message = str(error.value)
    assert f"{d / 'text'}:4" in message and "'spk1-u03'" in message and culprit in message
    assert "normalize" in message


def test_text_normalisation_is_explicit(tmp_path):
    from elp.data.inventory import check_transcripts, normalize_text_file

    text = {"spk0-u00": "Hello, World!", "spk1-u01": "it's  FINE", "spk0-u02": "OK", "spk1-u03": "A-B"}
    d = make_dir(tmp_path, text=text)
    normalize_text_file(d)
    assert (d / "text").read_text() == "spk0-u00 HELLO WORLD\nspk0-u02 OK\nspk1-u01 IT'S FINE\nspk1-u03 A B\n"
    assert (d / "text.orig").read_text().startswith("spk0-u00 Hello, World!")
    assert check_transcripts(d)["spk0-u00"] == "HELLO WORLD"


def test_empty_transcript_fails_stage1(tmp_path, capsys, caplog):
    text = {f"spk{i % 2}-u{i:02d}": "HELLO" for i in range(4)}
    text["spk0-u02"] = ""
    d = make_dir(tmp_path, text=text)
    rc, out = run_stage1(capsys, caplog, d)
    assert rc == 1 and f"{d / 'text'}:2" in out and "'spk0-u02'" in out and "empty transcript" in out


# --------------------------------------------------------------------------- entry points
def test_stage1_prints_one_line_without_traceback(tmp_path):
    d = make_dir(tmp_path)
    set_entry(d, "spk1-u01", float_wav(tmp_path / "bad.wav", float("nan")))
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(ROOT / "recipes" / "validate_data.py"), str(d)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "spk1-u01" in errors[0] and "non-finite" in errors[0]
    assert "Traceback" not in proc.stderr


def test_user_errors_are_data_errors(tmp_path):
    from elp.data import DataError
    from elp.data.kaldi_dir import validate_data_dir

    d = make_dir(tmp_path)
    set_entry(d, "spk1-u01", "sox a.wav -t wav - reverse |")
    with pytest.raises(DataError):
        validate_data_dir(d)


# --------------------------------------------------------------------------- I/O (issue 11)
def test_lengths_are_read_once_and_trusted_while_fresh(tmp_path):
    from elp.data.kaldi_dir import utterance_lengths, validate_data_dir

    d = make_dir(tmp_path)
    assert validate_data_dir(d) == {f"spk{i % 2}-u{i:02d}": 800 for i in range(4)}
    for wav in (tmp_path / "audio" / "train").iterdir():
        wav.unlink()  # later stages must not open audio to get lengths
    assert utterance_lengths(d) == {f"spk{i % 2}-u{i:02d}": 800 for i in range(4)}
    wav_scp = d / "wav.scp"
    os.utime(wav_scp, ns=(wav_scp.stat().st_mtime_ns + 10**9,) * 2)  # wav.scp edited afterwards
    with pytest.raises(ValueError, match="audio not found"):
        utterance_lengths(d)


def test_ark_length_from_header_and_truncated_ark(tmp_path):
    import kaldiio

    from elp.data.audio import audio_info, check_audio

    samples = (np.random.default_rng(0).uniform(-0.3, 0.3, 4000) * 32767).astype(np.int16)
    kaldiio.save_ark(str(tmp_path / "a.ark"), {"u1": (16000, samples)}, scp=str(tmp_path / "a.scp"))
    entry = (tmp_path / "a.scp").read_text().split()[1]
    data = (tmp_path / "a.ark").read_bytes()
    (tmp_path / "a.ark").write_bytes(data[:-2000])  # the last 1000 frames are gone
    assert audio_info(entry).num_frames == 4000  # from the RIFF header, nothing else read
    with pytest.raises(ValueError, match="declares 4000 frames but the file holds 3000"):
        check_audio(entry, utt="u1")


def test_ark_pickle_entry_is_never_unpickled(tmp_path):
    """kaldiio unpickles ``PKL`` ark entries; the audio reader must refuse them unread."""
    import pickle

    from elp.data.audio import read_audio

    canary = tmp_path / "CANARY"

    class Evil:
        def __reduce__(self):
            return (open, (str(canary), "w"))

    (tmp_path / "x.ark").write_bytes(b"u1 PKL" + pickle.dumps(Evil()))
    with pytest.raises(ValueError, match="not a waveform"):
        read_audio(f"{tmp_path / 'x.ark'}:3")
    assert not canary.exists()


def test_unseen_test_character_caught_for_bpe(tmp_path):
    from elp.data.inventory import BPETokenizer, check_transcript_coverage

    BPETokenizer.train(["YES NO UP", "GO DOWN LEFT", "NINE ONE"] * 5, tmp_path / "lang", vocab_size=30)
    text = {"spk0-u00": "YES NO", "spk1-u01": "GO UP", "spk0-u02": "NINE", "spk1-u03": "ONE"}
    check_transcript_coverage(tmp_path / "lang", [make_dir(tmp_path, "dev", text=text)])
    test = make_dir(tmp_path, "test", text=dict(text, **{"spk0-u02": "NINE ZQ"}))
    with pytest.raises(ValueError) as error:
        check_transcript_coverage(tmp_path / "lang", [test])
    assert f"{test / 'text'}:2" in str(error.value) and "'spk0-u02' has 'Q', 'Z'" in str(error.value)


def test_unseen_speaker_in_sv_validation_set(tmp_path):
    from elp.data.inventory import LabelMap, check_label_coverage

    LabelMap(["spk0"]).save(tmp_path / "lang")
    cv = make_dir(tmp_path, "train_cv")
    with pytest.raises(ValueError, match=r"utt2spk:3: utt 'spk1-u01' has 'spk1'"):
        check_label_coverage(tmp_path / "lang", [cv], label_file="utt2spk", what="speakers")
