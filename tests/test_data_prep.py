"""Data preparation from the real corpus layouts (fixtures built in tmp_path)."""
import json
import logging

import pytest
import soundfile
from data_fixtures import (FSDD_SPEAKERS, iemocap_labels, load_data_prep, make_iemocap,
                           make_librispeech, make_slurp, make_voxceleb_from_fsdd, require_shared)

from elp.data.kaldi_dir import Trial, data_dir_to_dict, read_data_dir, read_mapping
from elp.data.prep import CorpusLayoutError, evenly_spaced_holdout


def keys(path):
    return [line.split()[0] for line in path.read_text().splitlines()]


# --------------------------------------------------------------------------- shared helpers
def test_evenly_spaced_holdout():
    assert evenly_spaced_holdout(range(30), 0.1) == [9, 19, 29]
    assert evenly_spaced_holdout(["b", "a"], 0.5) == ["b"]
    assert evenly_spaced_holdout(range(5), 0.0) == []


# --------------------------------------------------------------------------- LibriSpeech
def test_librispeech(tmp_path, caplog):
    prep = load_data_prep("librispeech", "asr")
    make_librispeech(tmp_path / "corpus")
    with caplog.at_level(logging.INFO):
        written = prep.prepare_librispeech(tmp_path / "corpus", tmp_path / "data", ["dev-clean", "test-clean"],
                                           drop_incomplete=True)
    assert [p.name for p in written] == ["dev_clean", "test_clean"]
    assert "dev-clean: audio without a transcript line, dropped: 1 (e.g. 84-121123-0002)" in caplog.text

    dev = tmp_path / "data" / "dev_clean"
    expected = ["1272-128104-0000", "1272-128104-0001", "84-121123-0000", "84-121123-0001"]
    for name in ("wav.scp", "text", "utt2spk", "utt2num_samples"):
        assert keys(dev / name) == expected, name
    assert read_mapping(dev / "text")["84-121123-0001"] == "BUT IN LESS THAN FIVE MINUTES"
    assert read_mapping(dev / "utt2spk")["84-121123-0000"] == "84"
    assert (dev / "spk2utt").read_text() == "1272 1272-128104-0000 1272-128104-0001\n84 84-121123-0000 84-121123-0001\n"
    assert read_mapping(dev / "wav.scp")["1272-128104-0000"].endswith(
        "LibriSpeech/dev-clean/1272/128104/1272-128104-0000.flac")
    assert set(read_mapping(dev / "utt2num_samples").values()) == {"1600"}
    assert keys(tmp_path / "data" / "test_clean" / "text") == ["1089-134686-0000"]


def test_librispeech_cli_reports_missing_corpus(tmp_path, caplog):
    prep = load_data_prep("librispeech", "asr")
    with pytest.raises(SystemExit) as exit_info:
        prep.main(["--corpus-root", str(tmp_path), "--out", str(tmp_path / "data")])
    assert exit_info.value.code == 1
    assert "LibriSpeech/ not found" in caplog.text


def test_librispeech_cli(tmp_path):
    prep = load_data_prep("librispeech", "asr")
    make_librispeech(tmp_path / "corpus")
    assert prep.main(["--corpus-root", str(tmp_path / "corpus" / "LibriSpeech"), "--out", str(tmp_path / "data"),
                      "--subsets", "test-clean", "--skip-validation"]) == 0
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["test_clean"]
    assert not (tmp_path / "data" / "test_clean" / "utt2num_samples").exists()


# --------------------------------------------------------------------------- VoxCeleb
def test_voxceleb_from_real_fsdd_speech(tmp_path, caplog):
    recordings = require_shared("fsdd", "recordings")
    prep = load_data_prep("voxceleb", "sv")
    corpus = make_voxceleb_from_fsdd(tmp_path / "vox1", recordings)
    with caplog.at_level(logging.INFO):
        train_dir, valid_dir, test_dir = prep.prepare_voxceleb(corpus, tmp_path / "data", holdout=0.34)

    speaker_utts = [f"{spk}-yt-D_{d}-{i:05d}" for spk in ("id10001", "id10002") for d in (0, 1) for i in (1, 2, 3)]
    # every third utterance of each training speaker (in sorted order) is held out for validation
    held_out = [u for spk in range(2) for j, u in enumerate(speaker_utts[6 * spk:6 * spk + 6]) if j in (2, 5)]
    assert keys(valid_dir / "wav.scp") == held_out
    train_utts = [u for u in speaker_utts if u not in held_out]
    assert keys(train_dir / "wav.scp") == train_utts
    assert (train_dir / "spk2utt").read_text().splitlines()[0] == "id10001 " + " ".join(train_utts[:4])
    test_utts = [f"{spk}-yt-D_{d}-{i:05d}" for spk in ("id10270", "id10271") for d in (0, 1) for i in (1, 2, 3)]
    test_utts.remove("id10271-yt-D_1-00003")
    assert keys(test_dir / "wav.scp") == test_utts
    assert "not named in any trial (unused): 1 (e.g. id10271-yt-D_1-00003)" in caplog.text

    trials = read_data_dir(test_dir).trials
    assert len(trials) == 2 * 10
    assert trials[0] == Trial("id10270-yt-D_0-00001", "id10270-yt-D_0-00002", True)
    assert Trial("id10270-yt-D_0-00001", "id10271-yt-D_1-00002", False) in trials
    assert sum(t.target for t in trials) == 5 + 4
    assert (test_dir / "trials").read_text().splitlines()[0] == "id10270-yt-D_0-00001 id10270-yt-D_0-00002 target"
    # FSDD is 8 kHz: counts are at 16 kHz, twice the file's frames
    path = read_mapping(test_dir / "wav.scp")["id10270-yt-D_0-00001"]
    assert int(read_mapping(test_dir / "utt2num_samples")["id10270-yt-D_0-00001"]) == 2 * soundfile.info(path).frames
    assert set(FSDD_SPEAKERS.values()) == set(read_mapping(train_dir / "utt2spk").values()) | set(
        read_mapping(test_dir / "utt2spk").values())


