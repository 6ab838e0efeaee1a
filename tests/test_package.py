"""elp.serve.package: a package rebuilds exactly the trained model and head; the backbone is named
and hashed (stored only for random weights); wrong backbones are refused."""
import json

import pytest
import torch

from elp.core.backbones import SSLBackbone
from elp.core.heads import CTCHead, PooledClassifier
from elp.core.model import AdaptedSSL
from elp.serve.package import (BackboneHashMismatchError, PackageError, PackageNotFoundError, calibrate_threshold,
                               load_package, read_package_config, write_package)
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
    with pytest.raises(PackageError, match="only SV packages"):
        calibrate_threshold(make_tiny_package(tmp_path / "c"), scores, labels)


def test_head_without_config_needs_head_spec(tmp_path):
    torch.manual_seed(0)
    backbone = SSLBackbone.from_config("wavlm", __import__("elp.testing").testing.tiny_config("wavlm"))
    model = AdaptedSSL(backbone, "weighted_sum")
    with pytest.raises(PackageError, match="head_spec="):
        write_package(tmp_path, model, torch.nn.Linear(32, 3), task="classify", labels=["a", "b", "c"],
                      backbone_pretrained=False)


def test_package_json_is_plain_json(tmp_path):
    directory = make_tiny_package(tmp_path, task="classify", method="elp")
    config = json.loads((directory / "package.json").read_text())
    assert config["task"] == "classify" and config["method"] == "elp" and config["extra"]["tiny"] is True
    assert len(config["backbone"]["weights_sha256"]) == 64
