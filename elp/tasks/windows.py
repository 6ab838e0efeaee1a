"""Windowed utterance embeddings and chunked frame outputs: bounded memory for long inputs.

A frozen backbone forward keeps a [B * heads, T, T] relative position bias and the attention
weights, so its memory grows with the square of the duration, and test utterances (VoxCeleb)
last up to minutes. :func:`windowed_embeddings` embeds an utterance longer than
``window_seconds`` as overlapping windows of exactly ``window_seconds`` each and combines the
window embeddings:

* ``combine="mean_normalized"`` (default): the mean of the L2-normalised window embeddings
  (each window votes with the same weight, whatever the scale of its embedding; what cosine
  scoring compares).
* ``combine="mean"``: the plain mean of the window embeddings. All windows have the same
  length, so for a mean-pooling head whose frame projection is linear
  (:class:`elp.core.heads.SpeakerEmbeddingHead` with ``pooling="mean"``) this is the frame-count
  weighted mean of the windows' pooled frames (overlapping frames count once per window).

Window layout: windows of ``W`` samples start every ``H = W - overlap`` samples from 0; the
last window is moved back to end exactly at the end of the utterance, so every window is a
full ``W`` samples (no short tail window, no padding) and windows stack into batches of
``max_windows_per_batch``. An utterance of at most ``W`` samples is a single window: its
embedding is the whole-utterance embedding (a batch in which every utterance fits one window
is passed to ``embed`` unchanged, so the result is bit-identical).

:func:`chunked_frames` does the same for frame outputs (CTC), stitching overlapping chunks.

Examples
--------
>>> window_bounds(10, window=4, hop=3)
[(0, 4), (3, 7), (6, 10)]
>>> window_bounds(3, window=4, hop=3)
[(0, 3)]
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from elp.runtime import SAMPLE_RATE

#: audio seconds of the windows one forward pass holds at most (:func:`windows_per_batch`)
WINDOW_BATCH_SECONDS = 30.0

#: embed(wavs [B, T], wav_lens [B] relative lengths) -> embeddings [B, E]
EmbedFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def windows_per_batch(window_seconds: float) -> int:
    """Return the windows per forward pass that hold at most :data:`WINDOW_BATCH_SECONDS` of audio (at least one).

    Examples
    --------
    >>> windows_per_batch(6.0), windows_per_batch(30.0), windows_per_batch(45.0)
    (5, 1, 1)
    """
    return max(1, int(WINDOW_BATCH_SECONDS // window_seconds))


def window_bounds(num_samples: int, window: int, hop: int) -> list[tuple[int, int]]:
    """Return the (start, end) sample bounds of the windows covering ``num_samples`` (> 0).

    One window ``(0, num_samples)`` when ``num_samples <= window``; otherwise windows of
    exactly ``window`` samples starting at 0, hop, 2 hop, ... and a last one ending at
    ``num_samples`` (1 <= hop <= window, else ValueError).

    Examples
    --------
    >>> window_bounds(9, window=4, hop=4)
    [(0, 4), (4, 8), (5, 9)]
    """
    if num_samples <= 0:
        raise ValueError(f"num_samples must be > 0, got {num_samples}")
    if not 1 <= hop <= window:
        raise ValueError(f"the hop must be in [1, window={window}] samples, got {hop} "
                         f"(overlap must be smaller than the window)")
    if num_samples <= window:
        return [(0, num_samples)]
    bounds = [(start, start + window) for start in range(0, num_samples - window, hop)]
    bounds.append((num_samples - window, num_samples))
    return bounds


def windowed_embeddings(
    embed: EmbedFn,
    wavs: torch.Tensor,
    wav_lens: torch.Tensor | None = None,
    window_seconds: float = 6.0,
    overlap_seconds: float = 1.5,
    combine: str = "mean_normalized",
    max_windows_per_batch: int = 16,
    sample_rate: int = SAMPLE_RATE,
) -> torch.Tensor:
    """Return the embeddings [B, E] of a padded batch, long utterances embedded in windows.

    Row b is the whole-utterance embedding when utterance b fits one window, else the
    combination of its window embeddings (see the module docstring).

    Parameters
    ----------
    embed
        ``embed(wavs [B, T], wav_lens [B]) -> [B, E]`` with SpeechBrain relative lengths,
        e.g. ``lambda w, l: head(*model(w, l))``; it must not depend on padding.
    wavs
        [B, T] padded waveforms.
    wav_lens
        [B] relative lengths (valid samples / T); None = all T samples valid.
    window_seconds
        Window length; utterances up to this long are embedded whole.
    overlap_seconds
        Overlap of consecutive windows (0 <= overlap < window).
    combine
        ``"mean_normalized"`` (mean of L2-normalised window embeddings) or ``"mean"``.
    max_windows_per_batch
        Windows per ``embed`` call: peak memory is that of a batch of this many windows.

    Examples
    --------
    >>> mean_of_samples = lambda w, l: w.sum(1, keepdim=True) / (l * w.shape[1])[:, None]
    >>> wavs = torch.tensor([[1.0, 1.0, 3.0, 3.0, 3.0]])
    >>> windowed_embeddings(mean_of_samples, wavs, window_seconds=4, overlap_seconds=2,
    ...                     combine="mean", sample_rate=1)
    tensor([[2.2500]])
    """
    if combine not in ("mean_normalized", "mean"):
        raise ValueError(f"combine must be 'mean_normalized' or 'mean', got {combine!r}")
    window = int(round(window_seconds * sample_rate))
    hop = window - int(round(overlap_seconds * sample_rate))
    if window < 1 or not 1 <= hop <= window:
        raise ValueError(f"need window_seconds > 0 and 0 <= overlap_seconds < window_seconds, "
                         f"got {window_seconds} and {overlap_seconds}")
    if max_windows_per_batch < 1:
        raise ValueError(f"max_windows_per_batch must be >= 1, got {max_windows_per_batch}")
    if wavs.dim() != 2:
        raise ValueError(f"wavs must be [B, T], got shape {tuple(wavs.shape)}")
    batch, total = wavs.shape
    if wav_lens is None:
        wav_lens = torch.ones(batch, device=wavs.device)
    lengths = [int(n) for n in torch.round(wav_lens.float() * total).long().clamp(1, total).tolist()]
    short = [b for b in range(batch) if lengths[b] <= window]
    if len(short) == batch:  # nothing to window: the caller's batch, unchanged
        return embed(wavs, wav_lens)

    rows: dict[int, torch.Tensor] = {}
    if short:
        longest = max(lengths[b] for b in short)
        sub = wavs[short, :longest]
        sub_lens = torch.tensor([lengths[b] / longest for b in short], device=wavs.device)
        for b, emb in zip(short, embed(sub, sub_lens)):
            rows[b] = emb
    pieces, owner = [], []
    for b in range(batch):
        if lengths[b] > window:
            for start, end in window_bounds(lengths[b], window, hop):
                pieces.append(wavs[b, start:end])
                owner.append(b)
    window_embs = []
    for start in range(0, len(pieces), max_windows_per_batch):
        chunk = torch.stack(pieces[start:start + max_windows_per_batch])
        window_embs.append(embed(chunk, torch.ones(chunk.shape[0], device=wavs.device)))
    window_embs = torch.cat(window_embs)
    if combine == "mean_normalized":
        window_embs = torch.nn.functional.normalize(window_embs.float(), dim=-1).to(window_embs.dtype)
    owner_t = torch.tensor(owner, device=window_embs.device)
    for b in sorted(set(owner)):
        rows[b] = window_embs[owner_t == b].mean(dim=0)
    return torch.stack([rows[b] for b in range(batch)])


#: samples between two backbone frames (the CNN stride of every supported backbone family)
FRAME_STRIDE = 320

#: frames(wavs [B, T], wav_lens [B]) -> per-utterance frame outputs [F_b, V]
FramesFn = Callable[[torch.Tensor, torch.Tensor], list]


def chunk_starts(num_samples: int, chunk: int, hop: int) -> list[int]:
    """Return the start samples of the chunks covering ``num_samples``: every ``hop`` from 0 until a
    chunk reaches the end (the last chunk may be shorter than ``chunk``).

    Examples
    --------
    >>> chunk_starts(10, chunk=4, hop=3)
    [0, 3, 6]
    >>> chunk_starts(4, chunk=4, hop=3)
    [0]
    """
    starts = [0]
    while starts[-1] + chunk < num_samples:
        starts.append(starts[-1] + hop)
    return starts


def chunked_frames(frames: FramesFn, wavs: torch.Tensor, wav_lens: torch.Tensor | None = None,
                   chunk_seconds: float = 30.0, overlap_seconds: float = 2.0, max_chunks_per_batch: int = 1,
                   sample_rate: int = SAMPLE_RATE, stride: int = FRAME_STRIDE) -> list:
    """Return B frame outputs of a padded batch, long utterances run in overlapping chunks and stitched.

    Utterances up to ``chunk_seconds`` run whole (a batch without a longer one is passed to
    ``frames`` unchanged). A longer one is cut into chunks of ``chunk_seconds`` starting every
    ``chunk_seconds - overlap_seconds`` (both rounded down to whole frames, so that a chunk's
    frames fall on the utterance's frame grid); in the overlap of two chunks the frames before
    its middle come from the first chunk and the rest from the second (each frame is taken
    from the chunk in which it has the most context). The result has the frames of the whole
    utterance.

    Parameters
    ----------
    frames
        ``frames(wavs [B, T], wav_lens [B]) -> list of [F_b, ...]`` over valid frames.
    wavs
        [B, T] padded waveforms.
    wav_lens
        [B] relative lengths; None = all valid.
    chunk_seconds, overlap_seconds
        Chunk length and overlap (overlap at least one frame's receptive field, 0.025 s).
    max_chunks_per_batch
        Chunks per ``frames`` call (default one: memory is that of one chunk).
    sample_rate, stride
        Samples per second and per frame.

    Examples
    --------
    Frame outputs that are each frame's start sample: the stitched chunks give the whole grid.

    >>> starts = lambda w, l: [w[b, ::4][: (int(round(float(l[b]) * w.shape[1])) - 4) // 4 + 1]
    ...                        for b in range(w.shape[0])]
    >>> wav = torch.arange(40.0)[None]
    >>> chunked_frames(starts, wav, chunk_seconds=16, overlap_seconds=8, sample_rate=1, stride=4)[0].tolist()
    [0.0, 4.0, 8.0, 12.0, 16.0, 20.0, 24.0, 28.0, 32.0, 36.0]
    """
    chunk = int(chunk_seconds * sample_rate) // stride * stride
    overlap = int(overlap_seconds * sample_rate) // stride * stride
    if chunk < stride or not 0 < overlap < chunk:
        raise ValueError(f"need chunk_seconds of at least one frame and 0 < overlap_seconds < chunk_seconds, "
                         f"got {chunk_seconds} and {overlap_seconds}")
    batch, total = wavs.shape
    if wav_lens is None:
        wav_lens = torch.ones(batch, device=wavs.device)
    lengths = [int(n) for n in torch.round(wav_lens.float() * total).long().clamp(1, total).tolist()]
    short = [b for b in range(batch) if lengths[b] <= chunk]
    if len(short) == batch:
        return frames(wavs, wav_lens)
    rows: dict[int, object] = {}
    if short:
        longest = max(lengths[b] for b in short)
        sub_lens = torch.tensor([lengths[b] / longest for b in short], device=wavs.device)
        rows.update(zip(short, frames(wavs[short, :longest], sub_lens)))
    for b in range(batch):
        if b in rows:
            continue
        starts = chunk_starts(lengths[b], chunk, chunk - overlap)
        pieces = [wavs[b, s:min(s + chunk, lengths[b])] for s in starts]
        outputs = []
        for first in range(0, len(pieces), max_chunks_per_batch):
            group = pieces[first:first + max_chunks_per_batch]
            longest = max(p.shape[0] for p in group)
            padded = torch.zeros(len(group), longest, dtype=wavs.dtype, device=wavs.device)
            for row, piece in zip(padded, group):
                row[: piece.shape[0]] = piece
            outputs += frames(padded, torch.tensor([p.shape[0] / longest for p in group], device=wavs.device))
        kept, begin = [], 0
        for k, (start, out) in enumerate(zip(starts, outputs)):
            offset = start // stride
            end = offset + out.shape[0]
            if k + 1 < len(starts):
                end = (starts[k + 1] // stride + end) // 2  # the middle of the overlap
            kept.append(out[begin - offset:end - offset])
            begin = end
        rows[b] = torch.cat(kept)
    return [rows[b] for b in range(batch)]
