"""Recipe plumbing: batching, crops, tokenizers, greedy CTC, parameter groups, the cache."""

from __future__ import annotations

import speechbrain as sb
import torch
from recipe_fixtures import DURATIONS, ROOT, experiment, fit, make_recipe

from elp.train.brains.asr import greedy_ctc
from elp.data.inventory import BPETokenizer, CharTokenizer, load_tokenizer
from elp.train.recipe import loader_kwargs, make_dataset
from elp.tasks import UtteranceClassification

import pytest


def test_dynamic_batches_are_bounded_by_audio_seconds(tmp_path, monkeypatch):
    recipe = make_recipe(tmp_path)
    monkeypatch.chdir(recipe)
    hparams, _ = experiment(recipe, "--tag", "dyn", "--dynamic_batching", "true", "--max_batch_seconds", "1.5",
                            "--num_buckets", "2")
    dataset = make_dataset(hparams, str(recipe / "data" / "train"), "train")
    kwargs = loader_kwargs(hparams, dataset, train=True)
    assert "batch_sampler" in kwargs
    seen = []
    for batch in sb.dataio.dataloader.make_dataloader(dataset, **kwargs):
        wavs, lens = batch.sig
        seconds = (lens * wavs.shape[1]).round() / 16000
        assert float(seconds.sum()) <= 1.5 + 1e-6
        seen += list(batch.id)
    assert sorted(seen) == sorted(f"train-{i}" for i in range(len(DURATIONS)))


def test_dynamic_batch_utterance_cap_is_larger_on_a_gpu(tmp_path, monkeypatch):
    """``max_batch_utterances: auto`` is ``batch_size`` on CPU and 64 on CUDA; a number wins."""
    from elp.train.recipe import GPU_MAX_BATCH_UTTERANCES

    recipe = make_recipe(tmp_path)
    monkeypatch.chdir(recipe)
    hparams, _ = experiment(recipe, "--tag", "cap", "--dynamic_batching", "true", "--batch_size", "3")
    dataset = make_dataset(hparams, str(recipe / "data" / "train"), "train")

    def cap(**changes):
        return loader_kwargs({**hparams, **changes}, dataset, train=True)["batch_sampler"].max_batch_size

    assert cap() == 3
    assert cap(device="cuda:0", num_workers=0) == GPU_MAX_BATCH_UTTERANCES == 64
    assert cap(device="cuda:0", num_workers=0, max_batch_utterances=16) == 16


def test_training_crops_and_evaluation_reads_whole_utterances(tmp_path, monkeypatch):
    recipe = make_recipe(tmp_path)
    monkeypatch.chdir(recipe)
    hparams, _ = experiment(recipe, "--tag", "crop")
    task = UtteranceClassification(max_train_seconds=0.5)
    train = task.dataset(recipe / "data" / "train", "train", hparams["inventory"])
    test = task.dataset(recipe / "data" / "train", "test", hparams["inventory"])
    assert max(train[i]["sig"].shape[0] for i in range(len(train))) == 8000
    assert test[5]["sig"].shape[0] == int(1.3 * 16000)
    assert int(test[1]["label_id"]) == hparams["inventory"].encode("low")


def test_tokenizers_round_trip(tmp_path):
    texts = ["YES NO UP", "GO DOWN LEFT", "NINE ONE"] * 5
    chars = CharTokenizer.from_texts(texts)
    chars.save(tmp_path / "chars")
    assert load_tokenizer(tmp_path / "chars").decode(chars.encode("GO UP")) == "GO UP"
    with pytest.raises(ValueError, match="not in the token inventory"):
        chars.encode("HELLO")
    bpe = BPETokenizer.train(texts, tmp_path / "bpe", vocab_size=30)
    loaded = load_tokenizer(tmp_path / "bpe")
    assert isinstance(loaded, BPETokenizer) and bpe.vocab_size == loaded.vocab_size
    assert 0 not in loaded.encode("YES NO")  # id 0 is the CTC blank
    assert loaded.decode(loaded.encode("NINE ONE")) == "NINE ONE"


def test_greedy_ctc_merges_repeats_and_drops_blanks_and_padding():
    ids = torch.tensor([[1, 1, 0, 1, 2, 2, 0, 3]])
    log_probs = torch.nn.functional.one_hot(ids, 4).float().log()
    mask = torch.tensor([[True] * 6 + [False] * 2])
    assert greedy_ctc(log_probs, mask) == [[1, 1, 2]]


