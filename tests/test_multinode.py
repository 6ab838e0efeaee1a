"""Several nodes: node rank 0's marker of stages 0-2 and the other nodes' wait for it
(recipes/utils/launch.sh, recipes/run_task.sh), run_all.sh's multi-node job lines, and the SLURM
example (tools/slurm/run_all.sbatch), each node simulated on this machine."""
import json
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from data_fixtures import make_librispeech

ROOT = Path(__file__).resolve().parents[1]
LOG = ROOT / "recipes" / "utils" / "log.sh"
LAUNCH = ROOT / "recipes" / "utils" / "launch.sh"
VENV_PATH = f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}"


def bash(snippet: str, **env) -> subprocess.CompletedProcess:
    script = f"set -euo pipefail\n. {LOG}\n. {LAUNCH}\nnode_rank=1\n{snippet}\n"
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "ELP_WAIT_POLL_S": "0.1", **env})


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "ERROR" in line]


# ------------------------------------------------------------------ the wait (launch.sh)
def test_wait_times_out_with_one_line(tmp_path):
    marker = tmp_path / "data" / ".stage2_done"
    result = bash(f"elp_wait_prepared {marker} 0123456789abcdef 1; echo released")
    assert result.returncode == 1 and "released" not in result.stdout
    (line,) = errors(result.stderr)
    assert f"node rank 1: node rank 0 did not finish stages 0-2 within 1 s ({marker} is missing)" in line
    assert "--prep_timeout" in line and "--run_id" in line
    # a marker of another run (other data or run id) does not release the node either
    marker.parent.mkdir()
    marker.write_text("fedcba9876543210\n")
    result = bash(f"elp_wait_prepared {marker} 0123456789abcdef 1; echo released")
    assert result.returncode == 1 and "released" not in result.stdout
    (line,) = errors(result.stderr)
    assert f"({marker} holds key fedcba9876543210 of another run, not 0123456789abcdef)" in line


def test_node0_marker_releases_the_waiting_node(tmp_path):
    marker = tmp_path / "data" / ".stage2_done"
    # "node rank 0" writes the key after a while; the waiting node goes on then, not before
    result = bash(f"(sleep 1; elp_mark_prepared {marker} 0123456789abcdef) &\n"
                  f"elp_wait_prepared {marker} 0123456789abcdef 60; cat {marker}; echo released")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["0123456789abcdef", "released"]
    assert "waiting up to 60 s for node rank 0" in result.stderr
    assert "node rank 1: node rank 0 finished stages 0-2" in result.stderr
    assert sorted(p.name for p in marker.parent.iterdir()) == [".stage2_done"]  # no temporary file left
    # a marker that is already there: no wait, no log line; --prep_timeout 0 never waits
    result = bash(f"elp_wait_prepared {marker} 0123456789abcdef 5; elp_wait_prepared {tmp_path}/none x 0; echo ok")
    assert result.returncode == 0 and result.stdout == "ok\n" and result.stderr == ""
    result = bash(f"elp_wait_prepared {marker} 0123456789abcdef soon")
    assert result.returncode == 1 and "--prep_timeout must be a whole number of seconds, got 'soon'" in result.stderr


def test_run_key_depends_on_every_item():
    result = bash('elp_run_key a b; elp_run_key a b; elp_run_key "a b"; elp_run_key a c')
    first, again, joined, other = result.stdout.split()
    assert first == again and re.fullmatch(r"[0-9a-f]{16}", first)
    assert len({first, joined, other}) == 3


# ------------------------------------------------------------------ two nodes of run_task.sh
def copy_librispeech_recipe(tmp_path: Path) -> Path:
    recipe = tmp_path / "egs" / "librispeech" / "asr"
    recipe.mkdir(parents=True)
    for name in ("run.sh", "conf", "local"):
        source = ROOT / "egs" / "librispeech" / "asr" / name
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, recipe / name)
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    return recipe


def node_command(rank: int, *extra: str) -> list[str]:
    return ["./run.sh", "--nnodes", "2", "--node_rank", str(rank), "--master_addr", "node0", "--master_port", "29613",
            "--ddp_cpu", "1", "--dry_run", "true", "--stop_stage", "3", "--data_root", "../../../corpus",
            "--prep_opts", "--subsets dev-clean", "--backbone_arch", "tiny", "--tag", "two",
            "--run_id", "job42", *extra,
            "--", "--train_split", "dev_clean", "--test_sets", "[data/dev_clean]"]


