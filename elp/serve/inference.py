"""Use a trained model on new audio: ``load_predictor(dir).transcribe(wavs)``.

* :func:`load_predictor` (or :meth:`Predictor.from_package`) returns the predictor class of the
  package's task kind, found in a registry that each class joins by declaring its task class:
  :class:`SpeechRecognizer` (``transcribe``), :class:`UtteranceClassifier` (``classify``),
  :class:`SpeakerVerifier` (``embed``, ``verify``). A method of another kind does not exist on
  the object, so it cannot be called by mistake.
* All of them run the task's own prediction path (:meth:`elp.tasks.base.Task.predict_batch`),
  the one stage 4 runs: speaker embeddings of utterances longer than the task's
  ``window_seconds`` are windowed exactly as in stage 4, so the package's decision threshold,
  calibrated in stage 4, applies.

Inputs are file paths (anything soundfile reads, or a Kaldi ``ark:offset``), numpy arrays or
torch tensors at any sample rate (pass ``sample_rate=`` for arrays), mono or multi-channel
(channels are averaged). A list is a batch; anything else is one utterance. Batches are
padded and run ``batch_size`` utterances at a time (longest first); the backbone and heads
ignore padding, so batched results equal one-by-one results (to float rounding, 1e-5).

Examples
--------
>>> import tempfile
>>> from elp.testing import make_tiny_package
>>> classifier = Predictor.from_package(make_tiny_package(tempfile.mkdtemp(), task="classify"))
>>> type(classifier).__name__
'UtteranceClassifier'
>>> result = classifier.classify(np.zeros(16000, dtype=np.float32), sample_rate=16000)
>>> result.label in classifier.labels, round(sum(result.probabilities.values()), 6)
(True, 1.0)
>>> asr = load_predictor(make_tiny_package(tempfile.mkdtemp(), task="asr", method="elp"))
>>> texts = asr.transcribe([np.zeros(8000), np.zeros((2, 16000))], sample_rate=8000)
>>> len(texts), all(isinstance(t, str) for t in texts)
(2, True)
>>> sv = load_predictor(make_tiny_package(tempfile.mkdtemp(), task="sv", method="lora"))
>>> sv.embed(torch.zeros(16000), sample_rate=16000).shape
torch.Size([8])
>>> trial = sv.verify(torch.ones(16000), torch.ones(16000), sample_rate=16000)
>>> round(trial.score, 4), trial.accepted     # no threshold calibrated: no decision
(1.0, None)
>>> hasattr(sv, "transcribe")          # a wrong-kind call does not exist
False
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from elp.data.audio import read_audio
from elp.serve.package import SAMPLE_RATE, Package, PackageError, load_package
from elp.tasks.asr import SpeechRecognition
from elp.tasks.base import Task
from elp.tasks.classify import Classification, UtteranceClassification
from elp.tasks.sv import SpeakerVerification, Verification

AudioInput = str | os.PathLike | np.ndarray | torch.Tensor
MAX_CHANNELS = 16


class AudioInputError(ValueError):
    """An input waveform cannot be used (wrong shape, no sample rate, empty...)."""


# ------------------------------------------------------------------------------------- audio
def load_waveform(item: AudioInput, sample_rate: int | None = None) -> torch.Tensor:
    """One utterance as a mono float32 waveform [T] at 16 kHz.

    Parameters
    ----------
    item : str, os.PathLike, numpy.ndarray or torch.Tensor
        A file (read with soundfile/kaldiio, resampled, channels averaged), or samples:
        [T] mono, or [C, T] / [T, C] multi-channel (the smaller dimension, at most 16, is
        the channel one).
    sample_rate : int, optional
        Rate of array/tensor input in Hz (required for them; ignored for files).

    Returns
    -------
    torch.Tensor [T']

    Examples
    --------
    >>> load_waveform(np.ones((2, 800)), sample_rate=8000).shape
    torch.Size([1600])
    >>> load_waveform(np.ones(800))
    Traceback (most recent call last):
    ...
    elp.serve.inference.AudioInputError: an array/tensor input needs its sample rate: pass sample_rate= (e.g. 16000)
    """
    if isinstance(item, (str, os.PathLike)):
        path = str(item)
        if ":" not in path and not Path(path).is_file():
            raise FileNotFoundError(f"audio file {path} does not exist")
        return read_audio(path, SAMPLE_RATE)
    if isinstance(item, np.ndarray):
        item = torch.from_numpy(np.ascontiguousarray(item))
    if not isinstance(item, torch.Tensor):
        raise AudioInputError(f"unsupported audio input of type {type(item).__name__}; pass a file path, "
                              "a numpy array or a torch tensor")
    if sample_rate is None:
        raise AudioInputError("an array/tensor input needs its sample rate: pass sample_rate= (e.g. 16000)")
    wave = item.detach().to(torch.float32).cpu()
    if wave.dim() == 2:
        channel_dim = 0 if wave.shape[0] < wave.shape[1] else 1
        if wave.shape[channel_dim] > MAX_CHANNELS or wave.shape[0] == wave.shape[1]:
            raise AudioInputError(f"cannot tell channels from samples in an input of shape {tuple(wave.shape)}; "
                                  "pass [T] mono or [C, T] with C <= 16")
        wave = wave.mean(dim=channel_dim)
    elif wave.dim() != 1:
        raise AudioInputError(f"audio input of shape {tuple(wave.shape)}: expected [T] or [C, T]; pass a list "
                              "for several utterances")
    if wave.numel() == 0:
        raise AudioInputError("empty audio input (0 samples)")
    if int(sample_rate) != SAMPLE_RATE:
        import torchaudio.functional

        wave = torchaudio.functional.resample(wave, int(sample_rate), SAMPLE_RATE)
    return wave.contiguous()


def as_batch(wavs) -> tuple[list, bool]:
    """A list of utterances, and whether the input was a single utterance.

    Parameters
    ----------
    wavs : AudioInput | list[AudioInput] | tuple[AudioInput, ...]
        A list or tuple is a batch; anything else is one utterance.

    Returns
    -------
    tuple[list, bool]
        The utterances and whether ``wavs`` was a single one.

    Examples
    --------
    >>> as_batch("a.wav"), as_batch(("a.wav", "b.wav"))
    ((['a.wav'], True), (['a.wav', 'b.wav'], False))
    """
    if isinstance(wavs, (list, tuple)):
        return list(wavs), False
    return [wavs], True


def pad_batch(waves: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad waveforms into one batch.

    Parameters
    ----------
    waves : Sequence[torch.Tensor]
        B waveforms [T_i].

    Returns
    -------
    batch : torch.Tensor
        Padded waveforms [B, T_max].
    lengths : torch.Tensor
        SpeechBrain relative lengths [B] (float64, T_i / T_max).

    Examples
    --------
    >>> batch, lengths = pad_batch([torch.ones(4), torch.ones(2)])
    >>> batch.tolist(), lengths.tolist()
    ([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]], [1.0, 0.5])
    """
    longest = max(w.shape[0] for w in waves)
    batch = torch.zeros(len(waves), longest)
    for row, wave in zip(batch, waves):
        row[: wave.shape[0]] = wave
    lengths = torch.tensor([w.shape[0] / longest for w in waves], dtype=torch.float64)
    return batch, lengths


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first).

    Parameters
    ----------
    lengths : Sequence[int]
        Length of each input.
    batch_size : int
        Inputs per batch at most (>= 1).

    Returns
    -------
    list[list[int]]
        Input indices per batch.

    Raises
    ------
    ValueError
        For ``batch_size < 1``.

    Examples
    --------
    >>> length_batches([5, 9, 1, 7], batch_size=2)
    [[1, 3], [0, 2]]
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def check_lengths(items: Sequence, waves: Sequence[torch.Tensor], receptive_field: int) -> None:
    """Refuse inputs shorter than one backbone frame, naming the input.

    Parameters
    ----------
    items : Sequence
        The inputs as given (paths are named in the error, others by index).
    waves : Sequence[torch.Tensor]
        Their 16 kHz waveforms [T_i].
    receptive_field : int
        Samples of one backbone frame.

    Raises
    ------
    AudioInputError
        For the first input shorter than ``receptive_field``.

    Examples
    --------
    >>> check_lengths(["a.wav"], [torch.zeros(300)], receptive_field=400)
    Traceback (most recent call last):
    ...
    elp.serve.inference.AudioInputError: a.wav has 300 samples at 16 kHz, fewer than the backbone's receptive field (400 samples); pass longer audio
    """
    for index, (item, wave) in enumerate(zip(items, waves)):
        if wave.shape[0] < receptive_field:
            name = str(item) if isinstance(item, (str, os.PathLike)) else f"input {index}"
            raise AudioInputError(f"{name} has {wave.shape[0]} samples at 16 kHz, fewer than the backbone's "
                                  f"receptive field ({receptive_field} samples); pass longer audio")


