"""recipes/utils/parse_options.sh, recipes/utils/log.sh and recipes/path.sh, driven through
bash snippets."""
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PARSE_OPTIONS = ROOT / "recipes" / "utils" / "parse_options.sh"
LOG = ROOT / "recipes" / "utils" / "log.sh"
PATH_SH = ROOT / "recipes" / "path.sh"

RECIPE = f"""
set -euo pipefail
stage=0
stop_stage=100
use_gpu=false
nj=4
data_dir=data/train
help_message="Usage: run.sh [--stage N] [--stop-stage N] [--use-gpu true|false] [-- hparams]"
. {PARSE_OPTIONS}
for name in stage stop_stage use_gpu nj data_dir; do echo "${{name}}=${{!name}}"; done
echo "rest=$#"
for arg in "$@"; do echo "arg=${{arg}}"; done
"""


def run_recipe(tmp_path, *args):
    script = tmp_path / "run.sh"
    script.write_text(RECIPE)
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True,
                          timeout=30)


def parsed(result):
    assert result.returncode == 0, result.stderr
    values = dict(re.findall(r"^(\w+)=(.*)$", result.stdout, flags=re.M))
    values["args"] = re.findall(r"^arg=(.*)$", result.stdout, flags=re.M)
    return values


def test_defaults_are_kept(tmp_path):
    out = parsed(run_recipe(tmp_path))
    assert (out["stage"], out["stop_stage"], out["use_gpu"], out["rest"]) == ("0", "100",
                                                                             "false", "0")


def test_dash_underscore_and_equals_forms(tmp_path):
    out = parsed(run_recipe(tmp_path, "--stage", "3", "--stop-stage", "5", "--stop_stage", "6",
                            "--data-dir=data/with space", "--nj=8"))
    assert (out["stage"], out["stop_stage"], out["nj"]) == ("3", "6", "8")
    assert out["data_dir"] == "data/with space"


def test_unknown_option_is_an_error(tmp_path):
    result = run_recipe(tmp_path, "--stage", "1", "--no-such-option", "2")
    assert result.returncode == 1
    assert "unknown option --no-such-option" in result.stderr
    assert "stage=" not in result.stdout
    # an hparam override given before -- is unknown too, with a hint
    result = run_recipe(tmp_path, "--lr=0.01")
    assert result.returncode == 1
    assert "unknown option --lr" in result.stderr and "after --" in result.stderr


def test_option_without_value_is_an_error(tmp_path):
    result = run_recipe(tmp_path, "--stage")
    assert result.returncode == 1
    assert "--stage needs a value" in result.stderr


def test_booleans_are_validated(tmp_path):
    assert parsed(run_recipe(tmp_path, "--use-gpu", "true"))["use_gpu"] == "true"
    result = run_recipe(tmp_path, "--use-gpu", "yes")
    assert result.returncode == 1
    assert "true or false" in result.stderr and "'yes'" in result.stderr
    # a non-boolean default takes any value
    assert parsed(run_recipe(tmp_path, "--nj", "yes"))["nj"] == "yes"


def test_remaining_args_after_double_dash(tmp_path):
    out = parsed(run_recipe(tmp_path, "--stage", "3", "--", "--lr=0.01", "--batch_size=4"))
    assert out["stage"] == "3"
    assert out["args"] == ["--lr=0.01", "--batch_size=4"]


def test_parsing_stops_at_first_positional_argument(tmp_path):
    out = parsed(run_recipe(tmp_path, "--nj", "2", "data/dev", "--stage", "9"))
    assert (out["nj"], out["stage"]) == ("2", "0")
    assert out["args"] == ["data/dev", "--stage", "9"]


def test_help_prints_help_message(tmp_path):
    for flag in ("--help", "-h"):
        result = run_recipe(tmp_path, "--stage", "2", flag)
        assert result.returncode == 0
        assert result.stdout.strip() == (
            "Usage: run.sh [--stage N] [--stop-stage N] [--use-gpu true|false] [-- hparams]"
        )


def test_log_line_has_timestamp_script_and_line(tmp_path):
    script = tmp_path / "stage.sh"
    script.write_text(f". {LOG}\nlog 'hello world'\n")
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout == ""
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d \(stage\.sh:2\) hello world\n",
                        result.stderr), result.stderr
    script.write_text(f"set -eu\n. {LOG}\ndie 'no wav.scp'\necho unreachable\n")
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and "unreachable" not in result.stdout
    assert "(stage.sh:3) ERROR: no wav.scp" in result.stderr


@pytest.mark.parametrize("through_symlink", [False, True])
def test_path_sh_sets_the_environment(tmp_path, through_symlink):
    path_sh = PATH_SH
    if through_symlink:  # egs/<corpus>/<task>/path.sh -> ../../../recipes/path.sh
        (tmp_path / "path.sh").symlink_to(PATH_SH)
        path_sh = tmp_path / "path.sh"
    snippet = (
        f"set -euo pipefail; . {path_sh}; "
        'echo "root=${ELP_ROOT}"; echo "path=${PATH}"; echo "pythonpath=${PYTHONPATH}"; '
        'echo "omp=${OMP_NUM_THREADS}"; echo "lc=${LC_ALL}"'
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "PYTHONPATH")}
    out = subprocess.run(["bash", "-c", snippet], capture_output=True, text=True, env=env,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    values = dict(re.findall(r"^(\w+)=(.*)$", out.stdout, flags=re.M))
    assert values["root"] == str(ROOT)
    assert values["pythonpath"].split(":")[0] == str(ROOT)
    assert values["omp"] == "1" and values["lc"] == "C"
    if (ROOT / ".venv" / "bin").is_dir():
        assert values["path"].split(":")[0] == str(ROOT / ".venv" / "bin")
    # an OMP_NUM_THREADS already set is kept
    env["OMP_NUM_THREADS"] = "3"
    out = subprocess.run(["bash", "-c", snippet], capture_output=True, text=True, env=env,
                         timeout=30)
    assert "omp=3" in out.stdout
