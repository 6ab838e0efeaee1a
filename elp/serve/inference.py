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

Inputs are file paths (anything soundfile reads, a Kaldi ``ark:offset`` or a decoder pipe
:mod:`elp.data.pipes` reads natively), numpy arrays or torch tensors at any sample rate (pass
``sample_rate=`` for arrays), mono or multi-channel (channels are averaged). A list is a batch;
anything else is one utterance. An input that is empty, shorter than one backbone frame, holds
NaN/inf samples or cannot be decoded is refused with one line naming it (never a number).

Memory is bounded: inputs are read lazily, in input order, into batches of at most
``batch_size`` utterances and ``max_batch_seconds`` of padded audio (an input longer than that
runs alone, and the task's prediction path windows it: :meth:`elp.tasks.base.Task.predict_batch`).
The backbone and heads ignore padding, so batched results equal one-by-one results (to float
rounding, 1e-5).

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
from elp.data.errors import AudioError
from elp.runtime import SAMPLE_RATE
from elp.serve.package import Package, PackageError, load_package
from elp.tasks.asr import SpeechRecognition
from elp.tasks.base import Task
from elp.tasks.classify import Classification, UtteranceClassification
from elp.tasks.sv import SpeakerVerification, Verification

AudioInput = str | os.PathLike | np.ndarray | torch.Tensor
MAX_CHANNELS = 16
#: default cap on the padded audio of one batch (seconds); with ``batch_size`` it bounds memory
MAX_BATCH_SECONDS = 60.0


class AudioInputError(ValueError):
    """An input waveform cannot be used (wrong shape, no sample rate, empty, non-finite, unreadable...)."""


class AudioFileNotFoundError(AudioInputError, FileNotFoundError):
    """An input file does not exist."""


# ------------------------------------------------------------------------------------- audio
def load_waveform(item: AudioInput, sample_rate: int | None = None, name: str | None = None) -> torch.Tensor:
    """Read one utterance as a mono float32 waveform [T] at 16 kHz, refused when empty or non-finite.

    Parameters
    ----------
    item
        A file (read with soundfile/kaldiio, resampled, channels averaged), or samples:
        [T] mono, or [C, T] / [T, C] multi-channel (the smaller dimension, at most 16, is
        the channel one).
    sample_rate
        Rate of array/tensor input in Hz (required for them; ignored for files).
    name
        How errors name the input (default: the path, or "input").

    Raises
    ------
    AudioInputError
        One line naming the input: unreadable, empty, NaN/inf samples, unknown layout.

    Examples
    --------
    >>> load_waveform(np.ones((2, 800)), sample_rate=8000).shape
    torch.Size([1600])
    >>> load_waveform(np.ones(800))
    Traceback (most recent call last):
    ...
    elp.serve.inference.AudioInputError: an array/tensor input needs its sample rate: pass sample_rate= (e.g. 16000)
    >>> load_waveform(np.array([0.0, np.nan]), sample_rate=16000, name="utt7")
    Traceback (most recent call last):
    ...
    elp.serve.inference.AudioInputError: utt7: holds NaN/inf samples; fix or drop this input
    """
    if isinstance(item, (str, os.PathLike)):
        path = str(item)
        name = name or path
        if ":" not in path and not path.rstrip().endswith("|") and not Path(path).is_file():
            raise AudioFileNotFoundError(f"audio file {path} does not exist" if name == path
                                         else f"{name}: audio file {path} does not exist")
        try:
            wave = read_audio(path, SAMPLE_RATE, utt=None if name == path else name)
        except (AudioError, OSError, RuntimeError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise AudioInputError(first if name in first else f"{name}: {first}") from None
        return _checked(wave, name)
    name = name or "input"
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
        raise AudioInputError(f"{name}: empty audio input (0 samples)")
    if not torch.isfinite(wave).all():
        raise AudioInputError(f"{name}: holds NaN/inf samples; fix or drop this input")
    if int(sample_rate) != SAMPLE_RATE:
        import torchaudio.functional

        wave = torchaudio.functional.resample(wave, int(sample_rate), SAMPLE_RATE)
    return _checked(wave.contiguous(), name)


def _checked(wave: torch.Tensor, name: str) -> torch.Tensor:
    if wave.numel() == 0:
        raise AudioInputError(f"{name}: empty audio input (0 samples)")
    if not torch.isfinite(wave).all():
        raise AudioInputError(f"{name}: holds NaN/inf samples; fix or drop this input")
    return wave


def as_batch(wavs) -> tuple[list, bool]:
    """Return a list of utterances, and whether the input was a single utterance.

    A list or tuple is a batch; anything else is one utterance.

    Examples
    --------
    >>> as_batch("a.wav"), as_batch(("a.wav", "b.wav"))
    ((['a.wav'], True), (['a.wav', 'b.wav'], False))
    """
    if isinstance(wavs, (list, tuple)):
        return list(wavs), False
    return [wavs], True


def pad_batch(waves: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad B waveforms [T_i] into one batch.

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


def stream_batches(items: Sequence, load, batch_size: int, max_batch_seconds: float | None = MAX_BATCH_SECONDS,
                   names: Sequence[str] | None = None):
    """Read inputs lazily, in order, into batches; yield (input indices, waveforms).

    A batch holds at most ``batch_size`` (>= 1) utterances and ``max_batch_seconds`` (> 0; None:
    no cap) of padded audio (longest x count); a longer input runs alone. ``load(item, name)``
    returns a 16 kHz waveform [T]; ``names`` say how errors name each input.

    Examples
    --------
    >>> waves = [torch.zeros(n) for n in (16000, 16000, 48000, 8000)]
    >>> [idx for idx, _ in stream_batches(waves, lambda w, name: w, batch_size=3, max_batch_seconds=2.5)]
    [[0, 1], [2], [3]]
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_batch_seconds is not None and not max_batch_seconds > 0:
        raise ValueError(f"max_batch_seconds must be > 0, got {max_batch_seconds}")
    cap = None if max_batch_seconds is None else max_batch_seconds * SAMPLE_RATE
    indices: list[int] = []
    waves: list[torch.Tensor] = []
    longest = 0
    for index, item in enumerate(items):
        name = names[index] if names is not None else (str(item) if isinstance(item, (str, os.PathLike))
                                                       else f"input {index}")
        wave = load(item, name)
        grown = max(longest, wave.shape[0])
        if waves and (len(waves) == batch_size or (cap is not None and grown * (len(waves) + 1) > cap)):
            yield indices, waves
            indices, waves, grown = [], [], wave.shape[0]
        indices.append(index)
        waves.append(wave)
        longest = grown
    if waves:
        yield indices, waves


def check_lengths(items: Sequence, waves: Sequence[torch.Tensor], receptive_field: int) -> None:
    """Refuse 16 kHz waveforms shorter than one backbone frame (``receptive_field`` samples).

    Raises
    ------
    AudioInputError
        For the first input too short, naming it (paths by name, others by index).

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


def waveform_loader(sample_rate: int | None, receptive_field: int):
    """Return ``load(item, name)`` for :func:`stream_batches`: :func:`load_waveform` plus :func:`check_lengths`."""

    def load(item, name: str) -> torch.Tensor:
        wave = load_waveform(item, sample_rate, name)
        check_lengths([name], [wave], receptive_field)
        return wave

    return load


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
    ``package`` comes from :func:`elp.serve.package.load_package`.
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
                     device: str | torch.device = "cpu", trust_head_module: str | None = None) -> Predictor:
        """Load a package and return the predictor of its kind (:func:`predictor_for`).

        Parameters
        ----------
        backbone_source
            Backbone checkpoint directory or hub id (default: the recorded one).
        trust_head_module
            The module of a user head the package holds (e.g. ``"local.my_head"``): its code
            runs only when named here (:mod:`elp.serve.head_registry`).

        Raises
        ------
        PackageError
            Called on a subclass with a package of another kind.
        """
        predictor = predictor_for(load_package(directory, backbone_source, device, trust_head_module))
        if not isinstance(predictor, cls):
            raise PackageError(f"{directory} is a {predictor.kind!r} package, not a {cls.task_class.kind!r} one; "
                               "load it with elp.serve.inference.load_predictor")
        return predictor

    # ---------------------------------------------------------------- properties
    @property
    def task(self) -> Task:
        """Return the package's task (its kind and recorded prediction options)."""
        return self.package.task

    @property
    def kind(self) -> str:
        """Return the task kind (a key of :data:`elp.tasks.TASKS`)."""
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
        """Return the head on model features [B, F, D], one CPU tensor per utterance.

        ``frame_mask`` is [B, F] bool (True = real frame). ASR: log-probs [F_i, V] (valid frames
        only); classification: probabilities [C]; SV: embedding [E]
        (:meth:`elp.tasks.base.Task.head_outputs`).
        """
        return self.task.head_outputs(self.package.head, feats, frame_mask)

    @torch.no_grad()
    def forward_batch(self, waves: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Run :meth:`elp.tasks.base.Task.predict_batch` on 16 kHz waveforms [T_i] as one padded batch."""
        batch, lengths = pad_batch(waves)
        return self.task.predict_batch(self.package.model, self.package.head, batch.to(self.device),
                                       lengths.to(self.device))

    def outputs(self, wavs: Iterable[AudioInput], sample_rate: int | None = None, batch_size: int = 8,
                progress: bool | None = None, max_batch_seconds: float | None = MAX_BATCH_SECONDS,
                names: Sequence[str] | None = None) -> list[torch.Tensor]:
        """Return per-utterance outputs of many inputs, read lazily in batches, in input order.

        These options are shared by :meth:`SpeechRecognizer.transcribe`,
        :meth:`UtteranceClassifier.classify`, :meth:`SpeakerVerifier.embed` and :meth:`SpeakerVerifier.verify`.

        Parameters
        ----------
        wavs
            File paths, Kaldi ``ark:offset``, arrays or tensors.
        sample_rate
            Rate of array/tensor inputs.
        batch_size
            Utterances per forward pass.
        progress
            tqdm bar (default: for 50 or more inputs).
        max_batch_seconds
            Padded audio per forward pass at most (:func:`stream_batches`).
        names
            How errors name the inputs (e.g. utterance ids).

        Raises
        ------
        AudioInputError
            For an unusable or too short input (naming it).
        """
        items = list(wavs)
        bar = _progress(len(items), progress, self.package.name)
        load = waveform_loader(sample_rate, self.package.model.backbone.receptive_field)
        results: list = [None] * len(items)
        for indices, waves in stream_batches(items, load, batch_size, max_batch_seconds, names):
            for index, out in zip(indices, self.forward_batch(waves)):
                results[index] = out
            if bar is not None:
                bar.update(len(indices))
        if bar is not None:
            bar.close()
        return results

    def result(self, output: torch.Tensor, **options):
        """Return the user-facing result of one :meth:`outputs` element (subclasses).

        Text, a :class:`Classification`, or an embedding. ``**options`` are the kind's result options
        (ASR: ``beam_size``, ``lm``); others ignore them.
        """
        raise NotImplementedError

    def summary(self, result) -> tuple[str, object]:
        """Return (text for a line, JSON value) of one :meth:`result` (subclasses)."""
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
        """Return the text of one utterance's CTC log-probs [F, V] (valid frames): greedy, or beam search.

        Parameters
        ----------
        beam_size
            Beam of CTC prefix beam search (None: greedy unless ``lm``, a word n-gram ARPA LM, is given; then 10).
        **lm_options
            ``lexicon``, ``lm_weight``, ``word_score`` (:class:`elp.tasks.decoding.CTCBeamSearch`).
        """
        key = (beam_size, None if lm is None else str(lm), tuple(sorted(lm_options.items())))
        if key not in self._beam_searches:
            self._beam_searches[key] = self.task.beam_search(self.package.tokenizer, beam_size, lm, **lm_options)
        return self.task.transcripts([log_probs], self.package.tokenizer, self._beam_searches[key])[0]

    def transcribe(self, wavs, sample_rate: int | None = None, batch_size: int = 8, beam_size: int | None = None,
                   lm: str | os.PathLike | None = None, progress: bool | None = None,
                   max_batch_seconds: float | None = MAX_BATCH_SECONDS, **lm_options):
        """Transcribe one utterance (-> str) or a list (-> list of str).

        ``beam_size``, ``lm`` and ``**lm_options`` as in :meth:`decode` (default: greedy); the other
        options as in :meth:`Predictor.outputs`.
        """
        items, single = as_batch(wavs)
        texts = [self.decode(lp, beam_size, lm, **lm_options)
                 for lp in self.outputs(items, sample_rate, batch_size, progress, max_batch_seconds)]
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
        """Return the :class:`Classification` of class probabilities [C] (package label order)."""
        return self.task.classification(probs, self.labels)

    def classify(self, wavs, sample_rate: int | None = None, batch_size: int = 8, progress: bool | None = None,
                 max_batch_seconds: float | None = MAX_BATCH_SECONDS):
        """Classify one utterance (-> :class:`Classification`) or a list (-> one per input).

        Options as in :meth:`Predictor.outputs`.
        """
        items, single = as_batch(wavs)
        results = [self.to_classification(p)
                   for p in self.outputs(items, sample_rate, batch_size, progress, max_batch_seconds)]
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
        """Return the calibrated decision threshold (None: no decision)."""
        return self.package.threshold

    def embed(self, wavs, sample_rate: int | None = None, batch_size: int = 8, progress: bool | None = None,
              max_batch_seconds: float | None = MAX_BATCH_SECONDS):
        """Return speaker embeddings: [E] for one utterance, [N, E] for a list.

        Options as in :meth:`Predictor.outputs`.
        """
        items, single = as_batch(wavs)
        embeddings = torch.stack(self.outputs(items, sample_rate, batch_size, progress, max_batch_seconds))
        return embeddings[0] if single else embeddings

    def score(self, emb_a: torch.Tensor, emb_b: torch.Tensor) -> Verification:
        """Score a trial of two embeddings [E]: cosine, ``accepted`` above the threshold (None without one)."""
        return self.task.verification(emb_a, emb_b, self.threshold)

    def verify(self, a, b, sample_rate: int | None = None, batch_size: int = 8,
               max_batch_seconds: float | None = MAX_BATCH_SECONDS):
        """Verify one trial (enrollment ``a``, test ``b``) or equal-length lists of them (one per pair).

        Options as in :meth:`Predictor.outputs`.

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
        names = [f"enrollment input {i}" if not isinstance(item, (str, os.PathLike)) else str(item)
                 for i, item in enumerate(items_a)] + \
                [f"test input {i}" if not isinstance(item, (str, os.PathLike)) else str(item)
                 for i, item in enumerate(items_b)]
        embeddings = self.outputs(items_a + items_b, sample_rate, batch_size, progress=False,
                                  max_batch_seconds=max_batch_seconds, names=names)
        n = len(items_a)
        trials = [self.score(embeddings[i], embeddings[n + i]) for i in range(n)]
        return trials[0] if single else trials

    def result(self, output, **options) -> torch.Tensor:
        return output

    def summary(self, result):
        return f"embedding[{result.numel()}] norm {float(result.norm()):.4f}", result.tolist()


def predictor_for(package: Package) -> Predictor:
    """Return the predictor of a loaded package, of its kind's class (:data:`PREDICTORS`).

    Raises
    ------
    PackageError
        When no predictor class serves the kind.
    """
    if package.kind not in PREDICTORS:
        raise PackageError(f"{package.directory}: no predictor serves {package.kind!r} packages")
    return PREDICTORS[package.kind](package)


def load_predictor(directory: str | os.PathLike, backbone_source: str | None = None,
                   device: str | torch.device = "cpu", trust_head_module: str | None = None) -> Predictor:
    """Return the predictor of a package directory, of its kind's class (see :meth:`Predictor.from_package`)."""
    return Predictor.from_package(directory, backbone_source, device, trust_head_module)
