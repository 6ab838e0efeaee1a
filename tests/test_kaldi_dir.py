"""Kaldi data dirs: read/write round trips, validation errors and fixes, SpeechBrain dict."""
import logging
import os
from pathlib import Path

import pytest
from data_fixtures import write_noise

from elp.data.kaldi_dir import (DataDir, DataDirError, Segment, Trial, combine_data_dirs,
                                data_dir_to_dict, read_data_dir, read_mapping, read_segments,
                                read_spk2utt, read_trials, read_utt2num_samples, subset_data_dir,
                                utt2spk_to_spk2utt, validate_data_dir, write_data_dir, write_mapping,
                                write_segments, write_trials)


@pytest.fixture
def audio(tmp_path):
    """Three 0.1 s 16 kHz wavs keyed by utterance."""
    return {utt: str(write_noise(tmp_path / "wav" / f"{utt}.wav", seconds=0.1, seed=i))
            for i, utt in enumerate(["spkA-u1", "spkA-u2", "spkB-u1"])}


@pytest.fixture
def data_dir(tmp_path, audio):
    """A valid data dir over ``audio`` with text and labels."""
    return write_data_dir(
        tmp_path / "data" / "train",
        wav_scp=audio,
        utt2spk={u: u.split("-")[0] for u in audio},
        text={"spkA-u1": "HELLO WORLD", "spkA-u2": "GOOD BYE", "spkB-u1": "YES"},
        utt2label={"spkA-u1": "neu", "spkA-u2": "ang", "spkB-u1": "neu"},
    )


def lines(path):
    return Path(path).read_text().splitlines()


def test_mapping_round_trip_sorted(tmp_path):
    mapping = {"b": "2 two", "a": "1", "c": ""}
    write_mapping(tmp_path / "m", mapping)
    assert lines(tmp_path / "m") == ["a 1", "b 2 two", "c"]
    assert read_mapping(tmp_path / "m") == {"a": "1", "b": "2 two", "c": ""}


def test_read_mapping_rejects_duplicate_keys(tmp_path):
    (tmp_path / "m").write_text("a 1\na 2\n")
    with pytest.raises(DataDirError, match="'a' occurs more than once"):
        read_mapping(tmp_path / "m")


def test_write_mapping_rejects_whitespace_keys(tmp_path):
    with pytest.raises(DataDirError, match="whitespace"):
        write_mapping(tmp_path / "m", {"a b": "1"})


def test_segments_trials_spk2utt_round_trip(tmp_path):
    segments = {"r1-s2": Segment("r1", 1.5, 2.25), "r1-s1": Segment("r1", 0.0, -1.0)}
    write_segments(tmp_path / "segments", segments)
    assert lines(tmp_path / "segments") == ["r1-s1 r1 0 -1", "r1-s2 r1 1.5 2.25"]
    assert read_segments(tmp_path / "segments") == segments

    trials = [Trial("a", "b", True), Trial("a", "c", False)]
    write_trials(tmp_path / "trials", trials)
    assert lines(tmp_path / "trials") == ["a b target", "a c nontarget"]
    assert read_trials(tmp_path / "trials") == trials
    (tmp_path / "bad").write_text("a b 1\n")
    with pytest.raises(DataDirError, match="bad:1"):
        read_trials(tmp_path / "bad")

    assert utt2spk_to_spk2utt({"s2-b": "s2", "s1-b": "s1", "s1-a": "s1"}) == {"s1": ["s1-a", "s1-b"], "s2": ["s2-b"]}


def test_write_data_dir_files(data_dir, audio):
    assert sorted(p.name for p in data_dir.iterdir()) == ["spk2utt", "text", "utt2label", "utt2spk", "wav.scp"]
    assert lines(data_dir / "spk2utt") == ["spkA spkA-u1 spkA-u2", "spkB spkB-u1"]
    assert read_spk2utt(data_dir / "spk2utt") == {"spkA": ["spkA-u1", "spkA-u2"], "spkB": ["spkB-u1"]}
    assert [line.split()[0] for line in lines(data_dir / "wav.scp")] == sorted(audio)
    data = read_data_dir(data_dir)
    assert data.text["spkA-u1"] == "HELLO WORLD" and data.segments is None
    # rewriting without text removes the stale text file
    write_data_dir(data_dir, wav_scp=audio)
    assert not (data_dir / "text").exists()
    assert read_mapping(data_dir / "utt2spk") == {u: u for u in audio}


def test_write_data_dir_rejects_uncovered_utterances(tmp_path, audio):
    with pytest.raises(DataDirError, match=r"text does not cover .*missing \['spkB-u1'\]"):
        write_data_dir(tmp_path / "d", wav_scp=audio, text={"spkA-u1": "A", "spkA-u2": "B"})


