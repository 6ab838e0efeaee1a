"""``wav.scp`` pipe entries: standard decoder pipes read natively, other commands only by opt-in.

No test needs flac, sox, sph2pipe or ffmpeg: native pipes read their files with soundfile, and
the opt-in shell path runs ``cat``.
"""
from __future__ import annotations

import logging
import subprocess
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from elp.data.audio import audio_info, check_audio, num_samples, read_audio
from elp.data.errors import AudioNotFoundError, UndecodableAudioError, UnsafeEntryError
from elp.data.kaldi_dir import (DataDirError, Segment, data_dir_to_dict, utterance_lengths, validate_data_dir,
                                write_data_dir)
import elp.data.pipes
from elp.data.pipes import NativeRead, parse_pipe, pipe_kind


def tone(path, seconds=0.5, rate=16000, channels=1, subtype=None, fmt=None):
    """A channel-distinct signal: channel c is a sine of 200 (c + 1) Hz at amplitude 0.1 (c + 1)."""
    t = np.arange(int(round(seconds * rate))) / rate
    samples = np.stack([0.1 * (c + 1) * np.sin(2 * np.pi * 200 * (c + 1) * t) for c in range(channels)], axis=1)
    soundfile.write(str(path), samples.astype(np.float32), rate, subtype=subtype, format=fmt)
    return str(path)


# --------------------------------------------------------------------------- the parser
@pytest.mark.parametrize("entry, expected", [
    ("flac -c -d -s /c/a.flac |", NativeRead("/c/a.flac")),
    ("/usr/bin/flac --decode --stdout --silent /c/a.flac |", NativeRead("/c/a.flac")),
    ("flac -dcs /c/a.flac|", NativeRead("/c/a.flac")),
    ("sox /c/a.wav -t wav - |", NativeRead("/c/a.wav")),
    ("sox -t flac /c/a.flac -t wav -r 16000 -c 1 -b 16 - |", NativeRead("/c/a.flac", rate=16000)),
    ("sox /c/a.wav -t wav - rate 16k |", NativeRead("/c/a.wav", rate=16000)),
    ("sox /c/a.wav -t wav - rate -v 8000 remix 2 |", NativeRead("/c/a.wav", channel=1, rate=8000)),
    ("sox /c/a.wav -t wav - channels 1 |", NativeRead("/c/a.wav")),
    ("sox -t wav /c/a.wav -t wav - speed 0.9 |", NativeRead("/c/a.wav", speed=0.9)),
    ("sph2pipe -f wav /c/a.sph |", NativeRead("/c/a.sph")),
    ("/opt/sph2pipe -f wav -p -c 2 /c/a.sph |", NativeRead("/c/a.sph", channel=1)),
    ("ffmpeg -i /c/a.m4a -ar 16000 -ac 1 -f wav - |", NativeRead("/c/a.m4a", rate=16000)),
    ("ffmpeg -hide_banner -loglevel error -i '/c/my talk.ogg' -f wav -acodec pcm_s16le pipe:1 |",
     NativeRead("/c/my talk.ogg")),
    ("cat /c/a.wav |", NativeRead("/c/a.wav")),
    ("flac -c -d -s /c/a.flac | sox -t wav - -t wav - speed 1.1 |", NativeRead("/c/a.flac", speed=1.1)),
    ("sph2pipe -f wav -c 1 /c/a.sph | sox -t wav - -t wav - rate 8k |", NativeRead("/c/a.sph", channel=0, rate=8000)),
])
def test_standard_pipes_parse(entry, expected):
    assert parse_pipe(entry) == expected
    assert pipe_kind(entry) == "native"