@pytest.mark.slow
def test_two_nodes_node1_enters_torchrun_after_node0_prepared_the_data(tmp_path):
    """Node rank 1 starts first and waits; node rank 0 runs stages 0-2 (a 4-utterance
    LibriSpeech) and prints its stage-3 torchrun line; node rank 1 then prints the same line
    with its rank (--dry_run: nothing trains)."""
    recipe = copy_librispeech_recipe(tmp_path)
    make_librispeech(tmp_path / "corpus")
    (tmp_path / "corpus" / "LibriSpeech" / "dev-clean" / "84" / "121123" / "84-121123-0002.flac").unlink()
    env = {**os.environ, "PATH": VENV_PATH, "ELP_WAIT_POLL_S": "0.2", "OMP_NUM_THREADS": "1"}
    env.pop("SLURM_JOB_ID", None)
    marker = recipe / "data" / ".stage2_done"
    with open(tmp_path / "node1.out", "w") as out, open(tmp_path / "node1.err", "w") as err:
        node1 = subprocess.Popen(node_command(1), cwd=recipe, env=env, stdout=out, stderr=err, text=True)
    try:
        deadline = time.time() + 300
        while "waiting up to 7200 s for node rank 0" not in (tmp_path / "node1.err").read_text():
            assert node1.poll() is None, (tmp_path / "node1.err").read_text()
            assert time.time() < deadline, "node rank 1 never started waiting"
            time.sleep(0.2)
        time.sleep(1.0)
        assert node1.poll() is None and not marker.exists()  # no data yet: node rank 1 still waits
        node0 = subprocess.run(node_command(0), cwd=recipe, env=env, capture_output=True, text=True, timeout=600)
        assert node0.returncode == 0, node0.stderr[-3000:]
        assert node1.wait(timeout=120) == 0, (tmp_path / "node1.err").read_text()[-3000:]
    finally:
        if node1.poll() is None:
            node1.kill()
    node1_out, node1_err = (tmp_path / "node1.out").read_text(), (tmp_path / "node1.err").read_text()
    for n in (0, 1, 2):
        assert f"Stage {n}: skipped on node rank 1" in node1_err and f"Stage {n}:" in node0.stderr
    assert "node rank 1: node rank 0 finished stages 0-2" in node1_err
    key = marker.read_text().strip()
    assert re.fullmatch(r"[0-9a-f]{16}", key) and (recipe / "data" / "dev_clean" / "wav.scp").is_file()
    torchrun = [line for line in node0.stdout.splitlines() if line.startswith("torchrun")]
    assert len(torchrun) == 1
    assert torchrun[0].startswith("torchrun --nnodes 2 --node_rank 0 --master_addr node0 --master_port 29613 "
                                  "--nproc_per_node 1 ")
    assert node1_out.strip() == torchrun[0].replace("--node_rank 0", "--node_rank 1")
    # another launch (run id) finds this run's marker and times out in one line
    other = subprocess.run(node_command(1, "--run_id", "job43", "--prep_timeout", "1"), cwd=recipe, env=env,
                           capture_output=True, text=True, timeout=300)
    assert other.returncode == 1 and other.stdout == ""
    (line,) = errors(other.stderr)
    assert f"holds key {key} of another run, not " in line


# ------------------------------------------------------------------ run_all.sh on two nodes
def run_all(*args, **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, "ELP_FAKE_GPU_COUNT": "2", **env}
    environment.pop("SLURM_JOB_ID", None)
    return subprocess.run(["./run_all.sh", "--dry_run", "true", *args], cwd=ROOT, capture_output=True, text=True,
                          env=environment, timeout=120)


def recipe_lines(stdout: str) -> list[str]:
    return sorted(line for line in stdout.splitlines() if line.startswith("cd egs/"))


MULTI = ["--recipes", "slurp/ic librispeech/asr", "--methods", "elp full", "--ngpu", "1", "--jobs", "2",
         "--nnodes", "2", "--master_addr", "node0", "--master_port", "30000", "--run_id", "job7"]


