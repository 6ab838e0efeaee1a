"""The Fluent Speech Commands recipe: data preparation from the real layout (a tiny fake
corpus written here, with the real CSV columns), its errors on a partial corpus, and the
recipe's YAML. The end-to-end run is tests/test_recipes.py's (it discovers every run.sh)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from elp.data.kaldi_dir import read_data_dir
from elp.train.recipe import peek_experiment

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "egs" / "fluent_speech_commands" / "ic"
PREP = RECIPE / "local" / "data_prep.py"

HEADER = ",path,speakerId,transcription,action,object,location\n"
ROWS = {  # split -> (file stem, speaker, transcription, action, object, location)
    "train": [("0a1b-11e9", "SpkTrainA0000001", "Turn on the lights in the kitchen", "activate", "lights", "kitchen"),
              ("0a1c-11e9", "SpkTrainA0000001", '"Switch to Chinese, please"', "change language", "Chinese", "none"),
              ("0a1d-11e9", "SpkTrainB0000002", "Lamp off", "deactivate", "lamp", "none")],
    "valid": [("1a1b-11e9", "SpkValid00000003", "Heat up", "increase", "heat", "none")],
    "test": [("2a1b-11e9", "SpkTest000000004", "Lamp off", "deactivate", "lamp", "none"),
             ("2a1c-11e9", "SpkTest000000004", "Heat up", "increase", "heat", "none")],
}


def load_prep():
    spec = importlib.util.spec_from_file_location("fsc_data_prep", PREP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_corpus(base: Path) -> Path:
    """``base/fluent_speech_commands_dataset`` with ROWS (0.3 s of noise per file)."""
    root = base / "fluent_speech_commands_dataset"
    (root / "data").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, rows in ROWS.items():
        lines = [HEADER]
        for index, (stem, spk, sentence, action, obj, location) in enumerate(rows):
            path = f"wavs/speakers/{spk}/{stem}.wav"
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            sf.write(root / path, 0.1 * rng.standard_normal(4800).astype("float32"), 16000, subtype="PCM_16")
            lines.append(f"{index},{path},{spk},{sentence},{action},{obj},{location}\n")
        (root / "data" / f"{split}_data.csv").write_text("".join(lines))
    return root


def test_prepares_the_three_splits_with_intent_labels(tmp_path):
    fake_corpus(tmp_path / "corpora")
    prep = load_prep()
    written = prep.prepare_fluent_speech_commands(tmp_path / "corpora", tmp_path / "data")  # the parent works
    assert [p.name for p in written] == ["train", "valid", "test"]
    train = read_data_dir(tmp_path / "data" / "train")
    assert train.utt2label == {"SpkTrainA0000001-0a1b-11e9": "activate|lights|kitchen",
                               "SpkTrainA0000001-0a1c-11e9": "change_language|Chinese|none",
                               "SpkTrainB0000002-0a1d-11e9": "deactivate|lamp|none"}
    assert train.text["SpkTrainA0000001-0a1c-11e9"] == "Switch to Chinese, please"  # a quoted CSV field
    assert train.utt2spk["SpkTrainB0000002-0a1d-11e9"] == "SpkTrainB0000002"
    assert train.wav_scp["SpkTrainB0000002-0a1d-11e9"] == str(
        tmp_path / "corpora" / "fluent_speech_commands_dataset" / "wavs" / "speakers" / "SpkTrainB0000002" / "0a1d-11e9.wav")
    assert (tmp_path / "data" / "train" / "utt2num_samples").read_text().split("\n")[0].endswith(" 4800")
    test = read_data_dir(tmp_path / "data" / "test")
    assert sorted(test.utt2label.values()) == ["deactivate|lamp|none", "increase|heat|none"]
    assert len(read_data_dir(tmp_path / "data" / "valid").wav_scp) == 1


def test_partial_corpus_fails_in_one_line_naming_what_is_missing(tmp_path):
    root = fake_corpus(tmp_path)
    (root / "data" / "valid_data.csv").unlink()
    result = subprocess.run([sys.executable, str(PREP), "--corpus-root", str(root), "--out", str(tmp_path / "data")],
                            capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].endswith(
        f"{root} is not a complete Fluent Speech Commands folder: data/valid_data.csv missing "
        "(--corpus-root must be the unpacked fluent_speech_commands_dataset)")
    assert not (tmp_path / "data").exists()


def test_absent_audio_is_an_error_unless_skipped(tmp_path):
    root = fake_corpus(tmp_path)
    (root / "wavs" / "speakers" / "SpkTest000000004" / "2a1c-11e9.wav").unlink()
    prep = load_prep()
    with pytest.raises(prep.CorpusLayoutError, match=r"test: 1 audio files listed in .*test_data.csv are missing "
                                                     r".*e\.g\. wavs/speakers/SpkTest000000004/2a1c-11e9\.wav"):
        prep.prepare_fluent_speech_commands(root, tmp_path / "data", validate=False)
    prep.prepare_fluent_speech_commands(root, tmp_path / "data", skip_absent_audio=True, validate=False)
    assert list(read_data_dir(tmp_path / "data" / "test").utt2label) == ["SpkTest000000004-2a1b-11e9"]


def test_a_csv_without_the_slot_columns_is_refused(tmp_path):
    root = fake_corpus(tmp_path)
    csv_file = root / "data" / "train_data.csv"
    csv_file.write_text(csv_file.read_text().replace(",location\n", ",place\n", 1))
    prep = load_prep()
    with pytest.raises(prep.CorpusLayoutError, match="train_data.csv: columns location missing from the header"):
        prep.prepare_fluent_speech_commands(root, tmp_path / "data", validate=False)


def test_recipe_yaml_names_its_own_benchmark_and_sets():
    hparams = peek_experiment([str(RECIPE / "conf" / "train.yaml"), "--tag", "t"])
    slurp = peek_experiment([str(ROOT / "egs" / "slurp" / "ic" / "conf" / "train.yaml"), "--tag", "t"])
    assert (hparams["corpus"], hparams["benchmark"]) == ("fluent_speech_commands", "ic_fsc")
    assert hparams["benchmark"] != slurp["benchmark"]  # summaries group by benchmark
    assert (hparams["train_set"], hparams["valid_set"], hparams["test_sets"]) == ("data/train", "data/valid",
                                                                                ["data/test"])
    assert hparams["task"].target == "elp.tasks.UtteranceClassification"
