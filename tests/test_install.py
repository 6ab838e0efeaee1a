"""The torch build of tools/install.sh (TORCH_CUDA) and the one-line message when the installed
build does not fit the NVIDIA driver (elp.runtime.cuda_driver_problem, recipes/utils/launch.sh).

install.sh runs on a copy of tools/install.sh, tools/requirements.txt and setup.py whose
.venv/bin/python is a stub that logs its arguments: nothing is downloaded or installed.
"""
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from elp import runtime

ROOT = Path(__file__).resolve().parents[1]

PYTHON_STUB = """#!/usr/bin/env bash
echo "$*" >> "$(dirname "$0")/../calls.log"
if [ "$1" = - ]; then cat > /dev/null; echo "checked build $ELP_TORCH_BUILD"; fi
case "$*" in *whl/cu999*) echo "ERROR: No matching distribution found for torch==2.11.0" >&2; exit 1 ;; esac
exit 0
"""


@pytest.fixture()
def project(tmp_path):
    """A project copy with a stub venv; returns a function that runs its install.sh."""
    (tmp_path / "tools").mkdir()
    for name in ("tools/install.sh", "tools/requirements.txt", "setup.py"):
        shutil.copy2(ROOT / name, tmp_path / name)
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(PYTHON_STUB)
    python.chmod(0o755)
    stubs = tmp_path / "stub_bin"  # espeak-ng "installed": install.sh never reaches apt-get
    stubs.mkdir()
    (stubs / "espeak-ng").write_text("#!/bin/sh\n")
    (stubs / "espeak-ng").chmod(0o755)

    def install(torch_cuda=None):
        env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}"}
        env.pop("TORCH_CUDA", None)
        if torch_cuda is not None:
            env["TORCH_CUDA"] = torch_cuda
        log = tmp_path / ".venv" / "calls.log"
        log.unlink(missing_ok=True)
        result = subprocess.run(["bash", str(tmp_path / "tools" / "install.sh")], capture_output=True, text=True,
                                env=env, timeout=60)
        calls = log.read_text().splitlines() if log.exists() else []
        return result, [c for c in calls if not c.startswith("-m pip install -q --upgrade pip")]

    install.record = tmp_path / ".venv" / ".elp-torch-build"
    install.root = tmp_path
    return install


PYPI_STACK = ["-m pip install -q -r {root}/tools/requirements.txt", "-m pip install -q --no-deps -e {root}", "-"]


def expected(project, *calls):
    return [c.format(root=project.root) for c in (*calls, *PYPI_STACK)]


def test_install_records_the_build_and_reinstalls_torch_for_another(project):
    result, calls = project()  # a new venv: PyPI's build
    assert result.returncode == 0, result.stderr
    assert calls == expected(project) and project.record.read_text() == "default\n"
    result, calls = project()
    assert calls == [] and "up to date" in result.stderr and "(torch build: default)" in result.stderr

    result, calls = project("cu126")  # another build: torch and torchaudio are replaced
    assert result.returncode == 0, result.stderr
    assert calls == expected(project, "-m pip uninstall -q -y torch torchaudio",
                             "-m pip install -q --index-url https://download.pytorch.org/whl/cu126 "
                             "torch==2.11.0 torchaudio==2.11.0")
    assert project.record.read_text() == "cu126\n" and "replacing the torch build default by cu126" in result.stderr
    for again in ("cu126", None):  # the same build, or none named (run_all.sh, tools/test.sh): kept
        result, calls = project(again)
        assert calls == [] and "(torch build: cu126)" in result.stderr

    result, calls = project("default")  # back to PyPI's: requirements.txt installs it
    assert calls == expected(project, "-m pip uninstall -q -y torch torchaudio")
    assert project.record.read_text() == "default\n"


def test_install_of_a_venv_older_than_the_record_keeps_its_stamp(project):
    want = subprocess.run(f"cat {project.root}/tools/requirements.txt {project.root}/setup.py | sha256sum",
                          shell=True, capture_output=True, text=True).stdout.split()[0]
    (project.root / ".venv" / ".elp-install-stamp").write_text(want + "\n")
    result, calls = project()  # PyPI's build, as before builds could be chosen: nothing to do
    assert calls == [] and "up to date" in result.stderr and not project.record.exists()
    result, calls = project("cpu")  # such a venv has PyPI's build
    assert calls[:2] == ["-m pip uninstall -q -y torch torchaudio",
                         "-m pip install -q --index-url https://download.pytorch.org/whl/cpu torch==2.11.0 torchaudio==2.11.0"]


