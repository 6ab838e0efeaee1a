"""``elp bench --peers``: peer rows and elp rows out of the one harness, ratios against
SpeechBrain full FT, true LoRA counts."""

from __future__ import annotations

import dataclasses
import json
import sys

import pytest
import torch

from elp.bench import harness
from elp.bench.sources import elp_variants, peer_variants
from elp.cli import main
from elp.testing import TINY_CONFIG

TINY2 = dict(TINY_CONFIG, num_hidden_layers=2)  # 2 layers, hidden 32


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return peer_variants.save_random_checkpoint(tmp_path_factory.mktemp("peers") / "wavlm", config_overrides=TINY2)


def _settings(checkpoint, **kwargs) -> harness.BenchSettings:
    defaults = dict(config_overrides=TINY2, batch_size=2, duration=0.5, warmup=1, repeats=1, threads=1,
                    memory=False, source=str(checkpoint), tag="peers", interleave=True, isolate=False, retries=0)
    return harness.BenchSettings(**{**defaults, **kwargs})


def _direct_lora_count(key: str, source_module, settings, tmp_path) -> tuple[int, int]:
    """LoRA tensors that receive a gradient, by torch.autograd.grad, with every B made non-zero."""
    trainable = harness.build_trainable(harness.Candidate(key, key, source_module.__name__), settings, tmp_path)
    lora = trainable.model.lora
    with torch.no_grad():
        for name, param in lora.items():
            if "lora_B" in name or "lora_b" in name:
                param.normal_()
    names = list(lora)
    loss = trainable.loss(harness.make_batch(settings))
    grads = torch.autograd.grad(loss, [lora[n] for n in names], allow_unused=True)
    return sum(1 for g in grads if g is not None and bool(g.ne(0).any())), len(names)


def test_elp_and_peer_rows_come_out_of_one_harness_with_the_same_columns(checkpoint):
    settings = _settings(checkpoint)
    peers = [c for c in peer_variants.candidates(log=lambda line: None) if c.key != "peft_lora"]
    rows = harness.run_bench(settings, peers + elp_variants.candidates(["weighted_sum", "lora"], "fp32", prefix="elp "),
                             log=lambda line: None)
    assert [row["key"] for row in rows] == ["sb_full", "sb_weighted_sum", "weighted_sum", "lora"]
    assert [row["variant"] for row in rows] == [peer_variants.PEERS["sb_full"], peer_variants.PEERS["sb_weighted_sum"],
                                                "elp weighted_sum", "elp lora"]
    assert len({tuple(sorted(row)) for row in rows}) == 1  # one row schema
    for row in rows:
        assert row["step_vs_baseline"] == row["step_s"] / rows[0]["step_s"] and row["threads"] == 1
        assert row["peak_mib"] is None and row["memory_vs_baseline"] is None  # memory=False
    by_key = {row["key"]: row for row in rows}
    # 2 layers + the CNN output: 3 layer weights in both weighted sums
    assert by_key["sb_weighted_sum"]["learnable"] == by_key["weighted_sum"]["learnable"] == 3
    # LoRA r8 on q and v of 2 layers of width 32: 2 * 2 * (8 * 32 + 32 * 8)
    assert by_key["lora"]["learnable"] == 2048 and (by_key["lora"]["lora_with_grad"], by_key["lora"]["lora_total"]) == (8, 8)
    # the same columns as an elp-only run, with the first row named in the ratio titles
    markdown = harness.format_markdown(settings, rows)
    titles = [title.format(baseline="sb_full") for _, title in harness.COLUMNS]
    assert "| " + " | ".join(titles) + " |" in markdown
    assert "| elp lora | 2,048 |" in markdown and "| 8 of 8 |" in markdown
    assert len([line for line in markdown.splitlines() if line.startswith("| ")]) == 1 + len(rows)
    elp_only = harness.format_markdown(dataclasses.replace(settings, tag=""), [dict(rows[2], key="full")])
    assert "| " + " | ".join(t.format(baseline="full") for _, t in harness.COLUMNS) + " |" in elp_only


