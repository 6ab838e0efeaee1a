"""What every task kind provides: inventory, datasets with targets, decode outputs, scoring.

A *task kind* is what differs between speech recognition, speaker verification and
utterance classification once the model is an :class:`elp.core.model.AdaptedSSL` plus a head:

================================ ===================================================
:meth:`Task.build_inventory`      stage 2: tokens or labels from the training set
:meth:`Task.check_coverage`       stage 2: dev/test sets use only that inventory
:meth:`Task.dataset`              Kaldi dir -> DynamicItemDataset with ``sig`` + targets
:meth:`Task.check_test_set`       stage 4, before any compute: the test set holds the references
:meth:`Task.predict_batch`        the one prediction path (stage 4, package API, serving)
:meth:`Task.write_outputs`        stage 4: hypotheses / predictions / trial scores
:meth:`Task.package_options`      model packages: task options, inventory files, threshold
:meth:`Task.score`                stage 5: the metric (and extras) of one test set, from
                                  decode files that cover exactly that set
``valid_key`` / ``valid_key_mode`` the validation statistic that picks the best checkpoint
================================ ===================================================

The recipe's YAML declares its task once (``task: !new:elp.tasks.UtteranceClassification``);
the drivers in ``recipes/`` never branch on the kind.

Examples
--------
A two-utterance classification data dir, its inventory and its datasets (training crops of
``max_train_seconds``, whole utterances at test time):

>>> import tempfile
>>> import numpy as np
>>> import soundfile as sf
>>> from elp.data.kaldi_dir import validate_data_dir
>>> from elp.tasks import UtteranceClassification
>>> data = Path(tempfile.mkdtemp())
>>> for utt, samples in [("u1", 16000), ("u2", 24000)]:
...     sf.write(data / f"{utt}.wav", np.zeros(samples, dtype=np.float32), 16000)
>>> write_lines(data / "wav.scp", [f"u1 {data / 'u1.wav'}", f"u2 {data / 'u2.wav'}"])
>>> write_lines(data / "utt2spk", ["u1 s1", "u2 s2"])
>>> write_lines(data / "utt2label", ["u1 happy", "u2 sad"])
>>> _ = validate_data_dir(data)
>>> task = UtteranceClassification(max_train_seconds=0.5)
>>> task.build_inventory(data, data / "lang")
>>> inventory = task.load_inventory(data / "lang")
>>> task.package_fields(inventory)
{'labels': ['happy', 'sad']}
>>> [(item["id"], item["sig"].shape[0], item["label_id"].tolist())
...  for item in task.dataset(data, "train", inventory)]
[('u1', 8000, [0]), ('u2', 8000, [1])]
>>> [item["sig"].shape[0] for item in task.dataset(data, "test", inventory)]
[16000, 24000]
>>> read_pairs(data / "utt2label")
{'u1': 'happy', 'u2': 'sad'}
>>> task.metric(75, chance=50.0)
{'name': 'accuracy', 'value': 75.0, 'higher_is_better': True, 'chance': 50.0}
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import speechbrain as sb
import torch

from elp.data.audio import read_audio
from elp.runtime import SAMPLE_RATE
from elp.data.inventory import LABELS_FILE, LabelMap
from elp.data.kaldi_dir import UTT2NUM_SAMPLES, DataDir, DataDirError, data_dir_to_dict, read_data_dir

logger = logging.getLogger(__name__)

#: ``encode(wavs [B, T], wav_lens [B] relative lengths) -> (feats [B, F, D], frame_mask [B, F] bool)``
Encoder = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class Task:
    """Base class of the task kinds (see the module docstring).

    Parameters
    ----------
    max_train_seconds
        Training utterances longer than this are randomly cropped to it (0: whole
        utterances). Validation and test always read whole utterances.
    label_file
        The data-dir file with one label per utterance (classification; default ``utt2label``).
    """

    #: registry name (``elp.tasks.TASKS``)
    kind: ClassVar[str] = ""
    #: name of the validation statistic that selects the best checkpoint, and its direction
    valid_key: ClassVar[str] = "loss"
    valid_key_mode: ClassVar[str] = "min"
    #: the primary metric written to results.json
    metric_name: ClassVar[str] = ""
    higher_is_better: ClassVar[bool] = False
    #: the extra metrics :meth:`score` may write next to it (``extra_metrics`` of results.json)
    extra_metric_names: ClassVar[tuple[str, ...]] = ()
    #: the ``package.json`` entry of the decision threshold stage 4 calibrates (None: no threshold)
    threshold_key: ClassVar[str | None] = None

    def __init__(self, max_train_seconds: float = 0.0, label_file: str | None = None):
        self.max_train_seconds = float(max_train_seconds or 0.0)
        self.label_file = label_file

    # ------------------------------------------------------------------ stage 2
    def build_inventory(self, train_dir: str | Path, lang_dir: str | Path) -> None:
        """Write the token or label inventory of ``train_dir`` to ``lang_dir`` (subclasses)."""
        raise NotImplementedError

    def load_inventory(self, lang_dir: str | Path):
        """Return the inventory :meth:`build_inventory` wrote: a :class:`LabelMap` (ASR: a tokenizer)."""
        return LabelMap.load(lang_dir)

    def check_coverage(self, lang_dir: str | Path, data_dir: str | Path) -> None:
        """Check that the inventory in ``lang_dir`` can encode every utterance of ``data_dir``.

        Runs in stage 2, so a bad dev/test set fails before training, not after. The base
        class checks nothing.

        Raises
        ------
        ValueError
            One line naming the utterances that cannot be encoded (subclasses).
        """

    # ------------------------------------------------------------------ data
    def dataset(self, data_dir: str | Path, split: str, inventory,
                crop_audio: bool = True, allow_shell_pipes: bool = False) -> sb.dataio.dataset.DynamicItemDataset:
        """Return a Kaldi data dir as a dataset with ``id``, ``sig`` and this task's targets.

        Parameters
        ----------
        data_dir
            A validated Kaldi-style data dir (with ``utt2num_samples``).
        split
            ``"train"`` (random crops when ``max_train_seconds``), ``"valid"`` or ``"test"``.
        inventory : object
            From :func:`elp.tasks.load_inventory`.
        crop_audio
            False: training utterances stay whole (the Brain crops cached CNN frames instead).
        allow_shell_pipes
            Run ``wav.scp`` commands elp does not read natively (see :mod:`elp.data.pipes`).

        Returns
        -------
        speechbrain.dataio.dataset.DynamicItemDataset
            Items with ``id``, ``sig`` (float waveform [T] at 16 kHz) and the keys of
            :meth:`add_targets`.
        """
        data = data_dir_to_dict(data_dir, label_file=self.label_file, allow_shell_pipes=allow_shell_pipes)
        for entry in data.values():
            entry.setdefault("start", None)
            entry.setdefault("end", None)
        self.prepare_entries(data, split)
        dataset = sb.dataio.dataset.DynamicItemDataset(data)
        max_samples = int(self.max_train_seconds * SAMPLE_RATE) if split == "train" and crop_audio else 0

        @sb.utils.data_pipeline.takes("id", "wav", "start", "end", "num_samples")
        @sb.utils.data_pipeline.provides("sig")
        def audio_pipeline(utt, wav, start, end, num_samples):
            segment = (start, end) if start is not None else None
            if max_samples and num_samples and num_samples > max_samples:
                # a random crop: read only its samples, not the whole file
                offset = random.randint(0, num_samples - max_samples) / SAMPLE_RATE
                begin = (start or 0.0) + offset
                segment = (begin, begin + max_samples / SAMPLE_RATE)
            sig = read_audio(wav, SAMPLE_RATE, segment=segment, utt=utt, allow_shell_pipes=allow_shell_pipes)
            return sig[:max_samples] if max_samples else sig

        dataset.add_dynamic_item(audio_pipeline)
        dataset.set_output_keys(["id", "sig"] + self.add_targets(dataset, split, inventory))
        return dataset

    def prepare_entries(self, data: dict, split: str) -> None:
        """Adjust the per-utterance entries (``wav``, ``num_samples``, ...) in place (subclasses)."""

    def add_targets(self, dataset, split: str, inventory) -> list[str]:
        """Add this task's target items to ``dataset`` and return their output keys (subclasses; none here)."""
        return []

    @staticmethod
    def add_label_targets(dataset, inventory) -> list[str]:
        """Add ``label_id`` (LongTensor [1]): the class id of each entry's ``label``; return the keys."""

        @sb.utils.data_pipeline.takes("id", "label")
        @sb.utils.data_pipeline.provides("label_id")
        def label_pipeline(utt, label):
            return torch.LongTensor([inventory.encode(label, utt=utt)])

        dataset.add_dynamic_item(label_pipeline)
        return ["label", "label_id"]

    # ------------------------------------------------------------------ stages 4-5
    def check_inference_inputs(self, test_dirs: list[str | Path]) -> None:
        """Check everything stage 4 reads about its data before it computes anything.

        Called by ``recipes/infer.py`` before the model is built: each test set
        (:meth:`check_test_set`; subclasses add the other data sets they embed).

        Raises
        ------
        DataDirError
            One line naming the file and the fix.
        """
        for test_dir in test_dirs:
            self.check_test_set(test_dir)

    def check_test_set(self, test_dir: str | Path) -> DataDir:
        """Check that a test set passed stage 1 and holds what this task scores against.

        The base class checks that the data dir reads and has ``utt2num_samples`` (written by
        stage 1); subclasses add their references (transcripts, labels, trials).

        Returns
        -------
        DataDir
            The test set as read (for the subclasses' checks).

        Raises
        ------
        DataDirError
            One line naming the file and the fix.
        """
        data = read_data_dir(test_dir)
        if data.utt2num_samples is None:
            raise DataDirError(f"{Path(test_dir) / UTT2NUM_SAMPLES} is missing: run stage 1 (data validation) "
                               "before stage 4")
        return data

    def write_outputs(self, brain, dataset, test_dir: str | Path, decode_dir: Path, loader_kwargs_of,
                      exp_dir: Path) -> None:
        """Run ``brain`` over ``dataset`` and write this task's decode files to ``decode_dir``.

        ``loader_kwargs_of(dataset)`` gives the DataLoader options of any dataset it evaluates
        (the test set, and for SV the S-norm cohort and the calibration trials); ``test_dir`` holds
        the references; ``exp_dir`` is the experiment (its model package is ``exp_dir/adapters``).
        """
        raise NotImplementedError

    def calibration_trials(self, brain, loader_kwargs_of) -> dict | None:
        """Return the keyword arguments of :func:`elp.serve.package.calibrate_threshold` for stage 4, or None (here)."""
        return None

    def package_fields(self, inventory) -> dict:
        """Return what a model package stores of the inventory (:func:`elp.serve.package.write_package`)."""
        return {"labels": list(inventory.labels)}

    # ------------------------------------------------------------------ prediction
    def predict_batch(self, encode: Encoder, head: torch.nn.Module, wavs: torch.Tensor,
                      wav_lens: torch.Tensor) -> list[torch.Tensor]:
        """Return per-utterance outputs of a padded batch: the one prediction path of this kind.

        Stage 4 (:meth:`elp.train.brains.base.ELPBrain.predict`), the package API
        (:mod:`elp.serve.inference`) and multi-task serving (:mod:`elp.serve.multitask`) all call
        it; they differ only in ``encode``.

        Parameters
        ----------
        encode
            An :data:`Encoder`, e.g. an :class:`elp.core.model.AdaptedSSL`. It may be called on
            other batches than ``wavs`` (speaker verification: windows of long utterances).
        wavs
            [B, T] padded waveforms at 16 kHz.
        wav_lens
            [B] relative lengths (valid samples / T).

        Returns
        -------
        list[torch.Tensor]
            B CPU float32 tensors (see :meth:`head_outputs`).

        Examples
        --------
        >>> from elp.core.heads import PooledClassifier
        >>> from elp.tasks import UtteranceClassification
        >>> encode = lambda w, l: (w.reshape(w.shape[0], -1, 4), torch.ones(w.shape[0], w.shape[1] // 4, dtype=torch.bool))
        >>> outputs = UtteranceClassification().predict_batch(encode, PooledClassifier(4, 3, hidden_dim=2),
        ...                                                    torch.randn(2, 40), torch.ones(2))
        >>> [tuple(o.shape) for o in outputs], [round(float(o.sum()), 4) for o in outputs]
        ([(3,), (3,)], [1.0, 1.0])
        """
        feats, frame_mask = encode(wavs, wav_lens)
        return self.head_outputs(head, feats, frame_mask)

    def head_outputs(self, head: torch.nn.Module, feats: torch.Tensor,
                     frame_mask: torch.Tensor) -> list[torch.Tensor]:
        """Return the head's outputs, one CPU float32 tensor per utterance (subclasses).

        ``feats`` is [B, F, D], ``frame_mask`` [B, F] bool (True = real frame). ASR: log-probs [F_b, V] of the
        valid frames; classification: probabilities [C]; speaker verification: embeddings [E].
        """
        raise NotImplementedError

    # ------------------------------------------------------------------ model packages
    def package_options(self) -> dict:
        """Return the constructor options prediction needs (``package.json``'s ``task_options``; none here)."""
        return {}

    def save_package_inventory(self, directory: Path, inventory_dir: str | Path | None = None,
                               labels: list[str] | None = None, tokenizer=None) -> dict:
        """Write what prediction needs of the inventory into a package directory.

        The base class stores class names (``labels.txt``) from ``labels`` (id = position), or reads
        them from ``inventory_dir`` (stage 2's ``data/lang``); ``tokenizer`` is for ASR.

        Returns
        -------
        dict
            The ``inventory`` entry of ``package.json`` (``kind`` and ``file``).

        Raises
        ------
        ValueError
            Neither ``labels`` nor ``inventory_dir`` given.
        FileNotFoundError
            ``inventory_dir`` has no ``labels.txt``.
        """
        if labels is None:
            if inventory_dir is None:
                raise ValueError(f"a {self.kind} package needs inventory_dir= (stage 2's data/lang) or labels=")
            path = Path(inventory_dir) / LABELS_FILE
            if not path.exists():
                raise FileNotFoundError(f"{path} is missing: run stage 2 (label inventory) first")
            labels = path.read_text().splitlines()
        (Path(directory) / LABELS_FILE).write_text("".join(f"{label}\n" for label in labels))
        return {"kind": "labels", "file": LABELS_FILE}

    def load_package_inventory(self, directory: Path, entry: dict) -> tuple[object, list[str] | None]:
        """Return (tokenizer, labels) of a package dir and its ``inventory`` entry (here: None, ``labels.txt``)."""
        return None, (Path(directory) / (entry.get("file") or LABELS_FILE)).read_text().splitlines()

    def example_inventory(self):
        """Return a small inventory for examples and tests, as :meth:`load_inventory` would (subclasses)."""
        raise NotImplementedError

    def example_head(self, in_dim: int, inventory) -> torch.nn.Module:
        """Return a small untrained head of :mod:`elp.core.heads` over features of size ``in_dim`` (subclasses)."""
        raise NotImplementedError

    def package_summary(self, config: dict) -> list[str]:
        """Return the lines ``elp inspect`` prints about this kind's ``package.json`` entries (none here)."""
        return []

    def plot(self, test_dir: str | Path, decode_dir: Path, out_dir: Path, inventory_labels=None) -> list[Path]:
        """Write stage 5's PNG plots of one decoded test set to ``out_dir`` and return their paths; none by default."""
        return []

    def score(self, test_dir: str | Path, decode_dir: Path) -> tuple[dict, dict]:
        """Score one decoded test set (subclasses).

        Returns
        -------
        metric : dict
            ``{"name", "value", "higher_is_better", "chance"}`` (results.json's ``metric``).
        extra : dict
            Other numbers by name.
        """
        raise NotImplementedError

    def metric(self, value: float, chance: float | None) -> dict:
        """Return the results.json ``metric`` entry of this task (``chance``: e.g. the majority class, if known)."""
        return {"name": self.metric_name, "value": float(value), "higher_is_better": self.higher_is_better,
                "chance": None if chance is None else float(chance)}


