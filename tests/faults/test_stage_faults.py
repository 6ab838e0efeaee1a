"""Fault probes of the recipe stages: a partial corpus at stage 0, changed audio at stage 1,
bad inputs at stage 4, incomplete decode files at stage 5, and the shell commands that error
messages suggest. Each probe asserts a one-line error naming the culprit and the fix, or the
right behaviour; stages are driven through their scripts on tiny data (no training)."""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile

import elp
from data_fixtures import load_data_prep, make_iemocap, make_librispeech, make_slurp, write_noise
from elp.data.kaldi_dir import DataDirError, Trial, audio_identity, read_text_lines, validate_data_dir, write_data_dir
from elp.eval.scoring import DecodeCoverageError
from elp.runtime import run_main
from elp.tasks import SpeakerVerification, SpeechRecognition, UtteranceClassification
from recipe_fixtures import experiment, make_recipe

ROOT = Path(elp.__file__).resolve().parents[1]


def load_script(name: str):
    """``recipes/<name>.py`` as a module (its ``main`` runs a stage in process)."""
    spec = importlib.util.spec_from_file_location(f"{name}_stage", ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def keep(path: Path, kept: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in kept))


# ============================================================================ stage 5
def asr_test_set(root: Path, n: int = 6) -> tuple[Path, Path]:
    """A test set ``data/test`` of n transcribed utterances (no audio is read) and a complete decode dir."""
    utts = [f"s{i}-u{i}" for i in range(n)]
    text = {u: f"WORD{i} OTHER" for i, u in enumerate(utts)}
    test = write_data_dir(root / "data" / "test", wav_scp={u: f"/nowhere/{u}.wav" for u in utts},
                          utt2spk={u: u.split("-")[0] for u in utts}, text=text)
    decode = root / "decode" / "test"
    decode.mkdir(parents=True)
    keep(decode / "ref.txt", [f"{u} {text[u]}" for u in utts])
    keep(decode / "hyp.txt", [f"{u} {text[u]}" if i else f"{u} WORD0" for i, u in enumerate(utts)])
    return test, decode


def test_asr_scores_every_utterance_of_the_test_set(tmp_path):
    test, decode = asr_test_set(tmp_path)
    metric, extra = SpeechRecognition().score(test, decode)
    assert metric["value"] == pytest.approx(100 / 12) and extra["del"] == 1  # 1 deleted word of 12
    keep(decode / "hyp_beam.txt", lines(decode / "hyp.txt"))
    metric, extra = SpeechRecognition().score(test, decode)
    assert metric["name"] == SpeechRecognition.metric_name  # what a protocol may name (protocol_trials)
    assert sorted(extra) == sorted(SpeechRecognition.extra_metric_names)


@pytest.mark.parametrize("files", [("hyp.txt", "ref.txt"), ("hyp.txt",), ("ref.txt",)])
def test_asr_decode_cut_to_half_is_refused(tmp_path, files):
    test, decode = asr_test_set(tmp_path)
    for name in files:
        keep(decode / name, lines(decode / name)[:3])
    with pytest.raises(DecodeCoverageError) as error:
        SpeechRecognition().score(test, decode)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{decode / ('ref.txt' if 'ref.txt' in files else 'hyp.txt')} does not cover ")
    assert f"the 6 utterances of {test / 'text'}: 3 missing (s3-u3, s4-u4, s5-u5)" in message
    assert message.endswith("rerun stage 4 (inference) for this test set")


@pytest.mark.parametrize("damage, expected", [
    (lambda rows: rows + [rows[0]], "1 listed more than once (s0-u0)"),
    (lambda rows: rows + ["x9-u9 WORD"], "1 not in the test set (x9-u9)"),
    (lambda rows: rows[1:] + ["x9-u9 WORD"], "1 missing (s0-u0), 1 not in the test set (x9-u9)"),
])
def test_asr_hypotheses_with_extra_or_repeated_utterances_are_refused(tmp_path, damage, expected):
    test, decode = asr_test_set(tmp_path)
    keep(decode / "hyp.txt", damage(lines(decode / "hyp.txt")))
    with pytest.raises(DecodeCoverageError, match=re.escape(f"{decode / 'hyp.txt'} does not cover the 6 "
                                                            f"utterances of {test / 'text'}: {expected}; rerun")):
        SpeechRecognition().score(test, decode)


