"""The CNN-feature cache: every method gives what the waveform path gives, in training too;
frame crops versus waveform crops."""

import pytest
import torch

from elp.core.backbones import load_backbone
from elp.train.feature_cache import (CNNFeatureCache, audio_key, batch_audio_keys, cached_cnn_forward,
                               cnn_fingerprint, crop_frames)
from elp.core.methods import METHODS
from elp.core.model import AdaptedSSL

OPTIONS = dict(l_dim=24, e_dim=8, prompt_frames=4, prefix_frames=4, lora_rank=2)


def build(checkpoints, name, method, seed=1, **extra):
    torch.manual_seed(seed)
    backbone = load_backbone(name, source=str(checkpoints[name]))
    return AdaptedSSL(backbone, method, **{**OPTIONS, **extra})


def batch(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(3, 8000, generator=generator), torch.tensor([1.0, 0.7, 0.45])


def _loss(feats, frame_mask):
    return (feats * frame_mask[..., None]).pow(2).mean() + feats[:, 0].sum()


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("name", ["wavlm_plus", "wavlm_large", "wav2vec2"])
def test_cached_cnn_path_equals_waveform_path(tiny_checkpoints, tmp_path, name, method):
    """fp32 cache: outputs (<= 1e-5) and gradients equal the waveform path's, epoch 1 and 2."""
    wavs, wav_lens = batch()
    ids = ["a", "b", "c"]
    model = build(tiny_checkpoints, name, method, backbone_dropout=False).train()
    cache = CNNFeatureCache.for_model(tmp_path, model, dtype="float32")
    feats, mask = model(wavs, wav_lens)
    _loss(feats, mask).backward()
    live_grads = {n: p.grad.clone() for n, p in model.learnable_parameters().items()}
    for epoch in (1, 2):
        model.zero_grad()
        cached, cached_mask = cached_cnn_forward(model, cache, ids, wavs, wav_lens)
        assert cache.hits == (0 if epoch == 1 else 3)
        assert torch.equal(cached_mask, mask) and cached.shape == feats.shape
        assert (cached - feats).abs().max().item() <= 1e-5, f"{name}/{method} epoch {epoch}"
        _loss(cached, cached_mask).backward()
        for pname, grad in live_grads.items():
            other = dict(model.named_parameters())[pname].grad
            assert torch.allclose(grad, other, atol=1e-5, rtol=1e-4), f"{name}/{method}: gradient of {pname}"


def test_cnn_cache_is_shared_across_methods_and_keyed_by_content(tiny_checkpoints, tmp_path):
    wavs, wav_lens = batch()
    el = build(tiny_checkpoints, "wavlm_plus", "el")
    elp = build(tiny_checkpoints, "wavlm_plus", "elp", seed=7)  # other adapters, same backbone
    other_backbone = build(tiny_checkpoints, "wavlm", "el")
    assert cnn_fingerprint(el.backbone) == cnn_fingerprint(elp.backbone) != cnn_fingerprint(other_backbone.backbone)
    cache = CNNFeatureCache.for_model(tmp_path, el)
    with torch.no_grad():
        cached_cnn_forward(el, cache, ["a", "b", "c"], wavs, wav_lens)
        shared = CNNFeatureCache.for_model(tmp_path, elp)
        cached_cnn_forward(elp, shared, ["x", "y", "z"], wavs, wav_lens)  # other ids, same audio
    assert shared.hits == 3
    keys = batch_audio_keys(wavs, el.backbone.sample_lengths(wavs, wav_lens))
    assert all(key in cache for key in keys)
    assert not any(key in CNNFeatureCache.for_model(tmp_path, other_backbone) for key in keys)
    assert not any(key in CNNFeatureCache.for_model(tmp_path, el, dtype="bfloat16") for key in keys)
    noisy = wavs + 0.1  # a noisy copy under the same ids is computed, not served
    with torch.no_grad():
        out, mask = cached_cnn_forward(el, cache, ["a", "b", "c"], noisy, wav_lens)
        live, _ = el(noisy, wav_lens)
    assert cache.hits == 0
    assert audio_key(noisy[0]) in cache
    assert (out - live).abs().max().item() <= 5e-3  # fp16 storage (the default)


@pytest.mark.parametrize("dtype, bound", [("bfloat16", 5e-2), ("float16", 5e-3)])
def test_half_precision_storage_changes_outputs_little(tiny_checkpoints, tmp_path, dtype, bound):
    wavs, wav_lens = batch()
    model = build(tiny_checkpoints, "wavlm_plus", "elp").eval()
    cache = CNNFeatureCache.for_model(tmp_path, model, dtype=dtype)
    with torch.no_grad():
        live, mask = model(wavs, wav_lens)
        first, _ = cached_cnn_forward(model, cache, None, wavs, wav_lens)
        second, _ = cached_cnn_forward(model, cache, None, wavs, wav_lens)
    assert torch.equal(first, second)  # epoch 1 already sees the stored (rounded) features
    diff = ((first - live) * mask[..., None]).abs().max().item()
    assert 0 < diff <= bound


@pytest.mark.parametrize("name", ["wavlm_plus", "wavlm_large"])
def test_frame_crop_versus_waveform_crop(tiny_checkpoints, name):
    """A crop of the cached frames equals the CNN output of the waveform crop that starts at
    sample 320 * start, up to per-utterance normalisation (GroupNorm statistics for Base,
    waveform normalisation for Large): the bounds are the figures quoted in docs/SPEED.md."""
    backbone = load_backbone(name, source=str(tiny_checkpoints[name])).eval()
    generator = torch.Generator().manual_seed(0)
    wav = torch.randn(1, 16000, generator=generator) * torch.linspace(0.2, 1.0, 16000)  # non-stationary
    hop = 320
    crop_samples = 8000
    max_frames = int(backbone.num_frames(torch.tensor(crop_samples)))
    full, mask = backbone.extract_cnn_features(wav, torch.tensor([16000]))
    cropped, lens, starts = crop_frames(full, mask.sum(1), max_frames, torch.Generator().manual_seed(4))
    start = int(starts[0])
    assert int(lens[0]) == max_frames and start > 0
    piece = wav[:, start * hop:start * hop + crop_samples]
    reference, _ = backbone.extract_cnn_features(piece, torch.tensor([crop_samples]))
    assert reference.shape == cropped.shape
    scale = reference.abs().max().item()
    relative = (cropped - reference).abs().max().item() / scale
    assert 1e-4 < relative < 0.5, relative  # differ only through the normalisation statistics
    # with the per-utterance statistics out of the picture the two are the same numbers
    backbone.normalize_waveform = False
    first = backbone.model.feature_extractor.conv_layers[0]
    if isinstance(getattr(first, "layer_norm", None), torch.nn.GroupNorm):
        first.layer_norm = torch.nn.Identity()  # Base: no per-utterance GroupNorm statistics
    full, mask = backbone.extract_cnn_features(wav, torch.tensor([16000]))
    reference, _ = backbone.extract_cnn_features(piece, torch.tensor([crop_samples]))
    assert (full[:, start:start + max_frames] - reference).abs().max().item() <= 1e-5


def test_crop_frames_keeps_short_utterances_and_errors():
    feats = torch.randn(2, 7, 3)
    out, lens, starts = crop_frames(feats, torch.tensor([7, 2]), 5)
    assert out.shape == (2, 5, 3) and lens.tolist() == [5, 2] and starts[1] == 0
    assert torch.equal(out[1, :2], feats[1, :2]) and not out[1, 2:].any()
    assert torch.equal(out[0], feats[0, int(starts[0]):int(starts[0]) + 5])
    seen = {int(crop_frames(feats, torch.tensor([7, 2]), 5)[2][0]) for _ in range(200)}
    assert seen == {0, 1, 2}  # every offset is drawn
    with pytest.raises(ValueError, match="max_frames"):
        crop_frames(feats, torch.tensor([7, 2]), 0)


def test_cached_cnn_forward_with_crops_trains(tiny_checkpoints, tmp_path):
    model = build(tiny_checkpoints, "wavlm_plus", "elp").train()
    cache = CNNFeatureCache.for_model(tmp_path, model)
    wavs, wav_lens = batch()
    feats, mask = cached_cnn_forward(model, cache, ["a", "b", "c"], wavs, wav_lens, max_frames=10,
                                     generator=torch.Generator().manual_seed(0))
    assert feats.shape[:2] == (3, 10) and mask.sum(1).tolist() == [10, 10, 10]
    _loss(feats, mask).backward()
    assert all(p.grad is not None for p in model.learnable_parameters().values())
