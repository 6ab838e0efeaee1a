"""Joint training of tasks labelled on the same audio: one backbone pass per recording.

The task mixer puts every task's item of a recording in one batch (``audio_keys``), the batch
holds each distinct waveform once (``MixedBatch.sources``), and the joint forward runs the CNN,
and the transformer where the tasks share it, once per distinct waveform, with the same outputs
and gradients as one row per item.
"""

import importlib.util
import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from data_fixtures import load_data_prep, make_slurp, require_shared

from elp.data.inventory import LabelMap
from elp.data.kaldi_dir import DataDirError, read_mapping, write_data_dir
from elp.data.task_mixer import MixedBatch, TaskEvalBatchSampler, TaskMixer, distinct_waveforms
from elp.runtime import UserError
from elp.serve.inference import load_predictor
from elp.serve.multitask import MultiTask
from elp.testing import save_tiny_checkpoint
from elp.core.backbones import load_backbone
from elp.train.multitask import JointModel, task_model

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "egs" / "multitask" / "slurp_intent_scenario"
OPTIONS = {"l_dim": 8, "e_dim": 4, "prompt_frames": 2, "prefix_frames": 2, "lora_rank": 2}
NAMES = ["intent", "scenario"]


# ------------------------------------------------------------------ the batch
def test_distinct_waveforms_merge_equal_samples_only():
    a = torch.randn(400)
    same_length_other = a.clone()
    same_length_other[-1] += 1e-6
    rows, sources = distinct_waveforms([a, a.clone(), same_length_other, a[:399].clone(), a])
    assert rows == [0, 2, 3] and sources == [0, 0, 1, 2, 0]
    assert distinct_waveforms([]) == ([], [])


def test_a_mixed_batch_holds_each_recording_once():
    wave, other = torch.randn(300), torch.randn(200)
    items = [(1, {"id": "u1", "sig": wave.clone(), "label_id": torch.tensor([3])}),
             (0, {"id": "u1", "sig": wave, "label_id": torch.tensor([0])}),
             (0, {"id": "u2", "sig": other, "label_id": torch.tensor([1])})]
    batch = MixedBatch(items, 2)
    assert batch.counts == [2, 1] and batch.id == ["u1", "u2", "u1"]
    assert batch.sig.data.shape == (2, 300) and batch.sources.tolist() == [0, 1, 0]
    assert torch.equal(batch.sig.data[1, :200], other) and torch.allclose(batch.sig.lengths, torch.tensor([1.0, 200 / 300]))
    assert batch.task_batch(1).label_id.data.tolist() == [[3]]


# ------------------------------------------------------------------ the mixer
def test_the_mixer_puts_both_tasks_items_of_a_recording_in_one_batch_and_counts_recordings():
    keys = [f"rec{i}.flac" for i in range(10)]
    lengths = [[16000 + 100 * i for i in range(10)]] * 2
    for dynamic in (False, True):
        caps = {"max_batch_seconds": 2.05, "num_buckets": 3} if dynamic else {}
        mixer = TaskMixer(lengths, max_batch_size=3, audio_keys=[keys, keys], seed=5, **caps)
        for epoch in range(3):
            mixer.set_epoch(epoch)
            batches = list(mixer)
            assert sorted(i for b in batches for i in b) == list(range(20))  # every item once
            for b in batches:
                recordings = {i % 10 for i in b}
                assert sorted(b) == sorted([*recordings, *(10 + r for r in recordings)])  # both tasks' items
                if dynamic:  # padded audio of the recordings within the cap (their items hold twice that)
                    assert len(recordings) * max(lengths[0][r] for r in recordings) <= 2.05 * 16000
                else:
                    assert len(recordings) <= 3  # the caps count recordings, not items
            assert max(len(b) for b in batches) == (4 if dynamic else 6)
            assert len(mixer.units(mixer.draw())) == 10


