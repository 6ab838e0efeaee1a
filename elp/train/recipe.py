"""What the task-agnostic drivers in ``recipes/`` share: arguments, hparams, datasets, Brain.

A recipe is its HyperPyYAML file (``egs/<corpus>/<task>/conf/train.yaml``): it builds the task
object, the model, head, loss, optimizer, schedule, checkpointer and names the Brain class.
The drivers (``recipes/{inventory,train,infer,score}.py``) read it with the same command line:

    python recipes/train.py conf/train.yaml [--overrides_file conf/mini.yaml] [--key value ...]

Run options every recipe accepts without declaring them (defaults in :data:`RUN_DEFAULTS`):

===================== =================================================================
batch_size            fixed batch size (without dynamic batching)
dynamic_batching      length-bucketed batches of at most ``max_batch_seconds`` of padded audio;
                      ``auto``: on a GPU yes, on CPU no (fixed ``batch_size``)
max_batch_seconds     padded audio seconds per training batch (dynamic batching)
max_batch_utterances  utterances per dynamic batch at most (``auto``: 64 on a GPU, else ``batch_size``)
num_buckets           length buckets of dynamic batching
eval_batch_size       evaluation: utterances per batch at most (sorted by length)
eval_max_batch_seconds  evaluation: padded audio seconds per batch at most
grad_accumulation_factor  batches per optimizer step (SpeechBrain run option): the effective
                      batch is this times the batch
num_workers           DataLoader worker processes (``auto``: 4 with pinned memory on a GPU, 0 on CPU)
hidden_state_cache    weighted_sum / l_only: cache the frozen backbone's hidden states
cnn_cache             every method: cache the frozen CNN's features (``cnn_cache_dir``, default
                      ``exp/cnn_cache``, shared by the recipe's experiments; ``cnn_cache_dtype``
                      float16), filled before the first epoch
cnn_cache_max_gb      size cap of ``cnn_cache_dir`` in GB (``null``: none); reached, nothing more
                      is stored (one warning) and the rest is computed at every use
ckpt_interval_steps   intra-epoch checkpoints every N steps (SpeechBrain run option; ``auto``: 0 on a
                      GPU, 50 on CPU; :func:`checkpoint_intervals`)
ckpt_interval_minutes  intra-epoch checkpoints every N minutes of training (SpeechBrain run option;
                      ``auto``: 15 on a GPU, 0 on CPU); one of the two intervals is used
lr_scaling            ``none`` | ``linear`` | ``sqrt``: scale every learning rate with the effective
                      batch's audio seconds per optimizer step over ``lr_reference_batch_seconds``
                      (:func:`lr_scale_factor`)
lr_reference_batch_seconds  the batch the learning rates were tuned for, in audio seconds per
                      optimizer step (``null``: ``batch_size`` utterances of the training set's
                      mean length, the CPU batch)
precision             fp32 | bf16 | fp16 autocast for training and evaluation (``auto``: bf16 on
                      a GPU, fp32 on CPU)
results_file          stage 5's JSON name (``fold_results.json`` inside a fold)
results_md            the recipe's RESULTS.md table ("" for none)
restart               stage 3: move a finished run with other hparams aside and start over
augmentation          training-only waveform augmentation (``null``: none), e.g. a SpeechBrain
                      ``Augmenter`` (docs/RECIPES.md); refused with ``cnn_cache`` /
                      ``hidden_state_cache``
allow_shell_pipes     run ``wav.scp`` commands elp does not read natively with ``sh -c``, as Kaldi
                      does (stage 1 and data loading); standard decoder pipes (flac, sox,
                      sph2pipe, ffmpeg, cat) are read without it (:mod:`elp.data.pipes`)
===================== =================================================================

Examples
--------
>>> import tempfile
>>> conf = Path(tempfile.mkdtemp())
>>> _ = (conf / "train.yaml").write_text("seed: 1\\nbatch_size: 8\\n")
>>> _ = (conf / "mini.yaml").write_text("batch_size: 2\\n")
>>> hparams_file, run_opts, overrides = parse_recipe_args(
...     [str(conf / "train.yaml"), "--overrides_file", str(conf / "mini.yaml"), "--seed", "3"])
>>> Path(hparams_file).name, overrides
('train.yaml', {'batch_size': 2, 'seed': 3})
>>> sorted(peek_keys(hparams_file))
['batch_size', 'seed']
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import speechbrain as sb
import torch

from elp.data.sampler import BucketBatchSampler, EvalBatchSampler
from elp.runtime import (
    SAMPLE_RATE,
    UserError,
    configure_logging,  # noqa: F401  (the drivers' logging set-up)
    cuda_driver_problem,
)
from elp.train.experiment import ExperimentGuard, ExperimentLock, require_trained_model
from elp.train.feature_cache import with_audio_keys
from elp.train.hparams import (
    load_hparams,
    peek_hparams,
    read_overrides,
    recipe_root,
    resolved_text,
)

logger = logging.getLogger(__name__)
_HELD: list = []  # the experiment locks this process holds

#: Run options a recipe may leave out of its YAML (see the module docstring).
#: ``max_batch_utterances: auto`` on a GPU: small training steps are bound by per-step
#: overhead, not by the audio they carry, so larger batches come almost free (docs/SCALING.md
#: section 9).
GPU_MAX_BATCH_UTTERANCES = 64

RUN_DEFAULTS = {
    "batch_size": 8, "dynamic_batching": "auto", "max_batch_seconds": 200.0, "max_batch_utterances": "auto",
    "num_buckets": 32,
    "eval_batch_size": 64, "eval_max_batch_seconds": 300.0, "grad_accumulation_factor": 1,
    "num_workers": "auto", "hidden_state_cache": False, "cnn_cache": False, "cnn_cache_dir": None,
    "cnn_cache_dtype": "float16", "cnn_cache_max_gb": None, "ckpt_interval_steps": "auto",
    "ckpt_interval_minutes": "auto", "lr_scaling": "none", "lr_reference_batch_seconds": None, "precision": "auto",
    "results_file": "results.json", "results_md": "RESULTS.md", "restart": False,
    "allow_shell_pipes": False, "augmentation": None,
}


#: ``ckpt_interval_steps`` / ``ckpt_interval_minutes`` when both are ``auto``: by the clock on a GPU
#: (a step count saves every few seconds when steps are fast: 50 steps were 379 saves per
#: LibriSpeech 960 h epoch), by the step on CPU (deterministic: a rerun saves at the same steps).
AUTO_CKPT_INTERVALS = {"cuda": (0, 15.0), "cpu": (50, 0.0)}

#: the values of the ``lr_scaling`` run option
LR_SCALINGS = ("none", "linear", "sqrt")


def checkpoint_intervals(steps, minutes, cuda: bool) -> tuple[int, float]:
    """``(ckpt_interval_steps, ckpt_interval_minutes)`` with ``auto`` resolved.

    Both ``auto``: :data:`AUTO_CKPT_INTERVALS` of the device. One given: the other (``auto``)
    is 0, so that the given one is used. SpeechBrain's Brain saves by one of the two.

    Raises
    ------
    elp.runtime.UserError
        Both are positive, or one is negative or not a number.

    Examples
    --------
    >>> checkpoint_intervals("auto", "auto", cuda=True), checkpoint_intervals("auto", "auto", cuda=False)
    ((0, 15.0), (50, 0.0))
    >>> checkpoint_intervals(200, "auto", cuda=True), checkpoint_intervals("auto", 5, cuda=False)
    ((200, 0.0), (0, 5.0))
    >>> checkpoint_intervals(10, 5, cuda=False)
    Traceback (most recent call last):
    ...
    elp.runtime.UserError: ckpt_interval_steps (10) and ckpt_interval_minutes (5) are both set: SpeechBrain saves by one of them; set the other to 0
    """
    auto_steps, auto_minutes = AUTO_CKPT_INTERVALS["cuda" if cuda else "cpu"]
    if steps == "auto" and minutes == "auto":
        return auto_steps, auto_minutes
    resolved = []
    for name, value in (("ckpt_interval_steps", steps), ("ckpt_interval_minutes", minutes)):
        if value == "auto" or value is None:
            resolved.append(0)
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = -1.0
        if not number >= 0:
            raise UserError(f"{name} must be 'auto' or a number >= 0, got {value!r}")
        resolved.append(number)
    if resolved[0] > 0 and resolved[1] > 0:
        raise UserError(f"ckpt_interval_steps ({steps}) and ckpt_interval_minutes ({minutes}) are both set: "
                        "SpeechBrain saves by one of them; set the other to 0")
    return int(resolved[0]), float(resolved[1])


def lr_scale_factor(mode: str, batch_seconds: float, reference_seconds: float) -> float:
    """The factor ``lr_scaling`` multiplies every learning rate by.

    ``none``: 1; ``linear``: ``batch_seconds / reference_seconds``; ``sqrt``: its square root.
    ``batch_seconds`` is the effective batch (audio seconds per optimizer step, averaged over an
    epoch: :func:`epoch_batch`), ``reference_seconds`` the batch the rates were tuned for.

    Raises
    ------
    elp.runtime.UserError
        An unknown mode, or a batch or reference that is not positive.

    Examples
    --------
    >>> lr_scale_factor("none", 400, 100), lr_scale_factor("linear", 400, 100), lr_scale_factor("sqrt", 400, 100)
    (1.0, 4.0, 2.0)
    """
    if mode not in LR_SCALINGS:
        raise UserError(f"lr_scaling must be one of {', '.join(LR_SCALINGS)}, got {mode!r}")
    if mode == "none":
        return 1.0
    if not (batch_seconds > 0 and reference_seconds > 0):
        raise UserError(f"lr_scaling {mode} needs positive batch and reference seconds, got {batch_seconds} and "
                        f"{reference_seconds} (set lr_reference_batch_seconds)")
    ratio = float(batch_seconds) / float(reference_seconds)
    return ratio if mode == "linear" else ratio ** 0.5


def epoch_batch(lengths: list[int], batches_per_process: int, grad_accumulation: int = 1, world_size: int = 1,
                crop_seconds: float = 0.0) -> dict:
    """The effective batch of a training epoch: utterances and audio seconds per optimizer step.

    Both are averages over an epoch (every training utterance once, divided by the epoch's
    optimizer steps), not the nominal caps (``batch_size``, ``max_batch_seconds``). An epoch has
    ``batches_per_process // grad_accumulation`` optimizer steps (SpeechBrain steps after every
    ``grad_accumulation``-th batch), the same on every DDP process, and each step sees a batch
    of every process.

    Parameters
    ----------
    lengths
        Samples (16 kHz) of every training utterance (the whole training set, all processes).
    batches_per_process
        Batches of one process's training loader per epoch.
    grad_accumulation, world_size
        Batches per optimizer step; DDP processes.
    crop_seconds
        The task's ``max_train_seconds`` (0: whole utterances): a cropped utterance counts
        at its crop.

    Returns
    -------
    dict
        ``utterances_per_step``, ``seconds_per_step`` (averages over an epoch; None without a
        step), ``mean_utterance_seconds``, ``steps_per_epoch``, ``batches_per_epoch_per_process``,
        ``world_size``, ``grad_accumulation_factor``.

    Examples
    --------
    >>> batch = epoch_batch([32000] * 10 + [16000] * 6, batches_per_process=4)
    >>> batch["utterances_per_step"], batch["seconds_per_step"], batch["steps_per_epoch"]
    (4.0, 6.5, 4)
    >>> epoch_batch([32000] * 16, batches_per_process=4, grad_accumulation=2, world_size=2,
    ...             crop_seconds=1.5)["seconds_per_step"]
    12.0
    """
    crop = round(crop_seconds * SAMPLE_RATE)
    seconds = sum(min(n, crop) if crop else n for n in lengths) / SAMPLE_RATE
    steps = int(batches_per_process) // max(int(grad_accumulation), 1)
    return {"utterances_per_step": round(len(lengths) / steps, 3) if steps else None,
            "seconds_per_step": round(seconds / steps, 3) if steps else None,
            "mean_utterance_seconds": round(seconds / len(lengths), 4) if lengths else None,
            "steps_per_epoch": steps, "batches_per_epoch_per_process": int(batches_per_process),
            "world_size": int(world_size), "grad_accumulation_factor": int(grad_accumulation)}


def parse_recipe_args(argv: list[str]) -> tuple[str, dict, dict]:
    """Parse ``hparams.yaml [--overrides_file F ...] [--key value ...]`` the SpeechBrain way.

    ``argv`` is without the program name (example in the module docstring).

    Returns
    -------
    hparams_file : str
    run_opts : speechbrain.core.RunOptions
        SpeechBrain's run options (``--device``, ``--distributed_backend``, ...).
    overrides : dict
        Override files first (in order), then the command line's ``--key value`` pairs.

    Raises
    ------
    ValueError
        If ``--overrides_file`` has no file after it, or a ``--key`` is given twice (e.g. a
        ``run.sh`` option repeated as an hparam after ``--``).
    FileNotFoundError
        If an overrides file does not exist.
    """
    argv, files = list(argv), []
    given: dict[str, str] = {}
    for at, arg in enumerate(argv):
        if arg.startswith("--") and arg != "--overrides_file" and at + 1 < len(argv):
            key = arg[2:].split("=", 1)[0]
            if key in given:
                raise ValueError(
                    f"--{key} is given twice ({given[key]!r} and {argv[at + 1]!r}): with run.sh, pass its own "
                    f"options before '--' (./run.sh --{key} {argv[at + 1]}) and only other hparams after it")
            given[key] = argv[at + 1]
    while "--overrides_file" in argv:
        at = argv.index("--overrides_file")
        if at + 1 >= len(argv):
            raise ValueError("--overrides_file needs a YAML file")
        files.append(argv[at + 1])
        del argv[at:at + 2]
    for path in files:
        if not Path(path).is_file():
            raise FileNotFoundError(f"--overrides_file {path}: no such file")
    hparams_file, run_opts, cli = sb.parse_arguments(argv)
    return hparams_file, run_opts, read_overrides(files, cli)


def _with_run_defaults(hparams_file: str, overrides: dict) -> dict:
    """Overrides plus the run defaults the file does not define itself."""
    declared = peek_keys(hparams_file)
    missing = {k: v for k, v in RUN_DEFAULTS.items() if k not in declared and k not in overrides}
    return {**missing, **overrides}


def peek_keys(hparams_file: str) -> set[str]:
    """Top-level keys of a hparams file (read as plain YAML; nothing is built)."""
    import ruamel.yaml

    with open(hparams_file, encoding="utf-8") as fin:
        return set(ruamel.yaml.YAML().load(fin) or {})


def require_usable_device(device: str | None) -> None:
    """Refuse ``--device cuda[:k]`` when torch sees no CUDA device, in one line.

    Where an NVIDIA driver answers, the line says which CUDA version it runs and which one the
    installed torch was built for, with the install command for a matching build
    (:func:`elp.runtime.cuda_driver_problem`).

    Examples
    --------
    >>> require_usable_device("cpu")  # always usable
    >>> require_usable_device(None)   # SpeechBrain picks the device
    """
    if not device or not str(device).startswith("cuda") or torch.cuda.is_available():
        return
    raise UserError(cuda_driver_problem() or f"--device {device}: torch sees no CUDA device here "
                    "(no NVIDIA driver answers nvidia-smi); run with --device cpu, or on a GPU machine")


def load_experiment(argv: list[str], stage: str = "train") -> tuple[dict, dict]:
    """Parse the command line, initialise DDP, build the hparams' objects, guard the exp dir.

    DDP is initialised right after parsing (before anything touches torch.distributed), as
    SpeechBrain requires. ``stage="train"`` takes the experiment's lock and refuses hparams
    that differ from the ones it was trained with (:class:`elp.train.experiment.ExperimentGuard`);
    ``stage="eval"`` takes the lock and refuses an experiment without a trained model.

    Returns
    -------
    hparams : dict
        The built hparams plus :data:`RUN_DEFAULTS`, ``device``, ``eval_precision`` and
        ``hparams_file``.
    run_opts : speechbrain.core.RunOptions
    """
    hparams_file, run_opts, overrides = parse_recipe_args(argv)
    require_usable_device(run_opts.get("device"))
    make_recipe_importable(hparams_file)
    sb.utils.distributed.ddp_init_group(run_opts)
    overrides = _with_run_defaults(hparams_file, overrides)
    hparams = load_hparams(hparams_file, overrides, allowed_new=RUN_DEFAULTS)
    hparams["device"] = run_opts.get("device") or sb.utils.distributed.infer_device()
    given = {key: run_opts[key] if key in getattr(run_opts, "overridden_args", ()) else hparams[key]
             for key in ("ckpt_interval_steps", "ckpt_interval_minutes")}
    hparams["ckpt_interval_steps"], hparams["ckpt_interval_minutes"] = checkpoint_intervals(
        given["ckpt_interval_steps"], given["ckpt_interval_minutes"], cuda=str(hparams["device"]).startswith("cuda"))
    if hparams["precision"] == "auto":  # bf16 autocast on a GPU (TF32 is on through SpeechBrain)
        hparams["precision"] = "bf16" if str(hparams["device"]).startswith("cuda") else "fp32"
    hparams.setdefault("eval_precision", hparams["precision"])
    output = hparams["output_folder"]
    if sb.utils.distributed.if_main_process():
        if stage == "train":
            guard = ExperimentGuard(output, resolved_text(hparams_file, overrides, RUN_DEFAULTS),
                                    restart=bool(hparams["restart"]), defaults=RUN_DEFAULTS)
        else:
            require_trained_model(output)
            guard = ExperimentLock(output)
        _HELD.append(guard.__enter__())  # released when the process exits
    sb.utils.distributed.ddp_barrier()
    sb.create_experiment_directory(experiment_directory=hparams["output_folder"])
    checkpointer = hparams.get("checkpointer")
    if checkpointer is not None:  # a restart moved the directory its constructor made aside
        Path(checkpointer.checkpoints_dir).mkdir(parents=True, exist_ok=True)
    if sb.utils.distributed.if_main_process():  # the resolved hparams this run used
        (Path(output) / "hyperparams.yaml").write_text(resolved_text(hparams_file, overrides, RUN_DEFAULTS))
    hparams["hparams_file"] = hparams_file
    return hparams, run_opts


def peek_experiment(argv: list[str]) -> dict:
    """The hparams' values without building objects (:func:`elp.train.hparams.peek_hparams`).

    The run defaults are filled in and ``hparams_file`` is added.
    """
    hparams_file, _, overrides = parse_recipe_args(argv)
    make_recipe_importable(hparams_file)
    hparams = peek_hparams(hparams_file, _with_run_defaults(hparams_file, overrides), allowed_new=RUN_DEFAULTS)
    hparams["hparams_file"] = hparams_file
    return hparams


def present_test_sets(hparams: dict) -> list[str]:
    """The hparams' ``test_sets`` whose data dir exists.

    A test set is present when its directory holds a ``wav.scp``; the present ones come back
    in the hparams' order. Each absent one is logged (a corpus download without test-other,
    say).

    Raises
    ------
    FileNotFoundError
        If none of them is prepared.

    Examples
    --------
    >>> import tempfile
    >>> present_test_sets({"test_sets": [str(Path(tempfile.mkdtemp()) / "test")]})
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    FileNotFoundError: none of the test sets .../test exists: run stage 0 (data preparation) first
    """
    present = [t for t in hparams["test_sets"] if Path(t, "wav.scp").is_file()]
    for missing in sorted(set(map(str, hparams["test_sets"])) - set(map(str, present))):
        logger.warning("test set %s is not prepared (no wav.scp): skipped", missing)
    if not present:
        raise FileNotFoundError(f"none of the test sets {', '.join(map(str, hparams['test_sets']))} exists: "
                                "run stage 0 (data preparation) first")
    return present


def make_recipe_importable(hparams_file: str) -> None:
    """Put the recipe directory (``conf/..``) first on ``sys.path``.

    So its YAML can name a module of its own, e.g. ``head: !new:local.my_head.MyHead`` for
    ``local/my_head.py``.
    """
    root = str(recipe_root(hparams_file))
    if root not in sys.path:
        sys.path.insert(0, root)


def make_dataset(hparams: dict, data_dir: str, split: str):
    """``hparams["task"]``'s dataset (a ``DynamicItemDataset``) of a Kaldi-style data dir.

    ``hparams`` holds ``task`` (an :class:`elp.tasks.Task`), ``inventory`` and ``cnn_cache``
    (when it is on, items hold whole utterances and the CNN cache makes the training crops
    instead); ``split`` is ``"train"``, ``"valid"`` or ``"test"``. With ``hidden_state_cache``
    the items also hold ``audio_key``, hashed in the loader workers
    (:func:`elp.train.feature_cache.with_audio_keys`).
    """
    dataset = hparams["task"].dataset(data_dir, split, hparams["inventory"], crop_audio=not hparams["cnn_cache"],
                                      allow_shell_pipes=bool(hparams.get("allow_shell_pipes", False)))
    if hparams.get("hidden_state_cache"):
        with_audio_keys(dataset)
    return dataset


def loader_kwargs(hparams: dict, dataset, train: bool, shard: bool = False) -> dict:
    """DataLoader options of a dataset: batching, workers, pinned memory.

    * training: a fixed ``batch_size`` (shuffled), or with ``dynamic_batching`` length buckets
      (:class:`elp.data.sampler.BucketBatchSampler`) capped at ``max_batch_seconds`` of padded
      audio (crops counted at their cropped length) and ``max_batch_utterances`` utterances
      (``auto``: :data:`GPU_MAX_BATCH_UTTERANCES` on a GPU, else ``batch_size``); a new order
      every epoch;
    * evaluation: utterances sorted by length in batches capped at ``eval_max_batch_seconds``
      and ``eval_batch_size`` (:class:`elp.data.sampler.EvalBatchSampler`), so a long test
      utterance never shares a batch with many others; results are per utterance, so the
      order does not change them.

    ``num_workers: auto`` is 4 workers with pinned memory on a GPU, none on CPU. Training
    workers persist across epochs; evaluation workers (each a forked process with its own view
    of the dataset) exit at the end of every pass, so they do not hold host memory between
    validations.

    Parameters
    ----------
    hparams
        The run options of :data:`RUN_DEFAULTS` plus ``seed``, ``device`` and ``task``.
    dataset : speechbrain.dataio.dataset.DynamicItemDataset
        A dataset whose items hold ``num_samples``.
    shard
        Evaluation under DDP: each rank gets a disjoint share of the batches (validation
        during training, whose statistics the Brain gathers across ranks); False: every
        batch (stage 4, single process).

    Returns
    -------
    dict
        Keyword arguments of ``torch.utils.data.DataLoader``.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> dataset = SimpleNamespace(data={"a": {"num_samples": 16000}, "b": {"num_samples": 8000}},
    ...                           data_ids=["a", "b"])
    >>> hparams = dict(RUN_DEFAULTS, seed=0, device="cpu", task=SimpleNamespace(max_train_seconds=0))
    >>> options = loader_kwargs(hparams, dataset, train=True)
    >>> options["batch_size"], options["shuffle"], options["num_workers"]
    (8, True, 0)
    >>> type(loader_kwargs(hparams, dataset, train=False)["batch_sampler"]).__name__
    'EvalBatchSampler'
    >>> loader_kwargs(dict(hparams, dynamic_batching=True), dataset, train=True)["batch_sampler"].max_batch_size
    8
    >>> loader_kwargs(dict(hparams, dynamic_batching=True, max_batch_utterances=3), dataset,
    ...               train=True)["batch_sampler"].max_batch_size
    3
    """
    cuda = str(hparams.get("device", "cpu")).startswith("cuda")
    workers = hparams["num_workers"]
    workers = (4 if cuda else 0) if workers == "auto" else int(workers)
    # A DataLoader without its own generator draws its workers' base seed from the global torch
    # RNG each time it is iterated, so a resumed run (RNG state restored, then a new iterator)
    # would see other dropout masks than the uninterrupted one.
    common = {"num_workers": workers, "pin_memory": cuda, "generator": torch.Generator().manual_seed(int(hparams["seed"]))}
    if workers and train:
        common["persistent_workers"] = True
    lengths = [int(dataset.data[i]["num_samples"]) for i in dataset.data_ids]
    if train:
        dynamic = hparams["dynamic_batching"]
        if dynamic == "auto":
            dynamic = cuda
        if not dynamic:
            return {"batch_size": hparams["batch_size"], "shuffle": True, **common}
        crop = int(hparams["task"].max_train_seconds * SAMPLE_RATE)
        if crop:
            lengths = [min(n, crop) for n in lengths]
        cap = hparams["max_batch_utterances"]
        cap = (GPU_MAX_BATCH_UTTERANCES if cuda else hparams["batch_size"]) if cap == "auto" else int(cap)
        sampler = BucketBatchSampler(lengths, hparams["max_batch_seconds"], max_batch_size=cap,
                                     num_buckets=hparams["num_buckets"], seed=int(hparams["seed"]))
        return {"batch_sampler": sampler, **common}
    ranks = {} if shard else {"rank": 0, "world_size": 1}  # {}: rank and world size of torch.distributed
    sampler = EvalBatchSampler(lengths, hparams["eval_max_batch_seconds"], max_batch_size=hparams["eval_batch_size"],
                               **ranks)
    return {"batch_sampler": sampler, **common}


def build_brain(hparams: dict, run_opts: dict):
    """The hparams' ``brain_class``, built with their modules, optimizer class and checkpointer."""
    return hparams["brain_class"](modules=hparams["modules"], opt_class=hparams["opt_class"],
                                  hparams=hparams, run_opts=run_opts, checkpointer=hparams["checkpointer"])
