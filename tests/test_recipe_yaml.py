"""The hparams file is the recipe: swapping the head, loss, optimizer or scheduler is a YAML-only
change, a custom module in the recipe dir can be named, and every recipe's YAML builds."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from recipe_fixtures import make_recipe

from elp.train.hparams import Tagged, peek_hparams
from elp.train.recipe import RUN_DEFAULTS, build_brain, load_experiment, loader_kwargs, make_dataset

ROOT = Path(__file__).resolve().parents[1]
RECIPE_YAMLS = sorted(ROOT.glob("egs/*/*/conf/train.yaml"))


SWAPS = """\
head: !new:local.my_head.TwoLayerHead
    in_dim: !apply:getattr [!ref <model>, output_dim]
    num_classes: !ref <num_classes>
loss: !new:local.my_head.CountingLoss
opt_class: !name:torch.optim.AdamW
    weight_decay: 0.5
lr_scheduler: !new:elp.train.schedulers.ConstantLR
"""

MY_HEAD = '''
import torch


class TwoLayerHead(torch.nn.Module):
    def __init__(self, in_dim, num_classes):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(in_dim, 8), torch.nn.Tanh(), torch.nn.Linear(8, num_classes))

    def forward(self, feats, frame_mask):
        mask = frame_mask.unsqueeze(-1).to(feats.dtype)
        return self.net((feats * mask).sum(1) / mask.sum(1))


class CountingLoss(torch.nn.Module):
    calls = 0

    def forward(self, logits, targets):
        CountingLoss.calls += 1
        return torch.nn.functional.cross_entropy(logits, targets)
'''


def test_head_loss_optimizer_and_scheduler_swap_in_the_yaml(tmp_path, monkeypatch):
    recipe = make_recipe(tmp_path)
    (recipe / "local").mkdir()
    (recipe / "local" / "my_head.py").write_text(MY_HEAD)
    (recipe / "conf" / "swap.yaml").write_text(SWAPS)
    monkeypatch.chdir(recipe)
    monkeypatch.setattr(sys, "path", list(sys.path))
    hparams, run_opts = load_experiment(["conf/train.yaml", "--overrides_file", "conf/swap.yaml",
                                         "--tag", "swap", "--backbone_arch", "tiny", "--method", "el",
                                         "--number_of_epochs", "2", "--batch_size", "4", "--device", "cpu"])
    brain = build_brain(hparams, run_opts)
    train, valid = (make_dataset(hparams, hparams[k], s) for k, s in (("train_set", "train"), ("valid_set", "valid")))
    before = {n: p.detach().clone() for n, p in brain.modules.head.named_parameters()}
    brain.fit(hparams["epoch_counter"], train, valid, train_loader_kwargs=loader_kwargs(hparams, train, True),
              valid_loader_kwargs=loader_kwargs(hparams, valid, False))
    assert type(brain.modules.head).__name__ == "TwoLayerHead"
    assert type(brain.hparams.loss).__name__ == "CountingLoss" and brain.hparams.loss.calls >= 4  # 2 epochs x 2 batches
    assert isinstance(brain.optimizer, torch.optim.AdamW)
    assert all(g["weight_decay"] == 0.5 for g in brain.optimizer.param_groups)
    # ConstantLR: every group ends at its initial rate (the default schedule would have decayed it)
    assert all(g["lr"] == g["initial_lr"] for g in brain.optimizer.param_groups)
    assert {g["name"] for g in brain.optimizer.param_groups} == {"e", "l", "ln", "head"}
    assert any(not torch.equal(before[n], p) for n, p in brain.modules.head.named_parameters())


def test_default_schedule_decays_every_group_by_the_same_factor(tmp_path, monkeypatch):
    recipe = make_recipe(tmp_path)
    monkeypatch.chdir(recipe)
    hparams, run_opts = load_experiment(["conf/train.yaml", "--tag", "sched", "--backbone_arch", "tiny",
                                         "--method", "elp", "--number_of_epochs", "2", "--batch_size", "4",
                                         "--final_lr_factor", "0.25", "--device", "cpu"])
    brain = build_brain(hparams, run_opts)
    train, valid = (make_dataset(hparams, hparams[k], s) for k, s in (("train_set", "train"), ("valid_set", "valid")))
    brain.fit(hparams["epoch_counter"], train, valid, train_loader_kwargs=loader_kwargs(hparams, train, True),
              valid_loader_kwargs=loader_kwargs(hparams, valid, False))
    groups = {g["name"]: g for g in brain.optimizer.param_groups}
    assert groups["head"]["initial_lr"] == 2e-3 and groups["e"]["initial_lr"] == 1e-3  # lr.default serves e
    for group in groups.values():
        assert group["lr"] == pytest.approx(0.25 * group["initial_lr"])


def test_unknown_override_and_lr_group_are_refused(tmp_path, monkeypatch):
    recipe = make_recipe(tmp_path)
    monkeypatch.chdir(recipe)
    with pytest.raises(ValueError, match="no hparam named numbr_of_epochs"):
        load_experiment(["conf/train.yaml", "--tag", "x", "--numbr_of_epochs", "2"])
    hparams, run_opts = load_experiment(["conf/train.yaml", "--tag", "y", "--backbone_arch", "tiny",
                                         "--lr", "{hed: 0.1, default: 0.1}", "--device", "cpu"])
    brain = build_brain(hparams, run_opts)
    with pytest.raises(ValueError, match=r"unknown parameter groups \['hed'\]"):
        brain.init_optimizers()


@pytest.mark.parametrize("yaml_file", RECIPE_YAMLS, ids=lambda p: p.parent.parent.relative_to(ROOT / "egs").as_posix())
def test_every_recipe_yaml_declares_the_object_graph(yaml_file):
    values = peek_hparams(yaml_file, {"tag": "t"})
    for key in ("task", "model", "head", "loss", "opt_class", "lr_scheduler", "checkpointer", "brain_class",
                "epoch_counter", "inventory"):
        assert isinstance(values[key], Tagged), key
    assert values["model"].target == "elp.core.model.AdaptedSSL"
    assert values["model"].value["options"] == values["method_options"]  # one mapping reaches the model
    assert values["task"].target.startswith("elp.tasks.")
    assert values["brain_class"].tag.startswith("!name:elp.train.brains.")
    assert set(RUN_DEFAULTS).isdisjoint({"task", "model"})
    mini = yaml_file.with_name("mini.yaml")
    assert mini.exists(), f"{mini}: every recipe has its CPU mini-mode settings"
    peek_hparams(yaml_file, {"tag": "t", **__import__("elp.train.hparams", fromlist=["x"]).read_overrides([mini])},
                 allowed_new=RUN_DEFAULTS)


def test_train_py_by_hand_refuses_a_missing_inventory_in_one_line(tmp_path):
    recipe = make_recipe(tmp_path)
    shutil.rmtree(recipe / "data" / "lang")
    result = subprocess.run([sys.executable, str(ROOT / "recipes" / "train.py"), "conf/train.yaml", "--tag", "t",
                             "--backbone_arch", "tiny"], cwd=recipe, capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("ERROR: data/lang/labels.txt is missing: run stage 2")


def test_train_py_by_hand_without_a_tag_names_the_option(tmp_path):
    recipe = make_recipe(tmp_path)
    result = subprocess.run([sys.executable, str(ROOT / "recipes" / "train.py"), "conf/train.yaml",
                             "--backbone_arch", "tiny"], cwd=recipe, capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "ERROR: conf/train.yaml: 'tag' has no value (!PLACEHOLDER): pass --tag VALUE on the command line "
        "(./run.sh sets --tag itself)")


#: top-level keys every recipe spells the same (their lines must agree in every train.yaml)
SHARED_KEYS = ["__set_seed", "backbone", "backbone_source", "backbone_arch", "ssl_backbone", "method", "model",
               "final_lr_factor", "opt_class", "lr_scheduler", "epoch_counter", "train_logger"]


def top_level_blocks(yaml_file: Path) -> dict[str, str]:
    """Top-level key -> its lines (the key's line and the indented lines under it)."""
    blocks, key = {}, None
    for line in yaml_file.read_text().splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            key = line.split(":", 1)[0]
            blocks[key] = line
        elif key is not None and line.startswith(" "):
            blocks[key] += "\n" + line
    return blocks


def test_recipes_spell_their_shared_blocks_the_same():
    blocks = {path: top_level_blocks(path) for path in RECIPE_YAMLS}
    reference = blocks[RECIPE_YAMLS[0]]
    for path, recipe in blocks.items():
        for key in SHARED_KEYS:
            assert recipe.get(key) == reference[key], f"{path.relative_to(ROOT)}: '{key}' differs from {RECIPE_YAMLS[0].relative_to(ROOT)}"


def test_shared_block_check_sees_a_difference(tmp_path):
    changed = tmp_path / "train.yaml"
    changed.write_text(RECIPE_YAMLS[0].read_text().replace("opt_class: !name:torch.optim.Adam", "opt_class: !name:torch.optim.SGD"))
    assert top_level_blocks(changed)["opt_class"] != top_level_blocks(RECIPE_YAMLS[0])["opt_class"]
    assert top_level_blocks(changed)["model"] == top_level_blocks(RECIPE_YAMLS[0])["model"]


def test_a_single_task_recipes_bad_overrides_are_one_line_errors(tmp_path):
    recipe = make_recipe(tmp_path)

    def train(*args):
        return subprocess.run([sys.executable, str(ROOT / "recipes" / "train.py"), "conf/train.yaml", "--tag", "t",
                               *args], cwd=recipe, capture_output=True, text=True, timeout=120)

    result = train("--lr", "{default:{head:0.1}}")
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.strip() == ("ERROR: --lr {default:{head:0.1}}: not valid YAML (expected ',' or '}', but "
                                     "got '{' at column 10 of the value); in flow style put a space after each "
                                     'colon: --lr "{default: {head: 0.1}}"')
    result = train("--method_options", "{e_dim:32, l_dim: 64}")  # reads as {"e_dim:32": null, "l_dim": 64}
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "reads 'e_dim:32' as one key without a value" in result.stderr
    assert result.stderr.strip().endswith('--method_options "{e_dim: 32, l_dim: 64}"')
    result = train("--numbr_of_epochs", "2")
    assert result.returncode == 1
    assert result.stderr.strip() == "ERROR: conf/train.yaml: no hparam named numbr_of_epochs (did you mean number_of_epochs?)"
