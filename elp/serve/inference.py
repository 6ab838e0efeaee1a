"""Use a trained model on new audio: ``Predictor.from_package(dir).transcribe(wavs)``.

Inputs are file paths (anything soundfile reads, or a Kaldi ``ark:offset``), numpy arrays or
torch tensors at any sample rate (pass ``sample_rate=`` for arrays), mono or multi-channel
(channels are averaged). A list is a batch; anything else is one utterance. Batches are
padded and run ``batch_size`` utterances at a time (longest first); the backbone and heads
ignore padding, so batched results equal one-by-one results (to float rounding, 1e-5).

Examples
--------
>>> import tempfile
>>> from elp.testing import make_tiny_package
>>> classifier = Predictor.from_package(make_tiny_package(tempfile.mkdtemp(), task=CLASSIFY))
>>> result = classifier.classify(np.zeros(16000, dtype=np.float32), sample_rate=16000)
>>> result.label in classifier.labels, round(sum(result.probabilities.values()), 6)
(True, 1.0)
>>> asr = Predictor.from_package(make_tiny_package(tempfile.mkdtemp(), task=ASR, method="elp"))
>>> texts = asr.transcribe([np.zeros(8000), np.zeros((2, 16000))], sample_rate=8000)
>>> len(texts), all(isinstance(t, str) for t in texts)
(2, True)
>>> sv = Predictor.from_package(make_tiny_package(tempfile.mkdtemp(), task=SV, method="lora"))
>>> sv.embed(torch.zeros(16000), sample_rate=16000).shape
torch.Size([8])
>>> trial = sv.verify(torch.ones(16000), torch.ones(16000), sample_rate=16000)
>>> round(trial.score, 4), trial.accepted     # no threshold calibrated: no decision
(1.0, None)
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from elp.data.audio import read_audio
from elp.serve.package import SAMPLE_RATE, Package, load_package
from elp.tasks import ASR, CLASSIFY, SV

AudioInput = str | os.PathLike | np.ndarray | torch.Tensor
MAX_CHANNELS = 16


class AudioInputError(ValueError):
    """An input waveform cannot be used (wrong shape, no sample rate, empty...)."""


@dataclass
class Classification:
    """A classification result: the best label and every label's probability."""

    label: str
    probabilities: dict[str, float]


@dataclass
class Verification:
    """A verification trial: cosine ``score`` and ``accepted`` (None without a threshold)."""

    score: float
    accepted: bool | None
    threshold: float | None


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