def test_validate_writes_num_samples_and_dict(data_dir, audio):
    counts = validate_data_dir(data_dir)
    assert counts == {u: 1600 for u in audio}
    assert read_utt2num_samples(data_dir / "utt2num_samples") == counts
    items = data_dir_to_dict(data_dir)
    assert list(items) == sorted(audio)
    assert items["spkA-u2"] == {"wav": audio["spkA-u2"], "spk": "spkA", "num_samples": 1600,
                                "text": "GOOD BYE", "label": "ang"}


def test_data_dir_to_dict_needs_validation(data_dir):
    with pytest.raises(DataDirError, match="run validate_data_dir"):
        data_dir_to_dict(data_dir)


def test_validate_catches_unsorted(data_dir):
    (data_dir / "text").write_text("spkB-u1 YES\nspkA-u1 HELLO WORLD\nspkA-u2 GOOD BYE\n")
    with pytest.raises(DataDirError, match=r"text is not sorted: 'spkA-u1'"):
        validate_data_dir(data_dir)
    validate_data_dir(data_dir, fix=True)
    assert lines(data_dir / "text") == ["spkA-u1 HELLO WORLD", "spkA-u2 GOOD BYE", "spkB-u1 YES"]


def test_validate_refuses_contradiction_even_with_fix(data_dir):
    (data_dir / "utt2label").write_text("spkA-u1 neu\nspkA-u1 sad\nspkA-u2 ang\nspkB-u1 neu\n")
    for fix in (False, True):
        with pytest.raises(DataDirError, match=r"utt2label: 'spkA-u1' has two different values, 'neu' and 'sad'"):
            validate_data_dir(data_dir, fix=fix)


def test_validate_drops_identical_duplicates_only_with_fix(data_dir, caplog):
    (data_dir / "utt2label").write_text("spkA-u1 neu\nspkA-u1 neu\nspkA-u2 ang\nspkB-u1 neu\n")
    with pytest.raises(DataDirError, match="utt2label: 1 duplicate line"):
        validate_data_dir(data_dir)
    with caplog.at_level(logging.WARNING):
        validate_data_dir(data_dir, fix=True)
    assert "dropping 1 identical duplicate" in caplog.text
    assert lines(data_dir / "utt2label") == ["spkA-u1 neu", "spkA-u2 ang", "spkB-u1 neu"]


def test_validate_names_missing_utt_and_file_then_fix_removes_it(data_dir, caplog):
    (data_dir / "text").write_text("spkA-u1 HELLO WORLD\nspkB-u1 YES\n")
    with pytest.raises(DataDirError) as error:
        validate_data_dir(data_dir)
    assert "utt 'spkA-u2' is missing from text (present in wav.scp, utt2spk, utt2label)" in str(error.value)
    with pytest.raises(DataDirError, match=r"--fix would remove 1 of 3 utterance\(s\) \(33.3% > --max-drop 5.0%\): "
                                           r"missing from text: 1"):
        validate_data_dir(data_dir, fix=True)
    with caplog.at_level(logging.WARNING):
        counts = validate_data_dir(data_dir, fix=True, max_drop=0.34)
    assert "removing utterance 'spkA-u2': missing from text" in caplog.text
    assert "removed 1 utterance(s) not present in every file (1 of 3; missing from text: 1)" in caplog.text
    assert sorted(counts) == ["spkA-u1", "spkB-u1"]
    for name in ("wav.scp", "utt2spk", "utt2label", "text", "utt2num_samples"):
        assert [line.split()[0] for line in lines(data_dir / name)] == ["spkA-u1", "spkB-u1"], name
    assert lines(data_dir / "spk2utt") == ["spkA spkA-u1", "spkB spkB-u1"]


def test_validate_catches_stale_spk2utt(data_dir):
    (data_dir / "spk2utt").write_text("spkA spkA-u1\nspkB spkB-u1\n")
    with pytest.raises(DataDirError, match="spk2utt does not match utt2spk"):
        validate_data_dir(data_dir)
    validate_data_dir(data_dir, fix=True)
    assert lines(data_dir / "spk2utt") == ["spkA spkA-u1 spkA-u2", "spkB spkB-u1"]


def test_validate_names_unreadable_audio(data_dir, tmp_path):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"not audio at all")
    table = read_mapping(data_dir / "wav.scp")
    table["spkA-u2"] = str(broken)
    table["spkB-u1"] = str(tmp_path / "absent.flac")
    write_mapping(data_dir / "wav.scp", table)
    for fix in (False, True):
        with pytest.raises(DataDirError) as error:
            validate_data_dir(data_dir, fix=fix)
        message = str(error.value)
        assert f"wav.scp:2: utt 'spkA-u2': cannot read audio '{broken}'" in message
        assert f"wav.scp:3: utt 'spkB-u1': audio not found: '{tmp_path / 'absent.flac'}'" in message
        summary, *listed = message.splitlines()  # a summary line, then one problem per line
        assert summary == f"{data_dir}: 2 problems"
        assert [line.split("wav.scp:")[1][:1] for line in listed] == ["2", "3"]


