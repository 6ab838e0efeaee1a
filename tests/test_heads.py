"""elp.core.heads: shapes, padding invariance, masked frames without influence, AAM margin,
a tiny classifier that learns, and no BatchNorm anywhere."""
import pytest
import torch
import torch.nn.functional as F

from elp.core.heads import (
    AAMSoftmaxClassifier,
    AttentiveStatisticsPooling,
    CTCHead,
    PooledClassifier,
    SpeakerEmbeddingHead,
    frame_mask_to_relative_lengths,
    masked_mean,
)

D = 12


def _pooling_heads():
    torch.manual_seed(0)
    return {
        "masked_mean": masked_mean,
        "attentive_pooling": AttentiveStatisticsPooling(D, attention_dim=8),
        "pooled_classifier": PooledClassifier(D, num_classes=4, hidden_dim=16),
        "speaker_mean": SpeakerEmbeddingHead(D, embed_dim=10, pooling="mean"),
        "speaker_attentive": SpeakerEmbeddingHead(D, embed_dim=10, pooling="attentive"),
    }


def _padded_batch(lengths, dim=D, seed=0):
    generator = torch.Generator().manual_seed(seed)
    max_len = max(lengths)
    feats = torch.randn(len(lengths), max_len, dim, generator=generator)
    frame_mask = torch.arange(max_len)[None, :] < torch.tensor(lengths)[:, None]
    return feats, frame_mask


def test_output_shapes():
    feats, frame_mask = _padded_batch([7, 4, 2])
    assert masked_mean(feats, frame_mask).shape == (3, D)
    assert AttentiveStatisticsPooling(D)(feats, frame_mask).shape == (3, 2 * D)
    assert CTCHead(D, vocab_size=31)(feats, frame_mask).shape == (3, 7, 31)
    assert PooledClassifier(D, num_classes=5)(feats, frame_mask).shape == (3, 5)
    for pooling in ("mean", "attentive"):
        assert SpeakerEmbeddingHead(D, pooling=pooling)(feats, frame_mask).shape == (3, 768)
    embeddings = SpeakerEmbeddingHead(D, embed_dim=16)(feats, frame_mask)
    classifier = AAMSoftmaxClassifier(16, num_speakers=9)
    assert classifier(embeddings).shape == (3, 9)
    assert classifier(embeddings, torch.tensor([0, 4, 8])).shape == (3, 9)


def test_ctc_head_gives_log_probabilities():
    log_probs = CTCHead(D, vocab_size=6)(torch.randn(2, 5, D))
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(2, 5), atol=1e-5)


@pytest.mark.parametrize("name", list(_pooling_heads()))
def test_pooling_is_padding_invariant(name):
    head = _pooling_heads()[name]
    feats, frame_mask = _padded_batch([9, 5, 3])
    batched = head(feats, frame_mask)
    for b, length in enumerate([9, 5, 3]):
        alone = head(feats[b:b + 1, :length], frame_mask[b:b + 1, :length])
        assert torch.allclose(batched[b], alone[0], atol=1e-6), (name, b)


@pytest.mark.parametrize("name", list(_pooling_heads()))
def test_masked_frames_have_no_influence(name):
    head = _pooling_heads()[name]
    feats, frame_mask = _padded_batch([8, 3])
    feats.requires_grad_(True)
    head(feats, frame_mask).pow(2).sum().backward()
    assert torch.all(feats.grad[~frame_mask] == 0)
    assert feats.grad[frame_mask].abs().sum() > 0
    # garbage (even NaN / huge values) in padded frames changes nothing
    garbage = feats.detach().clone()
    garbage[~frame_mask] = float("nan")
    garbage[1, 3] = 1e30
    assert torch.equal(head(garbage, frame_mask), head(feats.detach(), frame_mask))


def test_bad_inputs_are_named():
    feats, frame_mask = _padded_batch([4, 2])
    with pytest.raises(ValueError, match="bool"):
        masked_mean(feats, frame_mask.long())
    with pytest.raises(ValueError, match="does not match"):
        masked_mean(feats, frame_mask[:, :3])
    empty = frame_mask.clone()
    empty[1] = False
    with pytest.raises(ValueError, match=r"batch index \[1\]"):
        masked_mean(feats, empty)


def test_relative_lengths_round_trip():
    _, frame_mask = _padded_batch([7, 4, 1])
    lengths = frame_mask_to_relative_lengths(frame_mask)
    assert torch.equal((lengths * 7).round().long(), torch.tensor([7, 4, 1]))
    with pytest.raises(ValueError, match="prefix"):
        frame_mask_to_relative_lengths(torch.tensor([[True, False, True]]))


