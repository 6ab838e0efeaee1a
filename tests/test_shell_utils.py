"""recipes/utils/parse_options.sh, recipes/utils/log.sh, recipes/path.sh and tools/test.sh, driven
through bash snippets."""
import os
import re
import shutil
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


def test_a_misspelt_option_is_unknown_before_it_needs_a_value(tmp_path):
    result = run_recipe(tmp_path, "--stopstage")  # last on the line: no value follows
    assert result.returncode == 1
    assert result.stderr.strip().endswith("unknown option --stopstage (did you mean --stop-stage?)")
    result = run_recipe(tmp_path, "--Use_GPU", "true")
    assert "unknown option --Use_GPU (did you mean --use-gpu?)" in result.stderr
    result = run_recipe(tmp_path, "--stages", "1")  # nothing spelt like it: no guess
    assert result.stderr.strip().endswith("unknown option --stages")


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


# ---------------------------------------------------------------- job slots (run_all.sh)
GPU_SLOTS_PY = ROOT / "recipes" / "utils" / "gpu_slots.py"
GPU_SLOTS_SH = ROOT / "recipes" / "utils" / "gpu_slots.sh"
LAUNCH = ROOT / "recipes" / "utils" / "launch.sh"


def slots(fake_gpus, ngpu, jobs, **env_extra):
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env.update(ELP_FAKE_GPU_COUNT=str(fake_gpus), **env_extra)
    result = subprocess.run(["python3", str(GPU_SLOTS_PY), "--ngpu", str(ngpu), "--jobs", str(jobs)],
                            capture_output=True, text=True, env=env, timeout=30)
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    return result, rows


def test_gpu_slots_four_gpus_two_per_job():
    result, rows = slots(4, 2, 8)
    assert result.returncode == 0, result.stderr
    assert [r[1] for r in rows] == ["0,1", "2,3"]
    ports = [int(r[2]) for r in rows]
    assert len(set(ports)) == 2 and all(p > 29500 for p in ports)


def test_gpu_slots_eight_gpus_one_per_job_and_fewer_jobs():
    _, rows = slots(8, 1, 8)
    assert [r[1] for r in rows] == [str(i) for i in range(8)]
    assert len({r[2] for r in rows}) == 8
    _, rows = slots(8, 1, 3)  # fewer jobs than GPUs: only as many slots as jobs
    assert [r[1] for r in rows] == ["0", "1", "2"]


def test_gpu_slots_cpu_and_errors():
    _, rows = slots(0, 0, 3)
    assert [(r[1], r[3]) for r in rows] == [("-", "1")] * 3  # no GPU, one thread each
    result, rows = slots(0, 1, 4)
    assert result.returncode == 1 and rows == []
    assert "--ngpu 1" in result.stderr and "--ngpu 0" in result.stderr
    result, _ = slots(3, 4, 4)
    assert result.returncode == 1 and "use --ngpu 3 or fewer" in result.stderr


