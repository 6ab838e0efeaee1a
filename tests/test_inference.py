"""elp.serve.inference: the API equals the model's direct outputs; batched equals one-by-one;
files, arrays, tensors, stereo and other rates all work; errors name the problem."""
import re

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F

from elp.serve.inference import (PREDICTORS, AudioInputError, Predictor, SpeakerVerifier, SpeechRecognizer,
                                  UtteranceClassifier, load_predictor, load_waveform)
from elp.serve.package import PackageError, calibrate_threshold
from elp.tasks import TASKS
from elp.tasks.decoding import greedy_ctc
from elp.testing import make_tiny_package


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    root = tmp_path_factory.mktemp("packages")
    return {task: make_tiny_package(root / task, task=task, method=method, seed=i)
            for i, (task, method) in enumerate([("asr", "elp"), ("classify", "l_only"), ("sv", "el")])}


def _waves(seed=0, lengths=(16000, 5000, 9100, 12345)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=g) * 0.1 for n in lengths]


def test_each_kind_has_its_predictor_class_from_the_registry(packages):
    assert set(PREDICTORS) == set(TASKS)
    for kind, directory in packages.items():
        predictor = load_predictor(directory)
        assert type(predictor) is PREDICTORS[kind] and predictor.kind == kind
        assert isinstance(predictor.task, TASKS[kind]) and isinstance(predictor, Predictor)
        assert type(PREDICTORS[kind].from_package(directory)) is PREDICTORS[kind]
    assert {SpeechRecognizer.task_class.kind, UtteranceClassifier.task_class.kind,
            SpeakerVerifier.task_class.kind} == set(TASKS)


def test_classify_equals_direct_model_and_batched_equals_one_by_one(packages):
    predictor = Predictor.from_package(packages["classify"])
    waves = _waves()
    batched = predictor.classify(waves, sample_rate=16000, batch_size=3)
    for wave, result in zip(waves, batched):
        single = predictor.classify(wave, sample_rate=16000)
        with torch.no_grad():
            direct = F.softmax(predictor.package.head(*predictor.package.model(wave[None])), -1)[0]
        assert single.label == result.label
        np.testing.assert_allclose(list(result.probabilities.values()), direct.tolist(), atol=1e-5, rtol=0)
        np.testing.assert_allclose(list(single.probabilities.values()), direct.tolist(), atol=1e-6, rtol=0)
        assert list(result.probabilities) == predictor.labels


def test_transcribe_equals_greedy_on_direct_log_probs(packages):
    predictor = Predictor.from_package(packages["asr"])
    waves = _waves(1)
    texts = predictor.transcribe(waves, sample_rate=16000, batch_size=2)
    outputs = predictor.outputs(waves, sample_rate=16000, batch_size=4)
    for wave, text, out in zip(waves, texts, outputs):
        with torch.no_grad():
            log_probs = predictor.package.head(*predictor.package.model(wave[None]))
        torch.testing.assert_close(out, log_probs[0], atol=1e-5, rtol=0)
        assert text == predictor.package.tokenizer.decode(greedy_ctc(log_probs, torch.ones(log_probs.shape[:2], dtype=torch.bool))[0])
    assert predictor.transcribe(waves, sample_rate=16000, beam_size=1) == texts  # beam 1 = best path here
    assert any(texts)


def test_embed_and_verify(packages):
    predictor = Predictor.from_package(packages["sv"])
    waves = _waves(2)
    embeddings = predictor.embed(waves, sample_rate=16000, batch_size=3)
    for wave, emb in zip(waves, embeddings):
        with torch.no_grad():
            direct = predictor.package.head(*predictor.package.model(wave[None]))[0]
        torch.testing.assert_close(emb, direct, atol=1e-5, rtol=0)
    trial = predictor.verify(waves[0], waves[1], sample_rate=16000)
    assert trial.score == pytest.approx(float(F.cosine_similarity(embeddings[0:1], embeddings[1:2])), abs=1e-5)
    assert trial.accepted is None
    calibrate_threshold(packages["sv"], [trial.score - 0.01, trial.score + 0.5], [1, 0])
    calibrated = Predictor.from_package(packages["sv"])
    assert calibrated.package.threshold == pytest.approx(trial.score - 0.01)
    both = calibrated.verify([waves[0], waves[2]], [waves[1], waves[2]], sample_rate=16000)
    assert both[0].accepted is True and both[1].score == pytest.approx(1.0, abs=1e-5) and both[1].accepted