@pytest.mark.parametrize("entry", [
    "gunzip -c /c/a.wav.gz |",                    # another program
    "flac -d /c/a.flac |",                         # no -c: writes a file, not stdout
    "sox /c/a.wav -t wav /tmp/out.wav |",          # output is a file
    "sox /c/a.wav -t raw - |",                     # not WAV
    "sox /c/a.wav -t wav - reverse |",             # an effect elp does not apply
    "sox /c/a.wav -t wav - remix 1,2 |",           # a mix elp does not do
    "sph2pipe -f sph /c/a.sph |",                  # SPHERE out
    "sph2pipe -f wav -t 1:2 /c/a.sph |",           # time ranges
    "ffmpeg -i /c/a.m4a -f mp3 - |",               # not WAV
    "cat $CORPUS/a.wav |",                         # a variable
    "cat /c/*.wav |",                              # a glob
    "cat ~/a.wav |",                               # a home dir
    "cat /c/a.wav; rm -rf /tmp/x |",              # a second command
    "cat /c/a.wav > /tmp/x |",                     # a redirection
    "cat /c/a.wav | gzip |",                       # a later stage that is not sox
    "sox - -t wav - |",                            # reads stdin
])
def test_other_commands_are_shell_pipes(entry):
    assert parse_pipe(entry) is None
    assert pipe_kind(entry) == "shell"


@pytest.mark.parametrize("entry", ["| cat a.wav", "cat a.wav |:0", "a.wav|b.wav", "|"])
def test_pipes_elsewhere_are_refused(entry):
    assert pipe_kind(entry) == "refused"
    with pytest.raises(UnsafeEntryError, match="convert the audio to files first"):
        read_audio(entry, allow_shell_pipes=True)


# --------------------------------------------------------------------------- native reads
def test_flac_pipe_reads_the_file_natively(tmp_path):
    path = tone(tmp_path / "a.flac")
    entry = f"flac -c -d -s {path} |"
    torch.testing.assert_close(read_audio(entry), read_audio(path))
    assert audio_info(entry) == audio_info(path)
    assert num_samples(entry, segment=(0.1, 0.3)) == read_audio(entry, segment=(0.1, 0.3)).shape[0] == 3200


def test_cat_and_quoted_paths(tmp_path):
    path = tone(tmp_path / "my talk.wav")  # a path with a space is only usable quoted inside a pipe
    expected = torch.from_numpy(soundfile.read(path, dtype="float32")[0])
    torch.testing.assert_close(read_audio(f"cat '{path}' |"), expected)
    torch.testing.assert_close(read_audio(f'sox "{path}" -t wav - |'), expected)


def test_channel_selection(tmp_path):
    path = tone(tmp_path / "st.wav", channels=2)
    left, right = soundfile.read(path, dtype="float32")[0].T
    torch.testing.assert_close(read_audio(f"sox {path} -t wav - remix 2 |"), torch.from_numpy(right))
    torch.testing.assert_close(read_audio(f"sox {path} -t wav - remix 1 |"), torch.from_numpy(left))
    torch.testing.assert_close(read_audio(f"sox {path} -t wav -c 1 - |"), torch.from_numpy((left + right) / 2))
    with pytest.raises(ValueError, match="selects channel 3 but .* has 2"):
        read_audio(f"sox {path} -t wav - remix 3 |", utt="u1")


def test_uncompressed_sphere_through_sph2pipe(tmp_path):
    path = tone(tmp_path / "a.sph", rate=8000, channels=2, fmt="NIST", subtype="PCM_16")
    assert Path(path).read_bytes()[:7] == b"NIST_1A"
    stereo = soundfile.read(path, dtype="float32")[0]
    waveform = read_audio(f"sph2pipe -f wav -p -c 2 {path} |", target_sr=8000)
    torch.testing.assert_close(waveform, torch.from_numpy(stereo[:, 1]))
    assert audio_info(f"sph2pipe -f wav -p -c 2 {path} |").num_channels == 1
    assert read_audio(f"sph2pipe -f wav -p -c 2 {path} |").shape[0] == 8000  # 0.5 s at 16 kHz


def test_shorten_sphere_and_undecodable_formats_say_what_to_do(tmp_path):
    header = (b"NIST_1A\n   1024\nchannel_count -i 1\nsample_rate -i 8000\nsample_n_bytes -i 2\n"
              b"sample_coding -s26 pcm,embedded-shorten-v2.00\nend_head\n")
    shorten = tmp_path / "sw.sph"
    shorten.write_bytes(header.ljust(1024, b" ") + b"\x00" * 64)
    with pytest.raises(UndecodableAudioError, match="shorten-compressed NIST SPHERE.*allow_shell_pipes"):
        read_audio(f"sph2pipe -f wav -p {shorten} |", utt="sw1")
    m4a = tmp_path / "a.m4a"
    m4a.write_bytes(b"\x00\x00\x00\x20ftypM4A " + bytes(200))
    with pytest.raises(UndecodableAudioError, match="utt 'u1'.*cannot decode it.*allow_shell_pipes"):
        audio_info(f"ffmpeg -i {m4a} -ar 16000 -ac 1 -f wav - |", utt="u1")


