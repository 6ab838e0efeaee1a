"""Checkpoints that hold only what trains, are complete-or-absent, and resume exactly.

Three pieces plug into SpeechBrain's :class:`speechbrain.utils.checkpoints.Checkpointer`:

* :class:`TrainableState` wraps an :class:`elp.core.model.AdaptedSSL`. Its checkpoint file (still
  called ``model.ckpt`` by the Checkpointer) is a safetensors file with the learnable tensors
  only, plus the identity of the frozen backbone (short name, SHA-256 of its weights as loaded,
  method and options) in the safetensors metadata. Loading onto another backbone or method is
  refused with one line; names and shapes are checked before any tensor is copied. For
  ``full`` the transformer layers train and are stored; the CNN, the feature projection and
  the positional convolution never train and are never stored.
* :class:`RNGState` saves the states of Python's ``random``, NumPy, torch's CPU generator and
  every CUDA device's generator, so that a resumed run draws the same random numbers as the
  uninterrupted one (dropout in ``full``, random crops, shuffles that use the global RNG).
* :class:`AtomicCheckpointer` writes each checkpoint into a hidden temporary directory and
  renames it into place once every file is complete. A save is never read back: a checkpoint
  is validated when it is about to be loaded (recovery, the best checkpoint). One that is
  incomplete (missing or empty file, unreadable file) or holds non-finite tensors is skipped
  with one warning naming it and moved aside to ``broken+<name>``, and the next one in line
  (the previous checkpoint, for recovery) is used.

Examples
--------
>>> import tempfile, torch
>>> from elp.core.backbones import load_backbone
>>> from elp.core.model import AdaptedSSL
>>> from elp.testing import TINY_CONFIG
>>> model = AdaptedSSL(load_backbone("wavlm", pretrained=False, config_overrides=TINY_CONFIG),
...                    "el", l_dim=16, e_dim=8)
>>> tmp = tempfile.mkdtemp()
>>> ckpt = AtomicCheckpointer(tmp, {"model": TrainableState(model), "rng": RNGState()})
>>> saved = ckpt.save_checkpoint(verbosity=0)
>>> sorted(p.name for p in saved.path.iterdir())
['CKPT.yaml', 'model.ckpt', 'rng.ckpt']
>>> before = {n: p.clone() for n, p in model.learnable_parameters().items()}
>>> with torch.no_grad():
...     for p in model.learnable_parameters().values():
...         _ = p.add_(1.0)
>>> ckpt.recover_if_possible().path == saved.path
True
>>> all(torch.equal(p, before[n]) for n, p in model.learnable_parameters().items())
True
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from speechbrain.utils.checkpoints import (
    METAFNAME,
    PARAMFILE_EXT,
    Checkpoint,
    Checkpointer,
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)
from speechbrain.utils.distributed import ddp_barrier, ddp_broadcast, if_main_process, main_process_only

from elp.runtime import distributed_rank_world

logger = logging.getLogger(__name__)

#: Format version written in the metadata of :class:`TrainableState` files.
FORMAT_VERSION = 1
#: Prefix of checkpoint directories moved aside because they are incomplete or non-finite.
BROKEN_PREFIX = "broken+"
#: Prefix of the temporary directory a checkpoint is written into before its rename.
TMP_PREFIX = ".tmp+"


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the model it is loaded onto (backbone, method, tensors)."""


# ------------------------------------------------------------------------------ file helpers
def file_mode() -> int:
    """Mode of a new regular file under the current umask: ``0o666 & ~umask`` (0644 under 022).

    Examples
    --------
    >>> file_mode() & 0o600
    384
    """
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


# ------------------------------------------------------------------------------ TrainableState
def backbone_identity(model) -> dict:
    """The identity of an :class:`elp.core.model.AdaptedSSL`'s frozen backbone and method.

    Returns
    -------
    dict
        ``backbone`` (short name or directory it was loaded from), ``weights_sha256`` (of the
        backbone's weights as loaded, before any training; None on the meta device),
        ``method`` and ``options`` (the keyword options of :class:`elp.core.model.AdaptedSSL`).

    Examples
    --------
    >>> from elp.core.backbones import load_backbone
    >>> from elp.core.model import AdaptedSSL
    >>> from elp.testing import TINY_CONFIG
    >>> model = AdaptedSSL(load_backbone("wavlm", pretrained=False, config_overrides=TINY_CONFIG), "elp")
    >>> identity = backbone_identity(model)
    >>> sorted(identity), identity["backbone"], identity["method"]
    (['backbone', 'method', 'options', 'weights_sha256'], 'wavlm', 'elp')
    """
    return {"backbone": str(model.backbone.name),
            "weights_sha256": getattr(model.backbone, "weights_sha256", None),
            "method": model.method.name, "options": model.options}


