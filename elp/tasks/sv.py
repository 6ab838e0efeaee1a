"""Speaker verification: embeddings trained as speaker classification, trials scored by cosine."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from elp.core.heads import SpeakerEmbeddingHead
from elp.data.inventory import LabelMap, check_label_coverage
from elp.data.kaldi_dir import DataDirError, Trial, read_data_dir, read_trials
from elp.eval.plots import plot_det_curve
from elp.eval.scoring import (check_decode_coverage, cohort_utterance_ids, cosine_scores, equal_error_rate, min_dcf,
                              s_norm_trials, select_cohort)
from elp.tasks.base import Task, read_fields, write_lines
from elp.tasks.windows import windowed_embeddings, windows_per_batch

logger = logging.getLogger(__name__)


@dataclass
class Verification:
    """A verification trial: cosine ``score`` and ``accepted`` (None without a threshold)."""

    score: float
    accepted: bool | None
    threshold: float | None


class SpeakerVerification(Task):
    """Training speakers are the classes (``utt2spk``); test sets hold ``trials``.

    The validation set holds unseen utterances of the *training* speakers (data preparation
    splits them off), so validation reports speaker-identification accuracy; stage 4 embeds
    the test set and scores its trial list (cosine, optionally S-normalised).

    Parameters
    ----------
    snorm_cohort
        0: plain cosine scores; C > 0: adaptive S-norm against C training-set embeddings.
    snorm_top_k
        Top-k cohort scores per side (None: all).
    cohort_set
        The data dir whose speakers form the S-norm cohort (the training set).
    cohort_per_speaker
        Utterances embedded per cohort speaker (their L2-normalised mean is the speaker's entry).
    calibration_set
        The data dir whose utterance pairs calibrate the package's decision threshold (the
        validation set: unseen utterances of the training speakers).
    calibration_utterances
        At most this many of its utterances (all pairs of them are scored).
    window_seconds, window_overlap_seconds
        Test utterances longer than ``window_seconds`` are embedded in windows of that length
        overlapping by ``window_overlap_seconds``: the mean of the L2-normalised window embeddings
        (:func:`elp.tasks.windows.windowed_embeddings`), at most 30 s of windows per forward pass,
        so memory does not grow with the length.
    **kwargs
        See :class:`elp.tasks.base.Task` (``max_train_seconds``: the random training crops).

    Examples
    --------
    >>> SpeakerVerification(max_train_seconds=3).max_train_seconds
    3.0
    """

    kind = "sv"
    valid_key, valid_key_mode = "accuracy", "max"
    metric_name, higher_is_better = "eer", False
    extra_metric_names = ("min_dcf", "num_trials")
    threshold_key = "sv"

    def __init__(self, snorm_cohort: int = 0, snorm_top_k: int | None = None, cohort_set: str | None = None,
                 cohort_per_speaker: int = 5, window_seconds: float = 6.0, window_overlap_seconds: float = 1.5,
                 calibration_set: str | None = None, calibration_utterances: int = 300, **kwargs):
        super().__init__(**kwargs)
        self.snorm_cohort = int(snorm_cohort or 0)
        self.snorm_top_k = snorm_top_k
        self.cohort_set = cohort_set
        self.cohort_per_speaker = int(cohort_per_speaker)
        self.window_seconds = float(window_seconds)
        self.window_overlap_seconds = float(window_overlap_seconds)
        self.calibration_set = calibration_set
        self.calibration_utterances = int(calibration_utterances)

    def build_inventory(self, train_dir, lang_dir):
        LabelMap.from_values(read_data_dir(train_dir).utt2spk.values()).save(lang_dir)

    def check_coverage(self, lang_dir, data_dir):
        if not (Path(data_dir) / "trials").exists():  # a validation set of training speakers
            check_label_coverage(lang_dir, [data_dir], label_file="utt2spk", what="speakers")

    def prepare_entries(self, data, split):
        for entry in data.values():
            entry.setdefault("label", entry["spk"])

    def add_targets(self, dataset, split, inventory):
        if split == "test":  # new speakers: no class targets
            return []
        return self.add_label_targets(dataset, inventory)

    def predict_batch(self, encode, head, wavs, wav_lens):
        """Return embeddings [E]; utterances longer than ``window_seconds`` are embedded in windows.

        Examples
        --------
        >>> encode = lambda w, l: (w.reshape(w.shape[0], -1, 4), torch.ones(w.shape[0], w.shape[1] // 4, dtype=torch.bool))
        >>> head = SpeakerEmbeddingHead(4, embed_dim=3)
        >>> task = SpeakerVerification(window_seconds=1 / 1000, window_overlap_seconds=0)  # 16 samples
        >>> [tuple(e.shape) for e in task.predict_batch(encode, head, torch.randn(2, 40), torch.tensor([1.0, 0.4]))]
        [(3,), (3,)]
        """
        embeddings = windowed_embeddings(lambda w, lens: head(*encode(w, lens)), wavs, wav_lens,
                                         window_seconds=self.window_seconds,
                                         overlap_seconds=self.window_overlap_seconds,
                                         max_windows_per_batch=windows_per_batch(self.window_seconds))
        return list(embeddings.detach().float().cpu())

    def head_outputs(self, head, feats, frame_mask):
        """Return embeddings [E] per utterance."""
        return list(head(feats, frame_mask).detach().float().cpu())

    @staticmethod
    def verification(enroll: torch.Tensor, test: torch.Tensor, threshold: float | None = None) -> Verification:
        """Score a trial of two embeddings [E]: stage 4's cosine score, accepted when above ``threshold``.

        ``threshold`` is the package's calibrated threshold (None: no decision).

        Examples
        --------
        >>> SpeakerVerification.verification(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0]), 0.5)
        Verification(score=0.7071067690849304, accepted=True, threshold=0.5)
        """
        score = float(cosine_scores(enroll[None], test[None])[0])
        return Verification(score, None if threshold is None else score > threshold, threshold)

    def package_options(self):
        return {"window_seconds": self.window_seconds, "window_overlap_seconds": self.window_overlap_seconds}

    def package_fields(self, inventory):
        return {}  # speakers of the training set are not needed to embed new ones

    def save_package_inventory(self, directory, inventory_dir=None, labels=None, tokenizer=None):
        return {"kind": None, "file": None}

    def load_package_inventory(self, directory, entry):
        return None, None

    def example_inventory(self):
        return None

    def example_head(self, in_dim, inventory):
        return SpeakerEmbeddingHead(in_dim, embed_dim=8, pooling="attentive")

    def package_summary(self, config):
        entry = config.get(self.threshold_key)
        lines = [f"SV windows {self.window_seconds:g} s, overlap {self.window_overlap_seconds:g} s"]
        if entry:
            lines.append(f"SV threshold {entry['threshold']:.6f} (EER {entry['eer']:.2f}% on "
                         f"{entry['num_trials']} {entry['source']})")
        return lines

    def plot(self, test_dir, decode_dir, out_dir, inventory_labels=None):
        rows = [line.split() for line in (Path(decode_dir) / "scores.txt").read_text(encoding="utf-8").splitlines()]
        return [plot_det_curve([float(r[2]) for r in rows], [int(r[3] == "target") for r in rows],
                               Path(out_dir) / f"det_{Path(test_dir).name}.png")]

    def calibration_trials(self, brain, loader_kwargs_of) -> dict | None:
        """Return scores and labels of dev trials that set the model package's decision threshold.

        The trials are all pairs of (up to ``calibration_utterances``) validation utterances,
        which are unseen utterances of the training speakers (the cohort set when no
        validation speaker has two); the test trials are never used for it.

        Returns
        -------
        dict | None
            ``{"scores", "labels", "source"}`` for :func:`elp.serve.package.calibrate_threshold`
            (stage 4 stores it in the package), or None without a calibration set or a usable trial.
        """
        if self.calibration_set is None:
            return None
        source = self.calibration_set
        keep = calibration_utterances(read_data_dir(source).utt2spk, self.calibration_utterances)
        if not keep and self.cohort_set:  # no speaker with two validation utterances
            source = self.cohort_set
            keep = calibration_utterances(read_data_dir(source).utt2spk, self.calibration_utterances)
            logger.warning("%s has no speaker with two utterances: calibrating the SV threshold on %s",
                           self.calibration_set, source)
        if not keep:
            logger.warning("no speaker with two utterances in %s: the package gets no decision threshold", source)
            return None
        utt2spk = read_data_dir(source).utt2spk
        data = self.dataset(source, "test", None).filtered_sorted(key_test={"id": lambda u: u in keep})
        embeddings = brain.predict(data, loader_kwargs_of(data))
        utts = sorted(embeddings)
        pairs = [(a, b) for i, a in enumerate(utts) for b in utts[i + 1:]]
        scores = cosine_scores(torch.stack([embeddings[a] for a, _ in pairs]), torch.stack([embeddings[b] for _, b in pairs]))
        labels = [int(utt2spk[a] == utt2spk[b]) for a, b in pairs]
        return {"scores": scores.tolist(), "labels": labels,
                "source": f"all pairs of {len(utts)} utterances of {source}"}

    def check_inference_inputs(self, test_dirs):
        super().check_inference_inputs(test_dirs)
        for role, data_dir in (("calibration_set", self.calibration_set),
                               ("cohort_set", self.cohort_set if self.snorm_cohort else None)):
            if data_dir is not None and not (Path(data_dir) / "utt2num_samples").is_file():
                raise DataDirError(f"{role} {data_dir} has no utt2num_samples: prepare and validate it "
                                   "(stages 0 and 1) before stage 4")

    def check_test_set(self, test_dir):
        data = super().check_test_set(test_dir)
        if data.trials is None:
            raise DataDirError(f"{Path(test_dir) / 'trials'} is missing: a speaker-verification test set "
                               "needs a trial list (rerun stage 0, data preparation)")
        source = "segments" if data.segments is not None else "wav.scp"
        check_trial_utterances(data.trials, set(data.segments if data.segments is not None else data.wav_scp),
                               Path(test_dir) / "trials", str(Path(test_dir) / source))
        return data

    def write_outputs(self, brain, dataset, test_dir, decode_dir, loader_kwargs_of, exp_dir):
        trials = read_trials(Path(test_dir) / "trials")  # checked before any embedding is computed
        check_trial_utterances(trials, set(dataset.data_ids), Path(test_dir) / "trials", f"the test set {test_dir}")
        embeddings = brain.predict(dataset, loader_kwargs_of(dataset))
        cohort = None
        if self.snorm_cohort:
            # a speaker-balanced cohort: C training speakers spread over all of them, each the
            # mean of a few of its utterances; only those utterances are embedded
            utt2spk = read_data_dir(self.cohort_set).utt2spk
            ids = set(cohort_utterance_ids(utt2spk, self.snorm_cohort, self.cohort_per_speaker))
            train = self.dataset(self.cohort_set, "test", None).filtered_sorted(key_test={"id": lambda u: u in ids})
            cohort, _ = select_cohort(brain.predict(train, loader_kwargs_of(train)), utt2spk, size=self.snorm_cohort)
        scores = s_norm_trials(embeddings, trials, cohort, self.snorm_top_k)
        write_lines(decode_dir / "scores.txt",
                    (f"{t.enroll} {t.test} {s:.6f} {'target' if t.target else 'nontarget'}"
                     for t, s in zip(trials, scores.tolist())))

    def score(self, test_dir, decode_dir):
        path = Path(decode_dir) / "scores.txt"
        rows = read_fields(path, "<enroll> <test> <score> <target|nontarget>")
        trials = read_trials(Path(test_dir) / "trials")
        check_decode_coverage(path, [(f"{r[0]} {r[1]}", r[3]) for r in rows],
                              [(f"{t.enroll} {t.test}", "target" if t.target else "nontarget") for t in trials],
                              str(Path(test_dir) / "trials"), what="trials")
        scores = [float(r[2]) for r in rows]
        labels = [1 if r[3] == "target" else 0 for r in rows]
        eer = equal_error_rate(scores, labels)["eer"]
        dcf = min_dcf(scores, labels, p_target=0.01)["min_dcf"]
        return self.metric(eer, 50.0), {"min_dcf": dcf, "num_trials": len(rows)}


def check_trial_utterances(trials: list[Trial], known: set[str], trials_path: str | Path, known_from: str) -> None:
    """Refuse a trial list that names an utterance outside ``known`` (before anything is embedded).

    Raises
    ------
    DataDirError
        One line: the trials file, how many trials and utterances, the first of them and the fix.

    Examples
    --------
    >>> check_trial_utterances([Trial("a", "b", True), Trial("a", "x", False)], {"a", "b"}, "test/trials",
    ...                        "test/wav.scp")
    Traceback (most recent call last):
    ...
    elp.data.kaldi_dir.DataDirError: test/trials: 1 of 2 trial(s) name 1 utterance(s) not in test/wav.scp, e.g. 'x'; fix the trial list, or rerun stages 0 and 1 (data preparation, validation)
    """
    unknown = sorted({utt for trial in trials for utt in (trial.enroll, trial.test) if utt not in known})
    if unknown:
        bad = sum(1 for trial in trials if trial.enroll not in known or trial.test not in known)
        shown = ", ".join(repr(utt) for utt in unknown[:3]) + (", ..." if len(unknown) > 3 else "")
        raise DataDirError(f"{trials_path}: {bad} of {len(trials)} trial(s) name {len(unknown)} utterance(s) not in "
                           f"{known_from}, e.g. {shown}; fix the trial list, or rerun stages 0 and 1 "
                           "(data preparation, validation)")


def calibration_utterances(utt2spk: dict[str, str], limit: int) -> set[str]:
    """Return utterances whose pairs hold both target and non-target trials.

    Up to ``limit`` utterances of the speakers that have at least two, taken in turn from
    each speaker (sorted ids); empty unless at least two speakers have two utterances.

    Examples
    --------
    >>> sorted(calibration_utterances({"a1": "a", "a2": "a", "b1": "b", "c1": "c", "c2": "c"}, 3))
    ['a1', 'a2', 'c1']
    """
    by_speaker: dict[str, list[str]] = {}
    for utt in sorted(utt2spk):
        by_speaker.setdefault(utt2spk[utt], []).append(utt)
    speakers = [utts for _, utts in sorted(by_speaker.items()) if len(utts) >= 2]
    chosen: list[str] = []
    for index in range(max((len(u) for u in speakers), default=0)):
        for utts in speakers:
            if index < len(utts) and len(chosen) < limit:
                chosen.append(utts[index])
    return set(chosen) if len(speakers) >= 2 else set()  # targets need a speaker twice, non-targets two