def test_many_problems_list_the_first_ten_one_per_line_and_count_the_rest(data_dir):
    from elp.data.kaldi_dir import MAX_LISTED_PROBLEMS

    utts = [f"spk{i:02d}-u1" for i in range(25)]
    write_data_dir(data_dir, wav_scp={u: f"/absent/{u}.wav" for u in utts},
                   utt2spk={u: u.split("-")[0] for u in utts}, text={u: "" for u in utts})
    with pytest.raises(DataDirError) as error:
        validate_data_dir(data_dir)
    lines = str(error.value).splitlines()
    assert lines[0] == f"{data_dir}: 25 problems"
    assert len(lines) == 1 + MAX_LISTED_PROBLEMS + 1 and MAX_LISTED_PROBLEMS == 10
    for number, line in enumerate(lines[1:-1], start=1):
        assert line.startswith(f"  {data_dir / 'text'}:{number}: utt 'spk{number - 1:02d}-u1' ")
        assert "empty transcript" in line and "remove the utterance" in line
    assert lines[-1].startswith("  ... and 15 more")


def test_validate_rejects_too_short_audio(data_dir, tmp_path):
    short = write_noise(tmp_path / "short.wav", seconds=0.02)  # 320 samples < 400
    table = read_mapping(data_dir / "wav.scp")
    table["spkB-u1"] = str(short)
    write_mapping(data_dir / "wav.scp", table)
    with pytest.raises(DataDirError) as error:
        validate_data_dir(data_dir)
    message = str(error.value)
    assert "utt 'spkB-u1' is too short: 320 samples at 16000 Hz < min_samples=400" in message
    assert "remove the utterance" in message and "longer segment" in message
    assert "spkB-u1" in validate_data_dir(data_dir, min_samples=300)


def test_validate_counts_8k_audio_at_16k(tmp_path):
    wav = write_noise(tmp_path / "a.wav", seconds=0.1, sample_rate=8000, channels=2)
    d = write_data_dir(tmp_path / "d", wav_scp={"u": str(wav)})
    assert validate_data_dir(d) == {"u": 1600}


def test_validate_with_segments_and_trials(tmp_path):
    reco = write_noise(tmp_path / "reco.flac", seconds=1.0)
    d = write_data_dir(
        tmp_path / "d", wav_scp={"reco": str(reco)},
        segments={"reco-a": Segment("reco", 0.0, 0.25), "reco-b": Segment("reco", 0.5, -1)},
        trials=[Trial("reco-a", "reco-b", True)],
    )
    assert validate_data_dir(d) == {"reco-a": 4000, "reco-b": 8000}
    items = data_dir_to_dict(d)
    assert items["reco-b"] == {"wav": str(reco), "spk": "reco-b", "num_samples": 8000, "start": 0.5, "end": -1.0}
    (d / "trials").write_text("reco-a reco-b target\nreco-a reco-c nontarget\n")
    with pytest.raises(DataDirError, match="1 trial\\(s\\) name utterances absent"):
        validate_data_dir(d)
    with pytest.raises(DataDirError, match=r"--fix would remove 1 of 2 trial\(s\)"):
        validate_data_dir(d, fix=True)
    validate_data_dir(d, fix=True, max_drop=0.5)
    assert read_trials(d / "trials") == [Trial("reco-a", "reco-b", True)]


def test_validate_requires_wav_scp_and_utt2spk(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "wav.scp").write_text("")
    with pytest.raises(DataDirError, match="utt2spk is missing"):
        validate_data_dir(tmp_path / "d")


def test_validate_without_audio_check_uses_utt2num_samples(data_dir):
    validate_data_dir(data_dir)
    (data_dir / "wav.scp").write_text("".join(f"{u} /nonexistent.wav\n" for u in ["spkA-u1", "spkA-u2", "spkB-u1"]))
    assert validate_data_dir(data_dir, check_audio=False)["spkA-u1"] == 1600
    with pytest.raises(DataDirError, match="too short"):
        validate_data_dir(data_dir, check_audio=False, min_samples=2000)


def test_subset_and_combine(data_dir):
    data = read_data_dir(data_dir)
    part_a = subset_data_dir(data, ["spkA-u1", "spkA-u2"])
    part_b = subset_data_dir(data, ["spkB-u1"])
    assert part_a.utterances == ["spkA-u1", "spkA-u2"] and part_b.text == {"spkB-u1": "YES"}
    assert combine_data_dirs([part_a, part_b]) == data
    clash = DataDir(wav_scp={"spkB-u1": "/other.wav"}, utt2spk={"spkB-u1": "spkB"})
    with pytest.raises(DataDirError, match="'spkB-u1' has two different values in wav_scp"):
        combine_data_dirs([data, clash])
    with pytest.raises(DataDirError, match="not in the data dir"):
        subset_data_dir(data, ["nope"])


