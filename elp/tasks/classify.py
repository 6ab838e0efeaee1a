"""Utterance classification (emotion, intent, keywords): one label per utterance, accuracy."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import speechbrain as sb
import torch

from elp.data.inventory import LabelMap, check_label_coverage
from elp.data.kaldi_dir import read_mapping
from elp.eval.plots import plot_confusion_matrix
from elp.eval.scoring import unweighted_accuracy
from elp.tasks.base import Task, write_lines


class UtteranceClassification(Task):
    """Cross-entropy classes from ``utt2label`` (or ``label_file``); accuracy and UA.

    Examples
    --------
    >>> UtteranceClassification().valid_key, UtteranceClassification(label_file="utt2emo").label_file
    ('accuracy', 'utt2emo')
    """

    kind = "classify"
    valid_key, valid_key_mode = "accuracy", "max"
    metric_name, higher_is_better = "accuracy", True

    def labels(self, data_dir) -> dict[str, str]:
        """Labels of a data dir.

        Parameters
        ----------
        data_dir : str | Path
            A data dir holding ``utt2label`` (or ``label_file``).

        Returns
        -------
        dict[str, str]
            Utterance id -> label.

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

    def score(self, test_dir, decode_dir):
        path = Path(decode_dir) / "predictions.txt"
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: run stage 4 (inference) first")
        rows = [line.split(" ") for line in path.read_text(encoding="utf-8").splitlines()]
        preds, refs = [r[1] for r in rows], [r[2] for r in rows]
        classes = sorted(set(refs) | set(preds))
        pred_ids, ref_ids = [classes.index(p) for p in preds], [classes.index(r) for r in refs]
        acc = 100.0 * sum(p == r for p, r in zip(preds, refs)) / len(refs)
        majority = 100.0 * Counter(refs).most_common(1)[0][1] / len(refs)
        return (self.metric(acc, majority),
                {"ua": unweighted_accuracy(pred_ids, ref_ids, len(classes)), "num_utts": len(refs)})