def test_files_arrays_stereo_and_rates_agree(packages, tmp_path):
    predictor = Predictor.from_package(packages["classify"])
    g = np.random.default_rng(0)
    stereo = (g.standard_normal((8000, 2)) * 0.1).astype(np.float32)
    sf.write(tmp_path / "a.wav", stereo, 8000, subtype="FLOAT")
    from_file = predictor.classify(str(tmp_path / "a.wav"))
    from_array = predictor.classify(stereo, sample_rate=8000)          # [T, C]
    from_tensor = predictor.classify(torch.from_numpy(stereo.T.copy()), sample_rate=8000)  # [C, T]
    for other in (from_array, from_tensor):
        np.testing.assert_allclose(list(other.probabilities.values()), list(from_file.probabilities.values()),
                                   atol=1e-6)
    assert load_waveform(stereo, 8000).shape == (16000,)


def test_errors_name_the_problem(packages, tmp_path):
    predictor = Predictor.from_package(packages["classify"])
    with pytest.raises(FileNotFoundError, match="missing.wav does not exist"):
        predictor.classify(str(tmp_path / "missing.wav"))
    with pytest.raises(AudioInputError, match="sample_rate="):
        predictor.classify(np.zeros(16000))
    with pytest.raises(AudioInputError, match="channels"):
        predictor.classify(np.zeros((100, 100)), sample_rate=16000)
    assert isinstance(predictor, UtteranceClassifier)
    assert not any(hasattr(predictor, name) for name in ("transcribe", "embed", "verify"))  # no wrong-kind call
    with pytest.raises(PackageError, match=r"classify.* is a 'classify' package, not a 'asr' one; load it with"):
        SpeechRecognizer.from_package(packages["classify"])
    with pytest.raises(ValueError, match="input 0 has 100 samples.*receptive field"):
        predictor.classify(np.zeros(100), sample_rate=16000)


# ----------------------------------------------------------------------------------- CLI
def _cli(argv):
    from elp.cli import main

    return main(argv)


def test_cli_infer_several_packages_wav_scp_and_jsonl(tmp_path, capsys):
    import json

    from elp.testing import save_tiny_checkpoint

    ckpt = save_tiny_checkpoint("wavlm", tmp_path / "ckpt")
    er = make_tiny_package(tmp_path / "er", task="classify", method="l_only", backbone_dir=ckpt)
    asr = make_tiny_package(tmp_path / "asr", task="asr", method="elp", backbone_dir=ckpt, seed=1)
    waves = _waves(3, (8000, 12000))
    for i, wave in enumerate(waves):
        sf.write(tmp_path / f"{i}.wav", wave.numpy(), 16000, subtype="FLOAT")
    (tmp_path / "wav.scp").write_text("".join(f"utt{i} {tmp_path / f'{i}.wav'}\n" for i in range(2)))
    assert _cli(["infer", "--package", str(er), "--package", str(asr), "--wav-scp", str(tmp_path / "wav.scp"),
                 "--jsonl", str(tmp_path / "out.jsonl"), "--no-progress"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:3] for line in lines] == [["utt0", "er", "(classify)"], ["utt0", "asr", "(asr)"],
                                                     ["utt1", "er", "(classify)"], ["utt1", "asr", "(asr)"]]
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    alone = Predictor.from_package(er).classify([str(tmp_path / "0.wav"), str(tmp_path / "1.wav")])
    texts = Predictor.from_package(asr).transcribe([str(tmp_path / "0.wav"), str(tmp_path / "1.wav")])
    for record, result, text in zip(records, alone, texts):
        assert record["er"]["result"]["label"] == result.label
        np.testing.assert_allclose(list(record["er"]["result"]["probabilities"].values()),
                                   list(result.probabilities.values()), atol=1e-5)
        assert record["asr"]["result"] == text


