"""What the task-agnostic drivers in ``recipes/`` share: arguments, hparams, datasets, Brain.

A recipe is its HyperPyYAML file (``egs/<corpus>/<task>/conf/train.yaml``): it builds the task
object, the model, head, loss, optimizer, schedule, checkpointer and names the Brain class.
The drivers (``recipes/{inventory,train,infer,score}.py``) read it with the same command line:

    python recipes/train.py conf/train.yaml [--overrides_file conf/mini.yaml] [--key value ...]

Run options every recipe accepts without declaring them (defaults in :data:`RUN_DEFAULTS`):

===================== =================================================================
batch_size            fixed batch size (also the cap of dynamic batches)
dynamic_batching      SpeechBrain's DynamicBatchSampler, ``max_batch_seconds`` per batch
max_batch_seconds     audio seconds per dynamic batch
num_buckets           length buckets of the dynamic batch sampler
num_workers           DataLoader worker processes
hidden_state_cache    weighted_sum / l_only: cache the frozen backbone's hidden states
ckpt_interval_steps   intra-epoch checkpoints every N steps (SpeechBrain run option)
precision             fp32 | bf16 | fp16 autocast (SpeechBrain run option)
results_file          stage 5's JSON name (``fold_results.json`` inside a fold)
results_md            the recipe's RESULTS.md table ("" for none)
restart               stage 3: move a finished run with other hparams aside and start over
===================== =================================================================
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import speechbrain as sb

from elp.data.audio import TARGET_SAMPLE_RATE
from elp.experiment import ExperimentGuard, ExperimentLock, require_trained_model
from elp.hparams import load_hparams, peek_hparams, read_overrides, recipe_root, resolved_text
from elp.runtime import configure_logging  # noqa: F401  (the drivers' logging set-up)

logger = logging.getLogger(__name__)
_HELD: list = []  # the experiment locks this process holds

#: Run options a recipe may leave out of its YAML (see the module docstring).
RUN_DEFAULTS = {
    "batch_size": 8, "dynamic_batching": False, "max_batch_seconds": 40.0, "num_buckets": 4,
    "num_workers": 0, "hidden_state_cache": False, "ckpt_interval_steps": 50, "precision": "fp32",
    "results_file": "results.json", "results_md": "RESULTS.md", "restart": False,
}


def parse_recipe_args(argv: list[str]) -> tuple[str, dict, dict]:
    """``hparams.yaml [--overrides_file F ...] [--key value ...]`` the SpeechBrain way.

    Returns
    -------
    hparams_file : str
    run_opts : dict
        SpeechBrain's run options (``--device``, ``--distributed_backend``, ...).
    overrides : dict
        Override files first, then the command line's ``--key value`` pairs.
    """
    argv, files = list(argv), []
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
    """Top-level keys of a hparams file."""
    import ruamel.yaml

    with open(hparams_file, encoding="utf-8") as fin:
        return set(ruamel.yaml.YAML().load(fin) or {})


def load_experiment(argv: list[str], stage: str = "train") -> tuple[dict, dict]:
    """Parse the command line, initialise DDP, build the hparams' objects, guard the exp dir.

    DDP is initialised right after parsing (before anything touches torch.distributed), as
    SpeechBrain requires. ``stage="train"`` takes the experiment's lock and refuses hparams
    that differ from the ones it was trained with (:class:`elp.experiment.ExperimentGuard`);
    ``stage="eval"`` takes the lock and refuses an experiment without a trained model.

    Returns
    -------
    hparams : dict
    run_opts : dict
    """
    hparams_file, run_opts, overrides = parse_recipe_args(argv)
    make_recipe_importable(hparams_file)
    sb.utils.distributed.ddp_init_group(run_opts)
    overrides = _with_run_defaults(hparams_file, overrides)
    hparams = load_hparams(hparams_file, overrides, allowed_new=RUN_DEFAULTS)
    output = hparams["output_folder"]
    if sb.utils.distributed.if_main_process():
        if stage == "train":
            guard = ExperimentGuard(output, resolved_text(hparams_file, overrides, RUN_DEFAULTS),
                                    restart=bool(hparams["restart"]))
        else:
            require_trained_model(output)
            guard = ExperimentLock(output)
        _HELD.append(guard.__enter__())  # released when the process exits
    sb.utils.distributed.ddp_barrier()
    sb.create_experiment_directory(experiment_directory=hparams["output_folder"])
    if sb.utils.distributed.if_main_process():  # the resolved hparams this run used
        (Path(output) / "hyperparams.yaml").write_text(resolved_text(hparams_file, overrides, RUN_DEFAULTS))
    hparams["hparams_file"] = hparams_file
    return hparams, run_opts


def peek_experiment(argv: list[str]) -> dict:
    """The hparams' values without building objects (:func:`elp.hparams.peek_hparams`)."""
    hparams_file, _, overrides = parse_recipe_args(argv)
    make_recipe_importable(hparams_file)
    hparams = peek_hparams(hparams_file, _with_run_defaults(hparams_file, overrides), allowed_new=RUN_DEFAULTS)
    hparams["hparams_file"] = hparams_file
    return hparams


def make_recipe_importable(hparams_file: str) -> None:
    """Put the recipe directory (``conf/..``) first on ``sys.path``, so its YAML can name a
    module of its own, e.g. ``head: !new:local.my_head.MyHead`` for ``local/my_head.py``."""
    root = str(recipe_root(hparams_file))
    if root not in sys.path:
        sys.path.insert(0, root)


def make_dataset(hparams: dict, data_dir: str, split: str):
    """``hparams["task"]``'s dataset of ``data_dir`` (``split``: train, valid or test)."""
    return hparams["task"].dataset(data_dir, split, hparams["inventory"])


def loader_kwargs(hparams: dict, dataset, train: bool) -> dict:
    """Batching: fixed ``batch_size`` or, with ``dynamic_batching``, SpeechBrain's
    ``DynamicBatchSampler`` bounded by ``max_batch_seconds`` of audio."""
    if train and hparams["dynamic_batching"]:
        from speechbrain.dataio.sampler import DynamicBatchSampler

        sampler = DynamicBatchSampler(
            dataset, max_batch_length=hparams["max_batch_seconds"] * TARGET_SAMPLE_RATE,
            num_buckets=hparams["num_buckets"], length_func=lambda x: x["num_samples"],
            shuffle=True, batch_ordering="random")
        return {"batch_sampler": sampler, "num_workers": hparams["num_workers"]}
    return {"batch_size": hparams["batch_size"], "shuffle": train, "num_workers": hparams["num_workers"]}


def build_brain(hparams: dict, run_opts: dict):
    """The hparams' ``brain_class`` with its modules, optimizer class and checkpointer."""
    return hparams["brain_class"](modules=hparams["modules"], opt_class=hparams["opt_class"],
                                  hparams=hparams, run_opts=run_opts, checkpointer=hparams["checkpointer"])