def short_hash(sha: str | None) -> str:
    """First 12 hex digits of a SHA-256 (``"unknown"`` for None).

    Examples
    --------
    >>> short_hash("0123456789abcdef0123"), short_hash(None)
    ('0123456789ab', 'unknown')
    """
    return sha[:12] if sha else "unknown"


@register_checkpoint_hooks
class TrainableState:
    """Checkpoint recoverable for :class:`elp.core.model.AdaptedSSL`: the learnable tensors only.

    Use it in place of the bare module in the Checkpointer's recoverables::

        Checkpointer(save_dir, {"model": TrainableState(model), "head": head, ...})

    The model's ``learnable_parameters()`` (adapters, trainable LayerNorms, LoRA, or the
    transformer for ``full``) are saved; the frozen backbone is referenced by its identity
    (:func:`backbone_identity`), never copied.

    Examples
    --------
    >>> import tempfile
    >>> from elp.core.backbones import load_backbone
    >>> from elp.core.model import AdaptedSSL
    >>> from elp.testing import TINY_CONFIG
    >>> model = AdaptedSSL(load_backbone("wavlm", pretrained=False, config_overrides=TINY_CONFIG),
    ...                    "el", l_dim=16, e_dim=8)
    >>> state = TrainableState(model)
    >>> path = Path(tempfile.mkdtemp()) / "model.ckpt"
    >>> state.save(path)
    >>> state.load(path, True)
    >>> state.identity_of(path)["method"]
    'el'
    """

    def __init__(self, model):
        self.model = model

    def tensors(self) -> dict[str, torch.Tensor]:
        """Name -> detached CPU copy of every learnable tensor (safetensors needs contiguous)."""
        return {name: p.detach().cpu().contiguous() for name, p in self.model.learnable_parameters().items()}

    @mark_as_saver
    def save(self, path: str | os.PathLike) -> None:
        """Write the learnable tensors and the identity metadata to ``path`` (safetensors)."""
        identity = backbone_identity(self.model)
        metadata = {"format": "elp.TrainableState", "format_version": str(FORMAT_VERSION),
                    "identity": json.dumps(identity, sort_keys=True)}
        save_file(self.tensors(), str(path), metadata=metadata)
        os.chmod(path, file_mode())

    @staticmethod
    def identity_of(path: str | os.PathLike) -> dict:
        """The identity (as :func:`backbone_identity`) stored in a file :meth:`save` wrote.

        Raises
        ------
        CheckpointMismatchError
            If the file is unreadable or not a :class:`TrainableState` checkpoint.
        """
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
        except (SafetensorError, OSError, ValueError) as error:
            raise CheckpointMismatchError(
                f"{path}: not a readable elp model checkpoint ({_first_line(error)}); "
                "delete this checkpoint directory to fall back to an earlier one") from None
        if metadata.get("format") != "elp.TrainableState":
            raise CheckpointMismatchError(
                f"{path}: not an elp TrainableState checkpoint (a whole-module checkpoint of an older "
                "elp?); restart the experiment (new --tag, or the restart flag)")
        return json.loads(metadata["identity"])

    @mark_as_loader
    def load(self, path: str | os.PathLike, end_of_epoch: bool = True) -> None:
        """Check identity, names and shapes, then copy the tensors into the model.

        ``end_of_epoch`` is unused (SpeechBrain's loader signature).

        Raises
        ------
        CheckpointMismatchError
            Another backbone (name or weights), method or options, or tensors missing,
            unexpected or of another shape. Nothing is copied in that case.
        """
        del end_of_epoch
        saved = self.identity_of(path)
        wanted = backbone_identity(self.model)
        if _other_backbone(saved, wanted):
            raise CheckpointMismatchError(
                f"{path}: trained on backbone {saved['backbone']!r} (weights sha256 "
                f"{short_hash(saved['weights_sha256'])}) but this model's backbone is {wanted['backbone']!r} "
                f"({short_hash(wanted['weights_sha256'])}); use the backbone/backbone_source of that "
                "run, or start a new experiment (new --tag)")
        if saved["method"] != wanted["method"] or saved["options"] != wanted["options"]:
            changed = sorted(k for k in set(saved["options"]) | set(wanted["options"])
                             if saved["options"].get(k) != wanted["options"].get(k))
            raise CheckpointMismatchError(
                f"{path}: holds method {saved['method']!r} but this model uses {wanted['method']!r}"
                + (f" (options differ: {', '.join(changed)})" if changed else "")
                + "; use that run's method and options, or start a new experiment (new --tag)")
        state = load_file(str(path))
        params = self.model.learnable_parameters()
        check_tensors(state, {n: tuple(p.shape) for n, p in params.items()}, path)
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(state[name])


