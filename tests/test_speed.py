"""Speed options must not change results: contiguous attention input, activation checkpointing,
layers without autograd below e_first_layer, the hidden-state cache, bf16 autocast."""

import pytest
import torch
from torch import nn

from elp.core.backbones import load_backbone
from elp.train.feature_cache import HiddenStateCache, audio_key, backbone_fingerprint, batch_audio_keys, cached_forward
from elp.core.model import AdaptedSSL

OPTIONS = dict(l_dim=24, e_dim=8, prompt_frames=4, prefix_frames=4, lora_rank=2)


def build(checkpoints, name, method, seed=1, backbone_kwargs=None, **extra):
    torch.manual_seed(seed)
    backbone = load_backbone(name, source=str(checkpoints[name]), **(backbone_kwargs or {}))
    return AdaptedSSL(backbone, method, **{**OPTIONS, **extra})


def batch(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(3, 8000, generator=generator), torch.tensor([1.0, 0.7, 0.45])


@pytest.mark.parametrize("name", ["wavlm", "wavlm_plus", "wavlm_large", "wav2vec2", "hubert"])
def test_contiguous_attention_input_equals_stock(tiny_checkpoints, name):
    wavs, wav_lens = batch()
    fast = load_backbone(name, source=str(tiny_checkpoints[name])).eval()
    stock = load_backbone(name, source=str(tiny_checkpoints[name]), contiguous_attention=False).eval()
    expected_hooks = fast.num_layers if name.startswith("wavlm") else 0  # wav2vec2/HuBERT need none
    assert len(fast._speed_hooks) == expected_hooks and not stock._speed_hooks
    seen = []
    for layer in fast.layers:  # WavLM's attention really gets a time-major input
        layer.attention.register_forward_pre_hook(lambda m, args: seen.append(args[0].transpose(0, 1).is_contiguous()))
    with torch.no_grad():
        ours, theirs = fast(wavs, wav_lens), stock(wavs, wav_lens)
    assert len(seen) == fast.num_layers and all(seen) == name.startswith("wavlm")
    for mine, reference in zip(ours.hidden_states, theirs.hidden_states):
        assert (mine - reference).abs().max().item() <= 1e-5


def _loss(feats, frame_mask):
    return (feats * frame_mask[..., None]).pow(2).mean() + feats[:, 0].sum()


@pytest.mark.parametrize("method", ["el", "full", "prefix"])
def test_activation_checkpointing_same_outputs_and_gradients(tiny_checkpoints, method):
    wavs, wav_lens = batch()
    results = []
    for checkpointing in (False, True):
        model = build(tiny_checkpoints, "wavlm_plus", method, activation_checkpointing=checkpointing,
                      backbone_dropout=False).train()
        feats, frame_mask = model(wavs, wav_lens)
        _loss(feats, frame_mask).backward()
        grads = {n: p.grad.clone() for n, p in model.learnable_parameters().items()}
        results.append((feats.detach(), grads))
    (plain, plain_grads), (ckpt, ckpt_grads) = results
    assert torch.allclose(plain, ckpt, atol=1e-6)
    assert plain_grads.keys() == ckpt_grads.keys()
    for name in plain_grads:
        assert torch.allclose(plain_grads[name], ckpt_grads[name], atol=1e-6, rtol=1e-5), name


def test_e_first_layer_trains_nothing_below_k_and_runs_it_without_autograd(tiny_checkpoints):
    model = build(tiny_checkpoints, "wavlm_plus", "el", e_first_layer=1).train()
    backbone = model.backbone
    assert backbone.no_grad_layers == 1
    assert set(model.encoder_adapters["ffn"]) == {"1"}  # el: layers k .. L-2
    trainable_lns = {n for n in model.learnable_parameters() if "layer_norm" in n}
    assert trainable_lns == {f"backbone.model.encoder.layers.{i}.{ln}.{p}" for i in (1, 2)
                             for ln in ("layer_norm", "final_layer_norm") for p in ("weight", "bias")}
    tracks_grad = []
    for layer in backbone.layers:
        layer.register_forward_hook(lambda m, i, out: tracks_grad.append(out[0].requires_grad))
    wavs, wav_lens = batch()
    feats, frame_mask = model(wavs, wav_lens)
    assert tracks_grad == [False, True, True]
    _loss(feats, frame_mask).backward()
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and param.grad.abs().sum() > 0, f"{name} got no gradient"
        else:
            assert param.grad is None, f"frozen {name} got a gradient"
    # L-adapters still read (and train on) the lower layers' outputs
    assert model.layer_adapters.adapters[0].proj.weight.grad.abs().sum() > 0


def test_e_first_layer_keeps_autograd_where_pseudo_frames_need_it(tiny_checkpoints):
    assert build(tiny_checkpoints, "wavlm_plus", "elp", e_first_layer=1).backbone.no_grad_layers == 0
    assert build(tiny_checkpoints, "wavlm_plus", "e_only", e_first_layer=2).backbone.no_grad_layers == 2
    with pytest.raises(ValueError, match="e_first_layer=3"):
        build(tiny_checkpoints, "wavlm_plus", "el", e_first_layer=3)


def test_frozen_backbone_has_no_dropout_unless_asked(tiny_checkpoints):
    def probabilities(model):
        return {m.p for m in model.backbone.modules() if isinstance(m, nn.Dropout)} | {
            m.dropout for m in model.backbone.modules() if isinstance(getattr(m, "dropout", None), float)}

    assert probabilities(build(tiny_checkpoints, "wavlm_plus", "el")) == {0.0}
    assert probabilities(build(tiny_checkpoints, "wavlm_plus", "full")) != {0.0}
    assert probabilities(build(tiny_checkpoints, "wavlm_plus", "el", backbone_dropout=True)) != {0.0}


@pytest.mark.parametrize("name", ["wavlm_plus", "wavlm_large", "wav2vec2"])
@pytest.mark.parametrize("method", ["l_only", "weighted_sum"])
def test_hidden_state_cache_round_trip(tiny_checkpoints, tmp_path, name, method):
    model = build(tiny_checkpoints, name, method).train()
    assert model.hidden_states_cacheable
    cache = HiddenStateCache.for_model(tmp_path, model)
    wavs, wav_lens = batch()
    ids = ["spk1-utt1", "spk1/utt2", "spk2 utt3"]
    live, live_mask = model(wavs, wav_lens)
    filled, filled_mask = cached_forward(model, cache, ids, wavs, wav_lens)  # epoch 1: computes, stores
    keys = batch_audio_keys(wavs, model.backbone.sample_lengths(wavs, wav_lens))
    assert cache.hits == 0 and all(key in cache for key in keys)
    padded_more = torch.cat([wavs, torch.randn(3, 800)], dim=1)  # padding does not change the keys
    cached, cached_mask = cached_forward(model, cache, ids, padded_more, wav_lens * 8000 / 8800)  # epoch 2: reads
    assert cache.hits == 3
    assert torch.equal(cached_mask, live_mask) and torch.equal(filled_mask, live_mask)
    valid = live_mask[..., None]  # padded frames are masked out by every head
    assert ((cached - live) * valid).abs().max().item() <= 1e-6
    assert ((filled - live) * valid).abs().max().item() <= 1e-6
    cached.pow(2).mean().backward()  # the trainable part learns from cached states
    assert all(p.grad is not None for p in model.learnable_parameters().values())


def test_hidden_state_cache_is_keyed_by_backbone_weights(tiny_checkpoints, tmp_path):
    model = build(tiny_checkpoints, "wavlm_plus", "l_only")
    other = build(tiny_checkpoints, "wavlm", "l_only")
    assert backbone_fingerprint(model.backbone) == backbone_fingerprint(build(tiny_checkpoints, "wavlm_plus", "l_only", seed=5).backbone)
    assert backbone_fingerprint(model.backbone) != backbone_fingerprint(other.backbone)
    cache = HiddenStateCache.for_model(tmp_path, model)
    key = audio_key(torch.ones(800))
    cache.put(key, torch.zeros(4, 5, 32))
    assert key in cache and key not in HiddenStateCache.for_model(tmp_path, other)


def test_hidden_state_cache_is_keyed_by_audio_content(tiny_checkpoints, tmp_path):
    """A second set reusing the ids (a noisy copy) gets its own states; fixed audio is recomputed."""
    model = build(tiny_checkpoints, "wavlm_plus", "l_only").eval()
    cache = HiddenStateCache.for_model(tmp_path, model)
    clean, wav_lens = batch()
    noisy = clean + 0.5 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(3))
    ids = ["u1", "u2", "u3"]
    with torch.no_grad():
        from_clean, _ = cached_forward(model, cache, ids, clean, wav_lens)
        from_noisy, mask = cached_forward(model, cache, ids, noisy, wav_lens)  # same ids, other audio
        live_noisy, _ = model(noisy, wav_lens)
    assert cache.hits == 0  # nothing served across sets
    valid = mask[..., None]
    assert ((from_noisy - live_noisy) * valid).abs().max().item() <= 1e-6
    assert ((from_noisy - from_clean) * valid).abs().max().item() > 1e-2
    fixed = clean.clone()
    fixed[1, :100] = 0.0  # "fixed" audio of u2: recomputed, the others are read
    fixed_key = audio_key(fixed[1, :int(model.backbone.sample_lengths(fixed, wav_lens)[1])])
    assert fixed_key not in cache
    with torch.no_grad():
        out, _ = cached_forward(model, cache, ids, fixed, wav_lens)
        live_fixed, _ = model(fixed, wav_lens)
    assert fixed_key in cache
    hits = cache.hits
    with torch.no_grad():
        cached_forward(model, cache, ids, fixed, wav_lens)
    assert cache.hits == hits + 3
    assert ((out - live_fixed) * valid).abs().max().item() <= 1e-6