def test_keys_no_two_tasks_share_leave_the_batches_as_without_keys():
    lengths = [[16000, 20000, 12000, 30000], [8000, 9000, 11000]]
    keys = [["a", "b", "c", "d"], ["e", "f", "g"]]
    for caps in ({}, {"max_batch_seconds": 3.0, "num_buckets": 2}):
        for epoch in range(2):
            plain = TaskMixer(lengths, max_batch_size=2, seed=1, **caps)
            keyed = TaskMixer(lengths, max_batch_size=2, seed=1, audio_keys=keys, **caps)
            plain.set_epoch(epoch), keyed.set_epoch(epoch)
            assert list(plain) == list(keyed)


def test_a_task_drawn_twice_keeps_its_repeats_apart():
    """One unit takes at most one item of each task: a task's repeats of a recording are separate items."""
    mixer = TaskMixer([[16000] * 2, [16000] * 2], weights=[3, 1], temperature=float("inf"), epoch_size=8,
                      max_batch_size=8, audio_keys=[["a", "b"], ["a", "b"]], seed=0)
    units = mixer.units(mixer.draw())
    assert all(len({i >= 2 for i in unit}) == len(unit) for unit in units)  # global 0-1: task 0, 2-3: task 1
    assert sum(len(unit) for unit in units) == 8 and len(units) == 6  # 6 of task 0, 2 of task 1 joined


def test_audio_keys_must_match_the_tasks():
    with pytest.raises(ValueError, match="audio_keys of"):
        TaskMixer([[16000] * 2, [16000]], audio_keys=[["a", "b"], ["a", "b"]])
    with pytest.raises(ValueError, match="audio_keys of"):
        TaskEvalBatchSampler([[16000] * 2, [16000]], 4.0, audio_keys=[["a", "b"], ["a", "b"]])


def test_evaluation_batches_tasks_on_the_same_recordings_together_and_the_others_alone():
    lengths = [[16000, 24000, 20000], [24000, 16000, 20000], [8000, 9000]]  # tasks 0 and 1: the same 3 recordings
    keys = [["a", "b", "c"], ["b", "a", "c"], ["x", "y"]]
    sampler = TaskEvalBatchSampler(lengths, max_batch_seconds=3.2, audio_keys=keys)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(8))  # every item once
    # units longest first: b (1.5 s) + c (1.25 s) padded to 2 x 1.5 s <= 3.2 s; a; then task 2 alone
    assert batches == [[1, 3, 2, 5], [0, 4], [7, 6]]
    # tasks sharing nothing: the batches of no keys
    disjoint = [["a", "b", "c"], ["d", "e", "f"], ["x", "y"]]
    assert list(TaskEvalBatchSampler(lengths, 3.2, audio_keys=disjoint)) == list(TaskEvalBatchSampler(lengths, 3.2))


# ------------------------------------------------------------------ the forward
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint("wavlm", tmp_path_factory.mktemp("same_audio_backbone"), seed=7)


def joint_of(checkpoint, method, groups=()):
    backbone = load_backbone("wavlm", source=str(checkpoint)).eval()
    torch.manual_seed(0)
    joint = JointModel(backbone, {name: task_model(backbone, method, OPTIONS) for name in NAMES}, shared=groups)
    with torch.no_grad():
        for param in {id(p): p for m in joint.models.values() for p in m.learnable_parameters().values()}.values():
            param.add_(0.1 * torch.randn_like(param))
    return joint.eval()


def same_audio_batch():
    """Three recordings; intent has all three, scenario two of them (task-major rows 0-2, 3-4)."""
    generator = torch.Generator().manual_seed(3)
    lengths = [8000, 5600, 7200]
    waves = [0.1 * torch.randn(n, generator=generator) for n in lengths]
    distinct = torch.zeros(3, 8000)
    for row, wave in enumerate(waves):
        distinct[row, :len(wave)] = wave
    sources = torch.tensor([0, 1, 2, 2, 0])
    return distinct, torch.tensor(lengths, dtype=torch.float) / 8000, sources, [3, 2]


