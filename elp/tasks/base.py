"""What every task kind provides: inventory, datasets with targets, decode outputs, scoring.

A *task kind* is what differs between speech recognition, speaker verification and
utterance classification once the model is an :class:`elp.core.model.AdaptedSSL` plus a head:

================================ ===================================================
:meth:`Task.build_inventory`      stage 2: tokens or labels from the training set
:meth:`Task.check_coverage`       stage 2: dev/test sets use only that inventory
:meth:`Task.dataset`              Kaldi dir -> DynamicItemDataset with ``sig`` + targets
:meth:`Task.predict_batch`        the one prediction path (stage 4, package API, serving)
:meth:`Task.write_outputs`        stage 4: hypotheses / predictions / trial scores
:meth:`Task.package_options`      model packages: task options, inventory files, threshold
:meth:`Task.score`                stage 5: the metric (and extras) of one test set
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

from elp.data.audio import TARGET_SAMPLE_RATE, read_audio
from elp.data.inventory import LABELS_FILE, LabelMap
from elp.data.kaldi_dir import data_dir_to_dict

logger = logging.getLogger(__name__)

#: ``encode(wavs [B, T], wav_lens [B] relative lengths) -> (feats [B, F, D], frame_mask [B, F] bool)``
Encoder = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class Task:
    """Base class of the task kinds (see the module docstring).

    Parameters
    ----------
    max_train_seconds : float, optional
        Training utterances longer than this are randomly cropped to it (0: whole
        utterances). Validation and test always read whole utterances.
    label_file : str, optional
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
    #: the ``package.json`` entry of the decision threshold stage 4 calibrates (None: no threshold)
    threshold_key: ClassVar[str | None] = None

    def __init__(self, max_train_seconds: float = 0.0, label_file: str | None = None):
        self.max_train_seconds = float(max_train_seconds or 0.0)
        self.label_file = label_file

    # ------------------------------------------------------------------ stage 2
    def build_inventory(self, train_dir: str | Path, lang_dir: str | Path) -> None:
        """Write the token or label inventory of ``train_dir`` to ``lang_dir`` (subclasses).

        Parameters
        ----------
        train_dir : str | Path
            The training data dir.
        lang_dir : str | Path
            Output directory of the inventory.
        """
        raise NotImplementedError

    def load_inventory(self, lang_dir: str | Path):
        """The inventory :meth:`build_inventory` wrote.

        Parameters
        ----------
        lang_dir : str | Path
            The inventory's directory.

        Returns
        -------
        object
            A :class:`LabelMap` unless a subclass overrides this (ASR: a tokenizer).
        """
        return LabelMap.load(lang_dir)

    def check_coverage(self, lang_dir: str | Path, data_dir: str | Path) -> None:
        """Check that the inventory in ``lang_dir`` can encode every utterance of ``data_dir``.

        Runs in stage 2, so a bad dev/test set fails before training, not after. The base
        class checks nothing.

        Parameters
        ----------
        lang_dir : str | Path
            The inventory's directory.
        data_dir : str | Path
            A dev or test data dir.

        Raises
        ------
        ValueError
            One line naming the utterances that cannot be encoded (subclasses).
        """

    # ------------------------------------------------------------------ data
    def dataset(self, data_dir: str | Path, split: str, inventory,
                crop_audio: bool = True, allow_shell_pipes: bool = False) -> sb.dataio.dataset.DynamicItemDataset:
        """A Kaldi data dir as a dataset with ``id``, ``sig`` and this task's targets.

        Parameters
        ----------
        data_dir : str | Path
            A validated Kaldi-style data dir (with ``utt2num_samples``).
        split : str
            ``"train"`` (random crops when ``max_train_seconds``), ``"valid"`` or ``"test"``.
        inventory : object
            From :func:`elp.tasks.load_inventory`.
        crop_audio : bool, optional
            False: training utterances stay whole (the Brain crops cached CNN frames instead).
        allow_shell_pipes : bool, optional
            Run ``wav.scp`` commands elp does not read natively (run option
            ``allow_shell_pipes``; see :mod:`elp.data.pipes`).

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
        max_samples = int(self.max_train_seconds * TARGET_SAMPLE_RATE) if split == "train" and crop_audio else 0

        @sb.utils.data_pipeline.takes("id", "wav", "start", "end", "num_samples")
        @sb.utils.data_pipeline.provides("sig")
        def audio_pipeline(utt, wav, start, end, num_samples):
            segment = (start, end) if start is not None else None
            if max_samples and num_samples and num_samples > max_samples:
                # a random crop: read only its samples, not the whole file
                offset = random.randint(0, num_samples - max_samples) / TARGET_SAMPLE_RATE
                begin = (start or 0.0) + offset
                segment = (begin, begin + max_samples / TARGET_SAMPLE_RATE)
            sig = read_audio(wav, TARGET_SAMPLE_RATE, segment=segment, utt=utt, allow_shell_pipes=allow_shell_pipes)
            return sig[:max_samples] if max_samples else sig

        dataset.add_dynamic_item(audio_pipeline)
        dataset.set_output_keys(["id", "sig"] + self.add_targets(dataset, split, inventory))
        return dataset

    def prepare_entries(self, data: dict, split: str) -> None:
        """Adjust the per-utterance entries before the dataset is built (subclasses).

        Parameters
        ----------
        data : dict
            Utterance id -> entry (``wav``, ``num_samples``, ``start``, ``end``, ...), edited
            in place.
        split : str
            ``"train"``, ``"valid"`` or ``"test"``.
        """

    def add_targets(self, dataset, split: str, inventory) -> list[str]:
        """Add this task's target items to ``dataset`` (subclasses; none here).

        Parameters
        ----------
        dataset : speechbrain.dataio.dataset.DynamicItemDataset
            The dataset being built.
        split : str
            ``"train"``, ``"valid"`` or ``"test"``.
        inventory : object
            From :meth:`load_inventory`.

        Returns
        -------
        list[str]
            Output keys of the added items.
        """
        return []

    @staticmethod
    def add_label_targets(dataset, inventory) -> list[str]:
        """Add ``label_id``: the class id of each entry's ``label``.

        Parameters
        ----------
        dataset : speechbrain.dataio.dataset.DynamicItemDataset
            The dataset being built (entries hold ``label``).
        inventory : LabelMap
            Encodes labels; an unknown label's error names the utterance.

        Returns
        -------
        list[str]
            ``["label", "label_id"]`` (``label_id``: LongTensor [1]).
        """

        @sb.utils.data_pipeline.takes("id", "label")
        @sb.utils.data_pipeline.provides("label_id")
        def label_pipeline(utt, label):
            return torch.LongTensor([inventory.encode(label, utt=utt)])

        dataset.add_dynamic_item(label_pipeline)
        return ["label", "label_id"]

    # ------------------------------------------------------------------ stages 4-5
    def write_outputs(self, brain, dataset, test_dir: str | Path, decode_dir: Path, loader_kwargs_of,
                      exp_dir: Path) -> None:
        """Run ``brain`` over ``dataset`` and write this task's decode files to ``decode_dir``.

        ``loader_kwargs_of(dataset)`` gives the DataLoader options of any dataset it evaluates
        (the test set, and for SV the S-norm cohort and the calibration trials); ``exp_dir`` is
        the experiment (its model package is ``exp_dir/adapters``).

        Parameters
        ----------
        brain : elp.train.brains.base.ELPBrain
            The trained Brain.
        dataset : speechbrain.dataio.dataset.DynamicItemDataset
            The test set.
        test_dir : str | Path
            Its data dir (references).
        decode_dir : Path
            Output directory.
        loader_kwargs_of : Callable
            Dataset -> DataLoader options.
        exp_dir : Path
            The experiment directory.
        """
        raise NotImplementedError

    def calibration_trials(self, brain, loader_kwargs_of) -> dict | None:
        """Trials that calibrate the package's decision rule after training (stage 4); none here.

        Parameters
        ----------
        brain : elp.train.brains.base.ELPBrain
            The trained Brain.
        loader_kwargs_of : Callable
            Dataset -> DataLoader options.

        Returns
        -------
        dict | None
            Keyword arguments of :func:`elp.serve.package.calibrate_threshold`, or None.
        """
        return None

    def package_fields(self, inventory) -> dict:
        """What a model package stores of the inventory (:func:`elp.serve.package.write_package`).

        Parameters
        ----------
        inventory : object
            From :meth:`load_inventory`.

        Returns
        -------
        dict
            Package fields (here ``labels``).
        """
        return {"labels": list(inventory.labels)}

    # ------------------------------------------------------------------ prediction
    def predict_batch(self, encode: Encoder, head: torch.nn.Module, wavs: torch.Tensor,
                      wav_lens: torch.Tensor) -> list[torch.Tensor]:
        """Per-utterance outputs of a padded batch: the one prediction path of this kind.

        Stage 4 (:meth:`elp.train.brains.base.ELPBrain.predict`), the package API
        (:mod:`elp.serve.inference`) and multi-task serving (:mod:`elp.serve.multitask`) all call
        it; they differ only in ``encode``.

        Parameters
        ----------
        encode : Encoder
            ``encode(wavs [B, T], wav_lens [B]) -> (feats [B, F, D], frame_mask [B, F])``, e.g.
            an :class:`elp.core.model.AdaptedSSL`. It may be called on other batches than
            ``wavs`` (speaker verification: windows of long utterances).
        head : torch.nn.Module
            The task's head.
        wavs : torch.Tensor
            [B, T] padded waveforms at 16 kHz.
        wav_lens : torch.Tensor
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
        """The head on encoded features, one CPU float32 tensor per utterance (subclasses).

        Parameters
        ----------
        head : torch.nn.Module
            The task's head.
        feats : torch.Tensor
            [B, F, D] features.
        frame_mask : torch.Tensor
            [B, F] bool, True = real frame.

        Returns
        -------
        list[torch.Tensor]
            ASR: log-probs [F_b, V] of the valid frames; classification: probabilities [C];
            speaker verification: embeddings [E].
        """
        raise NotImplementedError

    # ------------------------------------------------------------------ model packages
    def package_options(self) -> dict:
        """Constructor options a model package records because prediction needs them.

        Returns
        -------
        dict
            JSON-able keyword arguments of this class (none here; speaker verification: its
            window settings), stored as ``task_options`` in ``package.json``.
        """
        return {}

    def save_package_inventory(self, directory: Path, inventory_dir: str | Path | None = None,
                               labels: list[str] | None = None, tokenizer=None) -> dict:
        """Write what prediction needs of the inventory into a package directory.

        The base class stores class names (``labels.txt``).

        Parameters
        ----------
        directory : Path
            The package directory.
        inventory_dir : str | Path | None, optional
            Stage 2's ``data/lang`` (read when ``labels``/``tokenizer`` are not given).
        labels : list[str] | None, optional
            Class names (id = position).
        tokenizer : object, optional
            An ASR tokenizer (unused here).

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
        """(tokenizer, labels) from a package directory and its ``inventory`` entry.

        Parameters
        ----------
        directory : Path
            The package directory.
        entry : dict
            ``package.json``'s ``inventory``.

        Returns
        -------
        tuple[object, list[str] | None]
            No tokenizer here, and the class names of ``labels.txt``.
        """
        return None, (Path(directory) / (entry.get("file") or LABELS_FILE)).read_text().splitlines()

    def example_inventory(self):
        """A small inventory for examples and tests (subclasses).

        Returns
        -------
        object
            What :meth:`load_inventory` would return.
        """
        raise NotImplementedError

    def example_head(self, in_dim: int, inventory) -> torch.nn.Module:
        """A small untrained head of this kind for examples and tests (subclasses).

        Parameters
        ----------
        in_dim : int
            Feature size D of the model.
        inventory : object
            From :meth:`example_inventory`.

        Returns
        -------
        torch.nn.Module
            A head of :mod:`elp.core.heads`.
        """
        raise NotImplementedError

    def package_summary(self, config: dict) -> list[str]:
        """Lines ``elp inspect`` prints about this kind's package entries (none here).

        Parameters
        ----------
        config : dict
            ``package.json``.

        Returns
        -------
        list[str]
            Human-readable lines.
        """
        return []

    def plot(self, test_dir: str | Path, decode_dir: Path, out_dir: Path, inventory_labels=None) -> list[Path]:
        """Stage 5's plots of one decoded test set; none by default.

        Parameters
        ----------
        test_dir : str | Path
            The test data dir.
        decode_dir : Path
            Its decode directory (stage 4).
        out_dir : Path
            Where the PNG files go.
        inventory_labels : list[str] | None, optional
            Class names in inventory order.

        Returns
        -------
        list[Path]
            The PNG files written.
        """
        return []

    def score(self, test_dir: str | Path, decode_dir: Path) -> tuple[dict, dict]:
        """(metric, extra metrics) of one decoded test set (subclasses).

        Parameters
        ----------
        test_dir : str | Path
            The test data dir.
        decode_dir : Path
            Its decode directory (stage 4).

        Returns
        -------
        metric : dict
            ``{"name", "value", "higher_is_better", "chance"}`` (results.json's ``metric``).
        extra : dict
            Other numbers by name.
        """
        raise NotImplementedError

    def metric(self, value: float, chance: float | None) -> dict:
        """The results.json ``metric`` entry of this task.

        Parameters
        ----------
        value : float
            The metric's value.
        chance : float | None
            Its chance level (e.g. the majority class), if known.

        Returns
        -------
        dict
            ``name``, ``value``, ``higher_is_better`` and ``chance``.
        """
        return {"name": self.metric_name, "value": float(value), "higher_is_better": self.higher_is_better,
                "chance": None if chance is None else float(chance)}


def write_lines(path: Path, lines) -> None:
    """Write text lines atomically (a temporary file renamed into place).

    Parameters
    ----------
    path : Path
        Output file (parent directories are created).
    lines : Iterable[str]
        Lines without newlines.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    tmp.replace(path)


def read_pairs(path: Path) -> dict[str, str]:
    """``<utt> <rest of line>`` lines as a dict.

    Parameters
    ----------
    path : Path
        A decode file.

    Returns
    -------
    dict[str, str]
        Utterance id -> rest of its line.

    Raises
    ------
    FileNotFoundError
        If the file is missing (the message names stage 4 as the fix).
    """
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run stage 4 (inference) first")
    pairs = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        utt, _, rest = line.partition(" ")
        pairs[utt] = rest
    return pairs