def _progress(total: int, enabled: bool | None, desc: str):
    if enabled is None:
        enabled = total >= 50
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="utt")


# ------------------------------------------------------------------------------------- predictors
#: task kind -> the predictor class of that kind (filled by the subclasses' ``task_class``)
PREDICTORS: dict[str, type[Predictor]] = {}


class Predictor:
    """Inference with one model package: loading, batching and per-utterance outputs.

    Use :meth:`from_package` or :func:`load_predictor`, which return the subclass of the
    package's kind; a subclass declares ``task_class`` and joins :data:`PREDICTORS`.

    Parameters
    ----------
    package : Package
        From :func:`elp.serve.package.load_package`.
    """

    #: the task class this predictor serves (subclasses)
    task_class: ClassVar[type[Task] | None] = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.task_class is not None:
            PREDICTORS[cls.task_class.kind] = cls

    def __init__(self, package: Package):
        expected = type(self).task_class
        if expected is not None and not isinstance(package.task, expected):
            raise PackageError(f"{package.directory} is a {package.kind!r} package, not a {expected.kind!r} one; "
                               "load it with elp.serve.inference.load_predictor")
        self.package = package

    @classmethod
    def from_package(cls, directory: str | os.PathLike, backbone_source: str | None = None,
                     device: str | torch.device = "cpu") -> Predictor:
        """Load a package (the backbone from ``backbone_source`` or its recorded source).

        Parameters
        ----------
        directory : str | os.PathLike
            The package directory.
        backbone_source : str | None, optional
            Backbone checkpoint directory or hub id (default: the recorded one).
        device : str | torch.device, optional
            Where the model runs.

        Returns
        -------
        Predictor
            The predictor class of the package's kind (:func:`predictor_for`).

        Raises
        ------
        PackageError
            Called on a subclass with a package of another kind.
        """
        predictor = predictor_for(load_package(directory, backbone_source, device))
        if not isinstance(predictor, cls):
            raise PackageError(f"{directory} is a {predictor.kind!r} package, not a {cls.task_class.kind!r} one; "
                               "load it with elp.serve.inference.load_predictor")
        return predictor

    # ---------------------------------------------------------------- properties
    @property
    def task(self) -> Task:
        """The package's task (its kind and recorded prediction options)."""
        return self.package.task

    @property
    def kind(self) -> str:
        """The task kind (a key of :data:`elp.tasks.TASKS`)."""
        return self.package.kind

    @property
    def labels(self) -> list[str] | None:
        return self.package.labels

    @property
    def device(self) -> torch.device:
        return next(self.package.head.parameters()).device

    # ---------------------------------------------------------------- the model
    @torch.no_grad()
    def head_outputs(self, feats: torch.Tensor, frame_mask: torch.Tensor) -> list[torch.Tensor]:
        """The head on model features, one CPU tensor per utterance (:meth:`elp.tasks.base.Task.head_outputs`).

        Parameters
        ----------
        feats : torch.Tensor
            Model features [B, F, D].
        frame_mask : torch.Tensor
            [B, F] bool, True = real frame.

        Returns
        -------
        list[torch.Tensor]
            ASR: log-probs [F_i, V] (valid frames only); classification: probabilities [C];
            SV: embedding [E].
        """
        return self.task.head_outputs(self.package.head, feats, frame_mask)

    @torch.no_grad()
    def forward_batch(self, waves: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The task's prediction path on one padded batch (:meth:`elp.tasks.base.Task.predict_batch`).

        Parameters
        ----------
        waves : Sequence[torch.Tensor]
            16 kHz mono waveforms [T_i].

        Returns
        -------
        list[torch.Tensor]
            One output per waveform (see :meth:`head_outputs`).
        """
        batch, lengths = pad_batch(waves)
        return self.task.predict_batch(self.package.model, self.package.head, batch.to(self.device),
                                       lengths.to(self.device))

    def outputs(self, wavs: Iterable[AudioInput], sample_rate: int | None = None, batch_size: int = 8,
                progress: bool | None = None) -> list[torch.Tensor]:
        """Per-utterance outputs of many inputs, batched by length, in input order.

        Parameters
        ----------
        wavs : Iterable[AudioInput]
            The inputs.
        sample_rate : int | None, optional
            Rate of array/tensor inputs.
        batch_size : int, optional
            Utterances per forward pass.
        progress : bool | None, optional
            tqdm bar (default: for 50 or more inputs).

        Returns
        -------
        list[torch.Tensor]
            One :meth:`forward_batch` element per input.

        Raises
        ------
        AudioInputError
            For an unusable or too short input.
        """
        items = list(wavs)
        bar = _progress(len(items), progress, self.package.name)
        waves = [load_waveform(item, sample_rate) for item in items]
        check_lengths(items, waves, self.package.model.backbone.receptive_field)
        results: list = [None] * len(waves)
        for indices in length_batches([w.shape[0] for w in waves], batch_size):
            for index, out in zip(indices, self.forward_batch([waves[i] for i in indices])):
                results[index] = out
            if bar is not None:
                bar.update(len(indices))
        if bar is not None:
            bar.close()
        return results

    def result(self, output: torch.Tensor, **options):
        """The user-facing result of one output (subclasses).

        Parameters
        ----------
        output : torch.Tensor
            One element of :meth:`outputs`.
        **options
            Options of the kind's result (ASR: ``beam_size``, ``lm``); others ignore them.

        Returns
        -------
        object
            Text, a :class:`Classification`, or an embedding.
        """
        raise NotImplementedError

    def summary(self, result) -> tuple[str, object]:
        """(text for a line, JSON value) of one :meth:`result` (subclasses)."""
        raise NotImplementedError


class SpeechRecognizer(Predictor):
    """A CTC speech recognition package: :meth:`transcribe`.

    Examples
    --------
    >>> import tempfile
    >>> from elp.testing import make_tiny_package
    >>> asr = load_predictor(make_tiny_package(tempfile.mkdtemp(), task="asr"))
    >>> isinstance(asr, SpeechRecognizer), asr.summary("a cat")
    (True, ('a cat', 'a cat'))
    """

    task_class = SpeechRecognition

    def __init__(self, package: Package):
        super().__init__(package)
        self._beam_searches: dict = {}

    def decode(self, log_probs: torch.Tensor, beam_size: int | None = None, lm: str | None = None,
               **lm_options) -> str:
        """Text of one utterance's log-probs: greedy, or beam search with ``beam_size``.

        Parameters
        ----------
        log_probs : torch.Tensor
            CTC log-probs [F, V] of the valid frames.
        beam_size : int | None, optional
            Beam of CTC prefix beam search (None: greedy unless ``lm`` is given; then 10).
        lm : str | None, optional
            Word n-gram LM (ARPA) for beam search.
        **lm_options
            ``lexicon``, ``lm_weight``, ``word_score`` (:class:`elp.tasks.decoding.CTCBeamSearch`).

        Returns
        -------
        str
            The hypothesis.
        """
        key = (beam_size, None if lm is None else str(lm), tuple(sorted(lm_options.items())))
        if key not in self._beam_searches:
            self._beam_searches[key] = self.task.beam_search(self.package.tokenizer, beam_size, lm, **lm_options)
        return self.task.transcripts([log_probs], self.package.tokenizer, self._beam_searches[key])[0]

    def transcribe(self, wavs, sample_rate: int | None = None, batch_size: int = 8, beam_size: int | None = None,
                   lm: str | os.PathLike | None = None, progress: bool | None = None, **lm_options):
        """Transcribe one utterance (-> str) or a list (-> list of str).

        Parameters
        ----------
        wavs : AudioInput | list[AudioInput]
            One utterance or a list.
        sample_rate : int | None, optional
            Rate of array/tensor inputs.
        batch_size : int, optional
            Utterances per forward pass.
        beam_size : int | None, optional
            CTC prefix beam search with this beam (default: greedy).
        lm : str | os.PathLike | None, optional
            Word n-gram LM (ARPA) for beam search (:mod:`elp.tasks.decoding`).
        progress : bool | None, optional
            tqdm bar (default: for 50 or more inputs).
        **lm_options
            ``lexicon``, ``lm_weight``, ``word_score``.

        Returns
        -------
        str | list[str]
            The text, or one per input of a list.
        """
        items, single = as_batch(wavs)
        texts = [self.decode(lp, beam_size, lm, **lm_options)
                 for lp in self.outputs(items, sample_rate, batch_size, progress)]
        return texts[0] if single else texts

    def result(self, output, beam_size: int | None = None, lm=None, **options) -> str:
        return self.decode(output, beam_size, lm)

    def summary(self, result):
        return result, result


class UtteranceClassifier(Predictor):
    """An utterance classification package: :meth:`classify`.

    Examples
    --------
    >>> import tempfile
    >>> from elp.testing import make_tiny_package
    >>> classifier = UtteranceClassifier.from_package(make_tiny_package(tempfile.mkdtemp()))
    >>> classifier.summary(Classification("happy", {"happy": 0.75, "sad": 0.25}))
    ('happy 0.7500', {'label': 'happy', 'probabilities': {'happy': 0.75, 'sad': 0.25}})
    >>> UtteranceClassifier.from_package(make_tiny_package(tempfile.mkdtemp(), task="sv"))
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    elp.serve.package.PackageError: ... is a 'sv' package, not a 'classify' one; load it with elp.serve.inference.load_predictor
    """

    task_class = UtteranceClassification

    def to_classification(self, probs: torch.Tensor) -> Classification:
        """The :class:`Classification` of class probabilities [C] (package label order)."""
        return self.task.classification(probs, self.labels)

    def classify(self, wavs, sample_rate: int | None = None, batch_size: int = 8, progress: bool | None = None):
        """Classify one utterance or a list of them.

        Parameters
        ----------
        wavs : AudioInput | list[AudioInput]
            One utterance or a list (file paths, Kaldi ``ark:offset``, arrays, tensors).
        sample_rate : int | None, optional
            Rate of array/tensor inputs.
        batch_size : int, optional
            Utterances per forward pass.
        progress : bool | None, optional
            tqdm bar (default: for 50 or more inputs).

        Returns
        -------
        Classification | list[Classification]
            The best label and every label's probability, per input.
        """
        items, single = as_batch(wavs)
        results = [self.to_classification(p) for p in self.outputs(items, sample_rate, batch_size, progress)]
        return results[0] if single else results

    def result(self, output, **options) -> Classification:
        return self.to_classification(output)

    def summary(self, result):
        return (f"{result.label} {result.probabilities[result.label]:.4f}",
                {"label": result.label, "probabilities": result.probabilities})


class SpeakerVerifier(Predictor):
    """A speaker verification package: :meth:`embed` and :meth:`verify` (windowed as in stage 4).

    Examples
    --------
    >>> import tempfile
    >>> from elp.testing import make_tiny_package
    >>> verifier = load_predictor(make_tiny_package(tempfile.mkdtemp(), task="sv"))
    >>> verifier.summary(torch.tensor([3.0, 4.0]))
    ('embedding[2] norm 5.0000', [3.0, 4.0])
    """

    task_class = SpeakerVerification

    @property
    def threshold(self) -> float | None:
        """The calibrated decision threshold (None: no decision)."""
        return self.package.threshold

    def embed(self, wavs, sample_rate: int | None = None, batch_size: int = 8, progress: bool | None = None):
        """Speaker embeddings.

        Parameters
        ----------
        wavs : AudioInput | list[AudioInput]
            One utterance or a list (file paths, Kaldi ``ark:offset``, arrays, tensors).
        sample_rate : int | None, optional
            Rate of array/tensor inputs.
        batch_size : int, optional
            Utterances per forward pass.
        progress : bool | None, optional
            tqdm bar (default: for 50 or more inputs).

        Returns
        -------
        torch.Tensor
            [E] for one utterance, [N, E] for a list.
        """
        items, single = as_batch(wavs)
        embeddings = torch.stack(self.outputs(items, sample_rate, batch_size, progress))
        return embeddings[0] if single else embeddings

    def score(self, emb_a: torch.Tensor, emb_b: torch.Tensor) -> Verification:
        """A trial from two embeddings [E]: stage 4's cosine score, accepted when above the threshold.

        Returns
        -------
        Verification
            ``accepted`` is None when the package has no calibrated threshold.
        """
        return self.task.verification(emb_a, emb_b, self.threshold)

    def verify(self, a, b, sample_rate: int | None = None, batch_size: int = 8):
        """Verify trial(s).

        Parameters
        ----------
        a, b : AudioInput | list[AudioInput]
            Enrollment and test audio: one utterance each, or equal-length lists.
        sample_rate : int | None, optional
            Rate of array/tensor inputs.
        batch_size : int, optional
            Utterances per forward pass.

        Returns
        -------
        Verification | list[Verification]
            One trial, or one per pair.

        Raises
        ------
        ValueError
            If the lists differ in length.
        """
        items_a, single = as_batch(a)
        items_b, single_b = as_batch(b)
        if single != single_b or len(items_a) != len(items_b):
            raise ValueError(f"verify() needs as many enrollment as test utterances, got {len(items_a)} "
                             f"and {len(items_b)}")
        embeddings = self.outputs(items_a + items_b, sample_rate, batch_size, progress=False)
        n = len(items_a)
        trials = [self.score(embeddings[i], embeddings[n + i]) for i in range(n)]
        return trials[0] if single else trials

    def result(self, output, **options) -> torch.Tensor:
        return output

    def summary(self, result):
        return f"embedding[{result.numel()}] norm {float(result.norm()):.4f}", result.tolist()


def predictor_for(package: Package) -> Predictor:
    """The predictor of a loaded package, of its kind's class (:data:`PREDICTORS`).

    Parameters
    ----------
    package : Package
        From :func:`elp.serve.package.load_package`.

    Returns
    -------
    Predictor
        An instance of the subclass registered for ``package.kind``.

    Raises
    ------
    PackageError
        When no predictor class serves the kind.
    """
    if package.kind not in PREDICTORS:
        raise PackageError(f"{package.directory}: no predictor serves {package.kind!r} packages")
    return PREDICTORS[package.kind](package)


def load_predictor(directory: str | os.PathLike, backbone_source: str | None = None,
                   device: str | torch.device = "cpu") -> Predictor:
    """The predictor of a package directory, of its kind's class (same as :meth:`Predictor.from_package`).

    Parameters
    ----------
    directory : str | os.PathLike
        The package directory.
    backbone_source : str | None, optional
        Backbone checkpoint directory or hub id (default: the recorded one).
    device : str | torch.device, optional
        Where the model runs.

    Returns
    -------
    Predictor
        A :class:`SpeechRecognizer`, :class:`UtteranceClassifier` or :class:`SpeakerVerifier`.
    """
    return Predictor.from_package(directory, backbone_source, device)