def test_install_refuses_an_unknown_build_and_names_a_missing_one(project):
    result, calls = project("cuda12")
    assert result.returncode == 1 and calls == []
    (line,) = result.stderr.splitlines()
    assert "TORCH_CUDA=cuda12: use default, cpu, cu<NNN> (e.g. cu126)" in line
    result, calls = project("cu999")  # the index has no such wheel: one error line, no record
    assert result.returncode == 1 and not project.record.exists()
    errors = [line for line in result.stderr.splitlines() if "(install.sh) ERROR" in line]
    assert len(errors) == 1 and "no torch 2.11.0 + torchaudio 2.11.0 for this Python from " \
        "https://download.pytorch.org/whl/cu999" in errors[0] and "pick another TORCH_CUDA" in errors[0]


# ------------------------------------------------------------------ the driver check
SMI_535 = "| NVIDIA-SMI 535.104.05             Driver Version: 535.104.05   CUDA Version: 12.2     |\n"


@pytest.mark.parametrize("driver_cuda, torch_cuda, fix", [
    ("12.2", "13.0", "TORCH_CUDA=cu126 ./tools/install.sh"),
    ("12.8", "13.0", "TORCH_CUDA=cu128 ./tools/install.sh"),
    ("11.4", "12.6", "update the NVIDIA driver"),
    ("12.4", None, "TORCH_CUDA=cu126 ./tools/install.sh"),
])
def test_driver_problem_names_driver_build_and_fix(monkeypatch, driver_cuda, torch_cuda, fix):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", torch_cuda)
    monkeypatch.setattr(torch, "__version__", "2.11.0+stub")
    monkeypatch.setattr(runtime, "nvidia_driver", lambda: ("550.54.15", driver_cuda))
    message = runtime.cuda_driver_problem()
    assert "\n" not in message and fix in message
    assert "NVIDIA driver 550.54.15" in message and "torch 2.11.0+stub" in message
    assert (f"built for CUDA {torch_cuda}" in message) if torch_cuda else ("CPU-only build" in message)


def test_driver_problem_is_silent_when_cuda_works_or_no_driver(monkeypatch):
    monkeypatch.setattr(runtime, "nvidia_driver", lambda: ("580.65.06", "13.0"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtime.cuda_driver_problem() is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(runtime, "nvidia_driver", lambda: None)
    assert runtime.cuda_driver_problem() is None
    # a driver new enough: the builds fit, so the message points at the visible devices
    monkeypatch.setattr(runtime, "nvidia_driver", lambda: ("580.65.06", "13.0"))
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert "check CUDA_VISIBLE_DEVICES (now '')" in runtime.cuda_driver_problem()


def test_nvidia_smi_is_read_from_path(monkeypatch, tmp_path):
    smi = tmp_path / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\nprintf '{SMI_535}'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert runtime.nvidia_driver() == ("535.104.05", "12.2")
    smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' ; exit 9\n")
    assert runtime.nvidia_driver() is None


def test_ngpu_with_a_driver_too_old_for_torch_is_one_line(tmp_path):
    """run_task.sh's check (launch.sh) with a stub nvidia-smi of an R535 driver; no GPU is visible."""
    smi = tmp_path / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\nprintf '{SMI_535}'\n")
    smi.chmod(0o755)
    script = (f"set -euo pipefail; . {ROOT}/recipes/path.sh; export PATH={tmp_path}:$PATH; "
              f". {ROOT}/recipes/utils/log.sh; . {ROOT}/recipes/utils/launch.sh; ngpu=1; elp_check_launch; echo passed")
    env = {k: v for k, v in os.environ.items() if k != "ELP_FAKE_GPU_COUNT"}
    env["CUDA_VISIBLE_DEVICES"] = ""  # torch sees no GPU, on any machine
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 1 and "passed" not in result.stdout
    (line,) = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert "--ngpu 1 but torch sees no usable CUDA device: NVIDIA driver 535.104.05 runs CUDA 12.2" in line
    cuda = torch.version.cuda
    if cuda is not None and tuple(map(int, cuda.split("."))) > (12, 2):  # this machine's torch (CUDA 13.0 here)
        assert f"but torch {torch.__version__} was built for CUDA {cuda}" in line
        assert line.endswith("TORCH_CUDA=cu126 ./tools/install.sh (or --ngpu 0 for CPU)")


def test_a_recipe_stage_asked_for_cuda_without_a_usable_gpu_is_one_line(monkeypatch, tmp_path):
    """recipes/train.py / infer.py with --device cuda (no run.sh --ngpu in front): the same check."""
    from elp.train.recipe import load_experiment

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(runtime, "nvidia_driver", lambda: ("535.104.05", "12.2"))
    hparams = tmp_path / "train.yaml"
    hparams.write_text("seed: 1\n")
    with pytest.raises(runtime.UserError, match="runs CUDA 12.2 at most.*TORCH_CUDA=cu126"):
        load_experiment([str(hparams), "--device", "cuda:0"])
    monkeypatch.setattr(runtime, "nvidia_driver", lambda: None)
    with pytest.raises(runtime.UserError, match="--device cuda:0: torch sees no CUDA device here"):
        load_experiment([str(hparams), "--device", "cuda:0"])
