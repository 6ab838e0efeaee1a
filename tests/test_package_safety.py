"""Loading a model package runs no code it names and allocates nothing it asks for unchecked:
registered heads with checked options, user heads only by name, no links out, no pickles; every
file hashed in a manifest that loading and ``elp inspect --check`` verify."""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from elp.cli import main
from elp.serve.inference import load_predictor
from elp.serve.integrity import MANIFEST_FILE, package_files, write_manifest
from elp.serve.multitask import MultiTask
from elp.serve.package import PackageError, calibrate_threshold, check_package, load_package, read_package_config
from elp.testing import make_tiny_package

ROOT = Path(__file__).resolve().parents[1]
WAVS = torch.randn(2, 8000, generator=torch.Generator().manual_seed(0))
LENS = torch.tensor([1.0, 0.6])


def edit_config(directory: Path, change) -> None:
    """Change package.json and re-seal the manifest, as an attacker who controls the whole package can."""
    config = json.loads((directory / "package.json").read_text())
    change(config)
    (directory / "package.json").write_text(json.dumps(config))
    write_manifest(directory)


# ------------------------------------------------------------------ 1. what a package may build
def test_a_package_cannot_name_a_function_that_writes_files(tmp_path):
    directory = make_tiny_package(tmp_path / "pkg", task="classify")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    edit_config(directory, lambda c: c.update(head={"class": "elp.serve.package.save_file",
                                                    "options": {"tensors": {}, "filename": str(victim)}}))
    with pytest.raises(PackageError, match=r"head.class 'elp.serve.package.save_file' is not a head elp knows") as err:
        load_package(directory)
    assert "\n" not in str(err.value)
    assert victim.read_text() == "precious"


@pytest.mark.parametrize("options, message", [
    ({"in_dim": 16, "num_classes": 3, "hidden_dim": 10**9}, r"head.options.hidden_dim = 1000000000 is outside 1..65536"),
    ({"in_dim": "16", "num_classes": 3}, r"head.options.in_dim = '16' must be int, got str"),
    ({"in_dim": 16, "num_classes": 3, "filename": "/etc/passwd"}, r"head.options.filename is not an option of "
                                                                   r"elp.core.heads.PooledClassifier"),
    ({"in_dim": 16}, r"head.options.num_classes is missing"),
    ({"in_dim": 16, "num_classes": True}, r"head.options.num_classes = True must be int, got bool"),
])
def test_head_options_are_checked_before_anything_is_built(tmp_path, options, message):
    directory = make_tiny_package(tmp_path, task="classify")
    edit_config(directory, lambda c: c["head"].update(options=options))
    with pytest.raises(PackageError, match=message):
        load_package(directory)


def test_options_in_range_that_disagree_with_the_stored_tensors_are_refused_before_allocating(tmp_path):
    directory = make_tiny_package(tmp_path, task="classify")  # hidden_dim 8 stored
    edit_config(directory, lambda c: c["head"]["options"].update(hidden_dim=65536, in_dim=65536))
    with pytest.raises(PackageError, match=r"adapters.safetensors: head tensor 'head.out.weight' is \(3, 8\) but "
                                           r"head.options of package.json make it \(3, 65536\); the package is "
                                           r"inconsistent"):
        load_package(directory)


def test_links_out_of_the_package_are_refused(tmp_path):
    directory = make_tiny_package(tmp_path / "pkg", task="classify")
    outside = tmp_path / "labels.txt"
    shutil.copy(directory / "labels.txt", outside)  # same bytes: the manifest hash alone would pass
    (directory / "labels.txt").unlink()
    (directory / "labels.txt").symlink_to(outside)
    with pytest.raises(PackageError, match=r"labels.txt: a link to .*labels.txt, outside the package"):
        load_package(directory)
    with pytest.raises(ValueError, match="outside the package"):
        write_manifest(directory)


