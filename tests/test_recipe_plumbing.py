"""Recipe plumbing in-process: datasets from data dirs, dynamic batching, inventories, the
Brain's per-group learning rates and its hidden-state cache."""

import pytest
import speechbrain as sb
import torch
from data_fixtures import write_noise

from elp.brains.asr import greedy_ctc
from elp.data.inventory import BPETokenizer, CharTokenizer, LabelMap, load_tokenizer
from elp.data.kaldi_dir import validate_data_dir, write_data_dir
from elp.heads import PooledClassifier
from elp.recipe import build_brain, loader_kwargs, make_dataset

DURATIONS = [0.3, 0.5, 0.7, 0.9, 1.1, 1.3, 0.4, 0.6]


@pytest.fixture()
def data_dir(tmp_path):
    wavs, labels, texts = {}, {}, {}
    for i, seconds in enumerate(DURATIONS):
        utt = f"utt{i}"
        wavs[utt] = str(write_noise(tmp_path / "audio" / f"{utt}.wav", seconds=seconds, seed=i))
        labels[utt] = ["neu", "ang"][i % 2]
        texts[utt] = ["YES NO", "GO UP"][i % 2]
    directory = tmp_path / "data" / "train"
    write_data_dir(directory, wav_scp=wavs, utt2label=labels, text=texts)
    validate_data_dir(directory)
    return directory


def classify_hparams(tmp_path, **extra):
    return {"task": "classify", "label_file": None, "max_train_seconds": 0, "batch_size": 4,
            "backbone": "wavlm", "backbone_pretrained": False, "backbone_arch": "tiny",
            "method": "weighted_sum", "method_options": {},
            "head_class": PooledClassifier,
            "head_options": {"hidden_dim": 8}, "output_folder": str(tmp_path / "exp"),
            "lr": {"head": 1e-2, "l": 1e-2}, "valid_key": "accuracy", "valid_key_mode": "max",
            "epoch_counter": sb.utils.epoch_loop.EpochCounter(1),
            "train_logger": sb.utils.train_logger.FileTrainLogger(str(tmp_path / "log.txt")), **extra}


def test_dynamic_batches_are_bounded_by_audio_seconds(tmp_path, data_dir):
    hparams = classify_hparams(tmp_path, dynamic_batching=True, max_batch_seconds=1.5, num_buckets=2)
    labels = LabelMap.from_values(["neu", "ang"])
    dataset = make_dataset(str(data_dir), hparams, labels, "train")
    kwargs = loader_kwargs(hparams, dataset, train=True)
    assert "batch_sampler" in kwargs
    loader = sb.dataio.dataloader.make_dataloader(dataset, **kwargs)
    seen = []
    for batch in loader:
        wavs, lens = batch.sig
        seconds = (lens * wavs.shape[1]).round() / 16000
        assert float(seconds.sum()) <= 1.5 + 1e-6
        seen += list(batch.id)
    assert sorted(seen) == sorted(f"utt{i}" for i in range(len(DURATIONS)))


def test_training_crops_and_evaluation_reads_whole_utterances(tmp_path, data_dir):
    hparams = classify_hparams(tmp_path, max_train_seconds=0.5)
    labels = LabelMap.from_values(["neu", "ang"])
    train = make_dataset(str(data_dir), hparams, labels, "train")
    test = make_dataset(str(data_dir), hparams, labels, "test")
    assert max(train[i]["sig"].shape[0] for i in range(len(train))) == 8000
    assert test[5]["sig"].shape[0] == int(1.3 * 16000)
    assert int(test[1]["label_id"]) == labels.encode("ang")


def test_tokenizers_round_trip(tmp_path):
    texts = ["YES NO UP", "GO DOWN LEFT", "NINE ONE"] * 5
    chars = CharTokenizer.from_texts(texts)
    chars.save(tmp_path / "chars")
    assert load_tokenizer(tmp_path / "chars").decode(chars.encode("GO UP")) == "GO UP"
    with pytest.raises(ValueError, match="not in the token inventory"):
        chars.encode("HELLO")
    bpe = BPETokenizer.train(texts, tmp_path / "bpe", vocab_size=30)
    loaded = load_tokenizer(tmp_path / "bpe")
    assert isinstance(loaded, BPETokenizer)
    assert 0 not in loaded.encode("YES NO")  # id 0 is the CTC blank
    assert loaded.decode(loaded.encode("NINE ONE")) == "NINE ONE"


def test_greedy_ctc_merges_repeats_and_drops_blanks_and_padding():
    ids = torch.tensor([[1, 1, 0, 1, 2, 2, 0, 3]])
    log_probs = torch.nn.functional.one_hot(ids, 4).float().log()
    mask = torch.tensor([[True] * 6 + [False] * 2])
    assert greedy_ctc(log_probs, mask) == [[1, 1, 2]]


def test_brain_groups_and_hidden_state_cache(tmp_path, data_dir):
    hparams = classify_hparams(tmp_path, hidden_state_cache=True)
    labels = LabelMap.from_values(["neu", "ang"])
    brain = build_brain(hparams, {"device": "cpu"}, labels)
    dataset = make_dataset(str(data_dir), hparams, labels, "train")
    brain.fit(brain.hparams.epoch_counter, dataset, dataset,
              train_loader_kwargs={"batch_size": 4}, valid_loader_kwargs={"batch_size": 4})
    assert {g["name"]: g["lr"] for g in brain.optimizer.param_groups} == {"l": 1e-2, "head": 1e-2}
    cached = list((tmp_path / "exp" / "hidden_state_cache").rglob("*.safetensors"))
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


def test_missing_learning_rate_is_an_error(tmp_path, data_dir):
    hparams = classify_hparams(tmp_path, method="el", lr={"head": 1e-3, "e": 1e-3})
    labels = LabelMap.from_values(["neu", "ang"])
    brain = build_brain(hparams, {"device": "cpu"}, labels)
    with pytest.raises(ValueError, match="no learning rate for parameter group '(l|ln)'"):
        brain.init_optimizers()
