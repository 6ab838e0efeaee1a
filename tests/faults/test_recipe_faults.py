"""Fault probes of the staged recipes' command line: every user mistake is one clear line and a
non-zero exit, before any stage runs (nothing is built or trained)."""

from __future__ import annotations

import os
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
