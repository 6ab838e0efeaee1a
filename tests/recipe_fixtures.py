"""A small classification recipe in tmp_path: the IC recipe's conf/ with a 2-class data set.

``make_recipe(tmp_path)`` returns the recipe dir (cd there, as run.sh does);
``experiment(recipe, *args)`` loads its hparams with the given overrides (tiny backbone).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import soundfile

from elp.data.kaldi_dir import validate_data_dir, write_data_dir
from elp.train.recipe import build_brain, load_experiment

ROOT = Path(__file__).resolve().parents[1]
DURATIONS = [0.3, 0.5, 0.7, 0.9, 1.1, 1.3, 0.4, 0.6]


def make_recipe(tmp_path: Path, durations=DURATIONS) -> Path:
    """egs/slurp/ic/conf in ``tmp_path`` with data/{train,devel,test} of tones (two classes:
    low and high pitch) and data/lang; the utterances are ``<set>-<i>``."""
    recipe = tmp_path / "egs" / "slurp" / "ic"
    shutil.copytree(ROOT / "egs" / "slurp" / "ic" / "conf", recipe / "conf")
    if not (tmp_path / "recipes").exists():
        (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    rng = np.random.default_rng(0)
    for name in ("train", "devel", "test"):
        wavs, labels, texts = {}, {}, {}
        for i, seconds in enumerate(durations):
            utt = f"{name}-{i}"
            t = np.arange(int(seconds * 16000)) / 16000
            audio = 0.3 * np.sin(2 * np.pi * (200 if i % 2 else 900) * t) + 0.01 * rng.standard_normal(t.size)
            path = recipe / "wav" / f"{utt}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            soundfile.write(path, audio.astype("float32"), 16000, subtype="PCM_16")
            wavs[utt], labels[utt], texts[utt] = str(path), "low" if i % 2 else "high", "GO UP" if i % 2 else "YES NO"
        write_data_dir(recipe / "data" / name, wav_scp=wavs, utt2spk={u: u for u in wavs}, utt2label=labels,
                       text=texts)
        validate_data_dir(recipe / "data" / name)  # stage 1: utt2num_samples
    (recipe / "data" / "lang").mkdir()
    (recipe / "data" / "lang" / "labels.txt").write_text("high\nlow\n")
    return recipe


def experiment(recipe: Path, *args: str):
    """(hparams, brain) of the recipe with overrides ``args`` (default: tiny wavlm backbone, cpu).

    The caller runs in the recipe dir (``monkeypatch.chdir(recipe)``), as run.sh does: the
    YAML's paths are relative to it.
    """
    assert Path.cwd() == recipe.resolve(), "chdir to the recipe first"
    hparams, run_opts = load_experiment(["conf/train.yaml", "--backbone_arch", "tiny", "--backbone", "wavlm",
                                         "--device", "cpu", *args])
    return hparams, build_brain(hparams, run_opts)


def fit(recipe: Path, *args: str):
    """(hparams, brain) of :func:`experiment` with ``args`` after training it (the Brain's own
    ``fit`` on the recipe's train and valid sets, as stage 3 runs it)."""
    from elp.train.recipe import loader_kwargs, make_dataset

    hparams, brain = experiment(recipe, *args)
    train, valid = (make_dataset(hparams, hparams[k], s) for k, s in (("train_set", "train"), ("valid_set", "valid")))
    brain.fit(hparams["epoch_counter"], train, valid, train_loader_kwargs=loader_kwargs(hparams, train, True),
              valid_loader_kwargs=loader_kwargs(hparams, valid, False))
    return hparams, brain
