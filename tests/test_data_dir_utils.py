"""``elp data`` / :mod:`elp.data.dirs`: outputs pass elp's validation and Kaldi's data-dir rules.

:func:`kaldi_rule_violations` restates the rules of Kaldi's ``utils/validate_data_dir.sh``
that a data-dir tool can break (C-locale sorted unique keys, ``spk2utt`` equal to the
inversion of ``utt2spk``, ``utt2spk`` in the same order sorted by speaker as by utterance,
the same utterances in every per-utterance file, ``segments`` naming recordings of
``wav.scp`` and every recording used) independently of elp's own validator.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from elp.cli import main
from elp.data.audio import read_audio
from elp.data.dirs import combine_dirs, copy_dir, perturb_speed, subset_dir
from elp.data.kaldi_dir import (DataDirError, Segment, Trial, read_data_dir, utterance_lengths,
                                validate_data_dir, write_data_dir)
from elp.data.pipes import parse_pipe


def kaldi_rule_violations(data_dir: Path) -> list[str]:
    """What Kaldi's ``utils/validate_data_dir.sh`` would reject in ``data_dir`` (empty: nothing)."""
    problems = []

    def rows(name):
        path = data_dir / name
        if not path.exists():
            return None
        lines = path.read_bytes().split(b"\n")
        if lines[-1] != b"":
            problems.append(f"{name}: no final newline")
        return [line.decode("utf-8").split(maxsplit=1) for line in lines[:-1]]

    tables = {}
    for name in ("wav.scp", "utt2spk", "spk2utt", "text", "segments", "utt2label", "utt2num_samples"):
        table = rows(name)
        if table is None:
            continue
        keys = [row[0] for row in table]
        if [k.encode() for k in keys] != sorted(k.encode() for k in keys) or len(set(keys)) != len(keys):
            problems.append(f"{name}: not sorted (LC_ALL=C) and unique")
        if any(len(row) < 2 for row in table):
            problems.append(f"{name}: a line without a value")
        tables[name] = {row[0]: row[1] for row in table if len(row) == 2}
    utt2spk = tables["utt2spk"]
    inverted = defaultdict(list)
    for utt in sorted(utt2spk, key=str.encode):
        inverted[utt2spk[utt]].append(utt)
    if {spk: " ".join(u) for spk, u in inverted.items()} != tables["spk2utt"]:
        problems.append("spk2utt does not equal utt2spk_to_spk2utt.pl < utt2spk")
    by_speaker = [utt for utt, _ in sorted(utt2spk.items(), key=lambda kv: (kv[1].encode(), kv[0].encode()))]
    if by_speaker != sorted(utt2spk, key=str.encode):
        problems.append("utt2spk is not in sorted order when sorted first on speaker-id (speaker ids must prefix "
                        "utterance ids)")
    utts = set(utt2spk)
    for name in ("text", "utt2label", "utt2num_samples", "segments"):
        if name in tables and set(tables[name]) != utts:
            problems.append(f"{name}: utterances differ from utt2spk")
    if "segments" in tables:
        recordings = {value.split()[0] for value in tables["segments"].values()}
        if recordings - set(tables["wav.scp"]):
            problems.append("segments name recordings absent from wav.scp")
        if set(tables["wav.scp"]) - recordings:
            problems.append("wav.scp has recordings no segment uses")
        for value in tables["segments"].values():
            _, start, end = value.split()
            if float(start) < 0 or (float(end) != -1 and float(end) <= float(start)):
                problems.append(f"segments: bad times {value!r}")
    elif set(tables["wav.scp"]) != utts:
        problems.append("wav.scp: utterances differ from utt2spk")
    return problems


def tone(path: Path, seconds: float, frequency: float = 200.0, rate: int = 16000) -> str:
    t = np.arange(int(round(seconds * rate))) / rate
    soundfile.write(str(path), (0.1 * np.sin(2 * np.pi * frequency * t)).astype(np.float32), rate)
    return str(path)


@pytest.fixture
def corpus(tmp_path) -> Path:
    """Speakers ``spk1``..``spk3``, two utterances each (0.4, 0.5, ..., 0.9 s), with text and labels."""
    utts = {f"spk{s}-u{i}": 0.3 + 0.1 * (2 * (s - 1) + i) for s in (1, 2, 3) for i in (1, 2)}
    wav_scp = {utt: tone(tmp_path / f"{utt}.flac", seconds) for utt, seconds in utts.items()}
    return write_data_dir(tmp_path / "data" / "train", wav_scp=wav_scp, utt2spk={u: u.split("-")[0] for u in utts},
                          text={u: "HELLO WORLD" for u in utts}, utt2label={u: u[-1] for u in utts})