CASES = [("l_only", (), "frozen"), ("weighted_sum", (), "frozen"), ("elp", ("e", "ln", "p"), "encoder"),
         ("elp", (), "routed"), ("full", (), "own")]


@pytest.mark.parametrize("method,groups,kind", CASES, ids=[f"{m}-{k}" for m, _, k in CASES])
def test_one_row_per_recording_gives_the_outputs_and_gradients_of_one_row_per_item(checkpoint, method, groups,
                                                                                   kind):
    distinct, lens, sources, counts = same_audio_batch()
    expanded, expanded_lens = distinct[sources], lens[sources]
    results = []
    for args in ((distinct, lens, counts, sources), (expanded, expanded_lens, counts)):
        joint = joint_of(checkpoint, method, groups)
        assert [k for k, _ in joint.plan()] == [kind] * (2 if kind == "own" else 1)
        calls = {"cnn_rows": [], "layer0_rows": []}
        original = joint.backbone.extract_cnn_features

        def counting(wavs, *rest, original=original):
            calls["cnn_rows"].append(wavs.shape[0])
            return original(wavs, *rest)

        joint.backbone.extract_cnn_features = counting
        layers = {id(m.backbone.layers[0]): m.backbone.layers[0] for m in joint.models.values()}
        layers[id(joint.backbone.layers[0])] = joint.backbone.layers[0]
        for layer in layers.values():
            layer.register_forward_hook(lambda _m, inputs, _o: calls["layer0_rows"].append(inputs[0].shape[0]))
        outputs = joint(*args)
        loss = sum((feats * mask[..., None]).square().sum() for feats, mask in outputs if feats.requires_grad)
        params = {f"{n}.{k}": p for n, m in joint.models.items() for k, p in m.learnable_parameters().items()}
        grads = {}
        if torch.is_tensor(loss):
            loss.backward()
            grads = {k: p.grad.clone() for k, p in params.items() if p.grad is not None}
        results.append((outputs, grads, calls))
    (deduped, deduped_grads, deduped_calls), (plain, plain_grads, plain_calls) = results
    for (feats, mask), (feats_plain, mask_plain) in zip(deduped, plain):
        assert torch.equal(mask, mask_plain)
        assert ((feats - feats_plain) * mask[..., None]).abs().max().item() <= 1e-5
    assert deduped_grads.keys() == plain_grads.keys()
    for name in deduped_grads:
        torch.testing.assert_close(deduped_grads[name], plain_grads[name], atol=1e-5, rtol=1e-4)
    assert deduped_calls["cnn_rows"] == [3] and plain_calls["cnn_rows"] == [5]
    if kind in ("frozen", "encoder"):  # one transformer pass of the three recordings
        assert deduped_calls["layer0_rows"] == [3] and plain_calls["layer0_rows"] == [5]
    else:  # each item through its own task's tensors
        assert sum(deduped_calls["layer0_rows"]) == 5


def test_a_batch_layout_that_does_not_match_is_refused(checkpoint):
    joint = joint_of(checkpoint, "l_only")
    distinct, lens, sources, _ = same_audio_batch()
    with pytest.raises(ValueError, match="do not lay out a batch of 5"):
        joint(distinct, lens, [3, 1], sources)


# ------------------------------------------------------------------ data and the inventory stage
def test_data_dirs_take_further_label_files_by_name(tmp_path):
    wav_scp = {"u1": "/a.flac", "u2": "/b.flac"}
    out = write_data_dir(tmp_path / "d", wav_scp=wav_scp, utt2label={"u1": "x_y", "u2": "x_z"},
                         label_files={"utt2scenario": {"u1": "x", "u2": "x"}})
    assert read_mapping(out / "utt2scenario") == {"u1": "x", "u2": "x"}
    with pytest.raises(DataDirError, match=r"utt2scenario does not cover .* missing \['u2'\]"):
        write_data_dir(tmp_path / "e", wav_scp=wav_scp, label_files={"utt2scenario": {"u1": "x"}})
    for bad in ("scenario", "text", "utt2spk", "utt2x/y"):
        with pytest.raises(DataDirError, match="must start with 'utt2' and not be one of"):
            write_data_dir(tmp_path / "f", wav_scp=wav_scp, label_files={bad: {"u1": "x", "u2": "x"}})