def test_audio_check_stamp_spares_a_second_header_pass(data_dir, audio, caplog, monkeypatch):
    """Stage 1 after a validated data prep trusts utt2num_samples; a rewrite of wav.scp, a
    changed audio file or --recheck-audio re-reads the audio."""
    from elp.data import kaldi_dir

    validate_data_dir(data_dir)
    assert (data_dir / ".audio_checked").is_file()
    opened = []
    real = kaldi_dir.check_recording
    monkeypatch.setattr(kaldi_dir, "check_recording", lambda entry, **kw: opened.append(entry) or real(entry, **kw))
    with caplog.at_level(logging.INFO):
        assert validate_data_dir(data_dir) == {u: 1600 for u in audio}
    assert "audio already checked" in caplog.text and opened == []
    validate_data_dir(data_dir, recheck_audio=True)
    assert sorted(opened) == sorted(audio.values())
    for path in audio.values():
        Path(path).unlink()
    with pytest.raises(DataDirError, match="audio not found"):  # the stamp knew the files: removed ones count
        validate_data_dir(data_dir)
    write_data_dir(data_dir, **read_data_dir(data_dir).mappings())  # a rewrite removes the stamp
    assert not (data_dir / ".audio_checked").exists()
    with pytest.raises(DataDirError, match="audio not found"):
        validate_data_dir(data_dir)


def test_validation_reads_each_recording_once_and_in_threads(tmp_path, monkeypatch):
    from elp.data import kaldi_dir

    reco = write_noise(tmp_path / "reco.flac", seconds=1.0)
    other = write_noise(tmp_path / "other.flac", seconds=1.0)
    segments = {f"reco-{i}": Segment("reco", 0.1 * i, 0.1 * i + 0.1) for i in range(5)}
    segments["other-0"] = Segment("other", 0.0, -1)
    d = write_data_dir(tmp_path / "d", wav_scp={"reco": str(reco), "other": str(other)}, segments=segments)
    opened = []
    real = kaldi_dir.check_recording
    monkeypatch.setattr(kaldi_dir, "check_recording", lambda entry, **kw: opened.append(entry) or real(entry, **kw))
    counts = validate_data_dir(d, jobs=2)
    assert sorted(opened) == sorted([str(reco), str(other)])
    assert counts == {**{f"reco-{i}": 1600 for i in range(5)}, "other-0": 16000}


def test_data_dir_to_dict_recomputes_stale_lengths(data_dir, audio, tmp_path):
    validate_data_dir(data_dir)
    longer = write_noise(tmp_path / "longer.wav", seconds=0.2)
    table = read_mapping(data_dir / "wav.scp")
    table["spkA-u1"] = str(longer)
    write_mapping(data_dir / "wav.scp", table)
    stamp = (data_dir / "utt2num_samples").stat().st_mtime_ns + 10**9  # edited a second later
    os.utime(data_dir / "wav.scp", ns=(stamp, stamp))
    assert data_dir_to_dict(data_dir)["spkA-u1"]["num_samples"] == 3200
    assert read_utt2num_samples(data_dir / "utt2num_samples")["spkA-u1"] == 3200


def test_labels_one_token_in_every_reader(data_dir):
    (data_dir / "utt2label").write_text("spkA-u1 neu\nspkA-u2 \nspkB-u1 neu\n")
    with pytest.raises(DataDirError, match=r"utt2label:2: utt 'spkA-u2' has an empty label; a label is one token"):
        read_data_dir(data_dir)
    (data_dir / "utt2label").write_text("spkA-u1 neu\nspkA-u2 ang\nspkB-u1 neu\n")
    validate_data_dir(data_dir)
    (data_dir / "utt2emo").write_text("spkA-u1 neu\nspkA-u2 very sad\nspkB-u1 neu\n")
    with pytest.raises(DataDirError, match=r"utt2emo:2: utt 'spkA-u2' has 2 tokens 'very sad'"):
        data_dir_to_dict(data_dir, label_file="utt2emo")


def test_byte_order_mark_is_named(data_dir):
    (data_dir / "text").write_bytes(b"\xef\xbb\xbfspkA-u1 HELLO WORLD\nspkA-u2 GOOD BYE\nspkB-u1 YES\n")
    with pytest.raises(DataDirError, match=r"text:1: starts with a UTF-8 byte-order mark"):
        validate_data_dir(data_dir)