def test_gpu_slots_skip_a_port_in_use():
    import socket

    sys_path = str(GPU_SLOTS_PY.parent)
    import sys

    sys.path.insert(0, sys_path)
    try:
        import gpu_slots
    finally:
        sys.path.remove(sys_path)
    with socket.socket() as busy:
        busy.bind(("", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        ports = gpu_slots.free_ports(2, base_port=taken - 1)
    assert taken not in ports and len(set(ports)) == 2 and min(ports) > taken
    # CUDA_VISIBLE_DEVICES restricts (and renames nothing): slots use the listed ids
    assert gpu_slots.visible_gpus({"CUDA_VISIBLE_DEVICES": "2,5"}) == ["2", "5"]
    assert gpu_slots.visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []


def test_run_in_slots_gives_each_running_job_its_own_devices(tmp_path):
    # 6 jobs on 2 slots of 2 fake GPUs: each job records its env; jobs in a slot never overlap
    script = tmp_path / "jobs.sh"
    script.write_text(f"""
set -euo pipefail
. {LOG}
. {GPU_SLOTS_SH}
job() {{
    echo "$1 $CUDA_VISIBLE_DEVICES $ELP_MASTER_PORT $OMP_NUM_THREADS $ELP_SLOT start $(date +%s%N) $ELP_JOB_INDEX" >> {tmp_path}/log
    sleep 0.2
    echo "$1 $CUDA_VISIBLE_DEVICES $ELP_MASTER_PORT $OMP_NUM_THREADS $ELP_SLOT end $(date +%s%N) $ELP_JOB_INDEX" >> {tmp_path}/log
    [ "$1" != j3 ]   # j3 fails
}}
gpu_slots_init 2 8 31000
echo "slots=$NUM_SLOTS ports=${{SLOT_PORTS[*]}}"
run_in_slots job j0 j1 j2 j3 j4 j5
echo "failed=$SLOTS_FAILED"
""")
    env = {**os.environ, "ELP_FAKE_GPU_COUNT": "4"}
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "slots=2" in result.stdout and "failed=1" in result.stdout
    events = [line.split() for line in (tmp_path / "log").read_text().splitlines()]
    assert sorted({e[0] for e in events}) == [f"j{i}" for i in range(6)]
    by_slot = {}
    for name, devices, port, _threads, slot, kind, stamp, index in events:
        assert (devices, slot) in (("0,1", "0"), ("2,3", "1"))
        assert name == f"j{index}"  # ELP_JOB_INDEX: the job's place in the list, whatever its slot
        assert 31000 < int(port) < 31100  # free ports above the base port given
        by_slot.setdefault(slot, []).append((int(stamp), kind, port))
    assert len({ev[2] for evs in by_slot.values() for ev in evs}) == 2  # one port per slot
    for evs in by_slot.values():  # within a slot: start, end, start, end ... (never two at once)
        kinds = [kind for _, kind, _ in sorted(evs)]
        assert kinds == ["start", "end"] * (len(kinds) // 2)


# ---------------------------------------------------------------- launcher (run_task.sh)
def launch(tmp_path, *, fake_gpus=0, ngpu=0, ddp_cpu=0, nnodes=1, node_rank=0, stage=0, stop_stage=5):
    script = tmp_path / "launch_test.sh"
    script.write_text(f"""
set -euo pipefail
. {LOG}
. {LAUNCH}
ngpu={ngpu}; ddp_cpu={ddp_cpu}; nnodes={nnodes}; node_rank={node_rank}
master_addr=node0; master_port=29512; stage={stage}; stop_stage={stop_stage}
elp_train_command recipes/train.py conf/train.yaml --output_folder "exp/a b" -- --lr 0.1
elp_run "${{ELP_CMD[@]}}"
for n in 0 1 2 3 4 5; do if elp_stage $n; then echo "stage$n"; fi; done
""")
    env = {**os.environ, "ELP_FAKE_GPU_COUNT": str(fake_gpus), "ELP_DRY_RUN": "1"}
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=30)
    lines = result.stdout.splitlines()
    return result, (lines[0] if lines else ""), [l for l in lines[1:] if l.startswith("stage")]


HP = "recipes/train.py conf/train.yaml --output_folder exp/a\\ b"


def test_launch_cpu_single_process(tmp_path):
    result, cmd, stages = launch(tmp_path)
    assert result.returncode == 0, result.stderr
    assert cmd == f"python {HP} --device cpu --lr 0.1"
    assert stages == [f"stage{n}" for n in range(6)]


def test_launch_one_gpu_one_node(tmp_path):
    _, cmd, _ = launch(tmp_path, fake_gpus=1, ngpu=1)
    assert cmd == f"python {HP} --device cuda:0 --lr 0.1"


def test_launch_one_gpu_two_nodes_is_torchrun(tmp_path):
    result, cmd, stages = launch(tmp_path, fake_gpus=1, ngpu=1, nnodes=2)
    assert result.returncode == 0, result.stderr
    assert cmd == ("torchrun --nnodes 2 --node_rank 0 --master_addr node0 --master_port 29512 "
                   f"--nproc_per_node 1 {HP} --distributed_backend=nccl --lr 0.1")
    assert stages == [f"stage{n}" for n in range(6)]  # node rank 0 runs every stage


def test_launch_four_gpus_second_node_runs_only_training(tmp_path):
    result, cmd, stages = launch(tmp_path, fake_gpus=4, ngpu=4, nnodes=2, node_rank=1)
    assert result.returncode == 0, result.stderr
    assert cmd == ("torchrun --nnodes 2 --node_rank 1 --master_addr node0 --master_port 29512 "
                   f"--nproc_per_node 4 {HP} --distributed_backend=nccl --lr 0.1")
    assert stages == ["stage3"]
    for n in (0, 1, 2, 4, 5):
        assert f"Stage {n}: skipped on node rank 1" in result.stderr


def test_launch_gpus_without_cuda_is_an_error(tmp_path):
    result, cmd, _ = launch(tmp_path, fake_gpus=0, ngpu=2)
    assert result.returncode == 1 and cmd == ""
    errors = [l for l in result.stderr.splitlines() if "ERROR" in l]
    assert len(errors) == 1
    assert "--ngpu 2 but torch sees 0 usable CUDA device(s)" in errors[0] and "--ddp_cpu" in errors[0]
    result, _, _ = launch(tmp_path, fake_gpus=1, ngpu=2)  # fewer than asked
    assert result.returncode == 1 and "sees 1 usable" in result.stderr


def test_launch_explicit_cpu_ddp(tmp_path):
    result, cmd, _ = launch(tmp_path, ddp_cpu=2)
    assert result.returncode == 0, result.stderr
    assert cmd == ("torchrun --nnodes 1 --node_rank 0 --master_addr node0 --master_port 29512 "
                   f"--nproc_per_node 2 {HP} --distributed_backend=gloo --device cpu --lr 0.1")
    # CPU on several nodes only through --ddp_cpu; both --ngpu and --ddp_cpu is an error
    result, _, _ = launch(tmp_path, nnodes=2)
    assert result.returncode == 1 and "--ddp_cpu N for CPU DDP" in result.stderr
    result, _, _ = launch(tmp_path, fake_gpus=2, ngpu=2, ddp_cpu=2)
    assert result.returncode == 1 and "not both" in result.stderr
    result, _, _ = launch(tmp_path, nnodes=2, node_rank=2, ddp_cpu=1)
    assert result.returncode == 1 and "--node_rank 2 must be smaller than --nnodes 2" in result.stderr


def test_launch_stage_range(tmp_path):
    _, _, stages = launch(tmp_path, stage=3, stop_stage=4)
    assert stages == ["stage3", "stage4"]


EXP_NAME = ROOT / "recipes" / "utils" / "exp_name.sh"


@pytest.mark.parametrize("call, expected", [
    ("exp_name mini elp", "mini_elp"),
    ("exp_name mini elp 1987", "mini_elp_s1987"),
    ('exp_name "$(exp_label wavlm_plus tiny true)" el', "wavlm_plus_tiny_el"),
    ('exp_name "$(exp_label wavlm_plus "" true)" full 3', "mini_full_s3"),
    ('exp_name "$(exp_label hubert "" false)" lora', "hubert_lora"),
])
def test_experiment_names_follow_one_rule(call, expected):
    result = subprocess.run(["bash", "-c", f". {EXP_NAME}; {call}"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


def test_a_recipe_names_its_experiment_by_the_shared_rule():
    recipe = ROOT / "egs" / "slurp" / "ic"
    exp = recipe / "exp" / "wavlm_plus_tiny_elp_s424242"
    env = {**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}"}
    try:
        result = subprocess.run(["./run.sh", "--stage", "3", "--stop_stage", "3", "--dry_run", "true",
                                 "--backbone_arch", "tiny", "--seed", "424242"], cwd=recipe, env=env,
                                capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(exp, ignore_errors=True)
        if exp.parent.is_dir() and not any(exp.parent.iterdir()):
            exp.parent.rmdir()
    assert result.returncode == 0, result.stderr
    assert "--tag wavlm_plus_tiny_elp_s424242 --output_folder exp/wavlm_plus_tiny_elp_s424242" in result.stdout


def run_dry(tmp_path, *args):
    recipe = ROOT / "egs" / "slurp" / "ic"
    env = {**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}", "ELP_CALLER_PWD": str(tmp_path)}
    try:
        return subprocess.run(["./run.sh", "--stage", "3", "--stop_stage", "3", "--dry_run", "true",
                               "--backbone_arch", "tiny", "--tag", "dry424242", *args], cwd=recipe, env=env,
                              capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(recipe / "exp" / "dry424242", ignore_errors=True)
        if (recipe / "exp").is_dir() and not any((recipe / "exp").iterdir()):
            (recipe / "exp").rmdir()


def test_a_relative_backbone_source_is_taken_from_where_the_command_ran(tmp_path):
    (tmp_path / "ckpt").mkdir()
    result = run_dry(tmp_path, "--backbone_source", "./ckpt")
    assert result.returncode == 0, result.stderr
    assert f"--backbone_source {tmp_path / 'ckpt'}" in result.stdout
    missing = run_dry(tmp_path, "--backbone_source", "../nope")
    assert missing.returncode != 0
    assert f"--backbone_source {tmp_path}/../nope: no such directory" in missing.stderr
    hub = run_dry(tmp_path, "--backbone_source", "microsoft/wavlm-base-plus")  # a hub id stays one
    assert "--backbone_source microsoft/wavlm-base-plus" in hub.stdout


def test_an_old_bash_is_refused_in_one_line():
    ok = subprocess.run(["bash", "-c", f". {LOG}; require_bash 4 0; echo fine"], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.strip() == "fine"
    old = subprocess.run(["bash", "-c", f". {LOG}; require_bash 99 1; echo reached"], capture_output=True, text=True)
    assert old.returncode == 1 and "reached" not in old.stdout
    assert len(old.stderr.strip().splitlines()) == 1 and "needs bash >= 99.1" in old.stderr


@pytest.mark.parametrize("passes", [True, False])
def test_test_sh_keeps_temporary_files_only_of_a_failed_run(tmp_path, passes):
    """tools/test.sh: the suite's temporary files (here a docstring example's ``mkdtemp``) go to one
    scratch directory under $TMPDIR, removed after a passing run and named after a failing one."""
    outer = tmp_path / "tmp"
    outer.mkdir()
    module = tmp_path / "scratch_user.py"
    module.write_text('"""\n>>> import pathlib, tempfile\n>>> _ = (pathlib.Path(tempfile.mkdtemp()) / "f").write_text("x")\n'
                      f">>> {passes}\nTrue\n\"\"\"\n")
    run = subprocess.run([str(ROOT / "tools" / "test.sh"), "-q", "-p", "no:cacheprovider", "--doctest-modules", "--rootdir", str(tmp_path),
                          str(module)], capture_output=True, text=True, env={**os.environ, "TMPDIR": str(outer)})
    left = list(outer.iterdir())
    if passes:
        assert run.returncode == 0, run.stdout + run.stderr
        assert left == []
    else:
        assert run.returncode == 1
        assert [p.name[:10] for p in left] == ["elp-tests."]
        assert f"the temporary files of this run are kept in {left[0]}" in run.stderr
        assert any(p.name == "f" for p in left[0].rglob("*"))
