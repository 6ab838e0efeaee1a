"""``elp bench`` runs end to end on a tiny config and writes its tables (not a timing test)."""

import json

import pytest

from elp.bench import parse_variant
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