def test_peer_bench_rows_ratios_and_lora_counts(checkpoint, tmp_path):
    pytest.importorskip("peft")
    settings = _settings(checkpoint)
    candidates = peer_variants.candidates() + elp_variants.candidates(peer_variants.DEFAULT_ELP_METHODS, "fp32",
                                                                      prefix="elp ")
    rows = harness.run_bench(settings, candidates, log=lambda line: None)
    by_key = {row["key"]: row for row in rows}
    assert list(by_key) == ["sb_full", "sb_weighted_sum", "peft_lora", "full", "weighted_sum", "lora", "el", "elp"]
    assert by_key["peft_lora"]["learnable"] == by_key["lora"]["learnable"] == 2048
    for key, source in (("peft_lora", peer_variants), ("lora", elp_variants)):
        direct = _direct_lora_count(key, source, settings, tmp_path)
        assert (by_key[key]["lora_with_grad"], by_key[key]["lora_total"]) == direct, key
    # HF WavLM reads q_proj.weight inside F.multi_head_attention_forward: PEFT's LoRA is never
    # called; elp's LoRA parametrizes the weight itself
    assert (by_key["peft_lora"]["lora_with_grad"], by_key["peft_lora"]["lora_total"]) == (0, 8)
    assert (by_key["lora"]["lora_with_grad"], by_key["lora"]["lora_total"]) == (8, 8)
    assert by_key["el"]["lora_total"] is None
    assert "| HF PEFT LoRA r8 q,v | 2,048 |" in harness.format_markdown(settings, rows)


def test_missing_peft_prints_how_to_install_and_skips_the_row(checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` now raises ImportError
    out_dir = tmp_path / "bench"
    code = main(["bench", "--peers", "--tiny", "--methods", "weighted_sum", "--batch-size", "2",
                 "--duration", "0.5", "--warmup", "0", "--repeats", "1", "--threads", "1", "--no-memory",
                 "--precision", "fp32", "bf16", "--in-process", "--retries", "0",
                 "--source", str(checkpoint), "--out-dir", str(out_dir)])
    assert code == 0
    captured = capsys.readouterr()
    # one line per run (one run per precision)
    assert captured.err.count(peer_variants.PEFT_MISSING) == 2
    assert "pip install -e .[peers]" in peer_variants.PEFT_MISSING
    for precision in ("fp32", "bf16"):
        record = json.loads((out_dir / f"peers_wavlm_plus_custom_cpu_{precision}_b2x0.5s.json").read_text())
        assert record["settings"]["precision"] == precision and record["baseline"] == "sb_full"
        assert [row["key"] for row in record["rows"]] == ["sb_full", "sb_weighted_sum", "weighted_sum"]
    assert "| SpeechBrain WavLM, full FT, CNN frozen |" in captured.out and "step vs sb_full" in captured.out
    assert "| elp weighted_sum |" in captured.out
    assert "HF PEFT LoRA" not in captured.out


def test_memory_worker_subprocess(checkpoint):
    settings = _settings(checkpoint, warmup=0, memory=True, isolate=True)
    row, = harness._run(settings, [peer_variants.candidates(log=lambda line: None)[1]])
    assert row["key"] == "sb_weighted_sum" and row["learnable"] == 3
    assert isinstance(row["peak_mib"], float) and row["peak_mib"] >= 0
    assert "RSS" in row["memory_kind"]


def test_bad_inputs_name_the_fix(checkpoint, tmp_path):
    assert [c.key for c in elp_variants.candidates(["l_only+cache", "el+sdpa+cnncache"], "fp32")] == [
        "l_only+cache", "el+sdpa+cnncache"]
    with pytest.raises(ValueError, match="unknown flag 'bogus'"):
        elp_variants.candidates(["el+bogus"], "fp32")
    with pytest.raises(ValueError, match="unknown peer benchmark variant 'sb_lora'"):
        peer_variants.build("sb_lora", _settings(checkpoint), tmp_path)
    with pytest.raises(ValueError, match="needs a checkpoint"):
        peer_variants.build("sb_full", _settings(checkpoint, source=None), tmp_path)
    with pytest.raises(ValueError, match="wavlm_plus"):
        peer_variants.save_random_checkpoint(tmp_path / "w2v", backbone="wav2vec2")
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(FileNotFoundError, match="bare: no preprocessor_config.json"):
        peer_variants.check_checkpoint(bare)
    with pytest.raises(SystemExit, match="elp bench --peers: .*bare: no preprocessor_config.json"):
        main(["bench", "--peers", "--tiny", "--source", str(bare), "--out-dir", str(tmp_path)])