def test_asr_references_of_another_version_of_the_test_set_are_refused(tmp_path):
    test, decode = asr_test_set(tmp_path)
    (test / "text").write_text((test / "text").read_text().replace("WORD2 OTHER", "WORD2 CHANGED"))
    with pytest.raises(DecodeCoverageError, match=r"ref\.txt does not cover .*: 1 with another reference than "
                                                  r".*text \(s2-u2\)"):
        SpeechRecognition().score(test, decode)


def sv_test_set(root: Path) -> tuple[Path, Path, list[Trial]]:
    utts = ["a-1", "a-2", "b-1", "b-2"]
    trials = [Trial("a-1", "a-2", True), Trial("a-1", "b-1", False), Trial("b-1", "b-2", True),
              Trial("a-2", "b-2", False)]
    test = write_data_dir(root / "data" / "test", wav_scp={u: f"/nowhere/{u}.wav" for u in utts},
                          utt2spk={u: u[0] for u in utts}, trials=trials)
    decode = root / "decode" / "test"
    decode.mkdir(parents=True)
    keep(decode / "scores.txt", [f"{t.enroll} {t.test} {0.9 if t.target else 0.1:.6f} "
                                 f"{'target' if t.target else 'nontarget'}" for t in trials])
    return test, decode, trials


def test_sv_scores_half_of_the_trials_is_refused(tmp_path):
    test, decode, _ = sv_test_set(tmp_path)
    metric, extra = SpeakerVerification().score(test, decode)
    assert metric["value"] == 0.0 and metric["name"] == SpeakerVerification.metric_name
    assert sorted(extra) == sorted(SpeakerVerification.extra_metric_names)
    keep(decode / "scores.txt", lines(decode / "scores.txt")[:2])
    with pytest.raises(DecodeCoverageError, match=re.escape(
            f"{decode / 'scores.txt'} does not cover the 4 trials of {test / 'trials'}: 2 missing (b-1 b-2, a-2 b-2)")):
        SpeakerVerification().score(test, decode)


def test_sv_scores_of_another_trial_list_are_refused(tmp_path):
    test, decode, trials = sv_test_set(tmp_path)
    keep(decode / "scores.txt", [line.replace(" nontarget", " target") if line.startswith("a-1 b-1") else line
                                 for line in lines(decode / "scores.txt")])
    with pytest.raises(DecodeCoverageError, match=r"1 with another reference than .*trials \(a-1 b-1\)"):
        SpeakerVerification().score(test, decode)
    keep(decode / "scores.txt", ["a-1 a-2 0.9"])
    with pytest.raises(ValueError, match=r"scores\.txt:1: expected '<enroll> <test> <score> <target\|nontarget>'"):
        SpeakerVerification().score(test, decode)


@pytest.fixture
def scored_recipe(tmp_path, monkeypatch):
    """The classification recipe of recipe_fixtures with complete stage-4 outputs and train stats."""
    recipe = make_recipe(tmp_path)
    monkeypatch.chdir(recipe)
    exp = recipe / "exp" / "s"
    labels = dict(line.split() for line in lines(recipe / "data" / "test" / "utt2label"))
    decode = exp / "decode" / "test"
    decode.mkdir(parents=True)
    keep(decode / "predictions.txt", [f"{u} low {labels[u]}" for u in sorted(labels)])
    (exp / "train_stats.json").write_text(json.dumps({"learnable_params": 10, "train_wall_s": 1.0,
                                                      "peak_mem_mb": 1.0}))
    return recipe, exp


SCORE_ARGS = ["conf/train.yaml", "--backbone", "wavlm", "--method", "elp", "--tag", "s"]


def test_stage5_scores_the_whole_classification_test_set(scored_recipe, capsys):
    recipe, exp = scored_recipe
    assert run_main(load_script("score").main, SCORE_ARGS) == 0
    result = json.loads((exp / "results.json").read_text())
    assert result["metric"]["value"] == 50.0  # 'low' for all 8: the 4 odd utterances are right
    assert result["metric"]["name"] == UtteranceClassification.metric_name
    assert sorted(result["extra_metrics"]) == sorted(UtteranceClassification.extra_metric_names)


@pytest.mark.parametrize("damage, expected", [
    (lambda rows: rows[:4], "4 missing (test-4, test-5, test-6, ...)"),
    (lambda rows: rows + rows[:1], "1 listed more than once (test-0)"),
    (lambda rows: rows + ["train-0 low low"], "1 not in the test set (train-0)"),
    (lambda rows: [rows[0].rsplit(" ", 1)[0] + " low"] + rows[1:], "1 with another reference than"),
])
def test_stage5_refuses_predictions_that_do_not_cover_the_test_set(scored_recipe, capsys, damage, expected):
    recipe, exp = scored_recipe
    predictions = exp / "decode" / "test" / "predictions.txt"
    keep(predictions, damage(lines(predictions)))
    assert run_main(load_script("score").main, SCORE_ARGS) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"ERROR: {predictions.relative_to(recipe)} does not cover the 8 "
                                               "utterances of data/test/utt2label")
    assert expected in err[0] and err[0].endswith("rerun stage 4 (inference) for this test set")
    assert not (exp / "results.json").exists()