def test_voxceleb_without_trial_list(tmp_path):
    prep = load_data_prep("voxceleb", "sv")
    (tmp_path / "wav").mkdir()
    with pytest.raises(CorpusLayoutError, match="veri_test2.txt.*not found"):
        prep.prepare_voxceleb(tmp_path, tmp_path / "data")


def test_voxceleb_trial_with_missing_audio(tmp_path):
    recordings = require_shared("fsdd", "recordings")
    prep = load_data_prep("voxceleb", "sv")
    corpus = make_voxceleb_from_fsdd(tmp_path / "vox1", recordings)
    with open(corpus / "veri_test2.txt", "a") as handle:
        handle.write("0 id10270/yt-D_0/00001.wav id10299/abc/00001.wav\n")
    with pytest.raises(CorpusLayoutError, match=r"1 utterance\(s\) without audio.*id10299-abc-00001"):
        prep.prepare_voxceleb(corpus, tmp_path / "data")


# --------------------------------------------------------------------------- IEMOCAP
def test_iemocap_sessions_and_folds(tmp_path, caplog):
    prep = load_data_prep("iemocap", "er")
    make_iemocap(tmp_path / "corpus", sessions=(1, 2, 3))
    with caplog.at_level(logging.INFO):
        prep.prepare_iemocap(tmp_path / "corpus", tmp_path / "data", sessions=(1, 2, 3), drop_incomplete=True)

    assert "Session1: dropped utterances outside ['ang', 'hap', 'neu', 'sad']: 2 (fru=1, xxx=1)" in caplog.text
    assert "Session1: audio without a label line, dropped: 1 (e.g. Ses01F_impro01_F009)" in caplog.text
    session1 = tmp_path / "data" / "session1"
    assert read_mapping(session1 / "utt2label") == {
        "Ses01F_impro01_F000": "neu", "Ses01F_impro01_F001": "hap", "Ses01F_impro01_M000": "ang",
        "Ses01M_script01_1_F000": "sad", "Ses01M_script01_1_M000": "hap", "Ses01M_script01_1_M002": "neu",
    }
    assert read_mapping(session1 / "utt2spk")["Ses01F_impro01_M000"] == "Ses01M"
    assert (session1 / "spk2utt").read_text().splitlines() == [
        "Ses01F Ses01F_impro01_F000 Ses01F_impro01_F001 Ses01M_script01_1_F000",
        "Ses01M Ses01F_impro01_M000 Ses01M_script01_1_M000 Ses01M_script01_1_M002",
    ]
    for name in ("wav.scp", "utt2spk", "utt2label", "utt2num_samples"):
        assert keys(session1 / name) == sorted(keys(session1 / "utt2label")), name

    fold2 = tmp_path / "data" / "fold2"
    test = read_data_dir(fold2 / "test")
    assert test.utterances == sorted(u.replace("Ses01", "Ses02") for u in keys(session1 / "utt2label"))
    train, dev = read_data_dir(fold2 / "train"), read_data_dir(fold2 / "dev")
    # 12 utts from sessions 1+3; per label (neu 4, hap 4, ang 2, sad 2): 10% of each rounds to 0
    assert dev.utterances == []
    assert "fold 2: the dev set is empty (12 training utterances, dev fraction 0.1)" in caplog.text
    assert sorted(train.utterances + dev.utterances) == sorted(
        u for s in (1, 3) for u, e in iemocap_labels(s).items() if e in ("neu", "exc", "ang", "sad", "hap"))
    assert train.utt2num_samples is not None and set(train.utt2num_samples.values()) == {1600}
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [
        "fold1", "fold2", "fold3", "session1", "session2", "session3"]


