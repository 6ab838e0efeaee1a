"""Shared pytest fixtures: tiny HF checkpoints saved to a local directory, shared data paths."""

import os
from pathlib import Path

import pytest
import torch

from elp.core.backbones import BACKBONES
from elp.testing import save_tiny_checkpoint

PROJECT_ROOT = Path(__file__).resolve().parents[1]

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Short backbone name -> directory with a tiny random HF checkpoint of that architecture."""
    root = tmp_path_factory.mktemp("tiny_checkpoints")
    return {name: save_tiny_checkpoint(name, root / name, seed=index) for index, name in enumerate(BACKBONES)}


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (or $ELP_SHARED_DATA); the test is skipped when it is absent."""
    path = Path(os.environ.get("ELP_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path}")
    return path
