"""``elp bench`` runs end to end on a tiny config and writes its tables (not a timing test)."""

import json

import pytest

from elp.bench.harness import parse_variant
from elp.cli import main


def test_bench_writes_markdown_and_json(tmp_path, capsys):
    out_dir = tmp_path / "bench"
    code = main(["bench", "--tiny", "--methods", "el", "l_only+cache", "--batch-size", "2", "--duration", "0.5",
                 "--warmup", "1", "--repeats", "2", "--threads", "1", "--retries", "0", "--out-dir", str(out_dir)])
    assert code == 0
    stem = "wavlm_plus_custom_cpu_fp32_b2x0.5s"
    record = json.loads((out_dir / f"{stem}.json").read_text())
    rows = {row["variant"]: row for row in record["rows"]}
    assert list(rows) == ["full", "el", "l_only+cache"]  # full always runs, first
    for row in rows.values():
        for key in ("learnable", "forward_s", "backward_s", "optimizer_s", "step_s", "peak_mib",
                    "audio_s_per_s", "step_vs_full", "memory_vs_full"):
            assert key in row, key
        assert row["step_s"] > 0 and row["threads"] == 1
    assert rows["full"]["step_vs_full"] == 1.0 and rows["full"]["memory_vs_full"] == 1.0
    assert rows["el"]["learnable"] > rows["l_only+cache"]["learnable"] > 0
    assert rows["l_only+cache"]["cache_fill_s"] > 0
    markdown = (out_dir / f"{stem}.md").read_text()
    header = "| method | learnable | forward s | backward s | optimizer s | step s | step vs full | peak MiB |"
    assert header in markdown and "| full |" in markdown and "| el |" in markdown
    assert header in capsys.readouterr().out


def test_bench_variant_syntax():
    variant = parse_variant("el+ckpt+k6")
    assert (variant.method, variant.activation_checkpointing, variant.e_first_layer) == ("el", True, 6)
    with pytest.raises(ValueError, match="hidden-state cache"):
        parse_variant("el+cache")
    with pytest.raises(ValueError, match="unknown method"):
        parse_variant("elpp")


def test_speed_flags_build_what_the_recipe_options_build():
    variant = parse_variant("elp+sdpa+cnncache+bf16w")
    assert (variant.sdpa, variant.cnn_cache, variant.bf16_weights, variant.cache) == (True, True, True, False)
    with pytest.raises(ValueError, match="drop \\+cnncache"):
        parse_variant("l_only+cache+cnncache")
    with pytest.raises(ValueError, match="unknown flag 'fast'"):
        parse_variant("el+fast")


def test_speed_flag_variants_match_the_plain_step(tmp_path):
    """+sdpa and +cnncache compute the same features as the plain model (fp32); +bf16w needs bf16."""
    import torch

    from elp.core.backbones import load_backbone
    from elp.bench.harness import build_variant_model, variant_forward
    from elp.testing import TINY_CONFIG

    wavs, lens = torch.randn(2, 8000), torch.tensor([1.0, 0.7])

    def features(label, precision="fp32"):
        torch.manual_seed(0)
        variant = parse_variant(label)
        model = build_variant_model(variant, load_backbone("wavlm", pretrained=False, config_overrides=TINY_CONFIG),
                                    precision).eval()
        forward = variant_forward(variant, model, tmp_path / label)
        forward(wavs, lens)
        with torch.no_grad():
            return forward(wavs, lens)

    plain, mask = features("el")
    for label in ("el+sdpa", "el+cnncache", "el+sdpa+cnncache"):
        other, other_mask = features(label)
        assert torch.equal(mask, other_mask)
        # the CNN cache stores float16 features: a rounding of the CNN output, not of the result
        tolerance = 1e-5 if "cnncache" not in label else 5e-2
        assert torch.allclose(plain * mask[..., None], other * mask[..., None], atol=tolerance), label
    with pytest.raises(ValueError, match="needs --precision bf16"):
        features("el+bf16w")