# ------------------------------------------------------------------------------------- predictor
class Predictor:
    """Inference with one model package.

    Parameters
    ----------
    package : Package
        From :func:`elp.serve.package.load_package`.
    """

    def __init__(self, package: Package):
        self.package = package
        self._beam_decoders: dict = {}

    @classmethod
    def from_package(cls, directory: str | os.PathLike, backbone_source: str | None = None,
                     device: str | torch.device = "cpu") -> "Predictor":
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
            A predictor of the package.
        """
        return cls(load_package(directory, backbone_source, device))

    # ---------------------------------------------------------------- properties
    @property
    def task(self) -> str:
        return self.package.task

    @property
    def labels(self) -> list[str] | None:
        return self.package.labels

    @property
    def device(self) -> torch.device:
        return next(self.package.head.parameters()).device

    # ---------------------------------------------------------------- the model
    @torch.no_grad()
    def head_outputs(self, feats: torch.Tensor, frame_mask: torch.Tensor) -> list[torch.Tensor]:
        """The head on model features, one CPU tensor per utterance.

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
        head = self.package.head
        if self.task == ASR:
            log_probs = head(feats, frame_mask)
            return [lp[:n].cpu() for lp, n in zip(log_probs, frame_mask.sum(1).tolist())]
        out = head(feats, frame_mask)
        if self.task == CLASSIFY:
            out = F.softmax(out, dim=-1)
        return list(out.cpu())

    @torch.no_grad()
    def forward_batch(self, waves: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Run one padded batch through the model and head.

        Parameters
        ----------
        waves : Sequence[torch.Tensor]
            16 kHz mono waveforms [T_i].

        Returns
        -------
        list[torch.Tensor]
            :meth:`head_outputs` of the batch.
        """
        batch, lengths = pad_batch(waves)
        feats, frame_mask = self.package.model(batch.to(self.device), lengths.to(self.device))
        return self.head_outputs(feats, frame_mask)

    def outputs(self, wavs: Iterable[AudioInput], sample_rate: int | None = None, batch_size: int = 8,
                progress: bool | None = None) -> list[torch.Tensor]:
        """Per-utterance head outputs of many inputs, batched by length, in input order.

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
            One :meth:`head_outputs` element per input.

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

    # ---------------------------------------------------------------- tasks
    def _require(self, *tasks: str, what: str) -> None:
        if self.task not in tasks:
            raise ValueError(f"{what}() needs a {' or '.join(tasks)} package, but {self.package.directory} "
                             f"is a {self.task!r} package")

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
        mask = torch.ones(1, log_probs.shape[0], dtype=torch.bool)
        tokenizer = self.package.tokenizer
        if beam_size is None and lm is None:
            from elp.tasks.decoding import greedy_ctc

            return tokenizer.decode(greedy_ctc(log_probs[None], mask)[0])
        from elp.tasks.decoding import CTCBeamSearch

        key = (beam_size or 10, str(lm), tuple(sorted(lm_options.items())))
        if key not in self._beam_decoders:
            self._beam_decoders[key] = CTCBeamSearch(tokenizer, key[0], lm, **lm_options)
        return self._beam_decoders[key](log_probs[None], mask)[0]

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

        Raises
        ------
        ValueError
            If the package is not an ASR package.
        """
        self._require(ASR, what="transcribe")
        items, single = as_batch(wavs)
        texts = [self.decode(lp, beam_size, lm, **lm_options)
                 for lp in self.outputs(items, sample_rate, batch_size, progress)]
        return texts[0] if single else texts

    def to_classification(self, probs: torch.Tensor) -> Classification:
        """The :class:`Classification` of class probabilities [C] (package label order)."""
        labels = self.labels
        best = int(probs.argmax())
        return Classification(labels[best], {label: float(p) for label, p in zip(labels, probs.tolist())})

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

        Raises
        ------
        ValueError
            If the package is not a classification package.
        """
        self._require(CLASSIFY, what=CLASSIFY)
        items, single = as_batch(wavs)
        results = [self.to_classification(p) for p in self.outputs(items, sample_rate, batch_size, progress)]
        return results[0] if single else results

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

        Raises
        ------
        ValueError
            If the package is not an SV package.
        """
        self._require(SV, what="embed")
        items, single = as_batch(wavs)
        embeddings = torch.stack(self.outputs(items, sample_rate, batch_size, progress))
        return embeddings[0] if single else embeddings

    def score(self, emb_a: torch.Tensor, emb_b: torch.Tensor) -> Verification:
        """A trial from two embeddings: cosine score, accepted when above the threshold.

        Parameters
        ----------
        emb_a, emb_b : torch.Tensor
            Embeddings [E].

        Returns
        -------
        Verification
            ``accepted`` is None when the package has no calibrated threshold.
        """
        score = float(F.cosine_similarity(emb_a.float()[None], emb_b.float()[None])[0])
        threshold = self.package.threshold
        return Verification(score, None if threshold is None else score > threshold, threshold)

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
            If the package is not an SV package, or the lists differ in length.
        """
        self._require(SV, what="verify")
        items_a, single = as_batch(a)
        items_b, single_b = as_batch(b)
        if single != single_b or len(items_a) != len(items_b):
            raise ValueError(f"verify() needs as many enrollment as test utterances, got {len(items_a)} "
                             f"and {len(items_b)}")
        embeddings = self.outputs(items_a + items_b, sample_rate, batch_size, progress=False)
        n = len(items_a)
        trials = [self.score(embeddings[i], embeddings[n + i]) for i in range(n)]
        return trials[0] if single else trials

    def result(self, output: torch.Tensor, beam_size: int | None = None, lm=None):
        """The task's user-facing result for one :meth:`head_outputs` element.

        Parameters
        ----------
        output : torch.Tensor
            One element of :meth:`head_outputs`.
        beam_size : int | None, optional
            ASR: beam of the CTC beam search (None: greedy).
        lm : str | os.PathLike | None, optional
            ASR: word n-gram LM.

        Returns
        -------
        str | Classification | torch.Tensor
            Text (ASR), a :class:`Classification`, or the embedding [E] (SV).
        """
        if self.task == ASR:
            return self.decode(output, beam_size, lm)
        if self.task == CLASSIFY:
            return self.to_classification(output)
        return output