def _other_backbone(saved: dict, wanted: dict) -> bool:
    """Whether two identities name different frozen weights (by hash; by name when a hash is unknown)."""
    if saved.get("weights_sha256") and wanted.get("weights_sha256"):
        return saved["weights_sha256"] != wanted["weights_sha256"]
    return saved.get("backbone") != wanted.get("backbone")


def check_tensors(state: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]],
                  source: str | os.PathLike, finite: bool = True) -> None:
    """Refuse (one line) a state whose names or shapes differ from ``expected``, or non-finite.

    ``expected`` maps name -> shape the model needs; ``source`` names the file in the message;
    ``finite`` also refuses NaN/inf values.

    Examples
    --------
    >>> check_tensors({"a": torch.zeros(2)}, {"a": (3,)}, "x.safetensors")
    Traceback (most recent call last):
    ...
    elp.train.checkpoints.CheckpointMismatchError: x.safetensors: tensor 'a' has shape (2,) but the model needs (3,); ...
    """
    missing, unexpected = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    if missing or unexpected:
        raise CheckpointMismatchError(
            f"{source}: {len(missing)} tensors missing ({', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}), "
            f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''}); "
            "it was saved for another model configuration: use that configuration or retrain")
    for name, shape in expected.items():
        if tuple(state[name].shape) != tuple(shape):
            raise CheckpointMismatchError(
                f"{source}: tensor {name!r} has shape {tuple(state[name].shape)} but the model needs "
                f"{tuple(shape)}; it was saved for another model configuration: use that configuration or retrain")
        if finite and state[name].is_floating_point() and not torch.isfinite(state[name]).all():
            raise CheckpointMismatchError(
                f"{source}: tensor {name!r} holds NaN/inf values; it comes from a diverged run: "
                "retrain (lower the learning rate, check the audio)")


# ------------------------------------------------------------------------------ RNGState
def _rank_file(path: str | os.PathLike) -> Path:
    """``path`` on rank 0 (and without DDP); ``<stem>.rank<r><suffix>`` beside it on rank r."""
    path = Path(path)
    rank, _ = distributed_rank_world()
    return path if rank == 0 else path.with_name(f"{path.stem}.rank{rank}{path.suffix}")