@pytest.mark.parametrize("field, value", [("stored", "../elsewhere"), ("stored", "/tmp/backbone")])
def test_path_like_fields_are_refused(tmp_path, field, value):
    directory = make_tiny_package(tmp_path, task="classify")
    edit_config(directory, lambda c: c["backbone"].update({field: value}))
    with pytest.raises(PackageError, match=rf"field 'backbone.{field}' = '{value}' must name a folder inside"):
        load_package(directory)


def test_nothing_in_serving_unpickles():
    sources = [p for d in ("serve", "tasks") for p in (ROOT / "elp" / d).glob("*.py")]
    sources += [ROOT / "elp" / "core" / "export.py"]
    for path in sources:
        text = path.read_text()
        assert "torch.load(" not in text and "import pickle" not in text and "pickle.load" not in text, path


USER_HEAD = '''
import torch


class TwoLayerHead(torch.nn.Module):
    def __init__(self, in_dim, num_classes, hidden=8):
        super().__init__()
        self.in_dim, self.num_classes, self.hidden = in_dim, num_classes, hidden
        self.net = torch.nn.Sequential(torch.nn.Linear(in_dim, hidden), torch.nn.Tanh(),
                                       torch.nn.Linear(hidden, num_classes))

    def forward(self, feats, frame_mask):
        mask = frame_mask.unsqueeze(-1).to(feats.dtype)
        return self.net((feats * mask).sum(1) / mask.sum(1))
'''

HEAD_YAML = """\
head: !new:local.my_head.TwoLayerHead
    in_dim: !apply:getattr [!ref <model>, output_dim]
    num_classes: !ref <num_classes>
"""


