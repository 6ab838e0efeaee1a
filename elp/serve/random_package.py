"""Packages of small random models: examples, tests and the serving benchmark (nothing trained)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from elp.core.backbones import SSLBackbone
from elp.core.model import AdaptedSSL
from elp.core.presets import tiny_config
from elp.data.inventory import CharTokenizer
from elp.serve.package import PackageError, write_package
from elp.tasks import ASR, CLASSIFY, SV, TASKS

#: the classes of a tiny classification package
TINY_LABELS = ["angry", "happy", "neutral"]


def make_tiny_package(directory: str | os.PathLike, task: str = CLASSIFY, method: str = "l_only",
                      seed: int = 0, backbone_dir: str | os.PathLike | None = None,
                      backbone: str = "wavlm", **method_options) -> Path:
    """A package of a tiny random model (doctests, tests, demos): nothing is trained.

    Parameters
    ----------
    directory : str | os.PathLike
        Where to write it.
    task : str
        a task kind of :data:`elp.tasks.TASKS` (ASR: character tokens; classification: :data:`TINY_LABELS`).
    method : str
        Any method of :data:`elp.core.methods.METHODS`.
    seed : int
        Seeds the adapters and head (and the backbone unless ``backbone_dir`` is given).
    backbone_dir : str | os.PathLike | None, optional
        A tiny HF checkpoint (:func:`elp.testing.save_tiny_checkpoint`) to reference instead of
        storing random weights in the package.
    backbone : str
        Short backbone name of the tiny architecture.
    **method_options
        Passed to :class:`AdaptedSSL` (default: ``l_dim=16, e_dim=8, prompt_frames=4``).

    Returns
    -------
    pathlib.Path
    """
    from elp.core.heads import CTCHead, PooledClassifier, SpeakerEmbeddingHead

    torch.manual_seed(seed)
    if backbone_dir is not None:
        ssl = SSLBackbone.from_pretrained(backbone, source=str(backbone_dir))
    else:
        ssl = SSLBackbone.from_config(backbone, tiny_config(backbone))
    options = {"l_dim": 16, "e_dim": 8, "prompt_frames": 4, "prefix_frames": 3, "lora_rank": 2,
               **method_options}
    model = AdaptedSSL(ssl, method, **options)
    with torch.no_grad():  # adapters start near identity / zero: perturb so that they matter
        for param in model.learnable_parameters().values():
            param.add_(0.1 * torch.randn_like(param))
    tokenizer, labels = None, None
    if task == ASR:
        tokenizer = CharTokenizer.from_texts(["HELLO WORLD", "A CAT"])
        head = CTCHead(model.output_dim, tokenizer.vocab_size)
    elif task == CLASSIFY:
        labels = list(TINY_LABELS)
        head = PooledClassifier(model.output_dim, len(labels), hidden_dim=8)
    elif task == SV:
        head = SpeakerEmbeddingHead(model.output_dim, embed_dim=8, pooling="attentive")
    else:
        raise PackageError(f"task={task!r} is not one of {TASKS}")
    return write_package(directory, model, head, task=task, labels=labels, tokenizer=tokenizer,
                         backbone_source=str(backbone_dir) if backbone_dir else None,
                         backbone_pretrained=backbone_dir is not None, extra={"tiny": True, "seed": seed})