def check_both_validators(data_dir: Path) -> dict[str, int]:
    assert kaldi_rule_violations(data_dir) == []
    return validate_data_dir(data_dir)


def test_the_kaldi_rule_checker_catches_a_speaker_order_violation(corpus, tmp_path):
    assert kaldi_rule_violations(corpus) == []
    out = copy_dir(corpus, tmp_path / "bad", utt_prefix="a-", spk_prefix="z-")  # fine: one prefix for all
    assert kaldi_rule_violations(out) == []
    bad = write_data_dir(tmp_path / "bad2", wav_scp={"a-1": "/x.wav", "b-1": "/y.wav"},
                         utt2spk={"a-1": "spkB", "b-1": "spkA"})
    assert any("sorted first on speaker-id" in p for p in kaldi_rule_violations(bad))


@pytest.mark.parametrize("argv, expected", [
    (["--first", "2"], ["spk1-u1", "spk1-u2"]),
    (["--last", "1"], ["spk3-u2"]),
    (["--random", "3", "--seed", "7"], None),
])
def test_subset_by_count(corpus, tmp_path, argv, expected):
    out = tmp_path / "subset"
    assert main(["data", "subset", str(corpus), str(out), *argv]) == 0
    utts = read_data_dir(out).utterances
    if expected is None:
        assert len(utts) == 3 and set(utts) <= set(read_data_dir(corpus).utterances)
        again = tmp_path / "again"
        assert main(["data", "subset", str(corpus), str(again), *argv]) == 0
        assert read_data_dir(again).utterances == utts  # the seed makes it reproducible
    else:
        assert utts == expected
    lengths = check_both_validators(out)
    assert set(lengths) == set(utts)


def test_subset_by_lists(corpus, tmp_path):
    (tmp_path / "spk.list").write_text("spk2\nspk3\n")
    (tmp_path / "utt.list").write_text("spk1-u2 some comment\nspk3-u1\n")
    assert main(["data", "subset", str(corpus), str(tmp_path / "a"), "--spk-list", str(tmp_path / "spk.list")]) == 0
    assert read_data_dir(tmp_path / "a").utterances == ["spk2-u1", "spk2-u2", "spk3-u1", "spk3-u2"]
    assert main(["data", "subset", str(corpus), str(tmp_path / "b"), "--utt-list", str(tmp_path / "utt.list")]) == 0
    assert read_data_dir(tmp_path / "b").utterances == ["spk1-u2", "spk3-u1"]
    for out in ("a", "b"):
        check_both_validators(tmp_path / out)