@pytest.fixture(scope="module")
def user_head_recipe(tmp_path_factory):
    """Stage 3 of a recipe whose head is its own local/my_head.py (one epoch, tiny backbone)."""
    from recipe_fixtures import make_recipe

    recipe = make_recipe(tmp_path_factory.mktemp("user_head"))
    (recipe / "local").mkdir()
    (recipe / "local" / "my_head.py").write_text(USER_HEAD)
    (recipe / "conf" / "head.yaml").write_text(HEAD_YAML)
    result = subprocess.run([sys.executable, str(ROOT / "recipes" / "train.py"), "conf/train.yaml", "--tag", "mine",
                             "--overrides_file", "conf/head.yaml", "--backbone_arch", "tiny", "--method", "l_only",
                             "--number_of_epochs", "1", "--batch_size", "4", "--device", "cpu"],
                            cwd=recipe, capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    return recipe, recipe / "exp" / "mine" / "adapters"


def test_a_user_head_trains_packages_and_serves_only_when_trusted(user_head_recipe, tmp_path, capsys):
    recipe, package = user_head_recipe
    config = read_package_config(package)
    assert config["head"]["class"] == "local.my_head.TwoLayerHead"
    assert config["head"]["options"] == {"in_dim": config["head"]["options"]["in_dim"], "num_classes": 2, "hidden": 8}
    assert (package / "head_module" / "my_head.py").read_text() == USER_HEAD
    assert check_package(package) == []
    with pytest.raises(PackageError, match=r"runs code from the package's head_module/my_head.py; if you trust it, "
                                           r"pass trust_head_module='local.my_head' \(elp infer/verify: "
                                           r"--trust-head-module local.my_head\)"):
        load_predictor(package)
    classifier = load_predictor(package, trust_head_module="local.my_head")
    wav = recipe / "wav" / "test-1.wav"
    result = classifier.classify(str(wav))
    assert result.label in ("high", "low") and abs(sum(result.probabilities.values()) - 1) < 1e-6
    with pytest.raises(SystemExit, match="--trust-head-module local.my_head"):
        main(["infer", "--package", str(package), "--no-progress", str(wav)])
    assert main(["infer", "--package", str(package), "--no-progress", "--trust-head-module", "local.my_head",
                 str(wav)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line == f"{wav} mine (classify) {result.label} {result.probabilities[result.label]:.4f}"


def test_a_changed_user_head_module_is_refused(user_head_recipe, tmp_path):
    _, source = user_head_recipe
    package = tmp_path / "copy"
    shutil.copytree(source, package)
    with open(package / "head_module" / "my_head.py", "a") as handle:
        handle.write("\nimport os; os.system('echo owned')\n")
    with pytest.raises(PackageError, match=r"my_head.py: content differs from manifest.json"):
        load_predictor(package, trust_head_module="local.my_head")
    write_manifest(package)  # re-sealed: the recorded module hash still catches it
    with pytest.raises(PackageError, match=r"my_head.py: the head module file changed since packaging"):
        load_predictor(package, trust_head_module="local.my_head")


def test_a_user_head_option_that_is_a_path_is_refused(user_head_recipe, tmp_path):
    _, source = user_head_recipe
    package = tmp_path / "copy"
    shutil.copytree(source, package)
    edit_config(package, lambda c: c["head"]["options"].update(hidden="../../.ssh/id_rsa"))
    with pytest.raises(PackageError, match=r"head.options.hidden = '../../.ssh/id_rsa' looks like a path"):
        load_predictor(package, trust_head_module="local.my_head")


# ------------------------------------------------------------------ 2. integrity
@pytest.fixture(scope="module")
def sealed_package(tmp_path_factory):
    directory = make_tiny_package(tmp_path_factory.mktemp("sealed") / "pkg", task="sv", method="elp")
    calibrate_threshold(directory, [0.9, 0.8, 0.3, 0.1], [1, 1, 0, 0])
    return directory


PACKAGE_FILES = ["adapters.json", "adapters.safetensors", "backbone/config.json", "backbone/model.safetensors",
                 "calibration.safetensors", "package.json"]


def test_the_manifest_lists_every_file_world_readable(sealed_package):
    assert package_files(sealed_package) == PACKAGE_FILES
    manifest = json.loads((sealed_package / MANIFEST_FILE).read_text())
    assert sorted(manifest["sha256"]) == PACKAGE_FILES
    for name in PACKAGE_FILES + [MANIFEST_FILE]:
        assert (sealed_package / name).stat().st_mode & 0o777 == 0o644, name


@pytest.mark.parametrize("name", PACKAGE_FILES)
def test_one_flipped_byte_in_any_file_is_named_at_load_and_by_the_check(sealed_package, tmp_path, name, capsys):
    directory = tmp_path / "pkg"
    shutil.copytree(sealed_package, directory)
    path = directory / name
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(PackageError, match=rf"{name}: content differs from manifest.json") as err:
        load_package(directory)
    assert "\n" not in str(err.value)
    assert main(["inspect", "--check", str(directory)]) == 1
    out = capsys.readouterr().out
    assert f"{path}: content differs from manifest.json" in out
    assert "Traceback" not in out


def test_the_check_reports_every_problem_at_once(sealed_package, tmp_path, capsys):
    directory = tmp_path / "pkg"
    shutil.copytree(sealed_package, directory)
    config = json.loads((directory / "package.json").read_text())
    del config["method"]
    config["backbone"]["weights_sha256"] = 7
    (directory / "package.json").write_text(json.dumps(config))
    (directory / "calibration.safetensors").unlink()
    assert main(["inspect", "--check", str(directory)]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert f"{directory}/calibration.safetensors: missing (listed in manifest.json); the package is incomplete: " \
           "copy it again" in out
    assert any(line.startswith(f"{directory}/package.json: content differs") for line in out)
    assert f"{directory}/package.json: field 'method' is missing; the package is damaged or from another tool: " \
           "repackage the model (stage 3)" in out
    assert f"{directory}/package.json: field 'backbone.weights_sha256' must be str, got int" in out


def test_a_damaged_package_is_never_resealed(sealed_package, tmp_path):
    directory = tmp_path / "pkg"
    shutil.copytree(sealed_package, directory)
    os.chmod(directory / "adapters.json", 0o644)
    with open(directory / "adapters.json", "a") as handle:
        handle.write(" ")
    with pytest.raises(PackageError, match=r"adapters.json: content differs from manifest.json .*; not changing a "
                                           r"damaged package"):
        calibrate_threshold(directory, [0.9, 0.1], [1, 0])


@pytest.mark.parametrize("text, message", [
    ("{", r"package.json: not valid JSON \(Expecting property name enclosed in double quotes at line 1 column 2\)"),
    ("[1]", r"package.json: holds a JSON list, not an object"),
    ('{"format_version": 1, "task": "classify"}', r"package.json: field 'method' is missing"),
])
def test_a_damaged_package_json_is_one_line_naming_the_field(tmp_path, text, message):
    directory = make_tiny_package(tmp_path, task="classify")
    (directory / "package.json").write_text(text)
    write_manifest(directory)
    with pytest.raises(PackageError, match=message) as err:
        load_package(directory)
    assert "\n" not in str(err.value)


def test_a_package_without_manifest_loads_with_a_warning(tmp_path, caplog, capsys):
    directory = make_tiny_package(tmp_path, task="classify")
    (directory / MANIFEST_FILE).unlink()
    with caplog.at_level(logging.WARNING, logger="elp.serve.package"):
        load_package(directory)
    assert f"elp inspect --check --write-manifest --package {directory}" in caplog.text
    assert main(["inspect", "--check", str(directory)]) == 1
    assert main(["inspect", "--check", "--write-manifest", str(directory)]) == 0
    assert "ok (6 files match manifest.json)" in capsys.readouterr().out


def test_non_float32_tensors_are_refused(tmp_path):
    directory = make_tiny_package(tmp_path, task="classify")
    state = load_file(directory / "adapters.safetensors")
    state = {k: v.half() for k, v in state.items()}
    save_file(state, str(directory / "adapters.safetensors"))
    write_manifest(directory)
    with pytest.raises(PackageError, match=r"adapters.safetensors: tensor '.*' is F16, not float32; re-export"):
        load_package(directory)


def test_a_moved_backbone_source_says_where_it_looked(tmp_path):
    from elp.testing import save_tiny_checkpoint

    checkpoint = save_tiny_checkpoint("wavlm", tmp_path / "ckpt")
    directory = make_tiny_package(tmp_path / "pkg", task="classify", backbone_dir=checkpoint)
    shutil.move(checkpoint, tmp_path / "moved")
    with pytest.raises(PackageError, match=rf"no backbone 'wavlm' at {checkpoint} .*pass the checkpoint it was "
                                           r"trained on: backbone_source=DIR_OR_HUB_ID \(elp infer/verify: "
                                           r"--backbone-source DIR_OR_HUB_ID\)") as err:
        load_package(directory)
    assert "\n" not in str(err.value)
    assert load_package(directory, backbone_source=str(tmp_path / "moved")).kind == "classify"


# ------------------------------------------------------------------ 4. backbone identity
@pytest.mark.parametrize("order", [("full", "weighted_sum"), ("weighted_sum", "full")])
def test_a_full_package_never_lends_its_trained_backbone(tmp_path, order):
    dirs = {method: make_tiny_package(tmp_path / method, task="classify", method=method, seed=0) for method in order}
    config = read_package_config(dirs["full"])["backbone"]
    assert config["stored_sha256"] != config["weights_sha256"]  # the stored layers are the trained ones
    alone = {method: load_predictor(d).outputs([WAVS[0].numpy(), WAVS[1, :4800].numpy()], sample_rate=16000)
             for method, d in dirs.items()}
    tasks = MultiTask([dirs[m] for m in order])
    served = tasks.outputs([WAVS[0].numpy(), WAVS[1, :4800].numpy()], sample_rate=16000)
    for index, method in enumerate(order):
        for got, want in zip(served[index], alone[method]):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_packages_on_other_frozen_weights_are_refused_in_any_order(tmp_path):
    a = make_tiny_package(tmp_path / "a", task="classify", method="weighted_sum", seed=0)
    b = make_tiny_package(tmp_path / "b", task="classify", method="weighted_sum", seed=1)
    for order in ([a, b], [b, a]):
        with pytest.raises(PackageError, match=r"one backbone serves only packages trained on the same weights"):
            MultiTask(order)