def test_stage5_of_a_cross_validation_fold_checks_the_folds_test_set(scored_recipe, capsys):
    """ER folds: stage 5 of fold k scores against data/fold<k>/test (run_task.sh's --data_dir)."""
    recipe, exp = scored_recipe
    shutil.copytree(recipe / "data" / "test", recipe / "data" / "fold2" / "test")
    fold_exp = exp / "fold2"
    shutil.copytree(exp / "decode", fold_exp / "decode")
    shutil.copy(exp / "train_stats.json", fold_exp / "train_stats.json")
    fold_args = ["conf/train.yaml", "--backbone", "wavlm", "--method", "elp", "--tag", "s_fold2", "--output_folder",
                 str(fold_exp), "--data_dir", "data/fold2", "--results_file", "fold_results.json", "--results_md", ""]
    assert run_main(load_script("score").main, fold_args) == 0
    assert json.loads((fold_exp / "fold_results.json").read_text())["metric"]["value"] == 50.0
    keep(recipe / "data" / "fold2" / "test" / "utt2label", lines(recipe / "data" / "test" / "utt2label")[:6])
    assert run_main(load_script("score").main, fold_args) == 1
    assert "2 not in the test set (test-6, test-7)" in capsys.readouterr().err


# ============================================================================ stage 4
def sv_recipe(tmp_path: Path) -> Path:
    """The VoxCeleb recipe's conf with validated data/{train,valid,test} of tiny noise files."""
    recipe = tmp_path / "egs" / "voxceleb" / "sv"
    shutil.copytree(ROOT / "egs" / "voxceleb" / "sv" / "conf", recipe / "conf")
    for name, speakers in (("train", "ab"), ("valid", "ab"), ("test", "xy")):
        utts = [f"{s}-{name}{i}" for s in speakers for i in range(2)]
        wavs = {u: str(write_noise(recipe / "wav" / f"{u}.wav", seconds=0.05, seed=k)) for k, u in enumerate(utts)}
        trials = [Trial(utts[0], u, u[0] == utts[0][0]) for u in utts[1:]] if name == "test" else None
        write_data_dir(recipe / "data" / name, wav_scp=wavs, utt2spk={u: u[0] for u in wavs}, trials=trials)
        validate_data_dir(recipe / "data" / name)
    trained(recipe)
    return recipe


def trained(recipe: Path, tag: str = "t") -> None:
    """What stage 4 asks of an experiment before it loads anything: an end-of-epoch checkpoint."""
    checkpoint = recipe / "exp" / tag / "save" / "CKPT+2026-12-07+00-00-00+00"
    checkpoint.mkdir(parents=True)
    (checkpoint / "CKPT.yaml").write_text("end-of-epoch: true\n")


def stage4_without_model(monkeypatch):
    """recipes/infer.py whose hparams loading (the backbone) fails the test if reached."""
    infer = load_script("infer")

    def must_not_load(*args, **kwargs):
        raise AssertionError("stage 4 loaded the model before checking its inputs")

    monkeypatch.setattr(infer, "load_experiment", must_not_load)
    return infer


INFER_ARGS = ["conf/train.yaml", "--backbone", "wavlm", "--method", "elp", "--tag", "t", "--device", "cpu"]


def test_unknown_trial_utterance_is_refused_before_any_embedding(tmp_path, monkeypatch, capsys):
    recipe = sv_recipe(tmp_path)
    monkeypatch.chdir(recipe)
    with open(recipe / "data" / "test" / "trials", "a") as handle:  # edited after stage 1
        handle.write("x-test0 z-test9 nontarget\n")
    assert run_main(stage4_without_model(monkeypatch).main, INFER_ARGS) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["ERROR: data/test/trials: 1 of 4 trial(s) name 1 utterance(s) not in data/test/wav.scp, e.g. "
                   "'z-test9'; fix the trial list, or rerun stages 0 and 1 (data preparation, validation)"]