def test_cli_verify_inspect_and_errors(tmp_path, capsys, packages):
    sf.write(tmp_path / "a.wav", _waves(4, (8000,))[0].numpy(), 16000)
    assert _cli(["verify", "--package", str(packages["sv"]), str(tmp_path / "a.wav"), str(tmp_path / "a.wav")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("1.0000") and ("accept" in out or "no decision" in out)
    with pytest.raises(SystemExit, match="elp verify: audio file .*b.wav does not exist"):
        _cli(["verify", "--package", str(packages["sv"]), str(tmp_path / "a.wav"), str(tmp_path / "b.wav")])
    with pytest.raises(SystemExit, match="elp infer: .*nope: no such model package directory"):
        _cli(["infer", "--package", str(tmp_path / "nope"), str(tmp_path / "a.wav")])
    with pytest.raises(SystemExit, match="elp infer: no input"):
        _cli(["infer", "--package", str(packages["sv"])])
    assert _cli(["inspect", "--package", str(packages["asr"]), "--plot", str(tmp_path / "lw.png")]) == 0
    out = capsys.readouterr().out
    assert "method    elp" in out and "  p " in out and "layer weights, L-adapters" in out
    assert (tmp_path / "lw.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit, match=r"elp verify: .*classify is a 'classify' package, not a 'sv' one"):
        _cli(["verify", "--package", str(packages["classify"]), str(tmp_path / "a.wav"), str(tmp_path / "a.wav")])
    calibrate_threshold(packages["sv"], [0.2, 0.4, 0.6], [0, 1, 1])
    assert _cli(["inspect", "--package", str(packages["sv"]), "--plot", str(tmp_path / "sv.png")]) == 0
    out = capsys.readouterr().out
    assert "SV windows 6 s, overlap 1.5 s\nSV threshold 0.200000 (EER 0.00% on 3 dev trials)" in out


@pytest.fixture(scope="module")
def joint_run(tmp_path_factory):
    """``exp/mini_elp`` of a joint run (``exp/<tag>/<task>/adapters``, one backbone) and an input file."""
    root = tmp_path_factory.mktemp("joint")
    run = root / "exp" / "mini_elp"
    for task in ("er", "ic", "kws"):
        make_tiny_package(run / task / "adapters", task="classify", method="l_only")
    sf.write(root / "a.wav", _waves(5, (12000,))[0].numpy(), 16000)
    return run, root / "a.wav"


@pytest.mark.parametrize("given, says", [
    ("exp/mini_elp/adapters", "exp/mini_elp/adapters: no such model package directory; exp/mini_elp holds"),
    ("exp/mini_elp", "exp/mini_elp is a run directory, not a model package: it holds"),
])
def test_cli_infer_on_a_joint_run_names_its_packages(joint_run, monkeypatch, given, says):
    run, wav = joint_run
    monkeypatch.chdir(run.parents[1])
    with pytest.raises(SystemExit) as err:
        _cli(["infer", "--package", given, "--no-progress", str(wav)])
    assert err.value.code == (f"elp infer: {says} the packages er/adapters, ic/adapters, kws/adapters (a joint run: "
                              "one package per task); pass one of them, e.g. exp/mini_elp/er/adapters")


def test_cli_infer_refuses_several_backbones_with_one_command_per_backbone(tmp_path):
    a = make_tiny_package(tmp_path / "a" / "adapters", task="classify", seed=0)
    b = make_tiny_package(tmp_path / "b" / "adapters", task="classify", seed=1)
    c = make_tiny_package(tmp_path / "c" / "adapters", task="asr", seed=0)
    sf.write(tmp_path / "x.wav", _waves(2, (8000,))[0].numpy(), 16000)
    with pytest.raises(SystemExit) as err:
        _cli(["infer", "--package", str(a), "--package", str(b), "--package", str(c), str(tmp_path / "x.wav")])
    message = str(err.value.code)
    assert message.startswith(f"elp infer: {b} was trained on backbone") and "\n" not in message
    assert message.endswith(f"one backbone serves only packages trained on the same weights: run separate elp infer "
                            f"commands, one per backbone: elp infer --package {a} --package {c} ...; "
                            f"elp infer --package {b} ...")
    assert "MultiTask" not in message
    from elp.serve.multitask import MultiTask

    with pytest.raises(PackageError, match=r"same weights: run them in separate MultiTask objects, one per backbone$"):
        MultiTask([a, b, c])  # the Python API keeps its own fix


def _documented_infer_output() -> list[str]:
    """The example output of ``elp infer`` that docs/INFERENCE.md shows (its ``text`` block of result lines)."""
    from pathlib import Path

    import docs_blocks

    path = Path(docs_blocks.ROOT) / "docs" / "INFERENCE.md"
    shown = [block.code.splitlines() for block in docs_blocks.blocks(path) if block.language == "text"]
    lines = [lines for lines in shown if lines and all(re.match(r"^\S+ \S+ \((asr|classify|sv)\) ", line)
                                                       for line in lines)]
    return lines[0] if lines else []


def test_the_documented_infer_output_is_what_elp_infer_prints(joint_run, capsys):
    from elp.testing import TINY_LABELS

    run, wav = joint_run
    documented = _documented_infer_output()
    assert documented, "docs/INFERENCE.md shows no example output of elp infer"
    # the documented command: the packages named by the lines' names, in the joint layout
    names = [line.split()[1] for line in documented]
    assert _cli(["infer", *[arg for name in names for arg in ("--package", str(run / name / "adapters"))],
                 "--no-progress", str(wav)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == len(documented)
    label = "|".join(TINY_LABELS)
    for got, shown in zip(printed, documented):
        _, name, kind, *_ = shown.split()
        assert re.fullmatch(rf"{re.escape(str(wav))} {name} {re.escape(kind)} ({label}) [01]\.\d{{4}}", got), got
        assert re.fullmatch(rf"a\.flac {name} {re.escape(kind)} \w+ [01]\.\d{{4}}", shown), shown


# ------------------------------------------------------------------- equals stage 4 (Brain.predict)
@pytest.mark.parametrize("method", ["elp", "lora"])
def test_package_of_a_recipe_brain_predicts_what_stage_4_predicts(tmp_path, monkeypatch, method):
    """Stage 3's wiring (write_package from the Brain's modules) reproduces stage 4's predictions."""
    from recipe_fixtures import experiment, make_recipe

    from elp.data.kaldi_dir import read_data_dir
    from elp.serve.package import write_package
    from elp.train.brains.base import unwrap
    from elp.train.recipe import loader_kwargs, make_dataset

    recipe = make_recipe(tmp_path)
    monkeypatch.chdir(recipe)
    hparams, brain = experiment(recipe, "--method", method, "--tag", method)
    with torch.no_grad():
        for p in unwrap(brain.modules.model).learnable_parameters().values():
            p.add_(0.1 * torch.randn_like(p))
    dataset = make_dataset(hparams, hparams["test_sets"][0], "test")
    stage4 = brain.predict(dataset, loader_kwargs(hparams, dataset, train=False))
    package = write_package(recipe / "exp" / "adapters", unwrap(brain.modules.model), unwrap(brain.modules.head),
                            task=hparams["task"].kind, labels=hparams["inventory"].labels,
                            backbone_source=hparams["backbone_source"],
                            backbone_pretrained=not hparams["backbone_arch"])
    predictor = Predictor.from_package(package)
    wavs = read_data_dir(hparams["test_sets"][0]).wav_scp
    utts = sorted(stage4)
    assert [r.label for r in predictor.classify([wavs[u] for u in utts])] == [stage4[u] for u in utts]


@pytest.mark.parametrize("method", ["elp", "lora", "prefix", "conventional", "weighted_sum", "full"])
def test_inspect_groups_equal_the_models_learning_rate_groups(tmp_path, method):
    from elp.commands.inspect import summarize
    from elp.serve.package import load_package

    directory = make_tiny_package(tmp_path, task="classify", method=method)
    model = load_package(directory).model
    counts = {group: sum(p.numel() for p in params) for group, params in model.parameter_groups().items()}
    info = summarize(directory)
    head = info["groups"].pop("head")
    assert info["groups"] == counts and head > 0
    if method == "full":
        assert list(info["groups"]) == ["backbone"]