def test_missing_file_of_a_pipe_names_entry_and_path(tmp_path):
    with pytest.raises(AudioNotFoundError, match=r"utt 'u1': wav.scp entry 'flac -c -d -s /nope.flac \|' .*"
                                                 r"audio not found: '/nope.flac'"):
        read_audio("flac -c -d -s /nope.flac |", utt="u1")


def test_rate_conversion_lengths_are_exact_and_segments_seek(tmp_path):
    path = tone(tmp_path / "a.wav", seconds=1.0, rate=16000)
    entry = f"sox {path} -t wav -r 8000 - |"
    info = audio_info(entry)
    assert (info.sample_rate, info.num_frames) == (8000, 8000)
    whole = read_audio(entry, target_sr=8000)
    assert whole.shape[0] == 8000
    for segment in [(0.0, 0.25), (0.3, 0.55), (0.7, -1)]:
        part = read_audio(entry, target_sr=8000, segment=segment)
        start = int(round(segment[0] * 8000))
        stop = 8000 if segment[1] < 0 else int(round(segment[1] * 8000))
        assert part.shape[0] == num_samples(entry, 8000, segment) == stop - start
        # a segment read alone equals the same samples of the whole resampled recording
        torch.testing.assert_close(part[8:-8], whole[start:stop][8:-8], atol=2e-3, rtol=0)
    assert read_audio(entry, segment=(0.3, 0.55)).shape[0] == num_samples(entry, segment=(0.3, 0.55)) == 4000


def test_speed_perturbation_scales_the_length(tmp_path):
    path = tone(tmp_path / "a.wav", seconds=0.99)
    for factor in (0.9, 1.1):
        entry = f"sox -t wav {path} -t wav - speed {factor} |"
        expected = int(np.ceil(15840 / factor - 1e-9))
        assert num_samples(entry) == read_audio(entry).shape[0] == expected
    fast = read_audio(f"sox -t wav {path} -t wav - speed 1.1 |")
    spectrum = np.abs(np.fft.rfft(fast.numpy()))
    assert abs(np.argmax(spectrum) * 16000 / len(fast) - 220) < 3  # 200 Hz played 1.1 times faster


# --------------------------------------------------------------------------- data dirs
def test_librispeech_like_dir_with_segments_and_flac_pipes(tmp_path):
    """Recordings behind ``flac -c -d -s`` pipes, utterances cut by ``segments``: validation
    measures durations natively, reading seeks to each segment."""
    recordings = {f"spk{s}-ch0": tone(tmp_path / f"spk{s}.flac", seconds=1.0) for s in (1, 2)}
    segments = {f"spk{s}-ch0-{i}": Segment(f"spk{s}-ch0", 0.25 * i, 0.25 * i + 0.2) for s in (1, 2) for i in range(3)}
    d = write_data_dir(tmp_path / "data", wav_scp={r: f"flac -c -d -s {p} |" for r, p in recordings.items()},
                       segments=segments, utt2spk={u: u.split("-")[0] for u in segments},
                       text={u: "HELLO" for u in segments})
    assert validate_data_dir(d) == {u: 3200 for u in segments}
    items = data_dir_to_dict(d)
    item = items["spk2-ch0-1"]
    part = read_audio(item["wav"], segment=(item["start"], item["end"]))
    torch.testing.assert_close(part, read_audio(recordings["spk2-ch0"])[4000:7200])
    (d / "utt2num_samples").unlink()
    assert utterance_lengths(d) == {u: 3200 for u in segments}


