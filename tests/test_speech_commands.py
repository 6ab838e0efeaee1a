"""Tests of the Speech Commands v0.02 keyword-spotting data preparation
(egs/speech_commands/kws/local/data_prep.py) on corpora in the real layout: a hand-made one
(no espeak-ng needed) and the tiny synthetic mini corpus."""
from __future__ import annotations

import itertools
import logging
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from data_fixtures import load_data_prep, write_noise
from elp.data.kaldi_dir import read_data_dir
from elp.data.prep import CorpusLayoutError

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

prep = load_data_prep("speech_commands", "kws")

COMMANDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
OTHERS = ("bed", "cat", "marvin", "sheila", "wow")
# speaker -> split; each says every command word twice (n = 0, 1) and every other word once
SPEAKERS = {"0a000001": "train", "0a000002": "train", "0a000003": "train",
            "0a000004": "train", "0b000001": "valid", "0c000001": "test"}
NOISE_SECONDS = {"pink_noise": 20.0, "running_tap": 30.0}


def make_corpus(root: Path) -> Path:
    """A Speech Commands v0.02 folder with 1 s clips, the two lists and background noise."""
    lists = {"valid": [], "test": []}
    seed = 0
    for speaker, split in SPEAKERS.items():
        files = [f"{w}/{speaker}_nohash_{n}.wav" for w in COMMANDS for n in (0, 1)]
        files += [f"{w}/{speaker}_nohash_0.wav" for w in OTHERS]
        for rel in files:
            seed += 1
            write_noise(root / rel, seconds=1.0, seed=seed)
            if split != "train":
                lists[split].append(rel)
    (root / "validation_list.txt").write_text("".join(f"{x}\n" for x in sorted(lists["valid"])))
    (root / "testing_list.txt").write_text("".join(f"{x}\n" for x in sorted(lists["test"])))
    for stem, seconds in NOISE_SECONDS.items():
        write_noise(root / "_background_noise_" / f"{stem}.wav", seconds=seconds, seed=seed)
    (root / "_background_noise_" / "README.md").write_text("noise\n")
    (root / "README.md").write_text("corpus\n")
    (root / "LICENSE").write_text("cc-by\n")
    return root


@pytest.fixture(scope="module")
def corpus_template(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("template") / "speech_commands_v0.02")


@pytest.fixture()
def corpus(corpus_template, tmp_path) -> Path:
    """A fresh copy per test (tests may break it)."""
    return Path(shutil.copytree(corpus_template, tmp_path / "speech_commands_v0.02"))


def label_counts(data_dir: Path) -> dict[str, int]:
    labels = read_data_dir(data_dir).utt2label
    return {label: sum(v == label for v in labels.values()) for label in sorted(set(labels.values()))}


def test_twelve_classes_counts_labels_and_validation(corpus, tmp_path):
    dirs = prep.prepare_speech_commands(corpus, tmp_path / "data")
    assert [d.name for d in dirs] == ["train", "valid", "test"]
    # train: 4 speakers x 10 words x 2 = 80 command utterances -> 8 unknown (of 20), 8 silence
    expected = {"train": 8, "valid": 2, "test": 2}
    for d in dirs:
        counts = label_counts(d)
        per_word = 20 * len([s for s in SPEAKERS.values() if s == d.name]) // 10
        assert counts == {**{w: per_word for w in COMMANDS}, "_unknown_": expected[d.name],
                          "_silence_": expected[d.name]}, d.name
        data = read_data_dir(d)
        assert sorted(p.name for p in d.iterdir() if not p.name.startswith(".")) == ["segments", "spk2utt", "utt2label",
                                                       "utt2num_samples", "utt2spk", "wav.scp"]
        assert set(data.utt2num_samples.values()) == {16000}  # validated: 1 s each
        for utt, label in data.utt2label.items():
            segment = data.segments[utt]
            if label == "_silence_":
                assert data.utt2spk[utt] == utt and segment.recording.startswith("noise-")
                assert segment.end - segment.start == pytest.approx(1.0)
            else:
                speaker, word, n = utt.split("-")
                assert data.utt2spk[utt] == speaker and SPEAKERS[speaker] == d.name
                assert label == (word if word in COMMANDS else "_unknown_")
                assert (segment.recording, segment.start, segment.end) == (utt, 0.0, -1.0)
                assert data.wav_scp[utt] == str(corpus / word / f"{speaker}_nohash_{n}.wav")
    valid = read_data_dir(dirs[1])
    listed = (corpus / "validation_list.txt").read_text().split()
    words = sorted(f"{u.split('-')[1]}/{u.split('-')[0]}_nohash_{u.split('-')[2]}.wav"
                   for u, lab in valid.utt2label.items() if lab != "_silence_")
    assert set(words) <= set(listed) and len(listed) - len(words) == 5 - 2  # 3 unknown dropped