def test_hidden_state_cache_refuses_adapted_backbones(tiny_checkpoints):
    for method, options in (("el", {}), ("l_only", {"backbone_dropout": True})):
        model = build(tiny_checkpoints, "wavlm_plus", method, **options)
        assert not model.hidden_states_cacheable
        with pytest.raises(ValueError, match="cannot be precomputed"):
            model.forward_from_hidden_states([torch.zeros(1, 2, 32)] * 4, torch.ones(1, 2, dtype=torch.bool))


@pytest.mark.parametrize("method", ["el", "lora", "full"])
def test_bf16_autocast_on_cpu(tiny_checkpoints, method):
    model = build(tiny_checkpoints, "wavlm_plus", method).train()
    wavs, wav_lens = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats, frame_mask = model(wavs, wav_lens)
        loss = _loss(feats.float(), frame_mask)
    assert feats.dtype == torch.bfloat16 and torch.isfinite(feats).all()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.learnable_parameters().values())


# ------------------------------------------------------------------- group norm in fp16
@pytest.mark.parametrize("std", [1.5, 4.0, 30.0])
@pytest.mark.parametrize("autograd", [False, True])
def test_masked_group_norm_fp16_matches_fp32_on_large_activations(std, autograd):
    from elp.core.backbones import masked_group_norm

    torch.manual_seed(0)
    norm = nn.GroupNorm(64, 64)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    x = std * torch.randn(2, 64, 48000) + 0.3 * std  # 15 s of first-layer frames
    mask = torch.ones(2, 48000, dtype=torch.bool)
    mask[1, 30000:] = False
    half = x.half().requires_grad_(autograd)
    with torch.set_grad_enabled(autograd):
        out16 = masked_group_norm(half, mask, norm)
    out32 = masked_group_norm(x, mask, norm)
    assert out16.dtype == torch.float16 and torch.isfinite(out16).all()
    assert out16[0].float().std().item() > 0.5  # channels are not zeroed
    assert (out16.float() - out32).abs().max().item() <= 1e-2
    assert not out16[1, :, 30000:].any()


