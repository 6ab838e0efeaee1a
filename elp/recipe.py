"""Recipe plumbing shared by ``recipes/train.py``, ``infer.py`` and ``score.py``.

From one HyperPyYAML file (plus command-line overrides) it builds the backbone, the method,
the head, the datasets (Kaldi data dirs -> SpeechBrain ``DynamicItemDataset``) and the Brain.
A recipe's YAML therefore holds values only: corpus paths, task, heads, learning rates.

Hparams keys read here (see any ``egs/*/*/conf/train.yaml``):

=================== ======================================================================
task                ``asr`` | ``sv`` | ``classify`` (picks the Brain class)
backbone            short name (``wavlm_plus`` ...) or a local checkpoint directory
backbone_source     local directory or hub id with the weights (null: the name's hub id)
backbone_pretrained false builds random weights (no download) from ``backbone_arch``
backbone_arch       null (the real architecture) or a preset of :data:`elp.testing.ARCH_PRESETS`
method              a name of :data:`elp.methods.METHODS`
method_options      dict passed to :class:`elp.model.AdaptedSSL`
head_class          ``!name:`` of a head in :mod:`elp.heads`, called with (in_dim, n_out, **head_options)
train_set ...       data dirs; ``lang_dir`` holds stage 2's inventory
=================== ======================================================================
"""

from __future__ import annotations

import logging
import random
import sys
from pathlib import Path

import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml

from elp.backbones import load_backbone
from elp.brains import BRAINS
from elp.data.audio import read_audio
from elp.data.inventory import LabelMap, load_tokenizer
from elp.data.kaldi_dir import data_dir_to_dict
from elp.model import AdaptedSSL
from elp.testing import ARCH_PRESETS

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000


def load_experiment(argv: list[str]):
    """Parse ``hparams.yaml [--key value ...]`` the SpeechBrain way.

    Returns (hparams dict, run_opts dict). DDP is initialised right after parsing (before
    anything else touches torch.distributed), as SpeechBrain requires.
    """
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    sb.utils.distributed.ddp_init_group(run_opts)
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    sb.create_experiment_directory(experiment_directory=hparams["output_folder"],
                                   hyperparams_to_save=hparams_file, overrides=overrides)
    return hparams, run_opts


def build_model(hparams: dict) -> AdaptedSSL:
    """Backbone + method from hparams."""
    arch = hparams.get("backbone_arch")
    overrides = dict(ARCH_PRESETS[arch]) if arch else {}
    backbone = load_backbone(hparams["backbone"], source=hparams.get("backbone_source"),
                             pretrained=hparams.get("backbone_pretrained", True),
                             config_overrides=overrides)
    return AdaptedSSL(backbone, hparams["method"], **dict(hparams.get("method_options") or {}))


def build_inventory(hparams: dict):
    """Tokenizer (ASR) or label map (classification, speakers) saved by stage 2."""
    lang_dir = hparams["lang_dir"]
    if hparams["task"] == "asr":
        return load_tokenizer(lang_dir)
    return LabelMap.load(lang_dir)


def build_modules(hparams: dict, inventory) -> dict[str, torch.nn.Module]:
    """``model``, ``head`` (and for SV the AAM ``classifier``)."""
    model = build_model(hparams)
    num_outputs = inventory.vocab_size if hparams["task"] == "asr" else len(inventory)
    head_options = dict(hparams.get("head_options") or {})
    if hparams["task"] == "sv":
        head = hparams["head_class"](model.output_dim, **head_options)
        classifier = hparams["classifier_class"](head_options.get("embed_dim", 768), num_outputs)
        return {"model": model, "head": head, "classifier": classifier}
    return {"model": model, "head": hparams["head_class"](model.output_dim, num_outputs, **head_options)}


def make_dataset(data_dir: str, hparams: dict, inventory, split: str) -> sb.dataio.dataset.DynamicItemDataset:
    """A Kaldi data dir as a DynamicItemDataset with ``sig`` and the task's targets.

    Arguments
    ---------
    split: ``"train"`` crops utterances longer than ``hparams.max_train_seconds`` (random
        crop: the spec's "random crops <= 3 s" for SV); ``"valid"`` and ``"test"`` read whole
        utterances. SV test sets have no class targets (their speakers are new).
    """
    task = hparams["task"]
    train = split == "train"
    data = data_dir_to_dict(data_dir, label_file=hparams.get("label_file"))
    for entry in data.values():
        entry.setdefault("start", None)
        entry.setdefault("end", None)
        if task == "sv":
            entry.setdefault("label", entry["spk"])
    dataset = sb.dataio.dataset.DynamicItemDataset(data)
    max_samples = int(hparams.get("max_train_seconds", 0) * SAMPLE_RATE) if train else 0

    @sb.utils.data_pipeline.takes("wav", "start", "end")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline(wav, start, end):
        sig = read_audio(wav, SAMPLE_RATE, segment=(start, end) if start is not None else None)
        if max_samples and sig.shape[0] > max_samples:
            offset = random.randint(0, sig.shape[0] - max_samples)
            sig = sig[offset:offset + max_samples]
        return sig

    dataset.add_dynamic_item(audio_pipeline)
    keys = ["id", "sig"]

    if task == "asr":
        @sb.utils.data_pipeline.takes("text")
        @sb.utils.data_pipeline.provides("tokens")
        def token_pipeline(text):
            return torch.LongTensor(inventory.encode(text))

        dataset.add_dynamic_item(token_pipeline)
        keys += ["text", "tokens"]
    elif not (task == "sv" and split == "test"):
        @sb.utils.data_pipeline.takes("label")
        @sb.utils.data_pipeline.provides("label_id")
        def label_pipeline(label):
            return torch.LongTensor([inventory.encode(label)])

        dataset.add_dynamic_item(label_pipeline)
        keys += ["label", "label_id"]
    dataset.set_output_keys(keys)
    return dataset


def loader_kwargs(hparams: dict, dataset, train: bool) -> dict:
    """Batching: fixed ``batch_size`` or, with ``dynamic_batching``, SpeechBrain's
    ``DynamicBatchSampler`` bounded by ``max_batch_seconds`` of audio."""
    if train and hparams.get("dynamic_batching", False):
        from speechbrain.dataio.sampler import DynamicBatchSampler

        sampler = DynamicBatchSampler(
            dataset, max_batch_length=hparams["max_batch_seconds"] * SAMPLE_RATE,
            num_buckets=hparams.get("num_buckets", 4), length_func=lambda x: x["num_samples"],
            shuffle=True, batch_ordering="random")
        return {"batch_sampler": sampler, "num_workers": hparams.get("num_workers", 0)}
    return {"batch_size": hparams["batch_size"], "shuffle": train, "num_workers": hparams.get("num_workers", 0)}


def build_brain(hparams: dict, run_opts: dict, inventory):
    """The task's Brain with modules, hparams (tokenizer/label map added) and checkpointer."""
    modules = build_modules(hparams, inventory)
    checkpointer = sb.utils.checkpoints.Checkpointer(
        checkpoints_dir=Path(hparams["output_folder"]) / "save",
        recoverables={**modules, "counter": hparams["epoch_counter"]})
    hparams = {**hparams, "tokenizer" if hparams["task"] == "asr" else "label_map": inventory}
    brain_class = BRAINS[hparams["task"]]
    return brain_class(modules=modules, hparams=hparams, run_opts=run_opts, checkpointer=checkpointer)


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
