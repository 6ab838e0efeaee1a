"""elp.serve.package: a package rebuilds exactly the trained model and head; the backbone is named
and hashed (stored only for random weights); wrong backbones are refused."""
import json

import pytest
import torch

from elp.core.backbones import SSLBackbone
from elp.core.heads import CTCHead, PooledClassifier
from elp.core.model import AdaptedSSL
from elp.serve.package import (BackboneHashMismatchError, PackageError, PackageNotFoundError, calibrate_threshold,
                               check_package, load_package, read_package_config, write_package)
from elp.serve.integrity import write_manifest
from elp.testing import make_tiny_package

WAVS = torch.randn(2, 8000)
LENS = torch.tensor([1.0, 0.6])




@pytest.mark.parametrize("method", ["l_only", "elp", "lora", "prefix", "full"])
def test_round_trip_stored_backbone_equals_trained_model(tmp_path, method):
    torch.manual_seed(3)
    backbone = SSLBackbone.from_config("wavlm", __import__("elp.testing").testing.tiny_config("wavlm"))
    model = AdaptedSSL(backbone, method, l_dim=16, e_dim=8, prompt_frames=4, prefix_frames=3, lora_rank=2).eval()
    with torch.no_grad():
        for p in model.learnable_parameters().values():
            p.add_(0.1 * torch.randn_like(p))
    head = PooledClassifier(model.output_dim, 3, hidden_dim=8).eval()
    write_package(tmp_path, model, head, task="classify", labels=["a", "b", "c"], backbone_pretrained=False)
    assert (tmp_path / "backbone" / "model.safetensors").exists()
    package = load_package(tmp_path)
    with torch.no_grad():
        want = head(*model(WAVS, LENS))
        got = package.head(*package.model(WAVS, LENS))
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert package.labels == ["a", "b", "c"]
    assert package.config["head"] == {"class": "elp.core.heads.PooledClassifier",
                                      "options": {"in_dim": model.output_dim, "num_classes": 3, "hidden_dim": 8}}
    assert package.model.backbone.weights_sha256 == backbone.weights_sha256


def test_checkpoint_backbone_is_referenced_not_copied_and_hash_checked(tmp_path, tiny_checkpoints):
    directory = make_tiny_package(tmp_path / "pkg", task="asr", method="el", backbone_dir=tiny_checkpoints["wavlm"])
    config = read_package_config(directory)
    assert not (directory / "backbone").exists() and config["backbone"]["stored"] is None
    assert config["backbone"]["source"] == str(tiny_checkpoints["wavlm"])
    assert config["inventory"] == {"kind": "char", "file": "tokens.txt"}
    assert config["frontend"]["sample_rate"] == 16000
    package = load_package(directory)
    assert package.tokenizer.tokens[0] == "<blank>"
    assert isinstance(package.head, CTCHead)
    # same architecture, other weights: refused with the fix in one line
    other = tmp_path / "other"
    __import__("elp.testing").testing.save_tiny_checkpoint("wavlm", other, seed=99)
    with pytest.raises(BackboneHashMismatchError, match=r"not the ones .*pass backbone_source=") as err:
        load_package(directory, backbone_source=str(other))
    assert "\n" not in str(err.value) and str(other) in str(err.value)


def test_missing_package_and_export_without_package(tmp_path):
    with pytest.raises(PackageNotFoundError, match="no such model package"):
        load_package(tmp_path / "nope")
    directory = make_tiny_package(tmp_path / "pkg", task="sv", method="weighted_sum")
    (directory / "package.json").unlink()
    with pytest.raises(PackageNotFoundError, match="package.json is missing.*rerun stage 3"):
        load_package(directory)


@pytest.fixture(scope="module")
def joint_run(tmp_path_factory):
    """``exp/mini_elp`` of a joint run: one package per task, ``exp/mini_elp/<task>/adapters``."""
    run = tmp_path_factory.mktemp("joint") / "exp" / "mini_elp"
    for task in ("kws", "er", "ic"):
        make_tiny_package(run / task / "adapters", task="classify", method="l_only")
    return run