def test_splits_are_speaker_disjoint_and_cover_every_file(corpus, tmp_path):
    dirs = prep.prepare_speech_commands(corpus, tmp_path / "data", unknown_percent=1000)
    speakers = {d.name: {s for u, s in read_data_dir(d).utt2spk.items()
                         if not u.startswith("silence-")} for d in dirs}
    assert speakers == {split: {s for s, x in SPEAKERS.items() if x == split}
                        for split in ("train", "valid", "test")}
    assert not any(a & b for a, b in itertools.combinations(speakers.values(), 2))
    words = sum(len([u for u in read_data_dir(d).utt2spk if not u.startswith("silence-")])
                for d in dirs)
    assert words == len(SPEAKERS) * (20 + len(OTHERS))  # a large percentage keeps every file


def test_unknown_subsampling_is_even_and_logged(corpus, tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        train = prep.prepare_speech_commands(corpus, tmp_path / "data")[0]
    unknown = sorted((u.split("-")[1], u) for u, lab in read_data_dir(train).utt2label.items()
                     if lab == "_unknown_")
    # 20 unknown utterances sorted by (word, utt); 8 picked at positions 0, 2, 5, 7, 10, ...
    candidates = sorted((w, f"{s}-{w}-0") for w in OTHERS for s, x in SPEAKERS.items()
                        if x == "train")
    assert unknown == [candidates[i * 20 // 8] for i in range(8)]
    assert {w for w, _ in unknown} == set(OTHERS)
    assert "train: _unknown_ utterances beyond 10% of the 80 command words, not used: 12" \
        in caplog.text
    none = prep.prepare_speech_commands(corpus, tmp_path / "none", unknown_percent=0,
                                        silence_percent=0)[0]
    assert set(read_data_dir(none).utt2label.values()) == set(COMMANDS)


def test_silence_windows_stay_in_their_split_part(corpus, tmp_path):
    dirs = prep.prepare_speech_commands(corpus, tmp_path / "data", silence_percent=50)
    windows = {}
    for d in dirs:
        data = read_data_dir(d)
        segs = [data.segments[u] for u, lab in data.utt2label.items() if lab == "_silence_"]
        assert len(segs) == math.ceil(0.5 * 20 * sum(x == d.name for x in SPEAKERS.values()))
        low, high = prep.NOISE_PARTS[d.name]
        for seg in segs:
            seconds = NOISE_SECONDS[seg.recording.removeprefix("noise-")]
            assert low * seconds - 1e-6 <= seg.start and seg.end <= high * seconds + 1e-6
            assert data.wav_scp[seg.recording].endswith(
                f"_background_noise_/{seg.recording.removeprefix('noise-')}.wav")
        windows[d.name] = segs
    # train: 40 windows, 20 per file, evenly spaced from the start to the end of the part
    pink = sorted(s.start for s in windows["train"] if s.recording == "noise-pink_noise")
    assert len(pink) == 20 and pink[0] == 0.0 and pink[-1] == pytest.approx(16.0 - 1.0, abs=1e-3)
    assert len({round(b - a, 2) for a, b in zip(pink, pink[1:])}) <= 2


def test_thirty_five_classes(corpus, tmp_path):
    dirs = prep.prepare_speech_commands(corpus, tmp_path / "data", num_classes=35)
    counts = label_counts(dirs[0])
    assert counts == {**{w: 8 for w in COMMANDS}, **{w: 4 for w in OTHERS}}


def test_parent_folder_and_cli(corpus, tmp_path):
    assert prep.main(["--corpus-root", str(corpus.parent), "--out", str(tmp_path / "data"),
                      "--skip-validation"]) == 0
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["test", "train", "valid"]
    assert not (tmp_path / "data" / "train" / "utt2num_samples").exists()


@pytest.mark.parametrize("name", ["validation_list.txt", "testing_list.txt"])
def test_missing_list_file_is_named(corpus, tmp_path, name, caplog):
    (corpus / name).unlink()
    with pytest.raises(CorpusLayoutError, match=f"{name} not found: --corpus-root must be"):
        prep.prepare_speech_commands(corpus, tmp_path / "data")
    with pytest.raises(SystemExit), caplog.at_level(logging.ERROR):
        prep.main(["--corpus-root", str(corpus), "--out", str(tmp_path / "data")])
    assert str(corpus / name) in caplog.text


def test_layout_errors_name_the_file(corpus, tmp_path):
    listed = corpus / "testing_list.txt"
    listed.write_text(listed.read_text() + "yes/ffffffff_nohash_0.wav\n")
    with pytest.raises(CorpusLayoutError, match=r"testing_list.txt:\d+: yes/ffffffff_nohash_0.wav is listed"):
        prep.prepare_speech_commands(corpus, tmp_path / "data")
    listed.write_text("yes/0b000001_nohash_0.wav\n")  # also in validation_list.txt
    with pytest.raises(CorpusLayoutError, match="listed in both validation_list.txt and testing_list.txt"):
        prep.prepare_speech_commands(corpus, tmp_path / "data")
    listed.write_text("not a path\n")
    with pytest.raises(CorpusLayoutError, match="testing_list.txt:1: expected"):
        prep.prepare_speech_commands(corpus, tmp_path / "data")
    listed.write_text("")
    shutil.rmtree(corpus / "_background_noise_")
    with pytest.raises(CorpusLayoutError, match="--silence-percent 0"):
        prep.prepare_speech_commands(corpus, tmp_path / "data")
    assert prep.prepare_speech_commands(corpus, tmp_path / "data", silence_percent=0)
    write_noise(corpus / "_background_noise_" / "short.wav", seconds=5.0)
    with pytest.raises(CorpusLayoutError, match="short.wav: 5.0 s is too short"):
        prep.prepare_speech_commands(corpus, tmp_path / "data")
    write_noise(corpus / "up" / "oops.wav", seconds=1.0)
    with pytest.raises(CorpusLayoutError, match="oops.wav: unexpected file name"):
        prep.prepare_speech_commands(corpus, tmp_path / "data")
    with pytest.raises(CorpusLayoutError, match="not a folder"):
        prep.prepare_speech_commands(tmp_path / "absent", tmp_path / "data")


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_on_the_tiny_mini_corpus(tmp_path):
    from tools.mini_corpus import speech_commands
    assert speech_commands.COMMAND_WORDS == prep.COMMAND_WORDS
    speech_commands.build(tmp_path / "corpus", size="tiny")
    dirs = prep.prepare_speech_commands(tmp_path / "corpus" / "speech_commands_v0.02",
                                        tmp_path / "data")
    # tiny: 2/1/1 speakers x (10 command words + 1 other word); silence 10 % of the commands
    sizes = {d.name: label_counts(d) for d in dirs}
    assert sizes["train"] == {**{w: 2 for w in COMMANDS}, "_unknown_": 2, "_silence_": 2}
    for split in ("valid", "test"):
        assert sizes[split] == {**{w: 1 for w in COMMANDS}, "_unknown_": 1, "_silence_": 1}
    for d in dirs:
        data = read_data_dir(d)
        assert set(data.utt2num_samples.values()) == {16000}
        for utt, speaker in data.utt2spk.items():
            if not utt.startswith("silence-"):
                split = {"train": "training", "valid": "validation", "test": "testing"}[d.name]
                assert speech_commands.which_split(speaker) == split
        for utt in data.utt2label:
            start, end = data.segments[utt].start, data.segments[utt].end
            wav, sr = soundfile.read(data.wav_scp[data.segments[utt].recording],
                                     start=int(start * 16000),
                                     stop=None if end < 0 else int(end * 16000))
            assert sr == 16000 and len(wav) == 16000 and np.abs(wav).max() > 0.01