def test_run_all_two_nodes_agree_on_every_job_and_port():
    node0, node1 = run_all(*MULTI, "--node_rank", "0"), run_all(*MULTI, "--node_rank", "1")
    assert node0.returncode == 0 and node1.returncode == 0, node0.stderr + node1.stderr
    multi = "--nnodes 2 --node_rank {r} --master_addr node0 --master_port {p} --run_id job7 --prep_timeout 7200"
    train = ("cd egs/{recipe} && ./run.sh --stage 3 --stop_stage 3 --method {method} --tag mini_{method} "
             + multi + " --ngpu 1 --backbone wavlm_plus --")
    jobs = [("slurp/ic", "elp"), ("slurp/ic", "full"), ("librispeech/asr", "elp"), ("librispeech/asr", "full")]
    trained = {r: sorted(train.format(recipe=recipe, method=method, r=r, p=30001 + k)
                         for k, (recipe, method) in enumerate(jobs)) for r in (0, 1)}
    prep = sorted(f"cd egs/{recipe} && ./run.sh --stop_stage 2 --backbone wavlm_plus "
                  + multi.replace(" --master_port {p}", "").format(r=0) + " --ngpu 1 --"
                  for recipe in ("slurp/ic", "librispeech/asr"))
    evaluated = sorted(f"cd egs/{recipe} && ./run.sh --stage 4 --stop_stage 5 --method {method} --tag mini_{method} "
                       "--ngpu 1 --backbone wavlm_plus --" for recipe, method in jobs)
    assert recipe_lines(node0.stdout) == sorted(prep + trained[0] + evaluated)
    assert recipe_lines(node1.stdout) == trained[1]  # node rank 1 trains only, on the same ports
    assert "tools/standin_backbone.sh --backbone wavlm_plus" in node0.stdout
    assert "standin" not in node1.stdout
    assert re.search(r"node rank 1: would wait up to 7200 s for exp/run_all/\.stage2_done \(key [0-9a-f]{16}\)",
                     node1.stderr)


def test_run_all_one_node_keeps_its_slot_ports():
    result = run_all("--recipes", "slurp/ic librispeech/asr", "--methods", "elp full", "--ngpu", "1", "--jobs", "2")
    assert result.returncode == 0, result.stderr
    lines = recipe_lines(result.stdout)
    assert [line for line in lines if "--stop_stage 2" in line] == [
        "cd egs/librispeech/asr && ./run.sh --stop_stage 2 --backbone wavlm_plus --",
        "cd egs/slurp/ic && ./run.sh --stop_stage 2 --backbone wavlm_plus --"]
    jobs = [line for line in lines if "--stage 3 --stop_stage 5" in line]
    assert len(jobs) == 4 and not any("--nnodes" in line for line in jobs)
    ports = {int(re.search(r"--master_port (\d+)", line).group(1)) for line in jobs}
    assert len(ports) == 2 and min(ports) > 29500  # the two slots' free ports, one per slot


def test_run_all_rejects_bad_node_options():
    result = run_all("--nnodes", "2", "--node_rank", "2", "--ngpu", "1")
    assert result.returncode == 1 and "--node_rank 2 must be smaller than --nnodes 2" in result.stderr
    result = run_all("--nnodes", "2")
    assert result.returncode == 1 and "--ddp_cpu N for CPU DDP" in result.stderr
    result = run_all("stray")
    assert result.returncode == 1 and "unexpected argument 'stray'" in result.stderr


def copy_project(tmp_path: Path, recipes: list[str]) -> Path:
    """A project in ``tmp_path`` for run_all.sh: its own egs/ (copies of ``recipes``) and exp/, a
    link to recipes/ (so the recipes run with this checkout's ELP_ROOT, tools and .venv) and a
    tools/install.sh that does nothing (the checkout's .venv is never reinstalled by a test)."""
    shutil.copy2(ROOT / "run_all.sh", tmp_path / "run_all.sh")
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "install.sh").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "tools" / "install.sh").chmod(0o755)
    for recipe in recipes:
        target = tmp_path / "egs" / recipe
        target.mkdir(parents=True)
        for name in ("run.sh", "conf", "local"):
            source = ROOT / "egs" / recipe / name
            (shutil.copytree if source.is_dir() else shutil.copy2)(source, target / name)
    return tmp_path


