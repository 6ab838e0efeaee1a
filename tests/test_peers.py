"""``elp bench --peers``: every row present, ratios against SpeechBrain full FT, true LoRA counts."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from elp.bench import peers
from elp.cli import main
from elp.testing import TINY_CONFIG

TINY2 = dict(TINY_CONFIG, num_hidden_layers=2)  # 2 layers, hidden 32


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return peers.save_random_checkpoint(tmp_path_factory.mktemp("peers") / "wavlm", config_overrides=TINY2)


def _settings(**kwargs) -> peers.PeerSettings:
    defaults = dict(config_overrides=TINY2, batch_size=2, duration=0.5, warmup=1, repeats=1, threads=1,
                    memory=False)
    return peers.PeerSettings(**{**defaults, **kwargs})


def _direct_lora_count(key: str, settings: peers.PeerSettings, source, tmp_path) -> tuple[int, int]:
    """LoRA tensors that receive a gradient, by torch.autograd.grad, with every B made non-zero."""
    variant = peers.build_variant(key, settings, source, tmp_path)
    with torch.no_grad():
        for name, param in variant.lora.items():
            if "lora_B" in name or "lora_b" in name:
                param.normal_()
    names = list(variant.lora)
    loss = peers.variant_loss(variant, settings, peers.make_batch(settings))
    grads = torch.autograd.grad(loss, [variant.lora[n] for n in names], allow_unused=True)
    return sum(1 for g in grads if g is not None and bool(g.ne(0).any())), len(names)


def test_peer_bench_rows_ratios_and_lora_counts(checkpoint, tmp_path):
    pytest.importorskip("peft")
    settings = _settings()
    lines = []
    rows = peers.run_peer_bench(settings, source=checkpoint, log=lines.append)
    keys = [row["key"] for row in rows]
    assert keys == ["sb_full", "sb_weighted_sum", "peft_lora", "elp:full", "elp:weighted_sum", "elp:lora",
                    "elp:el", "elp:elp"]
    assert [row["variant"] for row in rows[:3]] == list(peers.PEERS.values())
    assert rows[3]["variant"] == "elp full"
    reference = rows[0]["step_s"]
    for row in rows:
        assert row["step_s"] > 0
        assert row["step_vs_sb_full"] == row["step_s"] / reference
        assert row["peak_mib"] is None and row["memory_vs_sb_full"] is None  # memory=False
        assert row["threads"] == 1
    assert rows[0]["step_vs_sb_full"] == 1.0
    by_key = {row["key"]: row for row in rows}
    # 2 layers + the CNN output: 3 layer weights in both weighted sums
    assert by_key["sb_weighted_sum"]["learnable"] == by_key["elp:weighted_sum"]["learnable"] == 3
    # LoRA r8 on q and v of 2 layers of width 32: 2 * 2 * (8 * 32 + 32 * 8)
    assert by_key["peft_lora"]["learnable"] == by_key["elp:lora"]["learnable"] == 2048
    for key in ("peft_lora", "elp:lora"):
        direct = _direct_lora_count(key, settings, checkpoint, tmp_path)
        assert (by_key[key]["lora_with_grad"], by_key[key]["lora_total"]) == direct, key
    # HF WavLM reads q_proj.weight inside F.multi_head_attention_forward: PEFT's LoRA is never
    # called; elp's LoRA parametrizes the weight itself
    assert (by_key["peft_lora"]["lora_with_grad"], by_key["peft_lora"]["lora_total"]) == (0, 8)
    assert (by_key["elp:lora"]["lora_with_grad"], by_key["elp:lora"]["lora_total"]) == (8, 8)
    assert by_key["elp:el"]["lora_total"] is None
    markdown = peers.format_markdown(settings, rows)
    assert "| variant | learnable |" in markdown and "step vs SpeechBrain full FT" in markdown
    assert "| HF PEFT LoRA r8 q,v | 2,048 |" in markdown and "| 0 of 8 |" in markdown
    assert len([line for line in markdown.splitlines() if line.startswith("| ")]) == 1 + len(rows)


def test_missing_peft_prints_how_to_install_and_skips_the_row(checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` now raises ImportError
    out_dir = tmp_path / "bench"
    code = main(["bench", "--peers", "--tiny", "--methods", "weighted_sum", "--batch-size", "2",
                 "--duration", "0.5", "--warmup", "0", "--repeats", "1", "--threads", "1", "--no-memory",
                 "--precision", "fp32", "bf16",
                 "--source", str(checkpoint), "--out-dir", str(out_dir)])
    assert code == 0
    captured = capsys.readouterr()
    # one line per run (one run per precision)
    assert captured.err.count(peers.PEFT_MISSING) == 2 and "pip install -e .[peers]" in peers.PEFT_MISSING
    for precision in ("fp32", "bf16"):
        record = json.loads((out_dir / f"peers_wavlm_plus_custom_cpu_{precision}_b2x0.5s.json").read_text())
        assert record["settings"]["precision"] == precision
        assert [row["key"] for row in record["rows"]] == ["sb_full", "sb_weighted_sum", "elp:weighted_sum"]
    assert "| SpeechBrain WavLM, full FT, CNN frozen |" in captured.out
    assert "HF PEFT LoRA" not in captured.out


def test_memory_ratios_use_one_subprocess_per_variant(checkpoint, monkeypatch):
    measured = {"sb_full": 200.0, "sb_weighted_sum": 50.0, "peft_lora": 80.0, "elp:el": 70.0}
    calls = []

    def fake(settings, key, source):
        calls.append(key)
        return measured[key], "fake"
    monkeypatch.setattr(peers, "_measure_memory_isolated", fake)
    rows = peers.run_peer_bench(_settings(warmup=0, memory=True), ["el"], source=checkpoint, log=lambda line: None)
    keys = [row["key"] for row in rows]
    assert calls == keys
    assert [row["memory_vs_sb_full"] for row in rows] == [measured[key] / 200.0 for key in keys]


def test_memory_worker_subprocess(checkpoint):
    peak, kind = peers._measure_memory_isolated(_settings(warmup=0), "elp:weighted_sum", checkpoint)
    assert isinstance(peak, float) and peak >= 0
    assert "RSS" in kind


def test_bad_inputs_name_the_fix(checkpoint, tmp_path):
    assert peers.variant_keys(["l_only+cache", "el+sdpa+cnncache"])[-2:] == ["elp:l_only+cache",
                                                                              "elp:el+sdpa+cnncache"]
    with pytest.raises(ValueError, match="unknown flag 'bogus'"):
        peers.variant_keys(["el+bogus"])
    with pytest.raises(ValueError, match="unknown method"):
        peers.variant_keys(["elpp"])
    with pytest.raises(ValueError, match="unknown peer benchmark variant 'sb_lora'"):
        peers.build_variant("sb_lora", _settings(), checkpoint, tmp_path)
    with pytest.raises(ValueError, match="wavlm_plus"):
        peers.save_random_checkpoint(tmp_path / "w2v", backbone="wav2vec2")
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(FileNotFoundError, match="bare: no preprocessor_config.json"):
        peers.run_peer_bench(_settings(), [], source=bare, log=lambda line: None)