def test_subset_errors_are_one_line(corpus, tmp_path, capsys):
    (tmp_path / "utt.list").write_text("nobody-u1\n")
    assert main(["data", "subset", str(corpus), str(tmp_path / "x"), "--utt-list", str(tmp_path / "utt.list")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'nobody-u1'" in err and "fix the utterance list" in err
    assert main(["data", "subset", str(corpus), str(tmp_path / "x"), "--first", "99"]) == 1
    assert "cannot take 99 of the 6" in capsys.readouterr().err
    assert main(["data", "subset", str(tmp_path / "nope"), str(tmp_path / "x"), "--first", "1"]) == 1
    assert "not a data directory" in capsys.readouterr().err


def test_combine_and_copy_with_prefixes(corpus, tmp_path):
    assert main(["data", "copy", str(corpus), str(tmp_path / "rev"), "--utt-prefix", "rev1-",
                 "--spk-prefix", "rev1-"]) == 0
    copy = read_data_dir(tmp_path / "rev")
    assert copy.utt2spk["rev1-spk2-u1"] == "rev1-spk2" and copy.text["rev1-spk2-u1"] == "HELLO WORLD"
    assert copy.wav_scp["rev1-spk2-u1"] == read_data_dir(corpus).wav_scp["spk2-u1"]
    check_both_validators(tmp_path / "rev")
    assert main(["data", "combine", str(tmp_path / "all"), str(corpus), str(tmp_path / "rev")]) == 0
    combined = read_data_dir(tmp_path / "all")
    assert len(combined.utterances) == 12 and combined.utt2label is not None
    assert set(check_both_validators(tmp_path / "all")) == set(combined.utterances)


def test_combine_refuses_a_contradiction(corpus, tmp_path):
    other = write_data_dir(tmp_path / "other", wav_scp={"spk1-u1": "/elsewhere.wav"}, utt2spk={"spk1-u1": "spk1"})
    with pytest.raises(DataDirError, match="'spk1-u1' has two different values in wav_scp"):
        combine_dirs([corpus, other], tmp_path / "x")


def test_copy_with_segments_keeps_recordings(tmp_path):
    reco = tone(tmp_path / "r.flac", 1.0)
    src = write_data_dir(tmp_path / "seg", wav_scp={"r": f"flac -c -d -s {reco} |"},
                         segments={"s-a": Segment("r", 0.0, 0.4), "s-b": Segment("r", 0.5, -1)},
                         utt2spk={"s-a": "s", "s-b": "s"}, trials=[Trial("s-a", "s-b", True)])
    out = copy_dir(src, tmp_path / "copy", utt_prefix="x-", spk_prefix="x-")
    data = read_data_dir(out)
    assert data.segments["x-s-b"] == Segment("r", 0.5, -1) and list(data.wav_scp) == ["r"]
    assert data.trials == [Trial("x-s-a", "x-s-b", True)]
    assert check_both_validators(out) == {"x-s-a": 6400, "x-s-b": 8000}


def test_filter_by_duration(corpus, tmp_path):
    assert main(["data", "filter", str(corpus), str(tmp_path / "f"), "--min-seconds", "0.45",
                 "--max-seconds", "0.75"]) == 0
    kept = check_both_validators(tmp_path / "f")
    assert sorted(kept) == ["spk1-u2", "spk2-u1", "spk2-u2"]  # 0.5, 0.6, 0.7 s of 0.4 to 0.9 s
    assert all(7200 <= n <= 12000 for n in kept.values())


def test_perturb_speed_like_kaldi(corpus, tmp_path):
    assert main(["data", "perturb-speed", str(corpus), str(tmp_path / "sp"), "--factors", "0.9", "1.0", "1.1"]) == 0
    out = tmp_path / "sp"
    data = read_data_dir(out)
    assert len(data.utterances) == 18
    assert data.utt2spk["sp0.9-spk1-u1"] == "sp0.9-spk1" and data.text["sp1.1-spk3-u2"] == "HELLO WORLD"
    assert data.utt2label["sp0.9-spk1-u2"] == "2"
    entry = data.wav_scp["sp1.1-spk1-u1"]
    assert parse_pipe(entry).speed == 1.1  # read natively, no shell
    lengths = check_both_validators(out)
    for utt in read_data_dir(corpus).utterances:
        n = lengths[utt]
        assert lengths[f"sp0.9-{utt}"] == int(np.ceil(n / 0.9 - 1e-9))
        assert lengths[f"sp1.1-{utt}"] == int(np.ceil(n / 1.1 - 1e-9))
    slow = read_audio(data.wav_scp["sp0.9-spk1-u1"])
    spectrum = np.abs(np.fft.rfft(slow.numpy()))
    assert abs(np.argmax(spectrum) * 16000 / len(slow) - 180) < 4  # 200 Hz at 0.9 speed


def test_perturb_speed_of_librispeech_like_pipes_with_segments(tmp_path):
    reco = tone(tmp_path / "r.flac", 1.0)
    src = write_data_dir(tmp_path / "seg", wav_scp={"s-r": f"flac -c -d -s {reco} |"},
                         segments={"s-r-a": Segment("s-r", 0.0, 0.45), "s-r-b": Segment("s-r", 0.45, 0.9)},
                         utt2spk={"s-r-a": "s", "s-r-b": "s"})
    out = perturb_speed(src, tmp_path / "sp", [0.9])
    data = read_data_dir(out)
    assert data.wav_scp == {"sp0.9-s-r": f"flac -c -d -s {reco} | sox -t wav - -t wav - speed 0.9 |"}
    assert data.segments["sp0.9-s-r-b"] == Segment("sp0.9-s-r", 0.5, 1.0)
    assert check_both_validators(out) == {"sp0.9-s-r-a": 8000, "sp0.9-s-r-b": 8000}
    part = read_audio(data.wav_scp["sp0.9-s-r"], segment=(0.5, 1.0))
    whole = read_audio(data.wav_scp["sp0.9-s-r"])
    torch.testing.assert_close(part[16:-16], whole[8000:16000][16:-16], atol=2e-3, rtol=0)
    assert utterance_lengths(out) == {"sp0.9-s-r-a": 8000, "sp0.9-s-r-b": 8000}


def test_perturb_speed_refuses_archive_entries(tmp_path, capsys):
    src = write_data_dir(tmp_path / "ark", wav_scp={"u": "/c/feats.ark:12"})
    assert main(["data", "perturb-speed", str(src), str(tmp_path / "sp"), "--factors", "1.1"]) == 1
    err = capsys.readouterr().err
    assert "/c/feats.ark:12" in err and "sox cannot read" in err and "copy the audio to files" in err
    assert subset_dir(src, first=1).utterances == ["u"]