def test_shell_pipes_need_the_opt_in(tmp_path, caplog):
    path = tone(tmp_path / "a.wav", seconds=0.5)
    canary = tmp_path / "CANARY"
    entries = {"u1": path, "u2": f"cat {path} | cat |", "u3": f"touch {canary}; cat {path} |"}
    d = write_data_dir(tmp_path / "data", wav_scp=entries)
    with pytest.raises(DataDirError) as error:
        validate_data_dir(d)
    lines = str(error.value).splitlines()
    assert lines[0] == f"{d}: 2 problems"
    assert lines[1].startswith(f"  {d / 'wav.scp'}:2: utt 'u2': entry 'cat {path} | cat |' is a command")
    assert "allow_shell_pipes" in lines[1] and "2 such entries" in lines[1]
    assert lines[2].startswith(f"  {d / 'wav.scp'}:3: utt 'u3'")
    with pytest.raises(UnsafeEntryError, match="allow_shell_pipes"):
        read_audio(entries["u2"])
    assert not canary.exists()  # nothing ran


def test_shell_pipe_runs_with_the_opt_in_and_is_logged_once(tmp_path, caplog):
    path = tone(tmp_path / "a.wav", seconds=0.5)
    recording = f"cat {path} | cat |"  # not a known form: runs with sh -c
    segments = {"r-a": Segment("r", 0.0, 0.2), "r-b": Segment("r", 0.2, -1)}
    d = write_data_dir(tmp_path / "data", wav_scp={"r": recording}, segments=segments)
    caplog.set_level(logging.INFO, logger="elp.data.pipes")
    assert validate_data_dir(d, allow_shell_pipes=True) == {"r-a": 3200, "r-b": 4800}
    whole = read_audio(path)
    part = read_audio(recording, segment=(0.2, -1), allow_shell_pipes=True)
    torch.testing.assert_close(part, whole[3200:])
    assert check_audio(recording, scan_samples=True, allow_shell_pipes=True).num_frames == 8000
    assert sum("running wav.scp commands with a shell" in r.getMessage() for r in caplog.records) <= 1


def test_failing_shell_pipe_names_the_command():
    with pytest.raises(ValueError, match=r"utt 'u9': wav.scp command 'cat /nope.wav \| cat' failed .*No such file"):
        read_audio("cat /nope.wav | cat |", utt="u9", allow_shell_pipes=True)


def test_stage1_names_the_opt_in_and_accepts_it(tmp_path, capsys):
    import importlib.util

    import elp

    root = Path(elp.__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("validate_data_cli", root / "recipes" / "validate_data.py")
    stage1 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage1)
    path = tone(tmp_path / "a.wav", seconds=0.5)
    d = write_data_dir(tmp_path / "data", wav_scp={"u1": f"flac -c -d -s {path} |", "u2": f"cat {path} | cat |"})
    assert stage1.main([str(d)]) == 1
    err = capsys.readouterr().err
    assert f"{d / 'wav.scp'}:2: utt 'u2'" in err and "--allow-shell-pipes" in err and "allow_shell_pipes: true" in err
    assert "Traceback" not in err
    assert stage1.main([str(d), "--allow-shell-pipes"]) == 0
    assert (d / "utt2num_samples").read_text() == "u1 8000\nu2 8000\n"


def test_run_option_reaches_the_dataset(tmp_path):
    from elp.tasks.base import Task
    from elp.train.recipe import RUN_DEFAULTS, make_dataset

    assert RUN_DEFAULTS["allow_shell_pipes"] is False
    path = tone(tmp_path / "a.wav", seconds=0.5)
    d = write_data_dir(tmp_path / "data", wav_scp={"u1": f"cat {path} | cat |"})
    validate_data_dir(d, allow_shell_pipes=True)
    hparams = dict(RUN_DEFAULTS, task=Task(), inventory=None)
    with pytest.raises(UnsafeEntryError, match="allow_shell_pipes"):
        make_dataset(hparams, str(d), "test")[0]
    hparams["allow_shell_pipes"] = True
    assert make_dataset(hparams, str(d), "test")[0]["sig"].shape == (8000,)