def test_sv_write_outputs_checks_the_trials_before_embedding(tmp_path):
    recipe = sv_recipe(tmp_path)
    test = recipe / "data" / "test"
    with open(test / "trials", "a") as handle:
        handle.write("x-test0 z-test9 nontarget\n")

    class NoBrain:
        def predict(self, *args, **kwargs):
            raise AssertionError("embedded before the trials were checked")

    task = SpeakerVerification()
    with pytest.raises(DataDirError, match=r"trials: 1 of 4 trial\(s\) name 1 utterance\(s\) not in the test set"):
        task.write_outputs(NoBrain(), task.dataset(test, "test", None), test, tmp_path / "decode",
                           lambda data: {}, tmp_path)


@pytest.mark.parametrize("damage, expected", [
    (lambda recipe: (recipe / "data" / "test" / "utt2num_samples").unlink(),
     "data/test/utt2num_samples is missing: run stage 1 (data validation) before stage 4"),
    (lambda recipe: (recipe / "data" / "test" / "trials").unlink(),
     "data/test/trials is missing: a speaker-verification test set needs a trial list"),
    (lambda recipe: (recipe / "data" / "valid" / "utt2num_samples").unlink(),
     "calibration_set data/valid has no utt2num_samples: prepare and validate it (stages 0 and 1) before stage 4"),
])
def test_stage4_checks_its_data_before_loading_the_model(tmp_path, monkeypatch, capsys, damage, expected):
    recipe = sv_recipe(tmp_path)
    monkeypatch.chdir(recipe)
    damage(recipe)
    assert run_main(stage4_without_model(monkeypatch).main, INFER_ARGS) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err


def test_stage4_without_a_trained_model_stops_before_loading_it(tmp_path, monkeypatch, capsys):
    recipe = sv_recipe(tmp_path)
    monkeypatch.chdir(recipe)
    assert run_main(stage4_without_model(monkeypatch).main, [*INFER_ARGS[:-3], "tt", "--device", "cpu"]) == 1
    assert capsys.readouterr().err.strip() == (
        "ERROR: exp/tt has no trained model (no save/CKPT+* checkpoint, no adapters/ export); run stage 3 for "
        "this tag first, or pick an existing --tag: t")


def test_stage4_refuses_an_unlabelled_classification_test_utterance(tmp_path, monkeypatch, capsys):
    recipe = make_recipe(tmp_path)
    monkeypatch.chdir(recipe)
    trained(recipe)
    keep(recipe / "data" / "test" / "utt2label", lines(recipe / "data" / "test" / "utt2label")[1:])
    assert run_main(stage4_without_model(monkeypatch).main, INFER_ARGS) == 1
    assert capsys.readouterr().err.strip() == (
        "ERROR: data/test/utt2label: 1 utterance(s) of the test set have no label, e.g. 'test-0'; write one label "
        "per utterance and rerun stage 1")


def test_stage4_refuses_an_asr_test_set_without_transcripts(tmp_path):
    test, _ = asr_test_set(tmp_path)
    (test / "text").unlink()
    with pytest.raises(DataDirError, match="utt2num_samples is missing: run stage 1"):
        SpeechRecognition().check_inference_inputs([test])
    keep(test / "utt2num_samples", [f"s{i}-u{i} 1600" for i in range(6)])
    with pytest.raises(DataDirError, match=r"test/text is missing: an ASR test set needs transcripts"):
        SpeechRecognition().check_inference_inputs([test])


