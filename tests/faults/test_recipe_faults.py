"""Fault probes of the staged recipes' command line: every user mistake is one clear line and a
non-zero exit, before any stage runs (nothing is built or trained)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "egs" / "slurp" / "ic"


def run(*args: str, cwd: Path = RECIPE, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(RECIPE / "run.sh"), *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


@pytest.mark.parametrize("args,message", [
    (["--stage", "9"], "--stage 9 --stop_stage 5: stages are 0-5"),
    (["--stage", "4", "--stop_stage", "2"], "stages are 0-5 and stage <= stop_stage"),
    (["--method", "elpp"], "--method elpp: unknown; choose one of full weighted_sum"),
    (["--backbone", "wavlm_base"], "--backbone wavlm_base: unknown; choose one of"),
    (["--backbone_arch", "huge"], "--backbone_arch huge: unknown; choose one of tiny small"),
    (["--ngpu", "2"], "--ngpu 2 but torch sees 0 usable CUDA device(s)"),
    (["--no_such_flag", "1"], "no_such_flag"),
])
def test_bad_options_fail_in_one_line_before_any_stage(args, message):
    result = run(*args)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert "Stage 0" not in result.stderr


def test_relative_data_root_is_relative_to_the_callers_directory(tmp_path):
    (tmp_path / "corpora").mkdir()
    result = run("--data_root", "corpora/slurp", cwd=tmp_path)
    assert result.returncode != 0
    assert f"--data_root {tmp_path}/corpora/slurp: no such directory" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_lists_every_flag():
    result = run("--help")
    script = (ROOT / "recipes" / "run_task.sh").read_text()
    options = script[script.index("set -euo pipefail"):script.index("help_message=")]
    flags = {line.split("=")[0] for line in options.splitlines() if "=" in line and not line.startswith("#")}
    assert {"stage", "method", "ngpu", "ddp_cpu", "folds"} <= flags
    text = result.stdout + result.stderr
    missing = sorted(f for f in flags if f"--{f}" not in text)
    assert not missing, f"--help does not list {missing}"


def copy_of_recipe(tmp_path: Path) -> Path:
    recipe = tmp_path / "egs" / "slurp" / "ic"
    recipe.mkdir(parents=True)
    for name in ("run.sh", "conf", "local"):
        source = RECIPE / name
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, recipe / name)
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    return recipe


@pytest.mark.parametrize("gpus,flags,expected,absent", [
    # --prep_timeout 0: node rank 1 does not wait for node rank 0's data marker (tests/test_multinode.py does)
    ("1", ["--ngpu", "1", "--nnodes", "2", "--node_rank", "1", "--prep_timeout", "0"],
     ["torchrun --nnodes 2 --node_rank 1", "--nproc_per_node 1", "--distributed_backend=nccl"], ["Stage 4", "Stage 5"]),
    ("4", ["--ngpu", "4", "--nnodes", "2", "--node_rank", "0", "--master_addr", "node0"],
     ["torchrun --nnodes 2 --node_rank 0 --master_addr node0", "--nproc_per_node 4"], []),
    ("1", ["--ngpu", "1"], ["train.py conf/train.yaml", "--device cuda:0"], ["torchrun"]),
    ("0", ["--ddp_cpu", "2"], ["--nproc_per_node 2", "--distributed_backend=gloo", "--device cpu"], []),
])
def test_multi_node_dry_run_builds_the_training_command_and_guards_the_stages(tmp_path, gpus, flags, expected, absent):
    recipe = copy_of_recipe(tmp_path)
    result = subprocess.run([str(recipe / "run.sh"), "--stage", "3", "--stop_stage", "3", "--backbone_arch", "tiny",
                             "--dry_run", "true", *flags], cwd=recipe, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "ELP_FAKE_GPU_COUNT": gpus})
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for text in expected:
        assert text in output, output
    for text in absent:
        assert text not in output, output


def test_other_stages_run_on_node_rank_0_only(tmp_path):
    recipe = copy_of_recipe(tmp_path)
    result = subprocess.run([str(recipe / "run.sh"), "--stage", "0", "--stop_stage", "2", "--ngpu", "1", "--nnodes", "2",
                             "--node_rank", "1"], cwd=recipe, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "ELP_FAKE_GPU_COUNT": "1"})
    assert result.returncode == 0, result.stderr
    assert "Stage 0: skipped on node rank 1" in result.stderr and not (recipe / "data").exists()