@register_checkpoint_hooks
class RNGState:
    """Checkpoint recoverable for the random number generators of this process.

    Saves Python's ``random``, NumPy's legacy global generator, torch's CPU generator and, when
    CUDA is initialised, every CUDA device's generator, into one safetensors file. Loading
    restores them, so the run continues with the random numbers the uninterrupted run would
    have drawn. A checkpoint saved with CUDA states loads on a CPU-only machine (the CUDA
    states are then ignored, with a log line).

    Under DDP every rank draws its own random numbers (dropout masks, SV crops), so every rank
    saves its own file: rank 0 the recoverable's file, rank r ``rng.rank<r>.ckpt`` beside it,
    and each rank restores its own. A checkpoint resumed with more ranks than saved it gives
    the extra ranks rank 0's states (logged): such a run cannot repeat the uninterrupted one.

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "rng.ckpt"
    >>> RNGState().save(path)
    >>> a = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    >>> RNGState().load(path, True)
    >>> a == (random.random(), float(np.random.rand()), float(torch.rand(1)))
    True
    """

    @mark_as_saver
    def save(self, path: str | os.PathLike) -> None:
        """Write the current generator states to ``path`` (this rank's file under DDP)."""
        version, py_state, gauss = random.getstate()
        np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
        tensors = {"python": torch.tensor(py_state, dtype=torch.int64),
                   "numpy": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
                   "torch_cpu": torch.get_rng_state()}
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        if cuda:
            for index, state in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"cuda{index}"] = state
        metadata = {"format": "elp.RNGState", "python_version": str(version),
                    "python_gauss": json.dumps(gauss), "numpy_name": np_name, "numpy_pos": str(int(np_pos)),
                    "numpy_has_gauss": str(int(np_has_gauss)), "numpy_gauss": repr(float(np_gauss)),
                    "cuda_devices": str(len(torch.cuda.get_rng_state_all()) if cuda else 0)}
        path = _rank_file(path)
        save_file(tensors, str(path), metadata=metadata)
        os.chmod(path, file_mode())

    @mark_as_loader
    def load(self, path: str | os.PathLike, end_of_epoch: bool = True) -> None:
        """Restore the generator states :meth:`save` wrote to ``path``.

        ``end_of_epoch`` is unused (SpeechBrain's loader signature).

        Raises
        ------
        CheckpointMismatchError
            If the file is not an RNG state.
        """
        del end_of_epoch
        own = _rank_file(path)
        if own.exists():
            path = own
        elif own != Path(path):
            logger.warning("%s: no random state of this rank in the checkpoint (saved by fewer ranks); "
                           "using rank 0's", own)
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
        if meta.get("format") != "elp.RNGState":
            raise CheckpointMismatchError(f"{path}: not an elp RNGState checkpoint")
        state = load_file(str(path))
        gauss = json.loads(meta["python_gauss"])
        random.setstate((int(meta["python_version"]), tuple(int(v) for v in state["python"].tolist()), gauss))
        np.random.set_state((meta["numpy_name"], state["numpy"].numpy().astype(np.uint32),
                             int(meta["numpy_pos"]), int(meta["numpy_has_gauss"]), float(meta["numpy_gauss"])))
        torch.set_rng_state(state["torch_cpu"])
        saved_cuda = [state[f"cuda{i}"] for i in range(int(meta.get("cuda_devices", 0)))]
        if saved_cuda:
            if torch.cuda.is_available():
                for index, cuda_state in enumerate(saved_cuda[:torch.cuda.device_count()]):
                    torch.cuda.set_rng_state(cuda_state, index)
            else:
                logger.info("%s: CUDA generator states saved but CUDA is not available; not restored", path)