def test_undecodable_file_of_a_known_form_runs_the_command_with_the_opt_in(tmp_path, monkeypatch):
    """An m4a behind ``ffmpeg ... |``: soundfile cannot decode it, so with the opt-in the command
    itself runs (here a stand-in ``ffmpeg`` on PATH that writes a WAV)."""
    wav = tone(tmp_path / "decoded.wav", seconds=0.25)
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "ffmpeg").write_text(f"#!/bin/sh\ncat {wav}\n")
    (tools / "ffmpeg").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tools}{os.pathsep}{os.environ['PATH']}")
    m4a = tmp_path / "a.m4a"
    m4a.write_bytes(b"\x00\x00\x00\x20ftypM4A " + bytes(200))
    entry = f"ffmpeg -i {m4a} -ar 16000 -ac 1 -f wav - |"
    with pytest.raises(UndecodableAudioError, match="allow_shell_pipes"):
        read_audio(entry)
    assert read_audio(entry, allow_shell_pipes=True).shape == (4000,)


# --------------------------------------------------------------------------- training on such dirs
def kaldi_librispeech_form(data_dir: Path, command: str = "flac -c -d -s {} |") -> None:
    """Rewrite a data dir as Kaldi's LibriSpeech recipe writes one: recordings of two utterances
    each in FLAC behind ``flac -c -d -s PATH |`` entries, utterances cut by ``segments``."""
    from elp.data.kaldi_dir import read_data_dir

    data = read_data_dir(data_dir)
    utts = data.utterances
    wav_scp, segments = {}, {}
    for pair in range(0, len(utts), 2):
        parts = [read_audio(data.wav_scp[u]).numpy() for u in utts[pair:pair + 2]]
        reco = f"reco{pair:02d}"
        path = data_dir / f"{reco}.flac"
        soundfile.write(path, np.concatenate(parts), 16000, subtype="PCM_16")
        wav_scp[reco] = command.format(path)
        start = 0.0
        for utt, part in zip(utts[pair:pair + 2], parts):
            segments[utt] = Segment(reco, start, start + len(part) / 16000)
            start += len(part) / 16000
    (data_dir / "utt2num_samples").unlink()
    write_data_dir(data_dir, wav_scp=wav_scp, segments=segments, utt2spk=data.utt2spk,
                   **{name: table for name, table in data.mappings().items()
                      if name not in ("wav_scp", "segments", "utt2spk", "spk2utt", "utt2num_samples")})


def train_one_epoch(recipe: Path, *args: str):
    from recipe_fixtures import fit

    return fit(recipe, "--number_of_epochs", "1", "--batch_size", "4", "--method", "l_only",
               "--ckpt_interval_steps", "0", *args)


def test_a_kaldi_librispeech_dir_with_segments_trains_as_it_is(tmp_path, monkeypatch):
    from recipe_fixtures import make_recipe

    recipe = make_recipe(tmp_path)
    for name in ("train", "devel", "test"):
        kaldi_librispeech_form(recipe / "data" / name)
        assert validate_data_dir(recipe / "data" / name)  # stage 1, natively: no shell, no conversion
    assert "flac -c -d -s" in (recipe / "data" / "train" / "wav.scp").read_text()
    monkeypatch.chdir(recipe)
    calls = []
    real_run = subprocess.run
    monkeypatch.setattr(elp.data.pipes.subprocess, "run",  # record any command a data file would start
                        lambda *a, **k: calls.append(a) or real_run(*a, **k))
    hparams, brain = train_one_epoch(recipe, "--tag", "kaldi")
    assert [c for c in calls if c and c[0][:2] == ["sh", "-c"]] == []  # no shell: every file was read natively
    assert brain.train_stats["loss"] > 0 and torch.isfinite(torch.tensor(brain.train_stats["loss"]))


def test_an_unknown_pipe_trains_only_with_the_opt_in(tmp_path, monkeypatch):
    from recipe_fixtures import make_recipe

    recipe = make_recipe(tmp_path)
    for name in ("train", "devel", "test"):
        kaldi_librispeech_form(recipe / "data" / name, command="cat {} | cat |")  # runs only with sh -c
        with pytest.raises(DataDirError, match="allow_shell_pipes"):
            validate_data_dir(recipe / "data" / name)
        assert validate_data_dir(recipe / "data" / name, allow_shell_pipes=True)
    monkeypatch.chdir(recipe)
    with pytest.raises(UnsafeEntryError, match="allow_shell_pipes"):
        train_one_epoch(recipe, "--tag", "refused")
    hparams, brain = train_one_epoch(recipe, "--tag", "opted_in", "--allow_shell_pipes", "true")
    assert torch.isfinite(torch.tensor(brain.train_stats["loss"]))
