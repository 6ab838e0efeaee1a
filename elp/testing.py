"""Test fixtures: tiny random backbone checkpoints and model packages for tests and examples.

Only tests and docstring examples import this module; the architecture presets themselves live
in :mod:`elp.core.presets`.
"""

from __future__ import annotations

from pathlib import Path

from elp.core.backbones import BACKBONES, SSLBackbone
from elp.core.presets import TINY_CONFIG, tiny_config  # noqa: F401  (re-exported for tests)
from elp.serve.random_package import TINY_LABELS, make_tiny_package  # noqa: F401  (re-exported for tests)


def save_tiny_checkpoint(name: str, directory: str | Path, seed: int = 0, **overrides) -> Path:
    """Save a randomly initialised tiny ``name`` backbone as a HF checkpoint in ``directory``; return it.

    ``**overrides`` are config fields to change on top of :data:`TINY_CONFIG`.

    Raises
    ------
    ValueError
        If ``name`` is not a known backbone (:data:`elp.core.backbones.BACKBONES`).

    Examples
    --------
    >>> import tempfile
    >>> from elp.core.backbones import load_backbone
    >>> path = save_tiny_checkpoint("wavlm", tempfile.mkdtemp())
    >>> (path / "config.json").exists(), load_backbone(str(path)).num_layers
    (True, 3)
    """
    import torch

    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}")
    torch.manual_seed(seed)
    backbone = SSLBackbone.from_config(name, tiny_config(name, **overrides))
    directory = Path(directory)
    backbone.model.save_pretrained(directory)
    return directory