def test_brain_groups_and_hidden_state_cache(tmp_path, monkeypatch):
    recipe = make_recipe(tmp_path)
    monkeypatch.chdir(recipe)
    hparams, brain = experiment(recipe, "--tag", "cache", "--method", "weighted_sum", "--hidden_state_cache", "true",
                                "--number_of_epochs", "1", "--lr", "{head: 0.01, default: 0.01}")
    dataset = make_dataset(hparams, str(recipe / "data" / "train"), "train")
    brain.fit(brain.hparams.epoch_counter, dataset, dataset,
              train_loader_kwargs={"batch_size": 4}, valid_loader_kwargs={"batch_size": 4})
    assert {g["name"]: g["initial_lr"] for g in brain.optimizer.param_groups} == {"l": 1e-2, "head": 1e-2}
    cached = list((recipe / "exp" / "cache" / "hidden_state_cache").rglob("*.safetensors"))
    assert len(cached) == len(DURATIONS)
    # the cached path gives the live path's features
    batch = next(iter(sb.dataio.dataloader.make_dataloader(dataset, batch_size=4)))
    brain.modules.eval()
    with torch.no_grad():
        cached_feats, cached_mask = brain.features(batch, sb.Stage.TEST)
        live_feats, live_mask = brain.modules.model(*batch.sig)
    frames = cached_mask.shape[1]
    assert torch.equal(cached_mask, live_mask[:, :frames])
    assert torch.allclose(cached_feats[cached_mask], live_feats[:, :frames][cached_mask], atol=1e-2)


def test_missing_learning_rate_is_an_error(tmp_path, monkeypatch):
    recipe = make_recipe(tmp_path)
    monkeypatch.chdir(recipe)
    _, brain = experiment(recipe, "--tag", "nolr", "--method", "el", "--lr", "{head: 0.001, e: 0.001, default: null}")
    with pytest.raises(ValueError, match="no learning rate for parameter group '(l|ln)'"):
        brain.init_optimizers()


def fit_one_epoch(recipe, *args):
    return fit(recipe, "--number_of_epochs", "1", "--batch_size", "4", "--method", "l_only",
               "--ckpt_interval_steps", "0", *args)


def release_experiment_locks():
    """What the end of a process does: the driver's experiment locks go (one process here)."""
    from elp.train import recipe as plumbing

    while plumbing._HELD:
        plumbing._HELD.pop().__exit__(None, None, None)


def test_restart_trains_from_scratch_in_the_moved_experiments_place(tmp_path, monkeypatch):
    recipe = make_recipe(tmp_path)
    monkeypatch.chdir(recipe)
    fit_one_epoch(recipe, "--tag", "r")
    release_experiment_locks()
    with pytest.raises(ValueError, match="hparams changed"):
        experiment(recipe, "--number_of_epochs", "1", "--batch_size", "4", "--method", "l_only", "--tag", "r",
                   "--ckpt_interval_steps", "0", "--lr", "{head: 0.5}")
    release_experiment_locks()
    hparams, brain = fit_one_epoch(recipe, "--tag", "r", "--lr", "{head: 0.5}", "--restart", "true")
    assert sorted(p.name.split(".old-")[0] for p in (recipe / "exp").iterdir() if not p.name.startswith(".")) == ["r", "r"]
    assert len(list((recipe / "exp" / "r" / "save").glob("CKPT+*"))) == 1  # the new run's checkpoint


def test_a_run_option_repeated_as_an_hparam_is_one_line(tmp_path, monkeypatch):
    recipe = make_recipe(tmp_path)
    monkeypatch.chdir(recipe)
    with pytest.raises(ValueError, match=r"--method is given twice \('elp' and 'full'\).*\./run\.sh --method full"):
        experiment(recipe, "--method", "elp", "--tag", "d", "--method", "full")


def test_stage_1_reads_the_data_sets_from_the_recipe_with_its_overrides(tmp_path, monkeypatch, capsys):
    import importlib.util
    import shutil

    spec = importlib.util.spec_from_file_location("validate_data_cli", ROOT / "recipes" / "validate_data.py")
    stage1 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage1)
    recipe = make_recipe(tmp_path)
    monkeypatch.chdir(recipe)
    shutil.copytree(recipe / "data", recipe / "other")
    (recipe / "other" / "devel" / "utt2spk").unlink()  # only the overridden data dir is broken
    args = ["--recipe", "conf/train.yaml", "--backbone", "wavlm", "--tag", "v", "--method", "elp"]
    assert stage1.main(args) == 0
    assert stage1.main([*args, "--data_dir", "other"]) == 1  # every override reaches the recipe
    assert "other/devel" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        stage1.main(["data/train", "--recipe", "conf/train.yaml"])  # dirs or a recipe, not both