# ------------------------------------------------------------------- SDPA and bf16 weights
@pytest.mark.parametrize("method", ["el", "elp", "lora", "prefix", "full"])
@pytest.mark.parametrize("name", ["wavlm_plus", "wavlm_large"])
def test_sdpa_attention_same_outputs_and_gradients(tiny_checkpoints, name, method):
    wavs, wav_lens = batch()
    results = []
    for sdpa in (False, True):
        model = build(tiny_checkpoints, name, method, backbone_kwargs=dict(sdpa_attention=sdpa),
                      backbone_dropout=False).train()
        assert model.backbone.sdpa_attention == sdpa
        feats, frame_mask = model(wavs, wav_lens)
        _loss(feats, frame_mask).backward()
        results.append((feats.detach(), {n: p.grad.clone() for n, p in model.learnable_parameters().items()}))
    (hf, hf_grads), (sdpa, sdpa_grads) = results
    assert (hf - sdpa).abs().max().item() <= 1e-5
    for pname in hf_grads:
        assert torch.allclose(hf_grads[pname], sdpa_grads[pname], atol=1e-5, rtol=1e-4), pname


def test_sdpa_attention_can_be_switched_off_again(tiny_checkpoints):
    backbone = load_backbone("wavlm_plus", source=str(tiny_checkpoints["wavlm_plus"]), sdpa_attention=True)
    attention = backbone.layers[0].attention
    assert "torch_multi_head_self_attention" in vars(attention) and not backbone._speed_hooks
    backbone.set_sdpa_attention(False)
    assert "torch_multi_head_self_attention" not in vars(attention)
    assert len(backbone._speed_hooks) == backbone.num_layers and not backbone.sdpa_attention


