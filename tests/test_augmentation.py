"""Training-only augmentation from the YAML: SpeechBrain's Augmenter with speed perturbation and
additive noise read from a Kaldi data dir of noises.

A tiny IC recipe (``recipe_fixtures.make_recipe``) trains a few steps with the augmentation;
the training batches the model sees differ from the loaded audio, while for one fixed
checkpoint the evaluation outputs of a Brain with the augmentation object and one without are
equal.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import speechbrain as sb
import torch
from recipe_fixtures import experiment, make_recipe

from elp.data.augment import augmentation_csv
from elp.data.kaldi_dir import write_data_dir
from elp.train.recipe import loader_kwargs, make_dataset

AUGMENTATION = """\
augmentation: !new:speechbrain.augment.augmenter.Augmenter
    augmentations:
        - !new:speechbrain.augment.time_domain.SpeedPerturb
            orig_freq: 16000
            speeds: [95, 100, 105]
        - !new:speechbrain.augment.time_domain.AddNoise
            csv_file: !apply:elp.data.augment.augmentation_csv
                - {noise_dir}
                - !ref <output_folder>/noise.csv
            snr_low: 0
            snr_high: 5
"""


def noise_dir(root: Path) -> Path:
    """A Kaldi data dir of two noises: a 16 kHz WAV and an 8 kHz stereo FLAC behind a flac pipe."""
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    soundfile.write(root / "white.wav", rng.uniform(-0.2, 0.2, 24000).astype("float32"), 16000)
    soundfile.write(root / "hum.flac", rng.uniform(-0.2, 0.2, (12000, 2)).astype("float32"), 8000)
    return write_data_dir(root / "data", wav_scp={"white": str(root / "white.wav"),
                                                  "hum": f"flac -c -d -s {root / 'hum.flac'} |"})


def test_augmentation_csv_from_a_kaldi_dir(tmp_path):
    csv_file = augmentation_csv(noise_dir(tmp_path / "noise"), tmp_path / "exp" / "noise.csv")
    with open(csv_file) as handle:
        rows = list(csv.DictReader(handle))
    assert [r["ID"] for r in rows] == ["hum", "white"]
    assert rows[1]["wav"] == str(tmp_path / "noise" / "white.wav")  # 16 kHz mono: listed as it is
    converted = soundfile.info(rows[0]["wav"])  # 8 kHz stereo behind a pipe: written at 16 kHz mono
    assert (converted.samplerate, converted.channels, converted.frames) == (16000, 1, 24000)
    assert float(rows[0]["duration"]) == 1.5


@pytest.fixture
def recipe(tmp_path, monkeypatch):
    recipe = make_recipe(tmp_path)
    noises = noise_dir(tmp_path / "noise")
    (recipe / "conf" / "aug.yaml").write_text(AUGMENTATION.format(noise_dir=noises))
    monkeypatch.chdir(recipe)
    monkeypatch.setattr(sys, "path", list(sys.path))
    return recipe


def batches(hparams, brain, data_key, split):
    dataset = make_dataset(hparams, hparams[data_key], split)
    return list(brain.make_dataloader(dataset, sb.Stage.TEST, **loader_kwargs(hparams, dataset, False)))


def test_augmentation_trains_and_never_touches_evaluation(recipe):
    torch.manual_seed(0)
    common = ("--number_of_epochs", "1", "--batch_size", "4", "--method", "el", "--ckpt_interval_steps", "0")
    hparams, brain = experiment(recipe, "--overrides_file", "conf/aug.yaml", "--tag", "aug", *common)
    assert type(hparams["augmentation"]).__name__ == "Augmenter"
    assert Path(hparams["output_folder"], "noise.csv").exists()

    seen = []  # (stage, the loaded waveforms, the waveforms the model got)
    model_forward = brain.modules.model.forward

    def recording_features(batch, stage, features=brain.features):
        seen.append([stage, batch.sig[0].clone(), None])
        return features(batch, stage)

    def recording_forward(wavs, wav_lens, *args, **kwargs):
        if seen and seen[-1][2] is None:
            seen[-1][2] = wavs.detach().clone()
        return model_forward(wavs, wav_lens, *args, **kwargs)

    brain.features = recording_features
    brain.modules.model.forward = recording_forward
    train, valid = (make_dataset(hparams, hparams[k], s) for k, s in (("train_set", "train"), ("valid_set", "valid")))
    brain.fit(hparams["epoch_counter"], train, valid, train_loader_kwargs=loader_kwargs(hparams, train, True),
              valid_loader_kwargs=loader_kwargs(hparams, valid, False))
    brain.modules.model.forward = model_forward
    trained = [s for s in seen if s[0] == sb.Stage.TRAIN]
    evaluated = [s for s in seen if s[0] != sb.Stage.TRAIN]
    assert len(trained) == 2 and len(evaluated) >= 1  # 8 training utterances in batches of 4
    for _, loaded, given in trained:  # augmentation ran: speed changes the length, noise the samples
        assert loaded.shape != given.shape or not torch.allclose(loaded, given)
    add_noise = next(a for a in hparams["augmentation"].augmentations.values() if type(a).__name__ == "AddNoise")
    assert hasattr(add_noise, "data_loader")  # the noises of the Kaldi dir were read
    for _, loaded, given in evaluated:  # validation reads the audio as it is
        assert torch.equal(loaded, given)

    # one fixed checkpoint, evaluated by a Brain with the augmentation object and by one without
    _, plain = experiment(recipe, "--tag", "plain", *common)
    for name in ("model", "head"):
        plain.modules[name].load_state_dict(brain.modules[name].state_dict())
    brain.modules.eval()
    plain.modules.eval()
    with torch.no_grad():
        for stage in (sb.Stage.VALID, sb.Stage.TEST):
            for batch in batches(hparams, brain, "valid_set", "valid"):
                torch.testing.assert_close(brain.compute_forward(batch, stage), plain.compute_forward(batch, stage),
                                           rtol=0, atol=0)
    test = make_dataset(hparams, hparams["test_sets"][0] if isinstance(hparams["test_sets"], list)
                        else hparams["valid_set"], "test")
    assert brain.predict(test, {"batch_size": 4}) == plain.predict(test, {"batch_size": 4})


def test_augmentation_refuses_the_feature_caches(recipe):
    _, brain = experiment(recipe, "--overrides_file", "conf/aug.yaml", "--tag", "cache", "--cnn_cache", "true")
    wavs, lens = torch.zeros(2, 8000), torch.ones(2)
    with pytest.raises(ValueError, match=r"^augmentation changes the training audio at every step, so cnn_cache "
                                         r"cannot reuse its features: set cnn_cache: false, or remove augmentation$"):
        brain.augment(wavs, lens)


def test_batch_size_changing_augmentation_is_refused(recipe):
    from speechbrain.augment.augmenter import Augmenter
    from speechbrain.augment.time_domain import DropChunk

    _, brain = experiment(recipe, "--tag", "concat")
    brain.hparams.augmentation = Augmenter(concat_original=True, augmentations=[DropChunk(drop_length_low=10,
                                                                                          drop_length_high=20)])
    with pytest.raises(ValueError, match="turned a batch of 2 into 4.*concat_original: false"):
        brain.augment(torch.randn(2, 8000), torch.ones(2))
