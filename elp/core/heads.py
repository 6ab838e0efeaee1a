"""Task heads on backbone features (docs/DESIGN.md).

Every head takes ``feats`` [B, F, D] (float) and ``frame_mask`` [B, F] (bool, True = real
frame). Padded frames never influence pooled outputs: they are zeroed with ``torch.where``
(so even NaN padding cannot leak, and their gradient is exactly zero) and excluded from
counts and attention softmaxes. No head uses BatchNorm (SpeechBrain's DDP wrapper turns
BatchNorm into SyncBatchNorm, which fails on CPU), which is also why the attentive pooling
here is our own and not SpeechBrain's ECAPA ``AttentiveStatisticsPooling`` (its TDNN
block contains a BatchNorm1d).

=================  ==============================================  ====================
task               head                                            output
=================  ==============================================  ====================
ASR                ``CTCHead``: Linear(D -> V), log_softmax        log-probs [B, F, V]
emotion, intent    ``PooledClassifier``: Linear(D -> 256),         logits [B, n]
                   masked mean, Linear(256 -> n)
speaker            ``SpeakerEmbeddingHead``: Linear(D -> 768),     embeddings [B, 768]
                   mean or attentive statistics pooling
                   ``AAMSoftmaxClassifier`` on the embeddings      logits [B, #speakers]
=================  ==============================================  ====================

Every head records its constructor arguments in ``head.config`` (a JSON-able dict), so
``type(head)(**head.config)`` rebuilds it (:mod:`elp.serve.package` stores class path and config).

Examples
--------
>>> feats = torch.randn(2, 5, 16)
>>> frame_mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
>>> PooledClassifier(16, num_classes=4)(feats, frame_mask).shape
torch.Size([2, 4])
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from speechbrain.nnet.losses import AdditiveAngularMargin
from torch import nn


def _check_inputs(feats: torch.Tensor, frame_mask: torch.Tensor) -> None:
    """Raise a clear error for mismatched shapes, non-bool masks or empty utterances."""
    if feats.dim() != 3:
        raise ValueError(f"feats must be [B, F, D], got shape {tuple(feats.shape)}")
    if frame_mask.dtype != torch.bool:
        raise ValueError(f"frame_mask must be a bool tensor, got {frame_mask.dtype}")
    if frame_mask.shape != feats.shape[:2]:
        raise ValueError(
            f"frame_mask shape {tuple(frame_mask.shape)} does not match feats [B, F] = "
            f"{tuple(feats.shape[:2])}"
        )
    if frame_mask.is_cuda:  # no host synchronisation per step: a device-side assertion instead
        torch._assert_async(frame_mask.any(dim=1).all(), "an utterance has no valid frame")
        return
    empty = (~frame_mask.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"utterance(s) at batch index {empty} have no valid frame; the input is shorter "
            f"than one backbone frame (drop or pad such utterances in data preparation)"
        )


def masked_mean(feats: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
    """Mean over the valid frames of each utterance: feats [B, F, D], frame_mask [B, F] -> [B, D].

    Raises
    ------
    ValueError
        On a shape mismatch, a non-bool mask or an utterance with no valid frame.

    Examples
    --------
    >>> feats = torch.tensor([[[1.0], [3.0], [100.0]]])
    >>> masked_mean(feats, torch.tensor([[True, True, False]]))
    tensor([[2.]])
    """
    _check_inputs(feats, frame_mask)
    mask = frame_mask.unsqueeze(-1)
    summed = torch.where(mask, feats, torch.zeros_like(feats)).sum(dim=1)
    return summed / mask.sum(dim=1).to(feats.dtype)


def frame_mask_to_relative_lengths(frame_mask: torch.Tensor) -> torch.Tensor:
    """SpeechBrain relative lengths [B] (valid frames / F, in (0, 1]) from a [B, F] prefix ``frame_mask``.

    ``round(lengths[b] * F)`` gives back the number of valid frames, which is how
    ``speechbrain.nnet.losses.ctc_loss`` and ``length_to_mask`` read them.

    Raises
    ------
    ValueError
        If ``frame_mask`` is not a prefix mask (True frames, then False padding).

    Examples
    --------
    >>> frame_mask_to_relative_lengths(torch.tensor([[True, True, True, False]]))
    tensor([0.7500])
    """
    num_frames = frame_mask.shape[1]
    valid = frame_mask.sum(dim=1)
    prefix = torch.arange(num_frames, device=frame_mask.device)[None, :] < valid[:, None]
    if not torch.equal(prefix, frame_mask):
        raise ValueError("frame_mask is not a prefix mask (True frames then False padding)")
    return valid.float() / num_frames


class AttentiveStatisticsPooling(nn.Module):
    """Attentive statistics pooling (Okabe et al. 2018; channel-wise attention with global
    context as in ECAPA-TDNN), masked, without BatchNorm.

    Attention e = Linear(tanh(Linear([x; mean; std]))) per frame and channel, softmax over
    the valid frames; output [weighted mean; weighted std].

    Parameters
    ----------
    attention_dim
        Hidden size of the attention network.
    global_context
        Whether the attention also sees the utterance mean and std.
    eps
        Variance floor before the square root.

    Examples
    --------
    >>> pool = AttentiveStatisticsPooling(8)
    >>> pool(torch.randn(2, 6, 8), torch.ones(2, 6, dtype=torch.bool)).shape
    torch.Size([2, 16])
    """

    def __init__(self, in_dim: int, attention_dim: int = 128, global_context: bool = True,
                 eps: float = 1e-6):
        super().__init__()
        self.config = dict(in_dim=in_dim, attention_dim=attention_dim, global_context=global_context, eps=eps)
        self.global_context = global_context
        self.eps = eps
        context_dim = 3 * in_dim if global_context else in_dim
        self.attention = nn.Sequential(
            nn.Linear(context_dim, attention_dim), nn.Tanh(), nn.Linear(attention_dim, in_dim)
        )

    def _statistics(self, feats: torch.Tensor, weights: torch.Tensor):
        mean = (weights * feats).sum(dim=1)
        var = (weights * (feats - mean.unsqueeze(1)).pow(2)).sum(dim=1)
        return mean, var.clamp(min=self.eps).sqrt()

    def forward(self, feats: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """feats [B, F, D], frame_mask [B, F] -> pooled [B, 2 D] (mean then std)."""
        _check_inputs(feats, frame_mask)
        mask = frame_mask.unsqueeze(-1)  # [B, F, 1]
        feats = torch.where(mask, feats, torch.zeros_like(feats))
        if self.global_context:
            uniform = mask.to(feats.dtype) / mask.sum(dim=1, keepdim=True)
            mean, std = self._statistics(feats, uniform)
            num_frames = feats.shape[1]
            context = torch.cat(
                [feats, mean.unsqueeze(1).expand(-1, num_frames, -1),
                 std.unsqueeze(1).expand(-1, num_frames, -1)], dim=-1,
            )
        else:
            context = feats
        energies = self.attention(context).masked_fill(~mask, float("-inf"))
        weights = torch.softmax(energies, dim=1)
        mean, std = self._statistics(feats, weights)
        return torch.cat([mean, std], dim=-1)


class CTCHead(nn.Module):
    """ASR head: Linear(in_dim -> vocab_size) then log_softmax.

    Padded frames get log-probs too; CTC ignores them through the input lengths
    (``frame_mask.sum(1)``, or ``frame_mask_to_relative_lengths`` for SpeechBrain).

    Parameters
    ----------
    vocab_size
        Output tokens V, including the CTC blank.

    Examples
    --------
    >>> head = CTCHead(16, vocab_size=30)
    >>> log_probs = head(torch.randn(2, 7, 16))
    >>> log_probs.shape, bool(torch.allclose(log_probs.exp().sum(-1), torch.ones(2, 7)))
    (torch.Size([2, 7, 30]), True)
    """

    def __init__(self, in_dim: int, vocab_size: int):
        super().__init__()
        self.config = dict(in_dim=in_dim, vocab_size=vocab_size)
        self.proj = nn.Linear(in_dim, vocab_size)

    def forward(self, feats: torch.Tensor,
                frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """feats [B, F, D] -> log-probs [B, F, V]; frame_mask is accepted and unused."""
        return F.log_softmax(self.proj(feats), dim=-1)


class PooledClassifier(nn.Module):
    """Utterance classifier for emotion and intent: Linear(in_dim -> hidden_dim), masked
    mean over frames, Linear(hidden_dim -> num_classes) (the paper's emotion/intent head; no nonlinearity).

    Examples
    --------
    >>> clf = PooledClassifier(16, num_classes=4)
    >>> clf(torch.randn(3, 9, 16), torch.ones(3, 9, dtype=torch.bool)).shape
    torch.Size([3, 4])
    """

    def __init__(self, in_dim: int, num_classes: int, hidden_dim: int = 256):
        super().__init__()
        self.config = dict(in_dim=in_dim, num_classes=num_classes, hidden_dim=hidden_dim)
        self.proj = nn.Linear(in_dim, hidden_dim)
        self.out = nn.Linear(hidden_dim, num_classes)

    def forward(self, feats: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """feats [B, F, D], frame_mask [B, F] -> logits [B, num_classes]."""
        return self.out(masked_mean(self.proj(feats), frame_mask))


class SpeakerEmbeddingHead(nn.Module):
    """Speaker embedding extractor: Linear(in_dim -> embed_dim), then pooling.

    * ``pooling="mean"``: masked mean -> embedding [B, embed_dim].
    * ``pooling="attentive"``: attentive statistics pooling (mean and std, 2 embed_dim)
      then Linear(2 embed_dim -> embed_dim) -> embedding [B, embed_dim].

    Raises
    ------
    ValueError
        For any other ``pooling``.

    Examples
    --------
    >>> head = SpeakerEmbeddingHead(16, embed_dim=32, pooling="attentive")
    >>> head(torch.randn(2, 10, 16), torch.ones(2, 10, dtype=torch.bool)).shape
    torch.Size([2, 32])
    """

    def __init__(self, in_dim: int, embed_dim: int = 768, pooling: str = "mean"):
        super().__init__()
        if pooling not in ("mean", "attentive"):
            raise ValueError(f"pooling must be 'mean' or 'attentive', got {pooling!r}")
        self.config = dict(in_dim=in_dim, embed_dim=embed_dim, pooling=pooling)
        self.pooling = pooling
        self.proj = nn.Linear(in_dim, embed_dim)
        if pooling == "attentive":
            self.pool = AttentiveStatisticsPooling(embed_dim)
            self.stats_proj = nn.Linear(2 * embed_dim, embed_dim)

    def forward(self, feats: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """feats [B, F, D], frame_mask [B, F] -> embeddings [B, embed_dim]."""
        frames = self.proj(feats)
        if self.pooling == "mean":
            return masked_mean(frames, frame_mask)
        return self.stats_proj(self.pool(frames, frame_mask))


class AAMSoftmaxClassifier(nn.Module):
    """Additive angular margin (ArcFace / AAM-softmax) speaker classifier.

    Holds one unit-norm weight vector per training speaker. ``forward(emb)`` returns the
    scaled cosines ``scale * cos(theta_j)`` (inference; argmax = nearest speaker);
    ``forward(emb, targets)`` replaces the target column by ``scale * cos(theta_y + margin)``
    using SpeechBrain's ``AdditiveAngularMargin`` (non-easy margin), so
    ``F.cross_entropy(logits, targets)`` is the AAM-softmax loss (``loss`` does this). For
    SpeechBrain's ``LogSoftmaxWrapper(AdditiveAngularMargin(margin, scale))`` feed it
    ``cosine(emb).unsqueeze(1)`` instead; both give the same loss.

    Parameters
    ----------
    margin
        Angular margin in radians.
    scale
        Logit scale s.

    Examples
    --------
    >>> clf = AAMSoftmaxClassifier(8, num_speakers=5)
    >>> emb, spk = torch.randn(4, 8), torch.tensor([0, 1, 2, 3])
    >>> clf(emb, spk).shape, clf.loss(emb, spk).dim()
    (torch.Size([4, 5]), 0)
    """

    def __init__(self, embed_dim: int, num_speakers: int, margin: float = 0.2,
                 scale: float = 30.0):
        super().__init__()
        self.config = dict(embed_dim=embed_dim, num_speakers=num_speakers, margin=margin, scale=scale)
        self.weight = nn.Parameter(torch.empty(num_speakers, embed_dim))
        nn.init.xavier_uniform_(self.weight)
        self.margin = margin
        self.scale = scale
        self.angular_margin = AdditiveAngularMargin(margin=margin, scale=scale)

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """embeddings [B, E] -> cosine similarities to each speaker [B, num_speakers]."""
        return F.linear(F.normalize(embeddings, dim=-1), F.normalize(self.weight, dim=-1))

    def forward(self, embeddings: torch.Tensor,
                targets: torch.Tensor | None = None) -> torch.Tensor:
        """embeddings [B, E], targets [B] (long, optional) -> logits [B, num_speakers]."""
        cosine = self.cosine(embeddings)
        if targets is None:
            return self.scale * cosine
        one_hot = F.one_hot(targets.long().reshape(-1), cosine.shape[-1]).to(cosine.dtype)
        return self.angular_margin(cosine, one_hot)

    def loss(self, embeddings: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean AAM-softmax cross-entropy over the batch (scalar)."""
        return F.cross_entropy(self(embeddings, targets), targets.long().reshape(-1))