def test_a_missing_package_beside_a_joint_runs_packages_lists_them(joint_run):
    listing = (f"{joint_run} holds the packages er/adapters, ic/adapters, kws/adapters (a joint run: one "
               f"package per task); pass one of them, e.g. {joint_run / 'er' / 'adapters'}")
    want = f"{joint_run / 'adapters'}: no such model package directory; {listing}"
    for call in (load_package, read_package_config):
        with pytest.raises(PackageNotFoundError) as err:
            call(joint_run / "adapters")
        assert str(err.value) == want
    assert check_package(joint_run / "adapters") == [want]  # elp inspect --check
    with pytest.raises(PackageNotFoundError) as err:  # nothing beside it: both layouts named
        load_package(joint_run.parent / "nope" / "adapters")
    assert "exp/<tag>/adapters, or exp/<tag>/<task>/adapters for each task of a joint run" in str(err.value)
    assert "\n" not in str(err.value)


def test_a_run_directory_lists_its_packages_instead_of_calling_itself_an_export(joint_run, tmp_path):
    from elp.serve.package import packages_below

    with pytest.raises(PackageNotFoundError) as err:
        load_package(joint_run)
    assert str(err.value) == (f"{joint_run} is a run directory, not a model package: it holds the packages "
                              "er/adapters, ic/adapters, kws/adapters (a joint run: one package per task); pass one "
                              f"of them, e.g. {joint_run / 'er' / 'adapters'}")
    assert check_package(joint_run) == [str(err.value)]
    with pytest.raises(PackageNotFoundError, match=r"ic is a run directory, not a model package: it holds the "
                       r"package adapters; pass it: .*ic/adapters$"):
        load_package(joint_run / "ic")
    folds = tmp_path / "exp" / "mini_elp"
    for fold in (1, 2):
        make_tiny_package(folds / f"fold{fold}" / "adapters", task="classify")
    with pytest.raises(PackageNotFoundError, match=r"holds the packages fold1/adapters, fold2/adapters "
                       r"\(one package per fold\)"):
        load_package(folds)
    assert packages_below(folds) == ["fold1/adapters", "fold2/adapters"] and packages_below(tmp_path) == []


def test_sv_threshold_is_the_eer_threshold_and_its_scores_are_stored(tmp_path):
    from safetensors.torch import load_file

    from elp.eval.scoring import equal_error_rate

    directory = make_tiny_package(tmp_path, task="sv", method="weighted_sum")
    scores, labels = [0.9, 0.7, 0.65, 0.2, 0.6, 0.1], [1, 1, 1, 0, 0, 0]
    sv = calibrate_threshold(directory, scores, labels, source="train_cv trials")
    assert sv["threshold"] == equal_error_rate(scores, labels)["threshold"] == 0.6
    assert sv["eer"] == 0.0 and sv["num_trials"] == 6 and sv["source"] == "train_cv trials"
    stored = load_file(directory / "calibration.safetensors")
    assert stored["scores"].tolist() == scores and stored["labels"].tolist() == labels
    assert load_package(directory).threshold == 0.6
    with pytest.raises(PackageError, match=r"c is a 'classify' package; only sv packages have a decision threshold"):
        calibrate_threshold(make_tiny_package(tmp_path / "c"), scores, labels)


def test_a_head_from_an_installed_library_is_refused(tmp_path):
    torch.manual_seed(0)
    backbone = SSLBackbone.from_config("wavlm", __import__("elp.testing").testing.tiny_config("wavlm"))
    model = AdaptedSSL(backbone, "weighted_sum")
    with pytest.raises(PackageError, match=r"head class torch.nn.modules.linear.Linear cannot be packaged: use a class "
                                           r"of elp.core.heads, or define your head in your recipe's local/"):
        write_package(tmp_path, model, torch.nn.Linear(32, 3), task="classify", labels=["a", "b", "c"],
                      backbone_pretrained=False)


