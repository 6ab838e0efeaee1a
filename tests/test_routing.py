"""elp.core.routing: every routable method of the methods table, routed with others, equals its
model run alone; methods whose attachments cannot be routed are refused."""

import pytest
import torch

from elp.core.adapters import Attachment, RoutingError
from elp.core.backbones import load_backbone
from elp.core.methods import METHODS, Attach, MethodSpec
from elp.core.model import AdaptedSSL
from elp.core.routing import RoutedGroup, backbone_view, routable, route_key, unshare_learnable

OPTIONS = {"l_dim": 16, "e_dim": 8, "prompt_frames": 3, "prefix_frames": 2, "lora_rank": 2}


@pytest.fixture(scope="module")
def shared(tiny_checkpoints):
    return load_backbone("wavlm_plus", source=str(tiny_checkpoints["wavlm_plus"])).eval()


def task_model(shared, method, seed):
    """A model of ``method`` on a view of ``shared``, its learnable tensors perturbed so that they matter."""
    torch.manual_seed(seed)
    model = AdaptedSSL(backbone_view(shared), method, **OPTIONS)
    unshare_learnable(model, shared)
    with torch.no_grad():
        for param in model.learnable_parameters().values():
            param.add_(0.1 * torch.randn_like(param))
    return model.eval()


def cnn_batch(shared):
    generator = torch.Generator().manual_seed(0)
    wavs = 0.1 * torch.randn(3, 8000, generator=generator)
    lengths = torch.tensor([8000, 5600, 3000])
    with torch.no_grad():
        return shared.extract_cnn_features(wavs, lengths)


@pytest.mark.parametrize("name", ["wavlm_plus", "wavlm_large", "hubert"])
def test_every_routable_method_routed_in_one_mixed_group_equals_it_alone(tiny_checkpoints, name):
    shared = load_backbone(name, source=str(tiny_checkpoints[name])).eval()
    models = [task_model(shared, method, seed) for seed, method in enumerate(METHODS)
              if routable(AdaptedSSL(backbone_view(shared), method, **OPTIONS))]
    assert {m.method.name for m in models} == {name for name, spec in METHODS.items() if spec.name != "full"}
    assert len({route_key(m) for m in models}) == 3  # none, prompt frames, prefix vectors: one group all the same
    features, frame_mask = cnn_batch(shared)
    plain = AdaptedSSL(backbone_view(shared), "weighted_sum").eval()
    with torch.no_grad():
        base = plain.backbone.forward_from_cnn_features(features, frame_mask).last_hidden_state
        routed = RoutedGroup(shared, models).features(features, frame_mask)
        for model, feats in zip(models, routed):
            alone, mask = model.forward_from_cnn_features(features, frame_mask.sum(1))
            diff = ((feats - alone) * mask[..., None]).abs().max().item()
            assert diff <= 1e-5, f"{model.method.name} differs by {diff} when routed"
            if model.reader is None:  # the attachments matter: far from the frozen backbone's features
                assert (alone - base).abs().max() > 1e-3, model.method.name


def test_tasks_with_other_frame_counts_route_together(shared):
    torch.manual_seed(0)
    short = AdaptedSSL(backbone_view(shared), "elp", **{**OPTIONS, "prompt_frames": 1})
    unshare_learnable(short, shared)
    models = [task_model(shared, "elp", 1), short.eval(), task_model(shared, "prefix", 2), task_model(shared, "el", 3)]
    assert len({route_key(m) for m in models}) == 4
    features, frame_mask = cnn_batch(shared)
    with torch.no_grad():
        for model, feats in zip(models, RoutedGroup(shared, models).features(features, frame_mask)):
            alone, mask = model.forward_from_cnn_features(features, frame_mask.sum(1))
            assert ((feats - alone) * mask[..., None]).abs().max().item() <= 1e-5, model.method.name


def test_methods_that_cannot_route_are_refused(shared):
    for name in METHODS:
        model = AdaptedSSL(backbone_view(shared), name, **OPTIONS)
        blocked = [type(a).kind for a in model.attachments if not type(a).routable]
        assert routable(model) == (not blocked)
        if blocked:
            with pytest.raises(RoutingError, match=rf"^method '{name}' cannot be routed: its attachment kind "
                                                   rf"'{blocked[0]}' has no routing support; run it on its own$"):
                RoutedGroup(shared, [model, task_model(shared, "el", 0)])
    assert not routable(AdaptedSSL(backbone_view(shared), "full"))


def test_a_kind_without_routing_support_raises_when_routed(shared):
    class Unroutable(Attachment):
        kind = "unroutable"

        @classmethod
        def attach(cls, backbone, options):
            return cls()

    model = AdaptedSSL(backbone_view(shared), MethodSpec("custom", (Attach.of(Unroutable),)))
    assert not routable(model)
    with pytest.raises(RoutingError, match="attachment kind 'unroutable' cannot be routed"):
        Unroutable.route([model.attachment(Unroutable)], None)
    with pytest.raises(RoutingError, match="'custom' cannot be routed"):
        RoutedGroup(shared, [model])


def test_route_key_names_the_frames_a_task_adds(shared):
    assert route_key(task_model(shared, "elp", 0)) == (("prompt_frames", 3),)
    assert route_key(task_model(shared, "prefix", 0)) == (("prefix_frames", 2),)
    assert route_key(task_model(shared, "el", 0)) == ()