# ============================================================================ stage 0
def prep_cli(corpus: str, task: str, caplog, *argv) -> tuple[int, str]:
    """Run a data-prep script's main in process: (exit status, the error lines it logged)."""
    caplog.clear()
    with caplog.at_level(logging.INFO):
        try:
            rc = load_data_prep(corpus, task).main([str(a) for a in argv])
        except SystemExit as exit_:
            rc = exit_.code
    return rc, [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def complete_librispeech(root: Path) -> Path:
    """The LibriSpeech fixture with the recipe's training subset and no stray file."""
    corpus = make_librispeech(root)
    (corpus / "dev-clean" / "84" / "121123" / "84-121123-0002.flac").unlink()
    shutil.copytree(corpus / "dev-clean", corpus / "train-clean-100")
    return corpus


def test_librispeech_complete_corpus_prepares_the_recipes_sets(tmp_path, caplog):
    complete_librispeech(tmp_path / "corpus")
    rc, errors = prep_cli("librispeech", "asr", caplog, "--corpus-root", tmp_path / "corpus", "--out",
                          tmp_path / "data", "--skip-validation")
    assert (rc, errors) == (0, [])
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["dev_clean", "test_clean", "train_clean_100"]
    assert "subset test-other not found" in caplog.text  # an extra test set of the default list


@pytest.mark.parametrize("damage, expected", [
    (lambda c: shutil.rmtree(c / "train-clean-100"), "train-clean-100 missing (1 of 3 required parts)"),
    (lambda c: shutil.rmtree(c / "test-clean"), "test-clean missing (1 of 3 required parts)"),
    (lambda c: (c / "dev-clean" / "84" / "121123" / "84-121123.trans.txt").unlink(),
     "dev-clean: audio without a transcript line: 2 (e.g. 84-121123-0000, 84-121123-0001)"),
    (lambda c: (c / "train-clean-100" / "1272" / "128104" / "1272-128104-0001.flac").unlink(),
     "train-clean-100: transcript lines without audio: 1 (e.g. 1272-128104-0001)"),
])
def test_partial_librispeech_fails_at_stage_0_naming_what_is_missing(tmp_path, caplog, damage, expected):
    corpus = complete_librispeech(tmp_path / "corpus")
    damage(corpus)
    rc, errors = prep_cli("librispeech", "asr", caplog, "--corpus-root", tmp_path / "corpus", "--out",
                          tmp_path / "data", "--skip-validation")
    assert rc == 1 and len(errors) == 1 and expected in errors[0] and "\n" not in errors[0], errors


@pytest.mark.slow
def test_run_sh_stage_0_names_the_missing_subset_and_its_suggested_options_work(tmp_path):
    recipe = tmp_path / "egs" / "librispeech" / "asr"
    recipe.mkdir(parents=True)
    for name in ("run.sh", "conf", "local"):
        source = ROOT / "egs" / "librispeech" / "asr" / name
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, recipe / name)
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    corpus = complete_librispeech(tmp_path / "corpus")
    shutil.rmtree(corpus / "train-clean-100")

    def stage0(*options):
        return subprocess.run(["./run.sh", "--stage", "0", "--stop_stage", "0", "--data_root", str(tmp_path / "corpus"),
                               *options], cwd=recipe, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})

    result = stage0()
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert len(errors) == 1 and "train-clean-100 missing (1 of 3 required parts)" in errors[0], result.stderr
    suggestion = suggested(errors[0], r"\(run\.sh: --prep_opts '([^']*)'\)")
    assert stage0("--prep_opts", suggestion).returncode == 0
    assert sorted(p.name for p in (recipe / "data").iterdir()) == ["dev_clean", "test_clean"]


def test_librispeech_subsets_named_on_the_command_line_are_all_required(tmp_path, caplog):
    complete_librispeech(tmp_path / "corpus")
    rc, errors = prep_cli("librispeech", "asr", caplog, "--corpus-root", tmp_path / "corpus", "--out",
                          tmp_path / "data", "--subsets", "dev-clean", "test-other", "--skip-validation")
    assert rc == 1 and "test-other missing (1 of 2 required parts)" in errors[0]
    assert not (tmp_path / "data").exists()  # checked before anything is written


def test_librispeech_drop_incomplete_drops_and_logs(tmp_path, caplog):
    make_librispeech(tmp_path / "corpus")  # dev-clean holds a flac without a transcript line
    rc, errors = prep_cli("librispeech", "asr", caplog, "--corpus-root", tmp_path / "corpus", "--out",
                          tmp_path / "data", "--subsets", "dev-clean", "--skip-validation")
    assert rc == 1 and "--drop-incomplete (run.sh: --prep_opts --drop-incomplete)" in errors[0]
    rc, errors = prep_cli("librispeech", "asr", caplog, "--corpus-root", tmp_path / "corpus", "--out",
                          tmp_path / "data", "--subsets", "dev-clean", "--skip-validation", "--drop-incomplete")
    assert rc == 0 and "audio without a transcript line, dropped: 1 (e.g. 84-121123-0002)" in caplog.text
    assert len(lines(tmp_path / "data" / "dev_clean" / "text")) == 4


def complete_iemocap(root: Path) -> Path:
    release = make_iemocap(root, sessions=(1, 2, 3, 4, 5))
    (release / "Session1" / "sentences" / "wav" / "Ses01F_impro01" / "Ses01F_impro01_F009.wav").unlink()
    return release