@pytest.mark.slow
def test_run_all_on_two_local_nodes_trains_together_and_node0_scores(tmp_path):
    """Two run_all.sh processes as node ranks 0 and 1 of one launch on this machine: one gloo
    process each (--ddp_cpu 1), the IC recipe in mini mode, a tiny random backbone, one epoch."""
    from elp.testing import save_tiny_checkpoint

    project = copy_project(tmp_path, ["slurp/ic"])
    backbone = save_tiny_checkpoint("wavlm_plus", tmp_path / "tiny_backbone")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1] - 1  # job 0 rendezvouses on port + 1
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ELP_WAIT_POLL_S": "1"}
    env.pop("SLURM_JOB_ID", None)
    command = ["./run_all.sh", "--recipes", "slurp/ic", "--methods", "elp", "--jobs", "1", "--epochs", "1",
               "--backbone_source", str(backbone), "--ddp_cpu", "1", "--nnodes", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(port), "--run_id", "local2"]
    node1 = subprocess.Popen([*command, "--node_rank", "1"], cwd=project, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        node0 = subprocess.run([*command, "--node_rank", "0"], cwd=project, env=env, capture_output=True, text=True,
                               timeout=1800)
        node1_output = node1.communicate(timeout=600)[0]
    finally:
        if node1.poll() is None:
            node1.kill()
    logs = project / "exp" / "run_all" / "logs"
    assert node0.returncode == 0, node0.stderr[-3000:] + "".join(p.read_text()[-2000:] for p in logs.rglob("*.log"))
    assert node1.returncode == 0, node1_output[-3000:]
    assert "node rank 1: node rank 0 finished stages 0-2" in node1_output
    assert "node rank 1: every job trained" in node1_output
    exp = project / "egs" / "slurp" / "ic" / "exp" / "wavlm_plus_elp"
    assert (exp / "train.log").is_file() and (exp / "train_node1.log").is_file()
    assert (f"Stage 3: torchrun --nnodes 2 --node_rank 1 --master_addr 127.0.0.1 --master_port {port + 1} "
            "--nproc_per_node 1 ") in (logs / "node1" / "slurp_ic_wavlm_plus_elp.log").read_text()
    hashes = [(exp / f"rank{r}_learnable.sha256").read_text() for r in (0, 1)]
    assert hashes[0] == hashes[1], "the two nodes' processes did not train one model"
    assert json.loads((exp / "results.json").read_text())["method"] == "elp"
    assert (project / "exp" / "summary.md").is_file() and not (logs / "node1" / "failed_training.txt").read_text()


# ------------------------------------------------------------------ SLURM (stub srun, scontrol)
SRUN = """#!/usr/bin/env bash
# every node of the allocation runs the command, one after the other, with its SLURM_NODEID
echo "$*" > "$STUB_OUT/srun.args"
while [[ $1 == --* ]]; do shift; done
for ((i = 0; i < SLURM_NNODES; i++)); do
    SLURM_NODEID=$i SLURM_PROCID=$i "$@" > "$STUB_OUT/node$i.out" 2> "$STUB_OUT/node$i.err" || exit 1
done
"""
SCONTROL = """#!/usr/bin/env bash
[ "$1 $2 $3" = "show hostnames gpu[07-08]" ] || { echo "scontrol stub: $*" >&2; exit 1; }
printf 'gpu07\\ngpu08\\n'
"""


def test_slurm_example_gives_each_node_its_rank(tmp_path):
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL)):
        (stubs / name).write_text(text)
        (stubs / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "STUB_OUT": str(tmp_path),
           "SLURM_SUBMIT_DIR": str(ROOT), "SLURM_JOB_ID": "4242", "SLURM_NNODES": "2",
           "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_GPUS_ON_NODE": "2", "ELP_FAKE_GPU_COUNT": "2"}
    result = subprocess.run(["bash", str(ROOT / "tools" / "slurm" / "run_all.sbatch"), "--dry_run", "true",
                             "--recipes", "slurp/ic", "--methods", "elp"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    node_errors = "".join(p.read_text() for p in sorted(tmp_path.glob("node*.err")))
    assert result.returncode == 0, result.stderr + node_errors
    assert (tmp_path / "srun.args").read_text().startswith("--nodes=2 --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c")
    multi = "--nnodes 2 --node_rank {r} --master_addr gpu07 --master_port 29501 --run_id 4242 --prep_timeout 7200"
    train = "cd egs/slurp/ic && ./run.sh --stage 3 --stop_stage 3 --method elp --tag mini_elp " + multi \
        + " --ngpu 2 --backbone wavlm_plus --"
    node0 = (tmp_path / "node0.out").read_text().splitlines()
    node1 = (tmp_path / "node1.out").read_text().splitlines()
    assert node0 == [
        "cd egs/slurp/ic && ./run.sh --stop_stage 2 --backbone wavlm_plus "
        + multi.replace(" --master_port 29501", "").format(r=0) + " --ngpu 2 --",
        "tools/standin_backbone.sh --backbone wavlm_plus --out exp/backbone_wavlm_plus_small",
        train.format(r=0),
        "cd egs/slurp/ic && ./run.sh --stage 4 --stop_stage 5 --method elp --tag mini_elp --ngpu 2 --backbone wavlm_plus --",
    ]
    assert node1 == [train.format(r=1)]
