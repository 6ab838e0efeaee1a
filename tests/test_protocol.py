"""Comparison protocols (protocols/*.yaml, recipes/protocol*.py, ./run_protocol.sh).

Fast tests check the protocol files, the selection on recorded trial results, the trial
bookkeeping (what is reused, what a changed grid value retrains), the commands and the dry run
of icassp23; the slow one runs the reduced protocol (protocols/mini_tiny.yaml) end to end on a
copy of the SLURP recipe.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))

import protocol_report  # noqa: E402
import protocol_trials as trials  # noqa: E402
from protocol_spec import ProtocolError, load_protocol  # noqa: E402

SHIPPED = sorted(p.stem for p in (ROOT / "protocols").glob("*.yaml"))


def write_protocol(tmp_path, text, name="p.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def changed_copy(tmp_path, source, old, new):
    text = (ROOT / "protocols" / source).read_text()
    assert text.count(old) == 1, old
    return write_protocol(tmp_path, text.replace(old, new), source)


# ------------------------------------------------------------------------------ protocol files
def test_shipped_protocols_load_with_an_equal_budget():
    assert {"icassp23", "superb", "mini", "mini_tiny"} <= set(SHIPPED)
    for name in SHIPPED:
        protocol = load_protocol(ROOT / "protocols" / f"{name}.yaml")
        assert protocol.name == name
        for spec in protocol.recipes:
            sizes = {method: len(points) for method, points in spec.grid.items()}
            assert set(sizes) == set(protocol.methods) and len(set(sizes.values())) == 1, (name, spec.recipe, sizes)


def test_grids_set_exactly_the_groups_each_method_trains():
    """A grid point sets every learning-rate group of its method and no other (the head aside)."""
    from elp.core.backbones import load_backbone
    from elp.core.model import AdaptedSSL
    from elp.core.presets import arch_overrides

    trained = {}
    for name in SHIPPED:
        protocol = load_protocol(ROOT / "protocols" / f"{name}.yaml")
        for spec in protocol.recipes:
            for method, points in spec.grid.items():
                if method not in trained:
                    backbone = load_backbone("wavlm_plus", pretrained=False, config_overrides=arch_overrides("tiny"))
                    trained[method] = set(AdaptedSSL(backbone, method).parameter_groups())
                for point in points:
                    assert set(point.lr) - {"head"} == trained[method], (name, spec.recipe, method, point.lr)


def test_icassp23_holds_the_paper_setting():
    protocol = load_protocol(ROOT / "protocols" / "icassp23.yaml")
    assert [s.recipe for s in protocol.recipes] == ["voxceleb/sv", "iemocap/er", "librispeech/asr",
                                                     "fluent_speech_commands/ic"]
    assert all(s.grid_size == 5 for s in protocol.recipes)
    assert [p.lr["backbone"] for p in protocol.recipe("voxceleb/sv").grid["full"]] == [1e-3, 5e-4, 1e-4, 5e-5, 1e-5]
    assert protocol.recipe("iemocap/er").folds == ("1", "2", "3", "4", "5")
    asr = protocol.recipe("librispeech/asr")
    assert asr.test_set == "dev_clean" and asr.prep_opts == "--librilight-10h"
    assert asr.overrides_files == ("conf/librilight_10h.yaml",) and asr.grid["el"][0].lr["head"] == 2e-3
    el_sv = next(t for t in protocol.targets if (t.recipe, t.method) == ("voxceleb/sv", "el"))
    assert (el_sv.metric, el_sv.value, el_sv.std) == ("eer", 2.63, 0.09)


@pytest.mark.parametrize("old,new,message", [
    ("elp: [3.0e-3, 1.0e-4]", "elp: [3.0e-3]",
     "lr_grid: every method must get the same number of grid points (an equal tuning budget), got full 2, elp 1"),
    ("methods: [full, elp]", "methods: [full, elpp]", "methods: unknown or repeated method(s) ['elpp']"),
    ("    test_set: test\n", "", "recipes.slurp/ic.test_set: missing"),
    ("epochs: 2", "epochs: 0", "epochs: must be a positive integer or null"),
    ("groups: {full: [backbone], elp: [e, l, ln, p]}", "groups: {full: [backbone]}", "lr_grid.groups.elp: missing"),
])
def test_bad_protocol_is_one_line_naming_file_and_field(tmp_path, old, new, message):
    path = changed_copy(tmp_path, "mini_tiny.yaml", old, new)
    with pytest.raises(ProtocolError) as error:
        load_protocol(path)
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value)
    assert "\n" not in str(error.value)


def test_overrides_may_not_set_what_the_protocol_varies(tmp_path):
    text = (ROOT / "protocols" / "mini_tiny.yaml").read_text().replace(
        "    test_set: test", "    test_set: test\n    overrides: {lr: {head: 0.1}}")
    with pytest.raises(ProtocolError, match="lr, seed, method and number_of_epochs come from"):
        load_protocol(write_protocol(tmp_path, text))


# ------------------------------------------------------------------------------ selection
def test_selection_uses_validation_not_test():
    recorded = [{"point": 0, "valid": 62.0, "test": 90.0, "higher_is_better": True},
                {"point": 1, "valid": 71.0, "test": 55.0, "higher_is_better": True},
                {"point": 2, "valid": 70.0, "test": 95.0, "higher_is_better": True}]
    assert trials.select_point(recorded) == 1
    assert trials.select_point([{"point": 0, "valid": 9.1, "test": 5.0, "higher_is_better": False},
                                {"point": 1, "valid": 8.7, "test": 9.9, "higher_is_better": False}]) == 1
    assert trials.select_point([{"point": 0, "valid": 5.0, "higher_is_better": False},
                                {"point": 1, "valid": 5.0, "higher_is_better": False}]) == 0
    with pytest.raises(ProtocolError, match=r"grid point\(s\) \[1\] have no validation metric"):
        trials.select_point([{"point": 0, "valid": 5.0, "higher_is_better": True},
                             {"point": 1, "valid": None, "higher_is_better": True}])


def fake_run(root, protocol, job, valid=None, test_correct=None, evaluated=False, epochs=None):
    """Write what a trained (and evaluated) run of ``job`` leaves: the hparams record, train_stats.json
    with the validation metric, and optionally test predictions and results.json."""
    spec = protocol.recipe(job.recipe)
    exp = trials.exp_dir(root, protocol, job)
    exp.mkdir(parents=True, exist_ok=True)
    hparams = trials.expected_hparams(protocol, spec, job.method, spec.grid[job.method][job.point], job.seed)
    (exp / "hparams_record.json").write_text(json.dumps({"hparams": hparams}))
    stats = {"epochs": epochs or hparams.get("number_of_epochs", 1), "train_wall_s": 10.0,
             "valid_metric": {"name": "accuracy", "value": valid, "higher_is_better": True}}
    (exp / "train_stats.json").write_text(json.dumps(stats))
    if test_correct is not None:
        decode = exp / "decode" / spec.test_set
        decode.mkdir(parents=True, exist_ok=True)
        rows = [f"u{i} {'a' if i < test_correct else 'b'} a" for i in range(10)]
        (decode / "predictions.txt").write_text("\n".join(rows) + "\n")
    if evaluated:
        time.sleep(0.01)
        name = "fold_results.json" if job.fold else "results.json"
        (exp / name).write_text(json.dumps({
            "benchmark": "ic", "corpus": "slurp", "backbone": "wavlm_plus[tiny]", "method": job.method,
            "tag": exp.name, "metric": {"name": "accuracy", "value": 10.0 * (test_correct or 0),
                                        "higher_is_better": True, "chance": 10.0},
            "extra_metrics": {"ua": 10.0 * (test_correct or 0)}, "learnable_params": 100,
            "train_wall_s": 10.0, "peak_mem_mb": 1.0, "seed": job.seed}))
    return exp


def test_selection_reads_the_recorded_validation_metric(tmp_path):
    """Recorded grid trials whose test results would pick the other point: validation decides."""
    protocol = load_protocol(ROOT / "protocols" / "mini_tiny.yaml")
    valid = {("full", 0): 40.0, ("full", 1): 60.0, ("elp", 0): 55.0, ("elp", 1): 30.0}
    test = {("full", 0): 9, ("full", 1): 2, ("elp", 0): 1, ("elp", 1): 8}
    for job in trials.grid_jobs(protocol):
        fake_run(tmp_path, protocol, job, valid[(job.method, job.point)], test[(job.method, job.point)])
    data = trials.selection(tmp_path, protocol)
    assert trials.selected_points(data) == {("slurp/ic", "full"): 1, ("slurp/ic", "elp"): 0}
    assert [t["valid"] for t in data["cells"][0]["trials"]] == [40.0, 60.0]


def test_selection_refuses_unfinished_grids(tmp_path):
    protocol = load_protocol(ROOT / "protocols" / "mini_tiny.yaml")
    fake_run(tmp_path, protocol, trials.grid_jobs(protocol)[0], 50.0)
    with pytest.raises(ProtocolError, match="3 grid trial"):
        trials.selection(tmp_path, protocol)


# ------------------------------------------------------------------------------ bookkeeping
def finished_protocol(root, protocol, selected_elp=1):
    """Every grid trial trained, every final run evaluated (full selects point 0, elp ``selected_elp``)."""
    valid = {("full", 0): 60.0, ("full", 1): 50.0, ("elp", selected_elp): 70.0, ("elp", 1 - selected_elp): 20.0}
    for job in trials.grid_jobs(protocol):
        fake_run(root, protocol, job, valid[(job.method, job.point)])
    for job in trials.final_jobs(protocol, trials.selected_points(trials.selection(root, protocol))):
        fake_run(root, protocol, job, valid[(job.method, job.point)], test_correct=5, evaluated=True)


def test_a_finished_protocol_trains_nothing(tmp_path):
    protocol = load_protocol(ROOT / "protocols" / "mini_tiny.yaml")
    finished_protocol(tmp_path, protocol)
    assert trials.pending(tmp_path, protocol, trials.grid_jobs(protocol)) == []
    selected = trials.selected_points(trials.selection(tmp_path, protocol))
    assert trials.pending(tmp_path, protocol, trials.final_jobs(protocol, selected)) == []
    out = subprocess.run([sys.executable, str(ROOT / "recipes" / "protocol.py"), "jobs", "--phase", "grid",
                          "--protocol", str(ROOT / "protocols" / "mini_tiny.yaml"), "--root", str(tmp_path)],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout == "" and "0 of 4 job(s) to run, 4 done and reused" in out.stderr


def test_a_changed_grid_value_retrains_only_its_trials(tmp_path):
    protocol = load_protocol(ROOT / "protocols" / "mini_tiny.yaml")
    finished_protocol(tmp_path, protocol, selected_elp=1)
    # elp's point 1 (the selected one) changes: its grid trial and its final runs retrain, nothing else
    changed = load_protocol(changed_copy(tmp_path, "mini_tiny.yaml", "elp: [3.0e-3, 1.0e-4]", "elp: [3.0e-3, 2.0e-4]"))
    todo = trials.pending(tmp_path, changed, trials.grid_jobs(changed))
    assert [(job.id, status) for job, status, _ in todo] == [("grid:slurp/ic:elp:1:1986:-", "changed")]
    assert todo[0][2] == ["lr.e 0.0001 -> 0.0002", "lr.l 0.0001 -> 0.0002", "lr.ln 0.0001 -> 0.0002",
                          "lr.p 0.0001 -> 0.0002"]
    command = trials.job_command(tmp_path, changed, todo[0][0], {})
    assert command[command.index("--restart") + 1] == "true"
    assert command[-2:] == ["--number_of_epochs", "2"]
    assert command[command.index("--lr") + 1] == "{e: 0.0002, l: 0.0002, ln: 0.0002, p: 0.0002}"
    finals = trials.pending(tmp_path, changed, trials.final_jobs(changed, {("slurp/ic", "full"): 0,
                                                                            ("slurp/ic", "elp"): 1}))
    assert sorted(job.id for job, _, _ in finals) == ["final:slurp/ic:elp:1:1986:-", "final:slurp/ic:elp:1:1987:-"]
    # a value of a point that was not selected: only that grid trial
    other = load_protocol(changed_copy(tmp_path, "mini_tiny.yaml", "full: [5.0e-4, 5.0e-5]", "full: [5.0e-4, 1.0e-5]"))
    assert [job.id for job, _, _ in trials.pending(tmp_path, other, trials.grid_jobs(other))] == \
        ["grid:slurp/ic:full:1:1986:-"]
    assert trials.pending(tmp_path, other, trials.final_jobs(other, {("slurp/ic", "full"): 0,
                                                                     ("slurp/ic", "elp"): 1})) == []


def test_more_epochs_or_a_missing_validation_metric_is_unfinished(tmp_path):
    protocol = load_protocol(ROOT / "protocols" / "mini_tiny.yaml")
    job = trials.grid_jobs(protocol)[0]
    exp = fake_run(tmp_path, protocol, job, 50.0, epochs=1)  # recorded 2 epochs, stopped after 1
    assert trials.job_status(tmp_path, protocol, job) == (trials.STATUS_UNFINISHED, [])
    fake_run(tmp_path, protocol, job, 50.0)
    stats = json.loads((exp / "train_stats.json").read_text())
    del stats["valid_metric"]  # trained before the validation metric was recorded: rerun stage 3
    (exp / "train_stats.json").write_text(json.dumps(stats))
    assert trials.job_status(tmp_path, protocol, job)[0] == trials.STATUS_UNFINISHED


def test_final_run_of_the_selection_seed_reuses_the_grid_trial(tmp_path):
    protocol = load_protocol(ROOT / "protocols" / "mini_tiny.yaml")
    for job in trials.grid_jobs(protocol):
        fake_run(tmp_path, protocol, job, 50.0 + job.point)
    finals = trials.final_jobs(protocol, trials.selected_points(trials.selection(tmp_path, protocol)))
    stages = {job.id: trials.job_stages(tmp_path, protocol, job)[:2] for job in finals}
    assert stages == {"final:slurp/ic:full:1:1986:-": (4, 5), "final:slurp/ic:full:1:1987:-": (3, 5),
                      "final:slurp/ic:elp:1:1986:-": (4, 5), "final:slurp/ic:elp:1:1987:-": (3, 5)}


def test_commands_of_a_real_data_protocol(tmp_path):
    protocol = load_protocol(ROOT / "protocols" / "icassp23.yaml")
    asr = protocol.recipe("librispeech/asr")
    with pytest.raises(ProtocolError, match="pass --data_roots 'librispeech=DIR'"):
        trials.prep_command(ROOT, protocol, asr, {})
    command = trials.prep_command(ROOT, protocol, asr, {"librispeech": str(tmp_path)})
    assert command[command.index("--data_root") + 1] == os.path.realpath(tmp_path)
    assert command[command.index("--prep_opts") + 1] == "--librilight-10h"
    assert command[command.index("--"):] == ["--", "--overrides_file", "conf/librilight_10h.yaml"]
    job = trials.Job("grid", "iemocap/er", "elp", 2, 1986, "3")
    command = trials.job_command(ROOT, protocol, job, {"iemocap": str(tmp_path)}, ngpu=1, master_port=29512)
    for option, value in [("--folds", "3"), ("--tag", "icassp23_elp_lr2_s1986"), ("--seed", "1986"),
                          ("--stage", "3"), ("--stop_stage", "3"), ("--ngpu", "1"), ("--master_port", "29512"),
                          ("--lr", "{e: 0.0001, head: 0.0005, l: 0.0001, ln: 0.0001, p: 0.0001}")]:
        assert command[command.index(option) + 1] == value
    assert "--restart" not in command and "--number_of_epochs" not in command


def test_a_recipe_may_not_validate_on_its_reported_test_set(tmp_path):
    icassp23 = load_protocol(ROOT / "protocols" / "icassp23.yaml")
    assert trials.valid_set_name(ROOT, icassp23.recipe("librispeech/asr")) == "dev_other"  # conf/librilight_10h.yaml
    assert trials.valid_set_name(ROOT, icassp23.recipe("iemocap/er")) == "dev"
    trials.check_recipes(ROOT, icassp23.only(["librispeech/asr", "iemocap/er"]))
    path = changed_copy(tmp_path, "icassp23.yaml", "    overrides_files: [conf/librilight_10h.yaml]", "")
    with pytest.raises(ProtocolError, match="librispeech/asr validates on dev_clean, the test set it reports"):
        trials.check_recipes(ROOT, load_protocol(path).only(["librispeech/asr"]))


def test_a_metric_its_task_does_not_write_is_refused_before_anything_runs(tmp_path):
    trials.check_recipes(ROOT, load_protocol(ROOT / "protocols" / "mini.yaml"))  # the shipped metrics are fine
    path = changed_copy(tmp_path, "mini_tiny.yaml", "metrics: [accuracy, ua]", "metrics: [acuracy, ua]")
    with pytest.raises(ProtocolError) as error:
        trials.check_recipes(ROOT, load_protocol(path))
    assert str(error.value) == (f"{path}: recipes.slurp/ic.metrics: acuracy is not a metric of its task "
                                "(UtteranceClassification writes accuracy, ua, num_utts)")
    out = subprocess.run([str(ROOT / "run_protocol.sh"), "--protocol", str(path), "--dry-run"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.strip().splitlines()[-1] == f"ERROR: {error.value}"


def test_a_root_without_the_shared_recipes_is_refused(tmp_path):
    copy = tmp_path / "root" / "egs" / "slurp" / "ic"
    shutil.copytree(ROOT / "egs" / "slurp" / "ic" / "conf", copy / "conf")
    shutil.copy2(ROOT / "egs" / "slurp" / "ic" / "run.sh", copy / "run.sh")
    protocol = load_protocol(ROOT / "protocols" / "mini_tiny.yaml")
    with pytest.raises(ProtocolError, match=r"--root \S+/root has no recipes/run_task.sh: the root is a directory like "
                                            "this repository"):
        trials.check_recipes(tmp_path / "root", protocol)
    (tmp_path / "root" / "recipes").symlink_to(ROOT / "recipes")
    trials.check_recipes(tmp_path / "root", protocol)


# ------------------------------------------------------------------------------ dry run
def test_icassp23_dry_run_lists_every_trial():
    out = subprocess.run([str(ROOT / "run_protocol.sh"), "--protocol", "protocols/icassp23.yaml", "--dry-run"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    protocol = load_protocol(ROOT / "protocols" / "icassp23.yaml")
    methods, points, seeds = len(protocol.methods), 5, len(protocol.seeds)
    folds = {"voxceleb/sv": 1, "iemocap/er": 5, "librispeech/asr": 1, "fluent_speech_commands/ic": 1}
    grid = [line.split() for line in lines if line.startswith("  grid ")]
    final = [line.split() for line in lines if line.startswith("  final ")]
    assert len(grid) == sum(folds.values()) * methods * points == 240
    assert len(final) == sum(folds.values()) * methods * seeds == 144
    assert len({(g[1], g[2], g[3], g[g.index("fold") + 1]) for g in grid}) == 240  # recipe, method, point, fold
    assert sum("stages 4-5 of the grid trial" in line for line in lines) == sum(folds.values()) * methods
    assert "jobs: 240 grid + 144 final = 384" in out.stdout
    assert "--data_roots voxceleb=DIR needed" in out.stdout and "prep_opts '--librilight-10h'" in out.stdout
    assert "estimated training time" in out.stdout and "audio s/s" in out.stdout


def test_recipes_with_the_same_task_get_names_of_their_own():
    protocol = load_protocol(ROOT / "protocols" / "mini.yaml")
    names = {spec.recipe: spec.task for spec in protocol.recipes}
    assert names["slurp/ic"] == "ic (slurp)" and names["fluent_speech_commands/ic"] == "ic (fluent_speech_commands)"
    assert names["librispeech/asr"] == "asr" and len(set(names.values())) == len(names)


def test_two_recipes_given_one_task_name_are_refused(tmp_path):
    text = (ROOT / "protocols" / "mini.yaml").read_text().replace(
        "  fluent_speech_commands/ic:\n", "  fluent_speech_commands/ic:\n    task: ic\n").replace(
        "  slurp/ic:\n", "  slurp/ic:\n    task: ic\n")
    path = write_protocol(tmp_path, text)
    with pytest.raises(ProtocolError) as error:
        load_protocol(path)
    assert str(error.value).startswith(f"{path}: recipes.slurp/ic.task: 'ic' names slurp/ic and "
                                       "fluent_speech_commands/ic") and "\n" not in str(error.value)

# ------------------------------------------------------------------------------ report pieces
def test_target_check_needs_the_targets_backbone():
    protocol = load_protocol(ROOT / "protocols" / "icassp23.yaml")
    target = next(t for t in protocol.targets if (t.recipe, t.method) == ("voxceleb/sv", "el"))
    assert protocol_report.target_check(target, protocol, 2.80)["within_tolerance"] is True   # |2.80-2.63| <= 0.27
    assert protocol_report.target_check(target, protocol, 2.95)["within_tolerance"] is False
    tiny = load_protocol(ROOT / "protocols" / "mini_tiny.yaml")
    check = protocol_report.target_check(target, tiny, 2.63)
    assert check["comparable"] is False and check["within_tolerance"] is None


def test_item_columns_pair_the_decode_files(tmp_path):
    (tmp_path / "predictions.txt").write_text("u2 sad sad\nu1 hap neu\nu3 neu neu\n")
    ids, columns = protocol_report.item_columns("ua", tmp_path)
    assert ids == ["u1", "u2", "u3"] and columns.tolist() == [[0.0, 0.0], [1.0, 1.0], [1.0, 0.0]]  # neu 0, sad 1
    (tmp_path / "scores.txt").write_text("a b 0.9 target\na c -0.2 nontarget\n")
    ids, columns = protocol_report.item_columns("eer", tmp_path)
    assert ids == ["a|b", "a|c"] and columns.tolist() == [[0.9, 1.0], [-0.2, 0.0]]
    (tmp_path / "ref.txt").write_text("u1 the cat sat\nu2 a dog\n")
    (tmp_path / "hyp.txt").write_text("u1 the cat\nu2 a dog ran\n")
    ids, columns = protocol_report.item_columns("wer", tmp_path)
    assert ids == ["u1", "u2"] and columns.tolist() == [[1.0, 3.0], [1.0, 2.0]]
    (tmp_path / "predictions.txt").write_text("u1 hap\n")
    with pytest.raises(ValueError, match="predictions.txt:1: expected 3 fields"):
        protocol_report.item_columns("accuracy", tmp_path)


def test_the_comparison_keeps_apart_two_recipes_of_one_task():
    def row(recipe, task, mean):
        return {"recipe": recipe, "task": task, "metric": "accuracy", "higher_is_better": True, "method": "elp",
                "values": {"1986": mean}, "mean": mean, "std": None, "significance": None, "target": None,
                "learnable_params": 1, "selected_point": 0, "lr": {"e": 1e-3}, "valid": {"name": "accuracy", "value": 1.0},
                "train_wall_s_per_run": 1.0, "train_wall_s_all_trials": 2.0}

    comparison = {"protocol": "p", "description": "d", "backbone": {"name": "wavlm_plus"}, "seeds": [1986],
                  "selection_seed": 1986, "selection_rule": "best", "reference_method": None,
                  "rows": [row("slurp/ic", "ic (slurp)", 60.0), row("fluent_speech_commands/ic", "ic (fsc)", 80.0)]}
    summary = protocol_report.comparison_markdown(comparison).splitlines()
    header = next(line for line in summary if line.startswith("| method |"))
    assert header == "| method | ic (slurp) accuracy ↑ | ic (fsc) accuracy ↑ |"
    assert "| elp | 60.00 | 80.00 |" in summary


# ------------------------------------------------------------------------------ end to end
def copy_recipe(root: Path, recipe: str) -> None:
    source, target = ROOT / "egs" / recipe, root / "egs" / recipe
    target.mkdir(parents=True)
    for name in ("run.sh", "conf", "local"):
        (shutil.copytree if (source / name).is_dir() else shutil.copy2)(source / name, target / name)
    (root / "recipes").symlink_to(ROOT / "recipes")


@pytest.mark.slow
def test_mini_tiny_protocol_end_to_end(tmp_path):
    """One task, two methods, two learning rates, two seeds, a tiny backbone: the run selects by its
    own validation numbers, decodes only the selected points, and a rerun trains nothing."""
    copy_recipe(tmp_path, "slurp/ic")
    command = [str(ROOT / "run_protocol.sh"), "--protocol", str(ROOT / "protocols" / "mini_tiny.yaml"),
               "--root", str(tmp_path), "--jobs", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    protocol = load_protocol(ROOT / "protocols" / "mini_tiny.yaml")
    exp = tmp_path / "egs" / "slurp" / "ic" / "exp"
    chosen = {}
    for method in protocol.methods:
        valid = [json.loads((exp / f"mini_tiny_{method}_lr{k}_s1986" / "train_stats.json").read_text())["valid_metric"]
                 for k in range(2)]
        assert all(v["name"] == "accuracy" and v["higher_is_better"] for v in valid)
        chosen[method] = 0 if valid[0]["value"] >= valid[1]["value"] else 1
        other = 1 - chosen[method]
        assert not (exp / f"mini_tiny_{method}_lr{other}_s1986" / "decode").exists()  # never tested
        for seed in protocol.seeds:
            assert (exp / f"mini_tiny_{method}_lr{chosen[method]}_s{seed}" / "decode" / "test" / "predictions.txt").is_file()
    out_dir = tmp_path / "exp" / "protocols" / "mini_tiny"
    selection = json.loads((out_dir / "selection.json").read_text())
    assert {c["method"]: c["selected"] for c in selection["cells"]} == chosen
    comparison = json.loads((out_dir / "comparison.json").read_text())
    rows = {(r["method"], r["metric"]): r for r in comparison["rows"]}
    assert set(rows) == {("full", "accuracy"), ("full", "ua"), ("elp", "accuracy"), ("elp", "ua")}
    for (method, metric), row in rows.items():
        assert row["n"] == 2 and set(row["values"]) == {"1986", "1987"} and row["selected_point"] == chosen[method]
        results = [json.loads((exp / f"mini_tiny_{method}_lr{chosen[method]}_s{s}" / "results.json").read_text())
                   for s in protocol.seeds]
        expected = [r["metric"]["value"] if metric == "accuracy" else r["extra_metrics"]["ua"] for r in results]
        assert row["mean"] == pytest.approx(sum(expected) / 2)
    test = rows[("elp", "accuracy")]["significance"]
    assert test["reference"] == "full" and test["items"] == 168 and test["strata"] == 2 and 0 < test["p_value"] <= 1
    assert rows[("full", "accuracy")]["significance"] is None
    markdown = (out_dir / "comparison.md").read_text()
    assert "| elp |" in markdown and "p (paired bootstrap)" in markdown and (out_dir / "comparison.png").is_file()
    # the rerun: every trial is reused, nothing trains
    stamps = {p: p.stat().st_mtime for p in exp.glob("*/train_stats.json")}
    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "grid: 0 of 4 job(s) to run, 4 done and reused" in again.stderr
    assert "final: 0 of 4 job(s) to run, 4 done and reused" in again.stderr
    assert {p: p.stat().st_mtime for p in exp.glob("*/train_stats.json")} == stamps


def test_a_dry_run_without_a_cost_basis_says_unknown_not_zero(tmp_path):
    root = tmp_path / "root"
    shutil.copytree(ROOT / "egs" / "slurp" / "ic" / "conf", root / "egs" / "slurp" / "ic" / "conf")
    (root / "recipes").symlink_to(ROOT / "recipes")
    protocol = load_protocol(ROOT / "protocols" / "mini_tiny.yaml")  # no cost_basis, no finished run under root
    estimate = next(line for line in trials.plan_text(root, protocol, {}).splitlines()
                    if line.startswith("estimated training time"))
    # the final runs of the selection seed reuse their grid trials: nothing to train
    assert estimate.endswith("grid unknown (no cost basis for its 4 job(s)), final unknown (no cost basis for 2 of "
                             "its 4 job(s))"), estimate