@pytest.mark.parametrize("method", ["el", "elp", "lora", "prefix", "weighted_sum", "full"])
def test_cast_frozen_bf16_equals_autocast_of_fp32_weights(tiny_checkpoints, method):
    """Holding frozen weights in bf16 gives what autocast computes from fp32 weights, trains the
    same parameters in fp32, and leaves LayerNorms, trainables and the CNN alone."""
    wavs, wav_lens = batch()
    reference = build(tiny_checkpoints, "wavlm_plus", method, backbone_dropout=False).train()
    model = build(tiny_checkpoints, "wavlm_plus", method, backbone_dropout=False).train()
    names = model.cast_frozen_(torch.bfloat16)
    assert "feature_projection.projection.weight" in names
    frozen_layers = method in ("el", "elp", "lora", "prefix", "weighted_sum")  # full trains the layers
    assert ("encoder.layers.0.feed_forward.intermediate_dense.weight" in names) == frozen_layers
    assert not any("parametrizations" in name for name in names)  # LoRA originals stay fp32
    for pname, param in model.backbone.model.named_parameters():
        if pname in names:
            assert param.dtype == torch.bfloat16 and not param.requires_grad
        else:
            assert param.dtype == torch.float32, pname
    assert all(p.dtype == torch.float32 for p in model.learnable_parameters().values())
    outputs = []
    for net in (reference, model):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            feats, frame_mask = net(wavs, wav_lens)
            loss = _loss(feats.float(), frame_mask)
        loss.backward()
        outputs.append((feats.float().detach(), {n: p.grad for n, p in net.learnable_parameters().items()}))
    (ref, ref_grads), (fast, fast_grads) = outputs
    assert (ref - fast).abs().max().item() <= 1e-2 * ref.abs().max().item()
    for pname, grad in ref_grads.items():
        assert torch.isfinite(fast_grads[pname]).all()
        assert torch.allclose(grad, fast_grads[pname], atol=2e-2 * grad.abs().max().item() + 1e-6), pname


def test_cast_frozen_runs_without_caller_autocast(tiny_checkpoints):
    model = build(tiny_checkpoints, "wavlm_plus", "el").eval()
    wavs, wav_lens = batch()
    with torch.no_grad():
        expected, _ = model(wavs, wav_lens)
        model.cast_frozen_(torch.bfloat16)
        feats, _ = model(wavs, wav_lens)  # no autocast here: the backbone opens one itself
    assert feats.dtype == torch.float32
    assert (feats - expected).abs().max().item() <= 5e-2 * expected.abs().max().item()
    with pytest.raises(ValueError, match="bfloat16 or float16"):
        model.cast_frozen_(torch.float64)