def test_iemocap_dev_split_is_stratified_and_deterministic(tmp_path):
    prep = load_data_prep("iemocap", "er")
    make_iemocap(tmp_path / "corpus", sessions=(1, 2, 3, 4, 5))
    prep.prepare_iemocap(tmp_path / "corpus", tmp_path / "data", folds=[1], dev_fraction=0.25, drop_incomplete=True)
    dev = read_data_dir(tmp_path / "data" / "fold1" / "dev")
    # sessions 2-5: per label neu 8, hap 8, ang 4, sad 4 -> 2 + 2 + 1 + 1 at 25%
    # within each label, sorted ids at positions 3, 7 (neu, hap) and 3 (ang, sad)
    assert dev.utt2label == {
        "Ses03M_script01_1_M000": "hap", "Ses03M_script01_1_M002": "neu", "Ses05F_impro01_M000": "ang",
        "Ses05M_script01_1_F000": "sad", "Ses05M_script01_1_M000": "hap", "Ses05M_script01_1_M002": "neu",
    }
    train = read_data_dir(tmp_path / "data" / "fold1" / "train")
    assert not set(dev.utterances) & set(train.utterances)
    assert len(train.utterances) + len(dev.utterances) == 4 * 6
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["fold1"] + [f"session{n}" for n in range(1, 6)]


# --------------------------------------------------------------------------- SLURP
def test_slurp_with_real_annotations(tmp_path, caplog):
    devel = require_shared("slurp", "devel.jsonl")
    prep = load_data_prep("slurp", "ic")
    lines = devel.read_text().splitlines()[:20]
    records = [json.loads(line) for line in lines]
    first = records[0]
    absent = [first["recordings"][0]["file"], records[1]["recordings"][-1]["file"]]
    make_slurp(tmp_path / "slurp", {"devel": lines}, absent=absent)
    with caplog.at_level(logging.INFO):
        (devel_dir,) = prep.prepare_slurp(tmp_path / "slurp", tmp_path / "data", splits=["devel"],
                                          drop_incomplete=True)

    expected = sorted(f"{r['slurp_id']}-{rec['file'].rsplit('.', 1)[0]}" for r in records
                      for rec in r["recordings"] if rec["file"] not in absent)
    assert keys(devel_dir / "wav.scp") == expected
    for name in ("text", "utt2label", "utt2scenario", "utt2spk", "utt2num_samples"):
        assert keys(devel_dir / name) == expected, name
    audio_dir = tmp_path / "slurp" / "slurp_real"
    assert f"devel: recordings whose audio is absent from {audio_dir}, dropped: 2" in caplog.text

    utt = f"{first['slurp_id']}-{first['recordings'][1]['file'][:-5]}"
    assert utt == "13804-audio-1434542201"
    items = data_dir_to_dict(devel_dir)
    assert items[utt]["label"] == "qa_currency"
    assert items[utt]["text"] == "siri what is one american dollar in japanese yen"
    assert items[utt]["spk"] == utt  # no metadata.json: each utterance is its own speaker
    assert items[utt]["wav"].endswith("slurp_real/audio-1434542201.flac")
    assert read_mapping(devel_dir / "utt2label") == {
        u: next(r["intent"] for r in records if u.startswith(f"{r['slurp_id']}-")) for u in expected}
    assert read_mapping(devel_dir / "utt2scenario") == {  # a second task on the same audio
        u: next(r["scenario"] for r in records if u.startswith(f"{r['slurp_id']}-")) for u in expected}
    assert read_mapping(devel_dir / "utt2scenario")[utt] == "qa"


def test_slurp_split_without_any_audio_is_an_error(tmp_path):
    devel = require_shared("slurp", "devel.jsonl")
    prep = load_data_prep("slurp", "ic")
    lines = devel.read_text().splitlines()[:3]
    files = [rec["file"] for line in lines for rec in json.loads(line)["recordings"]]
    make_slurp(tmp_path / "slurp", {"devel": lines}, absent=files)
    with pytest.raises(CorpusLayoutError, match=f"devel: none of the {len(files)} listed recordings exists"):
        prep.prepare_slurp(tmp_path / "slurp", tmp_path / "data", splits=["devel"], drop_incomplete=True)


def test_slurp_speakers_from_metadata(tmp_path):
    devel = require_shared("slurp", "devel.jsonl")
    prep = load_data_prep("slurp", "ic")
    lines = devel.read_text().splitlines()[:2]
    make_slurp(tmp_path / "slurp", {"devel": lines})
    first_file = json.loads(lines[0])["recordings"][0]["file"]
    metadata = {"1": {"recordings": {first_file: {"usrid": "MO-433"}}}}
    (tmp_path / "slurp" / "dataset" / "slurp" / "metadata.json").write_text(json.dumps(metadata))
    (devel_dir,) = prep.prepare_slurp(tmp_path / "slurp", tmp_path / "data", splits=["devel"])
    utt2spk = read_mapping(devel_dir / "utt2spk")
    assert utt2spk[f"13804-{first_file[:-5]}"] == "MO-433"
    assert sum(spk == utt for utt, spk in utt2spk.items()) == len(utt2spk) - 1