# ------------------------------------------------------------------------------ AtomicCheckpointer
class AtomicCheckpointer(Checkpointer):
    """A :class:`~speechbrain.utils.checkpoints.Checkpointer` whose checkpoints are complete or absent.

    * :meth:`save_checkpoint` writes into ``<checkpoints_dir>/.tmp+CKPT+...`` and renames the
      directory into place (one atomic rename) after every file was written and synced.
      Leftover temporary directories of a killed save are removed at the next save. Nothing
      is read back after a save (for ``full`` a checkpoint holds a gigabyte).
    * :meth:`list_checkpoints` (used by recovery and deletion) reads only each checkpoint's
      small meta file; a checkpoint whose meta file is unreadable is skipped with a warning
      and moved aside.
    * :meth:`find_checkpoint` (used by ``recover_if_possible``) and :meth:`load_checkpoint`
      validate the checkpoint they are about to load: every recoverable has a non-empty
      file, safetensors and ``torch.save`` files load, and their floating-point tensors are
      finite. :meth:`find_checkpoint` skips a checkpoint failing any of these with one warning
      naming it and the reason, moves it aside to ``broken+<name>`` and takes the next one in
      line, so recovery falls back to the previous checkpoint; :meth:`load_checkpoint` of such
      a checkpoint is refused with :class:`CheckpointMismatchError`. Validation results are
      cached per checkpoint (by file sizes and mtimes), so a checkpoint is read once for its
      validation.

    Parameters are those of :class:`~speechbrain.utils.checkpoints.Checkpointer`.

    Examples
    --------
    >>> import tempfile
    >>> tmp = Path(tempfile.mkdtemp())
    >>> lin = torch.nn.Linear(2, 2)
    >>> ck = AtomicCheckpointer(tmp, {"lin": lin})
    >>> good = ck.save_checkpoint(verbosity=0)
    >>> time.sleep(0.01); bad = ck.save_checkpoint(verbosity=0)
    >>> (bad.path / "lin.ckpt").write_bytes(b"")  # a kill while writing (older checkpointers)
    0
    >>> ck.find_checkpoint().path == good.path
    True
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._validated: dict[Path, tuple[tuple, str | None]] = {}

    # --------------------------------------------------------------------------- saving
    def save_checkpoint(self, meta={}, end_of_epoch=True, name=None, verbosity=logging.INFO):  # noqa: B006 (SpeechBrain's signature)
        """Save a checkpoint atomically.

        Arguments and return value as SpeechBrain's ``Checkpointer.save_checkpoint``; returns
        None on processes other than the main one.
        """
        final_dir = tmp_dir = None
        saved_meta = None
        if if_main_process():
            self._remove_stale_tmp_dirs()
            final_dir = self._new_checkpoint_dirpath() if name is None else self._custom_checkpoint_dirpath(name)
            tmp_dir = self.checkpoints_dir / f"{TMP_PREFIX}{final_dir.name}"
            if tmp_dir.exists():
                shutil.rmtree(tmp_dir)
            os.makedirs(tmp_dir)
            saved_meta = self._save_checkpoint_metafile(tmp_dir / METAFNAME, meta, end_of_epoch)
        tmp_dir = ddp_broadcast(tmp_dir, src=0)
        final_dir = ddp_broadcast(final_dir, src=0)

        saved_paramfiles = {}
        for obj_name, obj in self.recoverables.items():
            savepath = tmp_dir / f"{obj_name}{PARAMFILE_EXT}"
            saved_paramfiles[obj_name] = final_dir / savepath.name
            if obj_name in self.custom_save_hooks:
                self.custom_save_hooks[obj_name](obj, savepath)
                continue
            from speechbrain.utils.checkpoints import DEFAULT_SAVE_HOOKS, get_default_hook

            hook = get_default_hook(obj, DEFAULT_SAVE_HOOKS)
            if hook is None:
                raise RuntimeError(f"Don't know how to save {type(obj)} ({obj_name!r}): register a "
                                   "checkpoint hook or add a custom save hook")
            hook(obj, savepath)
        ddp_barrier()  # savers that run on every process have finished

        if not if_main_process():
            return None
        for path in tmp_dir.iterdir():
            if path.is_file():
                _fsync_file(path)
        _fsync_dir(tmp_dir)
        if final_dir.exists():  # a custom name saved again: swap the old one out
            old = self.checkpoints_dir / f"{TMP_PREFIX}old+{final_dir.name}"
            os.replace(final_dir, old)
            os.replace(tmp_dir, final_dir)
            shutil.rmtree(old)
        else:
            os.replace(tmp_dir, final_dir)
        _fsync_dir(self.checkpoints_dir)
        self._validated.pop(final_dir, None)
        ckpt_type = "end-of-epoch" if end_of_epoch else "intra-epoch"
        logger.log(verbosity, f"Saved an {ckpt_type} checkpoint in {final_dir}")
        return Checkpoint(final_dir, saved_meta, saved_paramfiles)

    def _remove_stale_tmp_dirs(self) -> None:
        for path in self.checkpoints_dir.glob(f"{TMP_PREFIX}*"):
            logger.warning("removing %s: an unfinished checkpoint save (the run was killed while saving)", path)
            shutil.rmtree(path, ignore_errors=True)

    # --------------------------------------------------------------------------- listing
    def list_checkpoints(self):
        """The checkpoints whose meta file reads; others are logged, moved aside and skipped.

        Only the small meta files are read (listing serves every save's deletion of old
        checkpoints); the tensors are validated when a checkpoint is loaded
        (:meth:`find_checkpoint`, :meth:`load_checkpoint`).

        Under DDP the main process reads the files and every rank receives its list: ranks
        must agree on which checkpoints exist (SpeechBrain's deletion synchronises per
        checkpoint, and a rank that saw another list would wait forever), and only one process
        may move a broken checkpoint aside.
        """
        return self._listed_checkpoints()

    @main_process_only
    def _listed_checkpoints(self):
        listed = []
        for ckpt_dir in self._list_checkpoint_dirs():
            problem = _meta_problem(Path(ckpt_dir))
            if problem is None:
                listed.extend(self._construct_checkpoint_objects([ckpt_dir]))
            else:
                self._quarantine(Path(ckpt_dir), problem)
        return listed

    # --------------------------------------------------------------------------- loading
    def find_checkpoint(self, importance_key=None, max_key=None, min_key=None, ckpt_predicate=None):
        """The first usable checkpoint in SpeechBrain's order (newest, or best by a key), or None.

        Arguments as SpeechBrain's ``Checkpointer.find_checkpoint``. Candidates are validated
        (:meth:`checkpoint_problem`) in that order; each unusable one is logged once (its
        name and the reason), moved aside to ``broken+<name>`` and passed over. Under DDP the
        main process validates and every rank receives its choice.
        """
        return self._first_usable(importance_key, max_key, min_key, ckpt_predicate)

    @main_process_only
    def _first_usable(self, importance_key, max_key, min_key, ckpt_predicate):
        ranked = self.find_checkpoints(importance_key=importance_key, max_key=max_key, min_key=min_key,
                                       ckpt_predicate=ckpt_predicate, max_num_checkpoints=None)
        for checkpoint in ranked:
            problem = self.checkpoint_problem(checkpoint.path)
            if problem is None:
                return checkpoint
            self._quarantine(Path(checkpoint.path), problem)
        return None

    def load_checkpoint(self, checkpoint):
        """Validate ``checkpoint`` (:meth:`checkpoint_problem`), then load it (SpeechBrain's ``load_checkpoint``).

        Raises
        ------
        CheckpointMismatchError
            If the checkpoint is incomplete or holds non-finite values (the message names it
            and the reason); nothing is loaded.
        """
        problem = self._main_process_problem(checkpoint.path)
        if problem is not None:
            raise CheckpointMismatchError(
                f"checkpoint {checkpoint.path}: {problem}; delete it (or move it aside) to fall back "
                "to an earlier checkpoint")
        return super().load_checkpoint(checkpoint)

    @main_process_only
    def _main_process_problem(self, ckpt_dir):
        return self.checkpoint_problem(ckpt_dir)

    def checkpoint_problem(self, ckpt_dir: str | os.PathLike) -> str | None:
        """Why the checkpoint in ``ckpt_dir`` cannot be used, or None when it is complete and finite.

        E.g. ``"model.ckpt is empty (0 bytes)"`` or ``"model.ckpt has non-finite values in x"``.
        Reads every file of the checkpoint once; the answer is cached until a file changes.
        """
        ckpt_dir = Path(ckpt_dir)
        try:
            files = sorted(ckpt_dir.iterdir())
            key = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files)
        except OSError as error:
            return f"unreadable ({_first_line(error)})"
        cached = self._validated.get(ckpt_dir)
        if cached is not None and cached[0] == key:
            return cached[1]
        problem = _checkpoint_problem(ckpt_dir, files, self.recoverables, self.optional_recoverables,
                                      self.allow_partial_load)
        self._validated[ckpt_dir] = (key, problem)
        return problem

    def _quarantine(self, ckpt_dir: Path, problem: str) -> None:
        if not if_main_process():
            logger.warning("skipping checkpoint %s: %s", ckpt_dir, problem)
            return
        target = ckpt_dir.with_name(f"{BROKEN_PREFIX}{ckpt_dir.name}")
        if target.exists():
            target = ckpt_dir.with_name(f"{BROKEN_PREFIX}{ckpt_dir.name}+{time.time_ns()}")
        try:
            os.replace(ckpt_dir, target)
            where = f"moved to {target.name}"
        except OSError:
            where = "left in place"
        logger.warning("skipping checkpoint %s: %s (%s; falling back to the previous checkpoint)",
                       ckpt_dir.name, problem, where)
        self._validated.pop(ckpt_dir, None)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _meta_problem(ckpt_dir: Path) -> str | None:
    """Why the meta file of a checkpoint cannot be read, or None."""
    try:
        meta = yaml.safe_load((ckpt_dir / METAFNAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        return f"{METAFNAME} unreadable ({_first_line(error)})"
    if not isinstance(meta, dict) or "end-of-epoch" not in meta:
        return f"{METAFNAME} is incomplete"
    return None


def _checkpoint_problem(ckpt_dir: Path, files: list[Path], recoverables: dict, optional: dict,
                        allow_partial: bool) -> str | None:
    problem = _meta_problem(ckpt_dir)
    if problem is not None:
        return problem
    names = {p.stem: p for p in files if p.suffix == PARAMFILE_EXT}
    if not allow_partial:
        for name in recoverables:
            if name not in names and not optional.get(name, False) and "dataloader" not in name:
                return f"{name}{PARAMFILE_EXT} is missing"
    for name, path in sorted(names.items()):
        problem = _file_problem(path)
        if problem is not None:
            return f"{path.name} {problem}"
    return None


def _file_problem(path: Path) -> str | None:
    """Why a checkpoint file is unusable (empty, unreadable, non-finite), or None."""
    size = path.stat().st_size
    if size == 0:
        return "is empty (0 bytes)"
    with open(path, "rb") as handle:
        head = handle.read(9)
    if head[:4] == b"PK\x03\x04":  # torch.save's zip format
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - any failure means an unusable file
            return f"is unreadable ({_first_line(error)})"
        return _nonfinite_in(obj)
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < size:  # safetensors
        try:
            state = load_file(str(path))
        except Exception as error:  # noqa: BLE001
            return f"is unreadable ({_first_line(error)})"
        return _nonfinite_in(state)
    return None  # a small text file (epoch counter, Brain counters): non-empty is all we can check


def _nonfinite_in(obj, prefix: str = "") -> str | None:
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() and not torch.isfinite(obj).all():
            return f"has non-finite values in {prefix or 'a tensor'}"
        return None
    if isinstance(obj, float):
        return None if math.isfinite(obj) else f"has a non-finite value in {prefix}"
    if isinstance(obj, dict):
        for key, value in obj.items():
            found = _nonfinite_in(value, f"{prefix}.{key}" if prefix else str(key))
            if found:
                return found
    elif isinstance(obj, (list, tuple)):
        for index, value in enumerate(obj):
            found = _nonfinite_in(value, f"{prefix}[{index}]")
            if found:
                return found
    return None


# ------------------------------------------------------------------------------ measurement
def measure_sizes(backbone: str = "wavlm_plus", method: str = "elp", directory: str | os.PathLike | None = None) -> dict:
    """Bytes of one checkpoint before (whole module, ``torch.save``) and after (:class:`TrainableState`).

    Builds ``backbone`` with random weights of its real architecture (no download), the method
    with default options and a 4-class :class:`elp.core.heads.PooledClassifier`, takes one Adam step
    (so the optimizer holds its state) and writes a checkpoint and an adapter export.

    ``directory`` receives the files (None: a temporary directory, removed afterwards).

    Returns
    -------
    dict
        ``whole_module``, ``model``, ``head``, ``optimizer``, ``rng``, ``export`` (bytes),
        ``learnable`` (parameters) and ``ratio`` = (model + head) / export.
    """
    import tempfile

    from elp.core.backbones import load_backbone
    from elp.core.export import CONFIG_FILE, WEIGHTS_FILE, save_adapters
    from elp.core.heads import PooledClassifier
    from elp.core.model import AdaptedSSL

    torch.manual_seed(0)
    model = AdaptedSSL(load_backbone(backbone, pretrained=False), method)
    head = PooledClassifier(model.output_dim, 4)
    params = list(model.learnable_parameters().values()) + list(head.parameters())
    optimizer = torch.optim.Adam(params)
    for param in params:
        param.grad = torch.zeros_like(param)
    optimizer.step()
    root = Path(directory or tempfile.mkdtemp())
    torch.save(model.state_dict(), root / "whole_module.ckpt")
    saved = AtomicCheckpointer(root / "save", {"model": TrainableState(model), "head": head, "optimizer": optimizer,
                                               "rng": RNGState()}).save_checkpoint(verbosity=logging.DEBUG)
    export = save_adapters(model, root / "export", head=head)
    size = {name: (saved.path / f"{name}{PARAMFILE_EXT}").stat().st_size for name in ("model", "head", "optimizer", "rng")}
    size["whole_module"] = (root / "whole_module.ckpt").stat().st_size
    size["export"] = (export / WEIGHTS_FILE).stat().st_size + (export / CONFIG_FILE).stat().st_size
    size["learnable"] = sum(p.numel() for p in model.learnable_parameters().values())
    size["ratio"] = round((size["model"] + size["head"]) / size["export"], 4)
    if directory is None:
        shutil.rmtree(root)
    return size


if __name__ == "__main__":  # python -m elp.train.checkpoints [backbone] [method ...]
    import sys

    args = sys.argv[1:] or ["wavlm_plus", "elp"]
    for method_name in args[1:]:
        print(json.dumps({"backbone": args[0], "method": method_name, **measure_sizes(args[0], method_name)}))
