"""Every staged recipe (discovered: egs/*/*/run.sh) end to end on its mini corpus (tiny backbone).

Each recipe directory is copied to a temporary tree (``egs/<corpus>/<task>`` next to a link
to ``recipes/``), so the runs leave nothing in the checkout.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {p.parent.relative_to(ROOT / "egs").as_posix(): p.parent.relative_to(ROOT).as_posix()
           for p in sorted(ROOT.glob("egs/*/*/run.sh"))}
#: single-task recipes (a conf/train.yaml); joint recipes (conf/joint.yaml) have their own
#: end-to-end tests in tests/test_joint_training.py
SINGLE_TASK = [task for task, path in RECIPES.items() if (ROOT / path / "conf" / "train.yaml").exists()]
TINY = ["--backbone_arch", "tiny", "--method", "elp", "--tag", "t"]


def recipe_folds(recipe: Path) -> list[str]:
    """The folds a recipe declares (``./run.sh --show_folds true``)."""
    out = subprocess.run(["./run.sh", "--show_folds", "true"], cwd=recipe, capture_output=True, text=True, check=True)
    return out.stdout.split()


def copy_recipe(tmp_path: Path, task: str) -> Path:  # noqa: D401
    """A copy of one recipe (run.sh, conf, local) in ``tmp_path/egs/...``; returns its dir."""
    source = ROOT / RECIPES[task]
    target = tmp_path / RECIPES[task]
    target.mkdir(parents=True)
    for name in ("run.sh", "conf", "local"):
        if (source / name).is_dir():
            shutil.copytree(source / name, target / name)
        else:
            shutil.copy2(source / name, target / name)
    if not (tmp_path / "recipes").exists():
        (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    return target


def run_recipe(recipe: Path, *args: str, timeout: int = 900) -> str:
    """Run ``./run.sh args`` in ``recipe``; on a timeout the whole process group is killed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(["./run.sh", *args], cwd=recipe, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    assert process.returncode == 0, f"run.sh {' '.join(args)} failed:\n{stdout[-3000:]}\n{stderr[-5000:]}"
    return stdout + stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train_losses(train_log: Path) -> list[float]:
    """Training loss per epoch from SpeechBrain's FileTrainLogger file."""
    return [float(m) for m in re.findall(r"train loss: ([0-9.e+-]+)", train_log.read_text())]


def test_recipes_are_discovered():
    assert {"librispeech/asr", "voxceleb/sv", "iemocap/er", "slurp/ic", "speech_commands/kws",
            "fluent_speech_commands/ic"} <= set(SINGLE_TASK)
    assert set(RECIPES) - set(SINGLE_TASK) == {"multitask/er_ic_kws", "multitask/slurp_intent_scenario"}


@pytest.mark.slow
@pytest.mark.parametrize("task", SINGLE_TASK)
def test_recipe_end_to_end(tmp_path, task):
    recipe = copy_recipe(tmp_path, task)
    first_fold = recipe_folds(recipe)[:1]
    folds = ["--folds", first_fold[0]] if first_fold else []
    output = run_recipe(recipe, *TINY, *folds, "--", "--number_of_epochs", "3", "--ckpt_interval_steps", "0")
    for stage in range(6):
        assert f"Stage {stage}:" in output
    exp = recipe / "exp" / "t" / (f"fold{first_fold[0]}" if first_fold else "")
    losses = train_losses(exp / "train_log.txt")
    assert len(losses) == 3 and losses[-1] < losses[0], f"training loss did not fall: {losses}"
    result = json.loads((recipe / "exp" / "t" / "results.json").read_text())
    metric = result["metric"]
    assert metric["name"] and isinstance(metric["higher_is_better"], bool) and metric["chance"] is not None
    assert result["method"] == "elp" and result["learnable_params"] > 0 and result["train_wall_s"] > 0
    assert (exp / "adapters" / "adapters.safetensors").exists()
    assert "| elp |" in (recipe / "RESULTS.md").read_text()
    # the data dirs of stage 0/1 are Kaldi dirs with utt2num_samples
    data_dirs = [p.parent for p in (recipe / "data").rglob("wav.scp")]
    assert data_dirs and all((d / "utt2num_samples").exists() for d in data_dirs)


@pytest.fixture(scope="module")
def prepared_ic(tmp_path_factory) -> Path:
    """The IC recipe after stages 0-2 (mini SLURP corpus, data dirs, label inventory)."""
    recipe = copy_recipe(tmp_path_factory.mktemp("ic"), "slurp/ic")
    run_recipe(recipe, "--stop_stage", "2")
    return recipe


def checkpoints(save: Path) -> list[Path]:
    return sorted(p for p in save.glob("CKPT+*") if (p / "CKPT.yaml").exists())


def learnable_tensors(export_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(export_dir / "adapters.safetensors")


def kill_after_intra_epoch_checkpoint(recipe: Path, args: list[str], save: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(["./run.sh", *args], cwd=recipe, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not any("intra" in (c / "CKPT.yaml").read_text().lower()
                                               for c in checkpoints(save)):
        assert process.poll() is None, "training ended before an intra-epoch checkpoint was written"
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # like a crashed machine: no clean-up
    process.wait()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["elp", "full"])
def test_resume_after_kill_equals_the_uninterrupted_run(prepared_ic, method):
    recipe = prepared_ic
    common = ["--stage", "3", "--stop_stage", "3", "--backbone_arch", "tiny", "--method", method]
    hparams = ["--", "--number_of_epochs", "2", "--ckpt_interval_steps", "5"]
    run_recipe(recipe, *common, "--tag", f"straight_{method}", *hparams)

    save = recipe / "exp" / f"resumed_{method}" / "save"
    kill_after_intra_epoch_checkpoint(recipe, [*common, "--tag", f"resumed_{method}", *hparams], save)
    assert checkpoints(save), "no checkpoint survived the kill"
    assert not (recipe / "exp" / f"resumed_{method}" / "train_stats.json").exists()
    output = run_recipe(recipe, *common, "--tag", f"resumed_{method}", *hparams)
    assert "Loading a checkpoint" in output

    straight = learnable_tensors(recipe / "exp" / f"straight_{method}" / "adapters")
    resumed = learnable_tensors(recipe / "exp" / f"resumed_{method}" / "adapters")
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight), "resumed weights differ"
    assert train_losses(recipe / "exp" / f"straight_{method}" / "train_log.txt") == \
        train_losses(recipe / "exp" / f"resumed_{method}" / "train_log.txt")


def test_rerun_with_other_hparams_is_refused_in_one_line(prepared_ic):
    recipe = prepared_ic
    args = ["--stage", "3", "--stop_stage", "3", "--backbone_arch", "tiny", "--method", "weighted_sum", "--tag", "rerun"]
    run_recipe(recipe, *args, "--", "--number_of_epochs", "1")
    first = json.loads((recipe / "exp" / "rerun" / "train_stats.json").read_text())
    run_recipe(recipe, *args, "--", "--number_of_epochs", "1")  # finished: nothing to train
    again = json.loads((recipe / "exp" / "rerun" / "train_stats.json").read_text())
    assert first["final_train_loss"] is not None and again["final_train_loss"] == first["final_train_loss"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["./run.sh", *args, "--", "--number_of_epochs", "1", "--lr", "{head: 0.5}"], cwd=recipe,
                            env=env, capture_output=True, text=True)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "ERROR: exp/rerun: hparams changed since this experiment was trained: lr.head 0.005 -> 0.5" in output
    assert "Traceback" not in output
    result = subprocess.run(["./run.sh", "--stage", "4", "--stop_stage", "4", "--backbone_arch", "tiny",
                             "--tag", "typo"], cwd=recipe, env=env, capture_output=True, text=True)
    assert result.returncode != 0 and "exp/typo has no trained model" in result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("task,method,extra", [("slurp/ic", "elp", []), ("voxceleb/sv", "elp", []),
                                               ("librispeech/asr", "el", []),
                                               ("slurp/ic", "weighted_sum", ["--hidden_state_cache", "true"])],
                         ids=["ic", "sv", "asr", "ic-cache"])
def test_ddp_two_cpu_processes(tmp_path, task, method, extra):
    recipe = copy_recipe(tmp_path, task)
    run_recipe(recipe, "--stop_stage", "2", "--backbone_arch", "tiny")
    output = run_recipe(recipe, "--stage", "3", "--ddp_cpu", "2", "--backbone_arch", "tiny", "--method", method,
                        "--tag", "ddp", "--master_port", str(free_port()), "--", "--number_of_epochs", "3", "--ckpt_interval_steps", "0", *extra)
    assert "--distributed_backend=gloo" in output
    exp = recipe / "exp" / "ddp"
    losses = train_losses(exp / "train_log.txt")
    assert len(losses) == 3 and losses[-1] < losses[0], losses
    # one end-of-epoch checkpoint is kept: the best, plus the most recent when it is not the best
    assert 1 <= len(checkpoints(exp / "save")) <= 2
    assert len(list(exp.rglob("results.json"))) == 1
    hashes = {p.name: p.read_text() for p in exp.glob("rank*_learnable.sha256")}
    assert len(hashes) == 2 and len(set(hashes.values())) == 1, f"ranks diverged: {hashes}"
