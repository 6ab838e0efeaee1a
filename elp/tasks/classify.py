"""Utterance classification (emotion, intent, keywords): one label per utterance, accuracy."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from elp.core.heads import PooledClassifier
from elp.data.inventory import LabelMap, check_label_coverage
from elp.data.kaldi_dir import DataDirError, read_mapping
from elp.eval.plots import plot_confusion_matrix
from elp.eval.scoring import check_decode_coverage, unweighted_accuracy
from elp.tasks.base import Task, read_fields, write_lines
from elp.tasks.windows import windowed_embeddings, windows_per_batch

#: the classes of the example inventory (:meth:`UtteranceClassification.example_inventory`)
EXAMPLE_LABELS = ["angry", "happy", "neutral"]


@dataclass
class Classification:
    """A classification result: the best label and every label's probability."""

    label: str
    probabilities: dict[str, float]


class UtteranceClassification(Task):
    """Cross-entropy classes from ``utt2label`` (or ``label_file``); accuracy and UA.

    Parameters
    ----------
    window_seconds, window_overlap_seconds
        Utterances longer than ``window_seconds`` are classified in windows of that length
        overlapping by ``window_overlap_seconds``, at most 30 s of windows per forward pass; their class
        probabilities are the mean of the windows' probabilities
        (:func:`elp.tasks.windows.windowed_embeddings`), so memory is bounded by one window.
    **kwargs
        See :class:`elp.tasks.base.Task`.

    Examples
    --------
    >>> UtteranceClassification().valid_key, UtteranceClassification(label_file="utt2emo").label_file
    ('accuracy', 'utt2emo')
    """

    kind = "classify"
    valid_key, valid_key_mode = "accuracy", "max"
    metric_name, higher_is_better = "accuracy", True
    extra_metric_names = ("ua", "num_utts")

    def __init__(self, window_seconds: float = 30.0, window_overlap_seconds: float = 5.0, **kwargs):
        super().__init__(**kwargs)
        self.window_seconds = float(window_seconds)
        self.window_overlap_seconds = float(window_overlap_seconds)

    def predict_batch(self, encode, head, wavs, wav_lens):
        """Return class probabilities [C]; utterances longer than ``window_seconds`` are classified in windows."""
        probabilities = windowed_embeddings(lambda w, lens: self.probabilities(head, *encode(w, lens)), wavs,
                                            wav_lens, window_seconds=self.window_seconds,
                                            overlap_seconds=self.window_overlap_seconds, combine="mean",
                                            max_windows_per_batch=windows_per_batch(self.window_seconds))
        return list(probabilities.cpu())

    @staticmethod
    def probabilities(head, feats, frame_mask) -> torch.Tensor:
        """Return the softmax of the head's logits [B, C] (float32)."""
        return torch.softmax(head(feats, frame_mask).detach().float(), dim=-1)

    def package_options(self) -> dict:
        return {"window_seconds": self.window_seconds, "window_overlap_seconds": self.window_overlap_seconds}

    def labels(self, data_dir) -> dict[str, str]:
        """Return utterance id -> label of a data dir's ``utt2label`` (or ``label_file``).

        Raises
        ------
        FileNotFoundError
            If the label file is missing.
        """
        name = self.label_file or "utt2label"
        path = Path(data_dir) / name
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: a classification data dir needs one label per utterance")
        return read_mapping(path)

    def build_inventory(self, train_dir, lang_dir):
        LabelMap.from_values(self.labels(train_dir).values()).save(lang_dir)

    def check_coverage(self, lang_dir, data_dir):
        check_label_coverage(lang_dir, [data_dir], label_file=self.label_file or "utt2label")

    def add_targets(self, dataset, split, inventory):
        return self.add_label_targets(dataset, inventory)

    def head_outputs(self, head, feats, frame_mask):
        """Return class probabilities [C] per utterance (softmax of the head's logits)."""
        return list(self.probabilities(head, feats, frame_mask).cpu())

    @staticmethod
    def best_label(probabilities: torch.Tensor, labels: list[str]) -> str:
        """Return the most probable class name (the first maximum; what stage 4 writes).

        ``probabilities`` is [C] in inventory order; ``labels`` the class names, id = position.

        Examples
        --------
        >>> UtteranceClassification.best_label(torch.tensor([0.2, 0.5, 0.3]), ["a", "b", "c"])
        'b'
        """
        return labels[int(probabilities.argmax())]

    def classification(self, probabilities: torch.Tensor, labels: list[str]) -> Classification:
        """Return the :class:`Classification` of class probabilities [C] (inventory order).

        Examples
        --------
        >>> UtteranceClassification().classification(torch.tensor([0.25, 0.75]), ["no", "yes"])
        Classification(label='yes', probabilities={'no': 0.25, 'yes': 0.75})
        """
        return Classification(self.best_label(probabilities, labels),
                              {label: float(p) for label, p in zip(labels, probabilities.tolist())})

    def example_inventory(self):
        return LabelMap(list(EXAMPLE_LABELS))

    def example_head(self, in_dim, inventory):
        return PooledClassifier(in_dim, len(inventory), hidden_dim=8)

    def plot(self, test_dir, decode_dir, out_dir, inventory_labels=None):
        rows = [line.split(" ") for line in (Path(decode_dir) / "predictions.txt").read_text(encoding="utf-8").splitlines()]
        return [plot_confusion_matrix([r[2] for r in rows], [r[1] for r in rows],
                                      Path(out_dir) / f"confusion_{Path(test_dir).name}.png", labels=inventory_labels)]

    def write_outputs(self, brain, dataset, test_dir, decode_dir, loader_kwargs_of, exp_dir):
        predictions = brain.predict(dataset, loader_kwargs_of(dataset))
        if predictions is None:
            return
        refs = self.labels(test_dir)
        write_lines(decode_dir / "predictions.txt",
                    (f"{u} {predictions[u]} {refs[u]}" for u in sorted(predictions)))

    def check_test_set(self, test_dir):
        data = super().check_test_set(test_dir)
        labels = self.labels(test_dir)
        unlabelled = [utt for utt in data.utterances if utt not in labels]
        if unlabelled:
            raise DataDirError(f"{Path(test_dir) / (self.label_file or 'utt2label')}: {len(unlabelled)} utterance(s) "
                               f"of the test set have no label, e.g. {unlabelled[0]!r}; write one label per "
                               "utterance and rerun stage 1")
        return data

    def score(self, test_dir, decode_dir):
        path = Path(decode_dir) / "predictions.txt"
        rows = read_fields(path, "<utt> <predicted> <reference>")
        check_decode_coverage(path, [(r[0], r[2]) for r in rows], list(self.labels(test_dir).items()),
                              str(Path(test_dir) / (self.label_file or "utt2label")))
        preds, refs = [r[1] for r in rows], [r[2] for r in rows]
        classes = sorted(set(refs) | set(preds))
        pred_ids, ref_ids = [classes.index(p) for p in preds], [classes.index(r) for r in refs]
        acc = 100.0 * sum(p == r for p, r in zip(preds, refs)) / len(refs)
        majority = 100.0 * Counter(refs).most_common(1)[0][1] / len(refs)
        return (self.metric(acc, majority),
                {"ua": unweighted_accuracy(pred_ids, ref_ids, len(classes)), "num_utts": len(refs)})
