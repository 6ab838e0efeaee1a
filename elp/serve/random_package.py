"""Packages of small random models: examples, tests and the serving benchmark (nothing trained)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from elp.core.backbones import SSLBackbone
from elp.core.model import AdaptedSSL
from elp.core.presets import tiny_config
from elp.serve.package import PackageError, write_package
from elp.tasks import TASKS, task_class
from elp.tasks.classify import EXAMPLE_LABELS

#: the classes of a tiny classification package
TINY_LABELS = EXAMPLE_LABELS


def make_tiny_package(directory: str | os.PathLike, task: str = "classify", method: str = "l_only",
                      seed: int = 0, backbone_dir: str | os.PathLike | None = None,
                      backbone: str = "wavlm", task_options: dict | None = None, **method_options) -> Path:
    """Write a package of a tiny random model (doctests, tests, demos) and return its directory; nothing is trained.

    Parameters
    ----------
    task
        A task kind of :data:`elp.tasks.TASKS`; its inventory and head are the task's examples
        (:meth:`elp.tasks.base.Task.example_inventory`, :meth:`~elp.tasks.base.Task.example_head`).
    method
        Any method of :data:`elp.core.methods.METHODS`.
    seed
        Seeds the adapters and head (and the backbone unless ``backbone_dir`` is given).
    backbone_dir
        A tiny HF checkpoint (:func:`elp.testing.save_tiny_checkpoint`) to reference instead of
        storing random weights in the package.
    backbone
        Short backbone name of the tiny architecture.
    task_options
        Constructor options of the task class (e.g. SV ``window_seconds``).
    **method_options
        Passed to :class:`AdaptedSSL` (default: ``l_dim=16, e_dim=8, prompt_frames=4``).

    Examples
    --------
    >>> import tempfile
    >>> from elp.serve.package import read_package_config
    >>> config = read_package_config(make_tiny_package(tempfile.mkdtemp(), task="sv",
    ...                                                task_options={"window_seconds": 2.0}))
    >>> config["task"], config["task_options"]["window_seconds"]
    ('sv', 2.0)
    """
    try:
        spec = task_class(task)(**(task_options or {}))
    except ValueError:
        raise PackageError(f"task={task!r} is not one of {tuple(TASKS)}") from None
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
    inventory = spec.example_inventory()
    head = spec.example_head(model.output_dim, inventory)
    return write_package(directory, model, head, task=spec, **spec.package_fields(inventory),
                         backbone_source=str(backbone_dir) if backbone_dir else None,
                         backbone_pretrained=backbone_dir is not None, extra={"tiny": True, "seed": seed})
