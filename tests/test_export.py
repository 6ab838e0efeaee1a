"""Adapter-only export: round trip reproduces outputs bit-exactly; mismatches are refused."""

import json

import pytest
import torch

from elp.core.backbones import load_backbone
from elp.core.export import CONFIG_FILE, AdapterMismatchError, load_adapters, save_adapters
from elp.core.heads import CTCHead
from elp.core.model import AdaptedSSL

OPTIONS = dict(l_dim=16, e_dim=8, prompt_frames=3, lora_rank=2)


def trained(checkpoints, name, method):
    torch.manual_seed(3)
    model = AdaptedSSL(load_backbone(name, source=str(checkpoints[name])), method, **OPTIONS)
    head = CTCHead(model.output_dim, 7)
    params = list(model.learnable_parameters().values()) + list(head.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-2)
    wavs = torch.randn(2, 8000)
    for _ in range(2):
        optimizer.zero_grad()
        feats, mask = model(wavs)
        head(feats).mean().backward()
        optimizer.step()
    return model.eval(), head.eval(), wavs


@pytest.mark.parametrize("method", ["elp", "lora", "full", "prefix"])
def test_round_trip_is_bit_exact(tiny_checkpoints, tmp_path, method):
    model, head, wavs = trained(tiny_checkpoints, "wavlm_plus", method)
    save_adapters(model, tmp_path / "export", head=head)
    config = json.loads((tmp_path / "export" / CONFIG_FILE).read_text())
    assert config["backbone"] == "wavlm_plus" and config["method"] == method

    torch.manual_seed(99)  # different random init of the fresh adapters
    fresh = AdaptedSSL(load_backbone("wavlm_plus", source=str(tiny_checkpoints["wavlm_plus"])), method, **OPTIONS).eval()
    fresh_head = CTCHead(fresh.output_dim, 7).eval()
    with torch.no_grad():
        before = fresh_head(fresh(wavs)[0])
    load_adapters(fresh, tmp_path / "export", head=fresh_head)
    with torch.no_grad():
        expected = head(model(wavs)[0])
        got = fresh_head(fresh(wavs)[0])
    assert not torch.equal(before, expected)
    assert torch.equal(got, expected)


def test_export_holds_only_learnable_tensors(tiny_checkpoints, tmp_path):
    from safetensors.torch import load_file

    model, head, _ = trained(tiny_checkpoints, "wavlm", "el")
    save_adapters(model, tmp_path / "export", head=head)
    keys = set(load_file(tmp_path / "export" / "adapters.safetensors"))
    assert keys == {f"model.{n}" for n in model.learnable_parameters()} | {f"head.{n}" for n in head.state_dict()}
    assert not any("feature_extractor" in k or "attention.k_proj" in k for k in keys)


def test_mismatched_backbone_is_refused(tiny_checkpoints, tmp_path):
    model, head, _ = trained(tiny_checkpoints, "wavlm", "el")
    save_adapters(model, tmp_path / "export", head=head)
    other = AdaptedSSL(load_backbone("wavlm_large", source=str(tiny_checkpoints["wavlm_large"])), "el", **OPTIONS)
    with pytest.raises(AdapterMismatchError, match="trained on backbone 'wavlm'.*'wavlm_large'"):
        load_adapters(other, tmp_path / "export")


def test_mismatched_method_or_options_is_refused(tiny_checkpoints, tmp_path):
    model, head, _ = trained(tiny_checkpoints, "wavlm", "el")
    save_adapters(model, tmp_path / "export", head=head)
    backbone = load_backbone("wavlm", source=str(tiny_checkpoints["wavlm"]))
    with pytest.raises(AdapterMismatchError, match="holds method 'el'.*uses method 'elp'"):
        load_adapters(AdaptedSSL(backbone, "elp", **OPTIONS), tmp_path / "export")
    backbone = load_backbone("wavlm", source=str(tiny_checkpoints["wavlm"]))
    with pytest.raises(AdapterMismatchError, match="options"):
        load_adapters(AdaptedSSL(backbone, "el", **{**OPTIONS, "l_dim": 8}), tmp_path / "export")