@pytest.mark.parametrize("damage, expected", [
    (lambda r: [shutil.rmtree(r / f"Session{n}") for n in (4, 5)], "Session4, Session5 missing (2 of 5 required"),
    (lambda r: shutil.rmtree(r / "Session2" / "dialog"), "Session2: dialog/EmoEvaluation missing"),
    (lambda r: write_noise(r / "Session3" / "sentences" / "wav" / "Ses03F_impro01" / "Ses03F_impro01_F007.wav",
                           seconds=0.1), "Session3: audio without a label line: 1 (e.g. Ses03F_impro01_F007)"),
    (lambda r: (r / "Session3" / "sentences" / "wav" / "Ses03F_impro01" / "Ses03F_impro01_M000.wav").unlink(),
     "Session3: label lines without audio: 1 (e.g. Ses03F_impro01_M000)"),
])
def test_partial_iemocap_fails_at_stage_0_naming_what_is_missing(tmp_path, caplog, damage, expected):
    release = complete_iemocap(tmp_path / "corpus")
    damage(release)
    rc, errors = prep_cli("iemocap", "er", caplog, "--corpus-root", tmp_path / "corpus", "--out", tmp_path / "data",
                          "--skip-validation")
    assert rc == 1 and len(errors) == 1 and expected in errors[0], errors


def test_iemocap_sessions_option_prepares_the_named_sessions(tmp_path, caplog):
    release = complete_iemocap(tmp_path / "corpus")
    shutil.rmtree(release / "Session5")
    rc, errors = prep_cli("iemocap", "er", caplog, "--corpus-root", tmp_path / "corpus", "--out", tmp_path / "data",
                          "--skip-validation")
    assert rc == 1 and "--prep_opts '--sessions 1 2 3' --folds '1 2 3'" in errors[0]
    rc, errors = prep_cli("iemocap", "er", caplog, "--corpus-root", tmp_path / "corpus", "--out", tmp_path / "data",
                          "--skip-validation", "--sessions", "1", "2", "3", "4")
    assert (rc, errors) == (0, [])
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [
        "fold1", "fold2", "fold3", "fold4", "session1", "session2", "session3", "session4"]


def slurp_record(index: int, files: int = 2) -> str:
    return json.dumps({"slurp_id": index, "sentence": f"wake me up at {index}", "intent": "alarm_set",
                       "recordings": [{"file": f"audio-{index}-{k}.flac"} for k in range(files)]})


@pytest.mark.parametrize("damage, expected", [
    (lambda r: (r / "dataset" / "slurp" / "test.jsonl").unlink(), "test.jsonl missing (1 of 3 required parts)"),
    (lambda r: shutil.rmtree(r / "slurp_real"), "audio folder slurp_real/ not found"),
    (lambda r: [(r / "slurp_real" / f"audio-{i}-1.flac").unlink() for i in range(3)],
     "devel: recordings whose audio is absent from"),
])
def test_partial_slurp_fails_at_stage_0_naming_what_is_missing(tmp_path, caplog, damage, expected):
    make_slurp(tmp_path / "slurp", {split: [slurp_record(i + 100 * k) for i in range(10)]
                                    for k, split in enumerate(["devel", "train", "test"])})
    damage(tmp_path / "slurp")
    rc, errors = prep_cli("slurp", "ic", caplog, "--corpus-root", tmp_path / "slurp", "--out", tmp_path / "data",
                          "--skip-validation")
    assert rc == 1 and len(errors) == 1 and expected in errors[0], errors
    if "absent" in expected:
        assert ": 3 (e.g. audio-0-1.flac, audio-1-1.flac, audio-2-1.flac)" in errors[0]


@pytest.mark.parametrize("absent, tolerated", [(1, True), (2, False)])
def test_slurp_tolerates_the_few_recordings_its_lists_name_without_audio(tmp_path, caplog, monkeypatch, absent,
                                                                         tolerated):
    """SLURP's own train list names a file its audio download lacks: up to TOLERATED_ABSENT of a
    split's recordings (0.1 %; 5 % here, for a 20-recording split) is logged, more is an error."""
    prep = load_data_prep("slurp", "ic")
    assert prep.TOLERATED_ABSENT == 0.001
    monkeypatch.setattr(prep, "TOLERATED_ABSENT", 0.05)
    make_slurp(tmp_path / "slurp", {"train": [slurp_record(i, files=1) for i in range(20)]},
               absent=[f"audio-{i}-0.flac" for i in range(absent)])
    with caplog.at_level(logging.INFO):
        if tolerated:
            (train,) = prep.prepare_slurp(tmp_path / "slurp", tmp_path / "data", splits=["train"], validate=False)
            assert len(lines(train / "wav.scp")) == 19 and "dropped: 1 (e.g. audio-0-0.flac)" in caplog.text
        else:
            with pytest.raises(prep.CorpusLayoutError, match=r"train: recordings whose audio is absent from .*: 2 "
                                                             r"\(e\.g\. audio-0-0\.flac, audio-1-0\.flac\)"):
                prep.prepare_slurp(tmp_path / "slurp", tmp_path / "data", splits=["train"], validate=False)


