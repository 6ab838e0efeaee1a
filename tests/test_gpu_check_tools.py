"""The GPU check's helpers run on CPU: synthetic data dirs at given lengths and the run report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from elp.data.kaldi_dir import read_data_dir, read_utt2num_samples, validate_data_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import gpu_report  # noqa: E402
import synthetic_data  # noqa: E402


def test_synthetic_sets_have_the_asked_lengths_and_tables(tmp_path):
    assert synthetic_data.main(["--out", str(tmp_path), "--kind", "classify", "--labels", "3", "--speakers", "2",
                                "--set", "train:9:1.5:1:3", "--set", "test:4:2:2:2"]) == 0
    validate_data_dir(tmp_path / "train")
    validate_data_dir(tmp_path / "test")
    seconds = sorted(n / 16000 for n in read_utt2num_samples(tmp_path / "train" / "utt2num_samples").values())
    assert len(seconds) == 9 and seconds[0] >= 1.0 and seconds[-1] == 3.0  # the longest is always MAX_S
    assert set(read_utt2num_samples(tmp_path / "test" / "utt2num_samples").values()) == {32000}
    train = read_data_dir(tmp_path / "train")
    assert sorted(set(train.utt2label.values())) == ["class0", "class1", "class2"]
    assert train.text is None and train.trials is None


def test_synthetic_asr_text_and_sv_trials(tmp_path):
    synthetic_data.main(["--out", str(tmp_path / "asr"), "--kind", "asr", "--set", "train:3:2:1:4"])
    texts = read_data_dir(tmp_path / "asr" / "train").text
    assert all(t == t.upper() and len(t.split()) >= 2 for t in texts.values())
    synthetic_data.main(["--out", str(tmp_path / "sv"), "--kind", "sv", "--speakers", "3",
                         "--set", "train:6:1.5:1:2", "--set", "test:6:1.5:1:2"])
    train, test = read_data_dir(tmp_path / "sv" / "train"), read_data_dir(tmp_path / "sv" / "test")
    assert set(test.utt2spk.values()).isdisjoint(train.utt2spk.values())  # unseen test speakers
    assert len(test.trials) == 15 and {t.target for t in test.trials} == {True, False}


@pytest.mark.parametrize("spec", ["train:1:2", "train:5:2:3:4", "train:5"])
def test_synthetic_set_errors_name_the_option(spec):
    with pytest.raises(SystemExit, match=f"--set '{spec}'"):
        synthetic_data.parse_set(spec)


def test_gpu_report_reads_a_finished_run(tmp_path):
    recipe = tmp_path / "egs" / "corpus" / "task"
    (recipe / "conf").mkdir(parents=True)
    (recipe / "run.sh").write_text("")
    (recipe / "conf" / "train.yaml").write_text("task: !new:elp.tasks.SpeakerVerification\n")
    synthetic_data.main(["--out", str(recipe / "data"), "--kind", "sv", "--set", "train:4:4:4:4"])
    validate_data_dir(recipe / "data" / "train")
    exp = recipe / "exp" / "gpu_elp"
    exp.mkdir(parents=True)
    recorded = {"train_set": "data/train", "task.!new:elp.tasks.SpeakerVerification.max_train_seconds": 3.0}
    (exp / "hparams_record.json").write_text(json.dumps({"hparams": recorded}))
    (exp / "train_stats.json").write_text(json.dumps({"epochs": 1, "train_wall_s": 2.0, "peak_mem_mb": 1024.0}))
    (exp / "results.json").write_text(json.dumps({"metric": {"name": "eer", "value": 12.5, "chance": 50.0}}))
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_report.py"), "--root", str(tmp_path),
                          "--tag", "gpu_elp"], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, cwd=recipe).stdout
    # 4 utterances of 4 s trained as 3 s crops: 12 s in 2 s of training
    assert "| corpus/task | 4 | 0.00 | 2.0 | 2.0 | 6 | 1.00 | eer 12.5 (chance 50) |" in out
    assert gpu_report.crop_seconds(recorded) == 3.0