def write_lines(path: Path, lines) -> None:
    """Write text lines (without newlines) atomically, creating parent directories."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    tmp.replace(path)


def read_rows(path: Path) -> list[tuple[str, str]]:
    """Read ``<utt> <rest of line>`` lines of a decode file in file order, repeated ids kept.

    Raises
    ------
    FileNotFoundError
        If the file is missing (the message names stage 4 as the fix).
    """
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run stage 4 (inference) first")
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        utt, _, rest = line.partition(" ")
        rows.append((utt, rest))
    return rows


def read_fields(path: Path, layout: str) -> list[list[str]]:
    """Read a decode file whose lines are the whitespace-separated fields of ``layout``.

    Raises
    ------
    FileNotFoundError
        If the file is missing (the message names stage 4 as the fix).
    ValueError
        A line with another number of fields (naming the file, line and layout).

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "predictions.txt"
    >>> _ = path.write_text("u1 happy sad\\nu2 happy\\n")
    >>> read_fields(path, "<utt> <predicted> <reference>")
    Traceback (most recent call last):
    ...
    ValueError: ...predictions.txt:2: expected '<utt> <predicted> <reference>', got 'u2 happy'; rerun stage 4 (inference)
    """
    count = len(layout.split())
    rows = []
    for number, (utt, rest) in enumerate(read_rows(path), start=1):
        fields = [utt, *rest.split()]
        if len(fields) != count:
            raise ValueError(f"{path}:{number}: expected {layout!r}, got {' '.join(fields)!r}; "
                             "rerun stage 4 (inference)")
        rows.append(fields)
    return rows


def read_pairs(path: Path) -> dict[str, str]:
    """Read ``<utt> <rest of line>`` lines as a dict (:func:`read_rows`; a repeated id keeps its last line).

    Raises
    ------
    FileNotFoundError
        If the file is missing (the message names stage 4 as the fix).
    """
    return dict(read_rows(path))