def test_speech_commands_without_a_command_word_fails_at_stage_0(tmp_path, caplog):
    root = tmp_path / "speech_commands_v0.02"
    for word in ("yes", "no", "up", "down", "left", "right", "on", "off", "stop"):  # no "go"
        write_noise(root / word / "0a7c2a8d_nohash_0.wav", seconds=0.05)
    for name in ("validation_list.txt", "testing_list.txt"):
        (root / name).write_text("")
    rc, errors = prep_cli("speech_commands", "kws", caplog, "--corpus-root", root, "--out", tmp_path / "data",
                          "--skip-validation")
    assert rc == 1 and "go missing (1 of 10 required parts)" in errors[0], errors


def test_voxceleb_without_the_test_part_fails_at_stage_0(tmp_path, caplog):
    for utt in ("id10001/yt-a/00001", "id10001/yt-a/00002", "id10270/yt-b/00001"):
        write_noise(tmp_path / "vox1" / "wav" / f"{utt}.wav", seconds=0.05)
    (tmp_path / "vox1" / "veri_test2.txt").write_text("1 id10270/yt-b/00001.wav id10270/yt-b/00002.wav\n"
                                                      "0 id10270/yt-b/00001.wav id10271/yt-c/00001.wav\n")
    rc, errors = prep_cli("voxceleb", "sv", caplog, "--corpus-root", tmp_path / "vox1", "--out", tmp_path / "data",
                          "--skip-validation")
    assert rc == 1 and "names 2 utterance(s) without audio" in errors[0] and "vox1_test_wav" in errors[0], errors


# ============================================================================ stage 1
def stage1(capsys, caplog, *argv) -> tuple[int, str]:
    caplog.clear()
    with caplog.at_level(logging.INFO):
        rc = load_script("validate_data").main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out + captured.err + caplog.text


def validated_dir(root: Path) -> Path:
    utts = [f"spk{i % 2}-u{i}" for i in range(4)]
    wavs = {u: str(write_noise(root / "audio" / f"{u}.wav", seconds=0.1, seed=i)) for i, u in enumerate(utts)}
    return write_data_dir(root / "data" / "train", wav_scp=wavs, utt2spk={u: u.split("-")[0] for u in utts})


def nan_wav(path: Path) -> None:
    samples = np.full(1600, 0.01, dtype=np.float32)
    samples[800] = np.nan
    soundfile.write(str(path), samples, 16000, subtype="FLOAT")


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])  # the header still declares every frame


@pytest.mark.parametrize("change, expected", [(nan_wav, "non-finite"), (truncate, "truncated")])
def test_stage1_rereads_audio_changed_after_it_was_validated(tmp_path, capsys, caplog, monkeypatch, change, expected):
    from elp.data import kaldi_dir

    data = validated_dir(tmp_path)
    assert stage1(capsys, caplog, data)[0] == 0
    opened = []
    real = kaldi_dir.check_recording
    monkeypatch.setattr(kaldi_dir, "check_recording", lambda entry, **kw: opened.append(entry) or real(entry, **kw))
    rc, out = stage1(capsys, caplog, data)
    assert rc == 0 and opened == [] and "audio already checked" in out  # unchanged: nothing re-read
    change(tmp_path / "audio" / "spk1-u1.wav")
    rc, out = stage1(capsys, caplog, data)
    assert rc == 1 and "audio files changed since the last check" in out
    assert "utt 'spk1-u1'" in out and expected in out
    assert len(opened) == 4  # every recording re-read


