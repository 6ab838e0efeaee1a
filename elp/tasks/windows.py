"""Windowed utterance embeddings: bounded memory for long speaker-verification inputs.

A frozen WavLM Base+ forward keeps a [B * heads, T, T] relative position bias and the
attention weights, so its memory grows with the square of the duration (measured on CPU,
fp32, batch 1: 291 MiB at 15 s, 745 MiB at 30 s, 2.36 GiB at 60 s). VoxCeleb test
utterances last up to minutes. :func:`windowed_embeddings` embeds an utterance longer than
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

SAMPLE_RATE = 16000

#: embed(wavs [B, T], wav_lens [B] relative lengths) -> embeddings [B, E]
EmbedFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def window_bounds(num_samples: int, window: int, hop: int) -> list[tuple[int, int]]:
    """(start, end) sample bounds of the windows covering ``num_samples``.

    Parameters
    ----------
    num_samples : int
        Utterance length in samples (> 0).
    window : int
        Window length in samples.
    hop : int
        Distance between window starts (1 <= hop <= window).

    Returns
    -------
    list[tuple[int, int]]
        One window ``(0, num_samples)`` when ``num_samples <= window``; otherwise windows of
        exactly ``window`` samples starting at 0, hop, 2 hop, ... and a last one ending at
        ``num_samples``.

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
    """Embeddings of a padded batch, long utterances embedded in windows.

    Parameters
    ----------
    embed : Callable
        ``embed(wavs [B, T], wav_lens [B]) -> [B, E]`` with SpeechBrain relative lengths,
        e.g. ``lambda w, l: head(*model(w, l))``; it must not depend on padding.
    wavs : torch.Tensor
        [B, T] padded waveforms.
    wav_lens : torch.Tensor, optional
        [B] relative lengths (valid samples / T); None = all T samples valid.
    window_seconds : float
        Window length; utterances up to this long are embedded whole.
    overlap_seconds : float
        Overlap of consecutive windows (0 <= overlap < window).
    combine : str
        ``"mean_normalized"`` (mean of L2-normalised window embeddings) or ``"mean"``.
    max_windows_per_batch : int
        Windows per ``embed`` call: peak memory is that of a batch of this many windows.
    sample_rate : int
        Samples per second.

    Returns
    -------
    torch.Tensor
        [B, E] row b is the whole-utterance embedding when utterance b fits one window, else the
        combination of its window embeddings.

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