def test_aam_margin_lowers_only_the_target_logit():
    torch.manual_seed(0)
    classifier = AAMSoftmaxClassifier(8, num_speakers=5, margin=0.2, scale=30)
    embeddings = torch.randn(4, 8)
    targets = torch.tensor([0, 1, 2, 3])
    plain = classifier(embeddings)
    with_margin = classifier(embeddings, targets)
    rows = torch.arange(4)
    assert torch.all(with_margin[rows, targets] < plain[rows, targets])
    others = torch.ones_like(plain, dtype=torch.bool)
    others[rows, targets] = False
    assert torch.allclose(with_margin[others], plain[others])
    # target logit = scale * cos(theta + m) where the angle allows it
    cosine = classifier.cosine(embeddings)[rows, targets].clamp(-1 + 1e-7, 1 - 1e-7)
    expected = 30 * torch.cos(torch.acos(cosine) + 0.2)
    usable = torch.acos(cosine) + 0.2 < torch.pi
    assert torch.allclose(with_margin[rows, targets][usable], expected[usable], atol=1e-4)
    # same loss as SpeechBrain's LogSoftmaxWrapper(AdditiveAngularMargin)
    from speechbrain.nnet.losses import AdditiveAngularMargin, LogSoftmaxWrapper

    sb_loss = LogSoftmaxWrapper(AdditiveAngularMargin(margin=0.2, scale=30))(
        classifier.cosine(embeddings).unsqueeze(1), targets.unsqueeze(1)
    )
    assert classifier.loss(embeddings, targets).item() == pytest.approx(sb_loss.item(), rel=1e-5)


def _separable_data(num_classes=3, per_class=8, frames=6):
    generator = torch.Generator().manual_seed(1)
    centres = 3 * torch.randn(num_classes, D, generator=generator)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    feats = centres[labels][:, None, :] + 0.5 * torch.randn(
        len(labels), frames, D, generator=generator
    )
    lengths = torch.randint(2, frames + 1, (len(labels),), generator=generator)
    frame_mask = torch.arange(frames)[None, :] < lengths[:, None]
    return feats, frame_mask, labels


def test_pooled_classifier_learns_separable_data():
    torch.manual_seed(0)
    feats, frame_mask, labels = _separable_data()
    model = PooledClassifier(D, num_classes=3, hidden_dim=32)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(50):
        optimizer.zero_grad()
        F.cross_entropy(model(feats, frame_mask), labels).backward()
        optimizer.step()
    assert (model(feats, frame_mask).argmax(-1) == labels).all()


def test_speaker_head_with_aam_learns_separable_data():
    torch.manual_seed(0)
    feats, frame_mask, labels = _separable_data()
    head = SpeakerEmbeddingHead(D, embed_dim=32, pooling="attentive")
    classifier = AAMSoftmaxClassifier(32, num_speakers=3)
    params = list(head.parameters()) + list(classifier.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-2)
    for _ in range(50):
        optimizer.zero_grad()
        classifier.loss(head(feats, frame_mask), labels).backward()
        optimizer.step()
    assert (classifier(head(feats, frame_mask)).argmax(-1) == labels).all()


def test_no_batchnorm_in_any_head():
    heads = [
        CTCHead(D, 5), PooledClassifier(D, 4), AttentiveStatisticsPooling(D),
        SpeakerEmbeddingHead(D, pooling="attentive"), AAMSoftmaxClassifier(16, 3),
    ]
    for head in heads:
        for module in head.modules():
            assert not isinstance(module, torch.nn.modules.batchnorm._BatchNorm), head


@pytest.mark.parametrize("head", [
    CTCHead(D, vocab_size=7), PooledClassifier(D, num_classes=3, hidden_dim=5),
    SpeakerEmbeddingHead(D, embed_dim=6, pooling="attentive"), SpeakerEmbeddingHead(D, embed_dim=6),
    AAMSoftmaxClassifier(6, num_speakers=4, margin=0.3, scale=20.0),
    AttentiveStatisticsPooling(D, attention_dim=4, global_context=False),
], ids=lambda h: type(h).__name__)
def test_head_rebuilt_from_config_has_the_same_structure(head):
    import json

    config = json.loads(json.dumps(head.config))  # what a model package stores
    rebuilt = type(head)(**config)
    assert rebuilt.config == head.config
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in head.state_dict().items()}
    rebuilt.load_state_dict(head.state_dict())
    x, mask = torch.randn(2, 5, D), torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    if isinstance(head, AAMSoftmaxClassifier):
        x = torch.randn(2, 6)
        torch.testing.assert_close(rebuilt(x), head(x), rtol=0, atol=0)
    elif isinstance(head, CTCHead):
        torch.testing.assert_close(rebuilt(x), head(x), rtol=0, atol=0)
    else:
        torch.testing.assert_close(rebuilt(x, mask), head(x, mask), rtol=0, atol=0)