def test_a_slurp_split_without_scenarios_writes_no_scenario_file(tmp_path, caplog):
    devel = require_shared("slurp", "devel.jsonl")
    prep = load_data_prep("slurp", "ic")
    records = [json.loads(line) for line in devel.read_text().splitlines()[:3]]
    del records[1]["scenario"]
    make_slurp(tmp_path / "slurp", {"devel": [json.dumps(r) for r in records]})
    with caplog.at_level(logging.WARNING):
        (devel_dir,) = prep.prepare_slurp(tmp_path / "slurp", tmp_path / "data", splits=["devel"])
    assert (devel_dir / "utt2label").is_file() and not (devel_dir / "utt2scenario").exists()
    assert "devel: 1 of 3 records have no scenario: utt2scenario is not written" in caplog.text


def load_driver():
    spec = importlib.util.spec_from_file_location("train_multitask", ROOT / "recipes" / "train_multitask.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def slurp_like_data(egs: Path) -> Path:
    data = egs / "slurp" / "ic" / "data"
    intents = {"u1": "weather_query", "u2": "play_music", "u3": "weather_query"}
    for split in ("train", "devel", "test"):
        write_data_dir(data / split, wav_scp={u: f"/{u}.flac" for u in intents}, utt2label=intents,
                       label_files={"utt2scenario": {u: i.split("_")[0] for u, i in intents.items()}})
    LabelMap.from_values(intents.values()).save(data / "lang")  # the member recipe's stage 2
    return data


def test_stage_2_builds_a_task_inventory_no_member_wrote_and_rebuilds_it_when_its_labels_change(tmp_path):
    driver = load_driver()
    data = slurp_like_data(tmp_path)
    argv = [str(RECIPE / "conf" / "joint.yaml"), "--tag", "t", "--egs_dir", str(tmp_path)]
    member_lang = (data / "lang" / "labels.txt").read_text() if (data / "lang" / "labels.txt").exists() else None
    assert driver.inventory(argv) == 0
    lang = data / "lang_scenario"
    assert LabelMap.load(lang).labels == ["play", "weather"]
    assert (lang / driver.DERIVED_INVENTORY).is_file()
    assert not (data / "lang" / driver.DERIVED_INVENTORY).exists()  # the member's own: left alone
    if member_lang is not None:
        assert (data / "lang" / "labels.txt").read_text() == member_lang
    # new training labels (newer than the inventory): rebuilt; validation sets are then checked against it
    scenarios = data / "train" / "utt2scenario"
    scenarios.write_text("u1 weather\nu2 play\nu3 news\n")
    stamp = (lang / driver.DERIVED_INVENTORY).stat().st_mtime
    os.utime(scenarios, (stamp + 10, stamp + 10))
    assert driver.inventory(argv) == 0
    assert LabelMap.load(lang).labels == ["news", "play", "weather"]
    # a training set without the task's label file: one line naming it and what to do
    shutil.rmtree(lang)
    scenarios.unlink()
    with pytest.raises(UserError, match=r"tasks.scenario: .*train/utt2scenario is missing.*prepare .*data again"):
        driver.inventory(argv)


# ------------------------------------------------------------------ the recipe, end to end (slow)
@pytest.mark.slow
def test_recipe_reads_each_recording_once_and_writes_a_package_per_task(tmp_path):
    root = tmp_path / "tree"
    recipe = root / "egs" / "multitask" / "slurp_intent_scenario"
    shutil.copytree(RECIPE / "conf", recipe / "conf")
    shutil.copy2(RECIPE / "run.sh", recipe / "run.sh")
    (root / "recipes").symlink_to(ROOT / "recipes")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["./run.sh", "--backbone_arch", "tiny", "--method", "l_only", "--tag", "t", "--",
                             "--number_of_epochs", "1"], cwd=recipe, env=env, capture_output=True, text=True,
                            timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    exp = recipe / "exp" / "t"
    stats = json.loads((exp / "train_stats.json").read_text())
    per_task = stats["utterances_per_epoch"]
    assert per_task["intent"] == per_task["scenario"] and stats["plan"] == [["frozen", NAMES]]
    assert stats["recordings_per_epoch"] == per_task["intent"]  # both tasks read each recording's one pass
    slurp = recipe.parent.parent / "slurp" / "ic" / "data"
    assert (slurp / "lang_scenario" / ".built_from_train_set").is_file()
    dirs = [exp / name / "adapters" for name in NAMES]
    for name, benchmark in zip(NAMES, ("ic", "scenario")):
        result = json.loads((exp / name / "results.json").read_text())
        assert result["joint"] == NAMES and result["benchmark"] == benchmark
        assert result["metric"]["name"] == "accuracy" and 0 <= result["metric"]["value"] <= 100
    paths = [line.split(maxsplit=1)[1] for line in (slurp / "test" / "wav.scp").read_text().splitlines()[:3]]
    together = MultiTask(dirs)
    assert together.plan()["shared_pass"] == [0, 1]  # l_only: both read the frozen transformer pass
    outputs = together.outputs(paths)
    for index, directory in enumerate(dirs):
        for a, b in zip(outputs[index], load_predictor(directory).outputs(paths)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_the_recipe_yaml_declares_two_tasks_on_the_member_recipes_data():
    from elp.train.hparams import peek_hparams, read_overrides
    from elp.train.recipe import RUN_DEFAULTS

    values = peek_hparams(RECIPE / "conf" / "joint.yaml",
                          {"tag": "t", **read_overrides([RECIPE / "conf" / "mini.yaml"])}, allowed_new=RUN_DEFAULTS)
    member = peek_hparams(ROOT / "egs" / "slurp" / "ic" / "conf" / "train.yaml",
                          {"tag": "t", **read_overrides([ROOT / "egs" / "slurp" / "ic" / "conf" / "mini.yaml"])},
                          allowed_new=RUN_DEFAULTS)
    assert list(values["tasks"]) == NAMES
    intent, scenario = values["tasks"]["intent"], values["tasks"]["scenario"]
    assert intent["task"] == member["task"] and intent["task"].value == {"label_file": "utt2label"}
    assert scenario["task"].value == {"label_file": "utt2scenario"}
    for key in ("train_set", "valid_set"):  # the same audio for both tasks: the member's own sets
        assert intent[key] == scenario[key] == f"../../slurp/ic/data/{Path(member[key]).name}"
    assert intent["lang_dir"] == "../../slurp/ic/data/lang" and scenario["lang_dir"] == "../../slurp/ic/data/lang_scenario"
    for spec in (intent, scenario):  # the member's mini rates and adapter sizes
        assert spec["lr"] == member["lr"] and spec["brain_class"] == member["brain_class"]
    assert values["method_options"] == member["method_options"]


def test_the_step_benchmark_prints_its_ratio():
    result = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), str(ROOT / "tools" / "joint_step_bench.py"),
                             "--arch", "tiny", "--method", "elp", "--shared", "e", "ln", "p", "--batch", "2",
                             "--seconds", "0.5", "--rounds", "1", "--warmup", "0"],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "plan [('encoder', ['a', 'b'])]" in result.stdout
    single, joint, ratio = (float(x) for x in result.stdout.strip().splitlines()[-1].strip("|").split("|"))
    assert single > 0 and joint > 0
    half = 0.0005  # the times are printed to 3 decimals: the ratio lies within what they round
    assert (joint - half) / (single + half) - 0.005 <= ratio <= (joint + half) / max(single - half, 1e-9) + 0.005