def test_package_json_is_plain_json(tmp_path):
    directory = make_tiny_package(tmp_path, task="classify", method="elp")
    config = json.loads((directory / "package.json").read_text())
    assert config["task"] == "classify" and config["method"] == "elp" and config["extra"]["tiny"] is True
    assert len(config["backbone"]["weights_sha256"]) == 64


@pytest.mark.parametrize("task", ["asr", "classify", "sv"])
def test_package_of_an_earlier_release_loads_through_the_legacy_head_names(tmp_path, task):
    """package.json as earlier releases wrote it: heads under elp.heads, no task_options."""
    from elp.serve.inference import load_predictor

    directory = make_tiny_package(tmp_path / "pkg", task=task, method="elp", seed=2)
    config = json.loads((directory / "package.json").read_text())
    current = config["head"]["class"]
    assert current.startswith("elp.core.heads.")
    config["head"]["class"] = current.replace("elp.core.heads.", "elp.heads.")
    del config["task_options"]
    (directory / "package.json").write_text(json.dumps(config))
    (directory / "manifest.json").unlink()  # earlier releases wrote none
    old, new = load_package(directory), load_package(make_tiny_package(tmp_path / "new", task=task, method="elp",
                                                                       seed=2))
    assert type(old.head) is type(new.head) and type(old.head).__module__ == "elp.core.heads"
    with torch.no_grad():
        torch.testing.assert_close(old.head(*old.model(WAVS, LENS)), new.head(*new.model(WAVS, LENS)), rtol=0, atol=0)
    assert type(old.task) is type(new.task)
    if task == "sv":  # no recorded windows: the task's defaults, which earlier stage 4 runs used
        assert (old.task.window_seconds, old.task.window_overlap_seconds) == (6.0, 1.5)
    assert type(load_predictor(directory)).__name__ == type(load_predictor(tmp_path / "new")).__name__


def test_unknown_head_class_is_refused_with_the_fix(tmp_path):
    directory = make_tiny_package(tmp_path, task="classify")
    config = json.loads((directory / "package.json").read_text())
    config["head"]["class"] = "elp.models.PooledClassifier"
    (directory / "package.json").write_text(json.dumps(config))
    write_manifest(directory)
    with pytest.raises(PackageError, match=r"package.json: head.class 'elp.models.PooledClassifier' is not a head elp "
                                           r"knows \(.*elp.core.heads.PooledClassifier.*\)") as err:
        load_package(directory)
    assert "\n" not in str(err.value)


def test_task_options_are_recorded_and_read_by_the_task(tmp_path):
    from elp.serve.integrity import write_manifest
    from elp.serve.package import record_task_options
    from elp.tasks import SpeakerVerification, SpeechRecognition

    directory = make_tiny_package(tmp_path, task="sv", method="l_only",
                                  task_options={"window_seconds": 2.0, "window_overlap_seconds": 0.5})
    assert read_package_config(directory)["task_options"] == {"window_seconds": 2.0, "window_overlap_seconds": 0.5}
    assert load_package(directory).task.window_seconds == 2.0
    assert record_task_options(directory, SpeakerVerification(window_seconds=3.0, window_overlap_seconds=1.0)) == \
        {"window_seconds": 3.0, "window_overlap_seconds": 1.0}
    task = load_package(directory).task
    assert (task.window_seconds, task.window_overlap_seconds) == (3.0, 1.0)
    with pytest.raises(PackageError, match="is a 'sv' package, not a 'asr' one"):
        record_task_options(directory, SpeechRecognition())
    config = read_package_config(directory)
    config["task"] = "tts"
    (directory / "package.json").write_text(json.dumps(config))
    with pytest.raises(PackageError, match=r"package.json: content differs from manifest.json"):
        load_package(directory)  # a hand edit: the integrity check names it first
    write_manifest(directory)  # sealed again (elp inspect --check --write-manifest): the field is checked
    with pytest.raises(PackageError, match=r"package.json: task kind 'tts' is not one of \['asr', 'classify', 'sv'\]"):
        load_package(directory)