def test_audio_identity_follows_the_file_each_entry_reads(tmp_path):
    wav = write_noise(tmp_path / "a.wav", seconds=0.05)
    import kaldiio

    ark = tmp_path / "a.ark"
    kaldiio.save_ark(str(ark), {"u": (16000, (np.zeros(800) + 1).astype(np.int16))})
    wav_scp = {"plain": str(wav), "ark": f"{ark}:2", "pipe": f"sox {wav} -t wav - |",
               "shell": "gunzip -c x.wav.gz |"}
    before = {key: audio_identity({key: entry}) for key, entry in wav_scp.items()}
    assert {key: audio_identity({key: entry}) for key, entry in wav_scp.items()} == before  # nothing changed
    stat = os.stat(wav)
    os.utime(wav, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # same size, written again later
    with open(ark, "ab") as handle:  # the archive grew: its entries changed too
        handle.write(b"\0")
    after = {key: audio_identity({key: entry}) for key, entry in wav_scp.items()}
    assert [key for key in wav_scp if after[key] != before[key]] == ["plain", "ark", "pipe"]
    assert audio_identity({"shell": "gunzip -c y.wav.gz |"}) != before["shell"]  # a command: its text


# ============================================================================ suggested commands
def run_bash(command: str, locale: str) -> None:
    subprocess.run(["bash", "-c", command], check=True, env={**os.environ, "LC_ALL": locale}, timeout=60)


def suggested(message: str, pattern: str) -> str:
    match = re.search(pattern, message)
    assert match, message
    return match.group(1)


@pytest.mark.parametrize("locale", ["C", "C.UTF-8"])
def test_the_suggested_sed_removes_a_byte_order_mark(tmp_path, locale):
    path = tmp_path / "my data" / "utt2spk"
    path.parent.mkdir()
    path.write_bytes(b"\xef\xbb\xbfu1 s1\nu2 s2\n")
    with pytest.raises(DataDirError) as error:
        read_text_lines(path)
    command = suggested(str(error.value), r"remove it \(e\.g\. (sed .*)\)$")
    assert command == f"sed -i '1s/^\\xEF\\xBB\\xBF//' '{path}'"
    run_bash(command, locale)
    assert path.read_bytes() == b"u1 s1\nu2 s2\n"
    assert read_text_lines(path) == [(1, "u1 s1"), (2, "u2 s2")]


def test_the_suggested_iconv_converts_a_latin1_file(tmp_path):
    path = tmp_path / "my data" / "text"
    path.parent.mkdir()
    path.write_bytes("u1 CAF\u00c9 NOIR\n".encode("latin-1"))
    with pytest.raises(DataDirError) as error:
        read_text_lines(path)
    run_bash(suggested(str(error.value), r"e\.g\. (iconv .*)$"), "C")
    assert read_text_lines(path) == [(1, "u1 CAF\u00c9 NOIR")]


def test_the_suggested_sort_makes_a_data_dir_valid(tmp_path):
    utts = ["a-1", "a-10", "a-2", "b-1"]
    wavs = {u: str(write_noise(tmp_path / f"{u}.wav", seconds=0.05)) for u in utts}
    data = write_data_dir(tmp_path / "my data", wav_scp=wavs, utt2spk={u: u[0] for u in utts})
    keep(data / "utt2spk", ["b-1 b", "a-2 a", "a-10 a", "a-1 a"])
    with pytest.raises(DataDirError) as error:
        validate_data_dir(data)
    command = suggested(str(error.value), r"sort it \((LC_ALL=C sort .*?)\) or use")
    run_bash(command, "C.UTF-8")  # the prefix sets C ordering whatever the user's locale
    assert lines(data / "utt2spk") == ["a-1 a", "a-10 a", "a-2 a", "b-1 b"]
    assert sorted(validate_data_dir(data)) == utts


# ============================================================================ run options
def test_restart_on_a_new_experiment_starts_it(tmp_path, monkeypatch):
    recipe = make_recipe(tmp_path)
    monkeypatch.chdir(recipe)
    hparams, _ = experiment(recipe, "--tag", "fresh", "--restart", "true")
    from elp.train import recipe as plumbing

    while plumbing._HELD:
        plumbing._HELD.pop().__exit__(None, None, None)
    assert Path(hparams["output_folder"]).resolve() == (recipe / "exp" / "fresh").resolve()
    assert sorted(p.name for p in (recipe / "exp").iterdir() if not p.name.startswith(".")) == ["fresh"]
    assert (recipe / "exp" / "fresh" / "hparams_record.json").is_file()


def test_a_data_prep_error_names_the_option_of_the_script_that_ran_it(tmp_path, caplog, monkeypatch):
    (tmp_path / "empty").mkdir()
    rc, errors = prep_cli("slurp", "ic", caplog, "--corpus-root", tmp_path / "empty", "--out", tmp_path / "data")
    assert rc == 1 and errors[0].endswith("not found: --corpus-root must be the SLURP checkout")
    monkeypatch.setenv("ELP_CORPUS_ROOT_OPTION", "--data_root")  # what recipes/run_task.sh sets for stage 0
    rc, errors = prep_cli("slurp", "ic", caplog, "--corpus-root", tmp_path / "empty", "--out", tmp_path / "data")
    assert rc == 1 and errors == [errors[0]] and errors[0].endswith("not found: --data_root must be the SLURP checkout")
    assert 'ELP_CORPUS_ROOT_OPTION=${data_root:+--data_root} python local/data_prep.py' in \
        (ROOT / "recipes" / "run_task.sh").read_text()
