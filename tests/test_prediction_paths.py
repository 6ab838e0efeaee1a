"""One prediction path per task kind: stage 4 (the Brain), the package API and multi-task serving
give the same outputs for every method and every task kind, long speaker-verification inputs
(windowed) included, and ``elp verify`` reproduces stage 4's trial score."""
import numpy as np
import pytest
import soundfile as sf
import torch
from speechbrain.dataio.dataset import DynamicItemDataset

from elp.core.methods import METHODS
from elp.data.inventory import LabelMap
from elp.serve.inference import load_predictor
from elp.serve.multitask import MultiTask
from elp.serve.package import load_package
from elp.tasks import TASKS, SpeakerVerification, SpeechRecognition, UtteranceClassification
from elp.testing import make_tiny_package, save_tiny_checkpoint
from elp.train.brains import ASRBrain, SpeakerBrain, UtteranceClassifierBrain
from elp.train.brains.prediction import predicted_outputs

#: stage 4's Brain of each task class (a new kind must add its Brain here: checked below)
BRAINS = {SpeechRecognition: ASRBrain, UtteranceClassification: UtteranceClassifierBrain,
          SpeakerVerification: SpeakerBrain}
#: small SV windows, so that a 20 s input is embedded in 13 windows
WINDOWS = {"window_seconds": 2.0, "window_overlap_seconds": 0.5}
TASK_OPTIONS = {SpeakerVerification: WINDOWS}
SHORT = (16000, 25600, 11000)  # 1 s, 1.6 s, 0.69 s
LONG = 20 * 16000
GRID = [(kind, method) for kind in sorted(TASKS) for method in sorted(METHODS)]


def test_every_task_kind_has_a_stage_4_brain():
    assert set(BRAINS) == set(TASKS.values())


def _waves(kind):
    g = torch.Generator().manual_seed(7)
    lengths = SHORT + ((LONG,) if TASKS[kind] in TASK_OPTIONS else ())
    return [torch.randn(n, generator=g) * 0.1 for n in lengths]


def _build(root, cells):
    ckpt = save_tiny_checkpoint("wavlm", root / "ckpt", seed=3)
    return {(kind, method): make_tiny_package(root / f"{kind}_{method}", task=kind, method=method, seed=index,
                                              backbone_dir=ckpt, task_options=TASK_OPTIONS.get(TASKS[kind]))
            for index, (kind, method) in enumerate(cells)}


@pytest.fixture(scope="module")
def grid_packages(tmp_path_factory):
    """A package per method x task kind, all on one tiny backbone checkpoint."""
    return _build(tmp_path_factory.mktemp("grid"), GRID)


def stage4(directory, waves, batch_size=2):
    """Stage 4 on ``waves``: the Brain's raw outputs and its ``predict`` results, by utterance index."""
    package = load_package(directory)
    inventory = package.tokenizer if package.tokenizer is not None else \
        LabelMap(package.labels) if package.labels is not None else None
    brain = BRAINS[type(package.task)](modules={"model": package.model, "head": package.head},
                                       hparams={"task": package.task, "inventory": inventory},
                                       run_opts={"device": "cpu"})
    dataset = DynamicItemDataset({f"u{i}": {"wav": w} for i, w in enumerate(waves)})
    dataset.add_dynamic_item(lambda wav: wav, takes="wav", provides="sig")
    dataset.set_output_keys(["id", "sig"])
    raw = {u: out for ids, outs in predicted_outputs(brain, dataset, {"batch_size": batch_size})
           for u, out in zip(ids, outs)}
    results = brain.predict(dataset, {"batch_size": batch_size})
    n = len(waves)
    return [raw[f"u{i}"] for i in range(n)], [results[f"u{i}"] for i in range(n)]


def _same_result(api, brain_result):
    """A result of the package API equals stage 4's (text, label name, or embedding to 1e-5)."""
    if isinstance(brain_result, torch.Tensor):
        torch.testing.assert_close(api, brain_result, atol=1e-5, rtol=0)
    elif hasattr(api, "label"):
        assert api.label == brain_result
    else:
        assert api == brain_result


def test_stage4_package_api_and_multitask_agree_for_every_method_and_kind(grid_packages):
    """Every method x kind: raw outputs to 1e-5 and results (texts, labels, embeddings) alike."""
    packages = grid_packages
    tasks = MultiTask(list(packages.values()))  # every package at once: shared pass, routed groups, own layers
    plan = tasks.plan()
    assert plan["shared_pass"] and plan["routed_batches"] and plan["own_layers"]
    per_kind = {kind: (_waves(kind), tasks.outputs(_waves(kind), sample_rate=16000, batch_size=3))
                for kind in TASKS}
    for index, ((kind, method), directory) in enumerate(packages.items()):
        waves, multi = per_kind[kind]
        brain_raw, brain_results = stage4(directory, waves)
        predictor = load_predictor(directory)
        api = predictor.outputs(waves, sample_rate=16000, batch_size=3)
        for i, (a, b, m) in enumerate(zip(api, brain_raw, multi[index])):
            where = f"{kind}/{method} input {i}"
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0, msg=f"package API != stage 4 for {where}")
            torch.testing.assert_close(m, b, atol=1e-5, rtol=0, msg=f"MultiTask != stage 4 for {where}")
        for output, brain_result in zip(api, brain_results):
            _same_result(predictor.result(output), brain_result)
        if TASKS[kind] in TASK_OPTIONS:  # the long input was windowed, not embedded whole
            package = predictor.package
            with torch.no_grad():
                whole = package.head(*package.model(waves[-1][None]))[0]
            assert (api[-1] - whole).abs().max() > 1e-3


def test_elp_verify_on_a_long_trial_reproduces_the_stage_4_score(grid_packages, tmp_path, capsys):
    from elp.cli import main

    directory = grid_packages[("sv", "el")]
    waves = _waves("sv")
    enroll, test = waves[-1], waves[1]  # 20 s (windowed) against 1.6 s
    data = tmp_path / "test"
    data.mkdir()
    for name, wave in (("enroll", enroll), ("test", test)):
        sf.write(data / f"{name}.wav", wave.numpy(), 16000, subtype="FLOAT")
    (data / "trials").write_text("enroll test target\n")
    package = load_package(directory)
    brain = SpeakerBrain(modules={"model": package.model, "head": package.head}, hparams={"task": package.task},
                         run_opts={"device": "cpu"})
    dataset = DynamicItemDataset({name: {"wav": torch.from_numpy(sf.read(data / f"{name}.wav", dtype="float32")[0])}
                                  for name in ("enroll", "test")})
    dataset.add_dynamic_item(lambda wav: wav, takes="wav", provides="sig")
    dataset.set_output_keys(["id", "sig"])
    decode = tmp_path / "decode"
    decode.mkdir()
    package.task.write_outputs(brain, dataset, data, decode, lambda _: {"batch_size": 2}, tmp_path)
    stage4_score = float((decode / "scores.txt").read_text().split()[2])
    assert main(["verify", "--package", str(directory), str(data / "enroll.wav"), str(data / "test.wav")]) == 0
    cli_score = float(capsys.readouterr().out.split()[0])
    assert cli_score == pytest.approx(stage4_score, abs=1e-5)
    # embedded whole, the long utterance would score differently: the windows matter here
    with torch.no_grad():
        whole = [package.head(*package.model(w[None]))[0] for w in (enroll, test)]
    whole_score = float(torch.nn.functional.cosine_similarity(whole[0][None], whole[1][None])[0])
    assert abs(whole_score - stage4_score) > 1e-4
    assert np.isfinite(cli_score)
