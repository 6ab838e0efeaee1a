"""LibriSpeech 960 h: the mini corpus's train-clean-360 and train-other-500, data preparation of
train_960 from them, and run_all.sh --librispeech_train 960 (its command lines; end to end in
mini mode in the slow test)."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from data_fixtures import load_data_prep

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools.mini_corpus import librispeech  # noqa: E402
from tools.mini_corpus.espeak import done_marker  # noqa: E402

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="espeak-ng not installed (sudo apt-get install espeak-ng)")


def utterances(subset_dir: Path) -> list[str]:
    return sorted(p.stem for p in subset_dir.glob("*/*/*.flac"))


@needs_espeak
def test_mini_corpus_adds_the_960_h_subsets_and_data_prep_combines_them(tmp_path):
    out = tmp_path / "corpus"
    base = librispeech.build(out, size="tiny")
    base_marker = done_marker(out, "librispeech").read_text()
    extra = librispeech.build_train_960(out, size="tiny")
    assert extra == {"train_960": {"train-clean-360": 2, "train-other-500": 2}, "skipped": False}
    root = out / "LibriSpeech"
    assert sorted(p.name for p in root.iterdir()) == sorted([*librispeech.SUBSETS, "train-clean-360", "train-other-500"])
    for subset in ("train-clean-360", "train-other-500"):  # the real layout
        files = sorted(str(p.relative_to(root / subset)) for p in (root / subset).rglob("*") if p.is_file())
        assert len(files) == 4 and all(re.fullmatch(r"(\d+)/(\d+)/\1-\2(-\d{4}\.flac|\.trans\.txt)", f) for f in files)
    # the LibriSpeech build is kept as it was; a second call has nothing to do
    assert done_marker(out, "librispeech").read_text() == base_marker and base["skipped"] is False
    assert librispeech.build_train_960(out, size="tiny")["skipped"] is True
    # training sentences of the extra subsets are in no dev or test subset
    texts = {s: {line.split(" ", 1)[1] for t in (root / s).rglob("*.trans.txt") for line in t.read_text().splitlines()}
             for s in ("train-clean-360", "train-other-500", "dev-clean", "test-clean")}
    assert not (texts["train-clean-360"] | texts["train-other-500"]) & (texts["dev-clean"] | texts["test-clean"])

    prep = load_data_prep("librispeech", "asr")
    prep.prepare_librispeech(out, tmp_path / "data", train_960=True)
    combined = (tmp_path / "data" / "train_960" / "wav.scp").read_text().split("\n")
    expected = sorted(utterances(root / "train-clean-100") + utterances(root / "train-clean-360")
                      + utterances(root / "train-other-500"))
    assert [line.split()[0] for line in combined if line] == expected and len(expected) == 8
    assert (tmp_path / "data" / "train_960" / "utt2num_samples").is_file()


def test_mini_corpus_960_needs_the_librispeech_build_first(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-clean-100 is missing: build the mini LibriSpeech first"):
        librispeech.build_train_960(tmp_path / "corpus", size="tiny")


def test_run_all_librispeech_train_960_reaches_every_call_of_the_recipe():
    env = {k: v for k, v in os.environ.items() if k != "SLURM_JOB_ID"}
    result = subprocess.run(["./run_all.sh", "--dry_run", "true", "--recipes", "librispeech/asr slurp/ic",
                             "--methods", "elp", "--jobs", "1", "--librispeech_train", "960",
                             "--recipe_opts", "librispeech: -- --batch_size 2"],
                            cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("cd egs/")]
    options = "--prep_opts --train-960 --mini_corpus_opts --librilight\\ --train-960"
    hparams = "-- --train_split train_960 --batch_size 2"
    assert sorted(lines) == [
        f"cd egs/librispeech/asr && ./run.sh --stage 3 --stop_stage 5 --method elp --tag mini_elp --master_port 29501 "
        f"--backbone wavlm_plus {options} {hparams}",
        f"cd egs/librispeech/asr && ./run.sh --stop_stage 2 --backbone wavlm_plus {options} {hparams}",
        "cd egs/slurp/ic && ./run.sh --stage 3 --stop_stage 5 --method elp --tag mini_elp --master_port 29501 "
        "--backbone wavlm_plus --",
        "cd egs/slurp/ic && ./run.sh --stop_stage 2 --backbone wavlm_plus --",
    ]
    wrong = subprocess.run(["./run_all.sh", "--dry_run", "true", "--librispeech_train", "360"], cwd=ROOT,
                           capture_output=True, text=True, env=env, timeout=60)
    assert wrong.returncode == 1 and "--librispeech_train 360: 100 or 960" in wrong.stderr


@pytest.mark.slow
@needs_espeak
def test_run_all_librispeech_960_end_to_end_in_mini_mode(tmp_path):
    """run_all.sh in a copy of the project (its own egs/ and exp/), LibriSpeech only, the mini
    corpus with the 960 h subsets, a tiny random backbone, one epoch: the job trains on
    data/train_960 and the summary has its WER."""
    from elp.testing import save_tiny_checkpoint
    from test_multinode import copy_project

    recipe = copy_project(tmp_path, ["librispeech/asr"]) / "egs" / "librispeech" / "asr"
    backbone = save_tiny_checkpoint("wavlm_plus", tmp_path / "tiny_backbone")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("SLURM_JOB_ID", None)
    result = subprocess.run(["./run_all.sh", "--recipes", "librispeech/asr", "--methods", "elp", "--jobs", "1",
                             "--epochs", "1", "--librispeech_train", "960", "--backbone_source", str(backbone)],
                            cwd=tmp_path, capture_output=True, text=True, env=env, timeout=1800)
    logs = "\n".join(p.read_text()[-3000:] for p in sorted((tmp_path / "exp" / "run_all" / "logs").glob("*.log")))
    assert result.returncode == 0, result.stderr[-3000:] + logs
    wav_scp = (recipe / "data" / "train_960" / "wav.scp").read_text().splitlines()
    subsets = {line.split()[0].split("-")[0][0] for line in wav_scp}
    assert len(wav_scp) == 240 + 24 + 24 and subsets == {"1", "5", "6"}  # speakers 1001.., 5001.., 6001..
    exp = recipe / "exp" / "wavlm_plus_elp"
    hparams = (exp / "hyperparams.yaml").read_text()
    assert re.search(r"^train_set: data/train_960$", hparams, flags=re.M), hparams[:2000]
    assert (recipe / "data" / "lang_train_960").is_dir()
    summary = json.loads((tmp_path / "exp" / "summary.json").read_text())
    assert "librispeech" in json.dumps(summary) and (exp / "results.json").is_file()
