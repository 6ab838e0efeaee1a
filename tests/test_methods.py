"""Every backbone x method: shapes, exact trainable sets, gradients, padding invariance."""

import pytest
import torch

from elp.core.backbones import BACKBONES, load_backbone
from elp.core.methods import METHODS
from elp.core.model import AdaptedSSL

L_DIM, E_DIM, K = 24, 8, 4
OPTIONS = dict(l_dim=L_DIM, e_dim=E_DIM, prompt_frames=K, prefix_frames=K, lora_rank=2)
LAYER = "backbone.model.encoder.layers.{}"


def build(checkpoints, name, method, **extra):
    torch.manual_seed(1)
    backbone = load_backbone(name, source=str(checkpoints[name]))
    return AdaptedSSL(backbone, method, **{**OPTIONS, **extra})


def expected_trainable(method: str, num_layers: int, full_encoder_names: set[str]) -> set[str]:
    """The spec's trainable set, written out independently of elp.core.methods."""
    def e_adapters(site, layers):
        return {f"encoder_adapters.{site}.{i}.{m}.{p}" for i in layers
                for m in ("down", "up", "norm") for p in ("weight", "bias")}

    layer_norms = {f"{LAYER.format(i)}.{ln}.{p}" for i in range(num_layers)
                   for ln in ("layer_norm", "final_layer_norm") for p in ("weight", "bias")}
    l_adapters = {f"layer_adapters.adapters.{i}.{m}.{p}" for i in range(num_layers)
                  for m in ("proj", "norm") for p in ("weight", "bias")} | {"layer_adapters.layer_weights"}
    every = range(num_layers)
    but_last = range(num_layers - 1)
    return {
        "full": full_encoder_names,
        "weighted_sum": {"weighted_sum.layer_weights"},
        "conventional": e_adapters("mhsa", every) | e_adapters("ffn", every) | layer_norms,
        "lora": {f"{LAYER.format(i)}.attention.{t}.parametrizations.weight.0.lora_{ab}"
                 for i in every for t in ("q_proj", "v_proj") for ab in "ab"},
        "prefix": {"prefix.frames"},
        "e_only": e_adapters("ffn", every) | layer_norms,
        "l_only": l_adapters,
        "p_only": {"prompt.frames"},
        "el": e_adapters("ffn", but_last) | l_adapters | layer_norms,
        "elp": e_adapters("ffn", but_last) | l_adapters | layer_norms | {"prompt.frames"},
    }[method]


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    wavs = torch.randn(3, 8000, generator=g)
    wav_lens = torch.tensor([1.0, 0.7, 0.45])
    return wavs, wav_lens


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("name", list(BACKBONES))
def test_shapes_trainable_set_and_gradients(tiny_checkpoints, name, method):
    model = build(tiny_checkpoints, name, method)
    num_layers = model.backbone.num_layers
    full_names = {n for n, _ in model.named_parameters()
                  if n.startswith("backbone.model.encoder.layers.") or n.startswith("backbone.model.encoder.layer_norm.")}
    trainable = set(model.learnable_parameters())
    assert trainable == expected_trainable(method, num_layers, full_names)
    assert not any(p.requires_grad for p in model.backbone.model.feature_extractor.parameters())

    wavs, wav_lens = batch()
    model.train()
    feats, frame_mask = model(wavs, wav_lens)
    frames = model.backbone.num_frames(torch.round(wav_lens * wavs.shape[1]).long())
    assert feats.shape == (3, 24, model.output_dim)
    assert model.output_dim == (L_DIM if method in ("l_only", "el", "elp") else 32)
    assert frame_mask.sum(1).tolist() == frames.tolist()

    # two steps, so that LoRA's B (zero at init) is non-zero when A's gradient is checked
    optimizer = torch.optim.SGD(model.learnable_parameters().values(), lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        feats, frame_mask = model(wavs, wav_lens)
        loss = (feats * frame_mask[..., None]).pow(2).mean() + feats[:, 0].sum()
        loss.backward()
        optimizer.step()
    for pname, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and param.grad.abs().sum() > 0, f"{pname} got no gradient"
        else:
            assert param.grad is None, f"frozen {pname} got a gradient"


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("name", ["wav2vec2", "hubert", "wavlm_plus", "wavlm_large"])
def test_padding_invariance(tiny_checkpoints, name, method):
    model = build(tiny_checkpoints, name, method).eval()
    wavs, _ = batch(1)
    with torch.no_grad():
        padded, mask = model(wavs, torch.tensor([1.0, 0.6, 0.3]))
        for index, length in enumerate([8000, 4800, 2400]):
            alone, alone_mask = model(wavs[index:index + 1, :length])
            frames = int(alone_mask.sum())
            assert int(mask[index].sum()) == frames
            diff = (padded[index, :frames] - alone[0]).abs().max().item()
            assert diff <= 1e-4, f"{name}/{method}: utterance {index} changes by {diff} when padded"


@pytest.mark.parametrize("name", list(BACKBONES))
def test_wrapper_matches_hf_hidden_states(tiny_checkpoints, name):
    backbone = load_backbone(name, source=str(tiny_checkpoints[name]), normalize_waveform=False).eval()
    wavs = torch.randn(2, 6000)
    with torch.no_grad():
        ours = backbone(wavs)
        reference = backbone.model(wavs, output_hidden_states=True)
    assert len(ours.hidden_states) == len(reference.hidden_states) == backbone.num_layers + 1
    for mine, theirs in zip(ours.hidden_states, reference.hidden_states):
        assert (mine - theirs).abs().max().item() <= 1e-5
    assert (ours.last_hidden_state - reference.last_hidden_state).abs().max().item() <= 1e-5


@pytest.mark.parametrize("method", ["p_only", "prefix", "elp"])
def test_pseudo_frames_never_reach_the_head(tiny_checkpoints, method):
    model = build(tiny_checkpoints, "wavlm_plus", method).eval()
    captured = {}
    model.backbone.register_forward_hook(lambda m, i, out: captured.update(out=out))
    wavs = torch.randn(2, 8000)
    feats, frame_mask = model(wavs, torch.tensor([1.0, 0.5]))
    frames = model.backbone.num_frames(torch.tensor(8000)).item()
    assert feats.shape[1] == frame_mask.shape[1] == frames
    assert all(h.shape[1] == frames for h in captured["out"].hidden_states)
    # the pseudo frames do change the real frames' outputs (they are attended to) ...
    plain = build(tiny_checkpoints, "wavlm_plus", "weighted_sum").eval()
    with torch.no_grad():
        assert (plain.backbone(wavs).last_hidden_state - captured["out"].last_hidden_state).abs().max() > 1e-6


EXPECTED_GROUPS = {"full": {"backbone"}, "weighted_sum": {"l"}, "conventional": {"e", "ln"}, "lora": {"lora"},
                   "prefix": {"prefix"}, "e_only": {"e", "ln"}, "l_only": {"l"}, "p_only": {"p"},
                   "el": {"e", "l", "ln"}, "elp": {"e", "l", "ln", "p"}}


@pytest.mark.parametrize("method", sorted(EXPECTED_GROUPS))
def test_parameter_groups_cover_learnables(tiny_checkpoints, method):
    model = build(tiny_checkpoints, "wavlm", method)
    groups = model.parameter_groups()
    assert set(groups) == EXPECTED_GROUPS[method]
    grouped = [id(p) for params in groups.values() for p in params]
    assert sorted(grouped) == sorted(id(p) for p in model.learnable_parameters().values())
    if method == "lora":
        names = {id(p): n for n, p in model.learnable_parameters().items()}
        assert all(".lora_" in names[id(p)] for p in groups["lora"])


def test_a_new_adapter_kind_without_a_group_is_refused(tiny_checkpoints):
    model = build(tiny_checkpoints, "wavlm", "l_only")
    model.extra = torch.nn.Linear(2, 2)  # a new adapter kind that forgot its lr_group
    with pytest.raises(ValueError, match="'extra.weight' has no learning-rate group"):
        model.parameter_groups()
    model.extra.lr_group = "x"
    assert {"l", "x"} == set(model.parameter_groups())


def test_unknown_method_and_backbone_errors(tiny_checkpoints):
    backbone = load_backbone("wavlm", source=str(tiny_checkpoints["wavlm"]))
    with pytest.raises(ValueError, match="unknown method 'elpp'.*elp"):
        AdaptedSSL(backbone, "elpp")
    with pytest.raises(ValueError, match="unknown backbone 'wavlm_base'"):
        load_backbone("wavlm_base", pretrained=False)


def test_too_short_audio_is_rejected(tiny_checkpoints):
    model = build(tiny_checkpoints, "wavlm", "el")
    with pytest.raises(ValueError, match="receptive field"):
        model(torch.randn(2, 8000), torch.tensor([1.0, 0.02]))


# ------------------------------------------------- speed paths keep parity and padding invariance
@pytest.mark.parametrize("name", ["wavlm", "wavlm_plus", "wavlm_large"])
def test_sdpa_attention_matches_hf_hidden_states(tiny_checkpoints, name):
    backbone = load_backbone(name, source=str(tiny_checkpoints[name]), normalize_waveform=False,
                             sdpa_attention=True).eval()
    assert backbone.sdpa_attention
    wavs = torch.randn(2, 6000)
    with torch.no_grad():
        ours = backbone(wavs)
        backbone.set_sdpa_attention(False)
        reference = backbone.model(wavs, output_hidden_states=True)
    for mine, theirs in zip(ours.hidden_states, reference.hidden_states):
        assert (mine - theirs).abs().max().item() <= 1e-5
    assert (ours.last_hidden_state - reference.last_hidden_state).abs().max().item() <= 1e-5


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("name", ["wavlm_plus", "wavlm_large"])
def test_padding_invariance_with_sdpa_attention(tiny_checkpoints, name, method):
    torch.manual_seed(1)
    backbone = load_backbone(name, source=str(tiny_checkpoints[name]), sdpa_attention=True)
    model = AdaptedSSL(backbone, method, **OPTIONS).eval()
    wavs, _ = batch(1)
    with torch.no_grad():
        padded, mask = model(wavs, torch.tensor([1.0, 0.6, 0.3]))
        for index, length in enumerate([8000, 4800, 2400]):
            alone, alone_mask = model(wavs[index:index + 1, :length])
            frames = int(alone_mask.sum())
            diff = (padded[index, :frames] - alone[0]).abs().max().item()
            assert diff <= 1e-4, f"{name}/{method}: utterance {index} changes by {diff} when padded"


@pytest.mark.parametrize("method", ["el", "elp", "prefix", "lora"])
def test_forward_from_cnn_features_equals_forward(tiny_checkpoints, method):
    model = build(tiny_checkpoints, "wavlm_plus", method).eval()
    wavs, wav_lens = batch()
    lengths = model.backbone.sample_lengths(wavs, wav_lens)
    with torch.no_grad():
        expected, expected_mask = model(wavs, wav_lens)
        cnn, cnn_mask = model.backbone.extract_cnn_features(wavs, lengths)
        cnn = cnn + 100.0 * ~cnn_mask[..., None]  # values of padded frames do not matter
        feats, frame_mask = model.forward_from_cnn_features(cnn, cnn_mask.sum(1))
        via_forward, _ = model(None, cnn_features=(cnn, cnn_mask.sum(1)))
    assert torch.equal(frame_mask, expected_mask)
    assert (feats - expected).abs().max().item() <= 1e-5
    assert torch.equal(feats, via_forward)
    with pytest.raises(ValueError, match=r"cnn_feats must be \[B, F, 32\]"):
        model.forward_from_cnn_features(cnn[..., :4], cnn_mask.sum(1))


# --------------------------------------------------------------- method options: one mapping
#: what every export recorded before options came from the kinds (written out independently)
RECORDED_DEFAULTS = {"activation": "gelu", "e_dim": 256, "l_dim": 512, "prompt_frames": 10, "prefix_frames": 10,
                     "lora_rank": 8, "lora_alpha": 16.0, "lora_targets": ["q_proj", "v_proj"], "e_first_layer": 0}


@pytest.mark.parametrize("method", list(METHODS))
def test_options_as_one_mapping_or_keywords(tiny_checkpoints, method):
    backbone, other = (load_backbone("wavlm", source=str(tiny_checkpoints["wavlm"])) for _ in range(2))
    torch.manual_seed(3)
    by_keywords = AdaptedSSL(backbone, method, **OPTIONS)
    torch.manual_seed(3)
    by_mapping = AdaptedSSL(other, method, options={**OPTIONS, "l_dim": 99}, l_dim=L_DIM)  # keywords win
    assert by_mapping.options == by_keywords.options == {**RECORDED_DEFAULTS, **OPTIONS}
    mapping_state, keyword_state = by_mapping.state_dict(), by_keywords.state_dict()
    assert list(mapping_state) == list(keyword_state)
    assert all(torch.equal(mapping_state[k], keyword_state[k]) for k in keyword_state)
    assert AdaptedSSL(load_backbone("wavlm", source=str(tiny_checkpoints["wavlm"])), method).options \
        == RECORDED_DEFAULTS


def test_unknown_option_is_refused_with_the_valid_ones(tiny_checkpoints):
    backbone = load_backbone("wavlm", source=str(tiny_checkpoints["wavlm"]))
    with pytest.raises(ValueError, match=r"^unknown option 'e_dimm' of method 'el'; valid options: activation, "
                                         r"e_dim, l_dim, prompt_frames, prefix_frames, lora_rank, lora_alpha, "
                                         r"lora_targets, e_first_layer; runtime knobs: backbone_dropout, "
                                         r"activation_checkpointing, frozen_dtype, sdpa_attention$"):
        AdaptedSSL(backbone, "el", {"e_dimm": 8})
    with pytest.raises(ValueError, match="unknown options 'a', 'b' of method 'lora'"):
        AdaptedSSL(backbone, "lora", a=1, b=2)
    # runtime knobs are accepted as keywords or in the mapping (as the recipe YAML passes them),
    # never recorded as options
    model = AdaptedSSL(backbone, "el", {"e_dim": 8, "activation_checkpointing": True, "sdpa_attention": True},
                       frozen_dtype="fp32", backbone_dropout=False)
    assert set(model.options) == set(RECORDED_DEFAULTS)
    assert backbone.activation_checkpointing and backbone.sdpa_attention and not model.backbone_dropout


def test_attachments_are_the_methods_kinds_in_order(tiny_checkpoints):
    model = build(tiny_checkpoints, "wavlm", "elp")
    assert [type(a).kind for a in model.attachments] == ["layer_norms", "encoder_adapters", "layer_adapters",
                                                         "prompt"]
    assert model.prompt is model.attachments[-1] and model.prefix is None and model.weighted_sum is None
    assert model.reader is model.layer_adapters and model.output_dim == L_DIM
