"""A new adapter kind, defined here and nowhere else, trains, exports, packages and serves (alone and
routed with other methods) through the library's own code paths."""

from typing import ClassVar

import pytest
import torch
from torch import nn

from elp.core.adapters import Attachment
from elp.core.adapters.init import activation, init_adapter_linear
from elp.core.backbones import load_backbone
from elp.core.heads import PooledClassifier
from elp.core.methods import METHODS, Attach, MethodSpec, get_method, register_method
from elp.core.model import AdaptedSSL
from elp.serve.inference import Predictor
from elp.serve.multitask import MultiTask
from elp.serve.package import load_package, write_package
from elp.testing import make_tiny_package, save_tiny_checkpoint


class ParallelFFNAdapter(nn.Module):
    """``up(act(down(x)))``, added to a feed-forward block's output for the same input x."""

    lr_group = "parallel"

    def __init__(self, dim: int, bottleneck: int, act: str):
        super().__init__()
        self.down = init_adapter_linear(nn.Linear(dim, bottleneck), 0.05)
        self.act = activation(act)
        self.up = init_adapter_linear(nn.Linear(bottleneck, dim), 0.05)

    def forward(self, x):
        return self.up(self.act(self.down(x)))


def parallel_hook(per_task, context=None):
    """``y = ffn(x) + adapter(x)``: one adapter, or one per task's block of a routed batch."""

    def hook(module, inputs, output):
        if context is None:
            return output + per_task(inputs[0])
        blocks = zip(per_task, context.blocks(inputs[0]), context.blocks(output))
        return torch.cat([y if a is None else y + a(x) for a, x, y in blocks], dim=0)

    return hook


class ParallelFFNAdapters(nn.ModuleDict, Attachment):
    """A parallel adapter on every layer's feed-forward block: ``layer index -> ParallelFFNAdapter``."""

    kind = "parallel_ffn"
    attribute = "parallel_ffn"
    options: ClassVar[dict[str, object]] = {"parallel_dim": 6}
    backbone_grad = True
    routable = True

    @classmethod
    def attach(cls, backbone, options):
        attachment = cls()
        for index in range(backbone.num_layers):
            adapter = ParallelFFNAdapter(backbone.hidden_size, options["parallel_dim"], options["activation"])
            attachment[str(index)] = adapter
            backbone.layer_part(index, backbone.module_names.feed_forward).register_forward_hook(parallel_hook(adapter))
        return attachment

    @classmethod
    def route(cls, members, context):
        view = context.view
        for index in range(view.num_layers):
            per_task = [None if m is None else m[str(index)] for m in members]
            view.layer_part(index, view.module_names.feed_forward).register_forward_hook(
                parallel_hook(per_task, context))


SPEC = MethodSpec("parallel_ffn", (Attach.of(ParallelFFNAdapters),))


@pytest.fixture(scope="module")
def method():
    register_method(SPEC)
    yield SPEC.name
    METHODS.pop(SPEC.name)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint("wavlm_plus", tmp_path_factory.mktemp("kinds") / "ckpt", seed=3)


def _data():
    generator = torch.Generator().manual_seed(0)
    wavs = 0.1 * torch.randn(4, 8000, generator=generator)
    return wavs, torch.tensor([1.0, 0.8, 0.6, 0.9]), torch.tensor([0, 1, 2, 1])


def _trained(checkpoint, method):
    torch.manual_seed(0)
    model = AdaptedSSL(load_backbone("wavlm_plus", source=str(checkpoint)), method, {"parallel_dim": 4},
                       activation="relu")
    head = PooledClassifier(model.output_dim, num_classes=3, hidden_dim=8)
    groups = model.parameter_groups()
    optimizer = torch.optim.Adam([{"params": params, "lr": 1e-2} for params in groups.values()]
                                 + [{"params": head.parameters(), "lr": 1e-2}])
    wavs, wav_lens, labels = _data()
    model.train()
    losses = []
    for _ in range(6):
        optimizer.zero_grad()
        feats, mask = model(wavs, wav_lens)
        loss = nn.functional.cross_entropy(head(feats, mask), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return model.eval(), head.eval(), losses


def test_registered_kind_trains_only_its_parameters(checkpoint, method):
    assert get_method(method) is SPEC and SPEC.backbone_needs_grad
    model, head, losses = _trained(checkpoint, method)
    assert losses[-1] < losses[0] - 0.05
    assert set(model.parameter_groups()) == {"parallel"}
    assert set(model.learnable_parameters()) == {f"parallel_ffn.{i}.{m}.{p}" for i in range(3)
                                                 for m in ("down", "up") for p in ("weight", "bias")}
    for name, param in model.named_parameters():
        if name.startswith("parallel_ffn."):
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None and not param.requires_grad, name
    assert all(p.grad is not None for p in head.parameters())
    # the kind's option is recorded with the standard ones; unknown options are refused
    assert model.options["parallel_dim"] == 4 and model.options["activation"] == "relu"
    assert model.options["e_dim"] == 256
    with pytest.raises(ValueError, match="unknown option 'parallel_dimm' of method 'parallel_ffn'; valid "
                                         "options: .*, e_first_layer, parallel_dim; runtime knobs: "):
        AdaptedSSL(model.backbone, method, parallel_dimm=4)


def test_packaged_kind_serves_alone_and_routed(checkpoint, method, tmp_path):
    model, head, _ = _trained(checkpoint, method)
    directory = write_package(tmp_path / "parallel", model, head, task="classify", labels=["a", "b", "c"],
                              backbone_source=str(checkpoint))
    package = load_package(directory)
    assert package.model.method is SPEC
    for name, tensor in model.learnable_parameters().items():
        assert torch.equal(package.model.learnable_parameters()[name], tensor), name

    wavs, _, _ = _data()
    with torch.no_grad():
        expected = model(wavs[:1])[0]
        assert (package.model(wavs[:1])[0] - expected).abs().max() <= 1e-6
        ffn_only = AdaptedSSL(load_backbone("wavlm_plus", source=str(checkpoint)), "weighted_sum").eval()
        assert (ffn_only.backbone(wavs[:1]).last_hidden_state - expected).abs().max() > 1e-3  # the adapter acts

    others = [make_tiny_package(tmp_path / m, task="classify", method=m, seed=i, backbone="wavlm_plus",
                                backbone_dir=checkpoint) for i, m in enumerate(["el", "lora", "l_only"])]
    dirs = [directory] + others
    tasks = MultiTask(dirs)
    assert tasks.plan()["routed_batches"] == [[0, 1, 2]]
    waves = [wavs[i, :n] for i, n in enumerate([8000, 6400, 4800])]
    together = tasks.outputs(waves, sample_rate=16000, batch_size=3)
    for task_dir, task_outputs in zip(dirs, together):
        alone = Predictor.from_package(task_dir).outputs(waves, sample_rate=16000, batch_size=2)
        for a, b in zip(task_outputs, alone):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
