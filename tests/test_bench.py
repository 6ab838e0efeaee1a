"""``elp bench`` runs end to end on a tiny config and writes its tables (not a timing test)."""

import json

import pytest
import torch

from elp.bench import harness
from elp.bench.sources import elp_variants
from elp.bench.sources.elp_variants import build_variant_model, parse_variant, variant_forward
from elp.cli import main
from elp.core.presets import TINY_CONFIG

#: the table's header, the same for every source of rows
HEADER = ("| variant | learnable | forward s | backward s | optimizer s | step s | step vs full | step vs floor "
          "| peak MiB | memory vs full | audio s/s | other load | LoRA tensors with gradient |")


def test_bench_writes_markdown_and_json(tmp_path, capsys):
    out_dir = tmp_path / "bench"
    code = main(["bench", "--tiny", "--methods", "el", "l_only+cache", "--batch-size", "2", "--duration", "0.5",
                 "--warmup", "1", "--repeats", "2", "--threads", "1", "--retries", "0", "--out-dir", str(out_dir)])
    assert code == 0
    stem = "wavlm_plus_custom_cpu_fp32_b2x0.5s"
    record = json.loads((out_dir / f"{stem}.json").read_text())
    assert record["baseline"] == "full" and record["settings"]["isolate"] is True
    rows = {row["key"]: row for row in record["rows"]}
    assert list(rows) == ["full", "el", "l_only+cache"]  # full always runs, first
    for row in rows.values():
        assert row["step_s"] > 0 and row["threads"] == 1 and row["other_load"] >= 0
        assert row["step_s"] >= row["step_min_s"]
        assert row["audio_s_per_s"] == pytest.approx(2 * 0.5 / row["step_s"])
        assert row["step_vs_baseline"] == pytest.approx(row["step_s"] / rows["full"]["step_s"])
        assert row["peak_mib"] is not None and row["memory_kind"] == "RSS peak (VmHWM after clear_refs)"
        assert row["lora_total"] is None  # none of them has LoRA tensors
        assert row["step_vs_floor"] is None  # no weighted_sum row: no frozen forward ran
    assert rows["full"]["step_vs_baseline"] == 1.0 and rows["full"]["memory_vs_baseline"] == 1.0
    assert rows["el"]["learnable"] > rows["l_only+cache"]["learnable"] > 0
    assert rows["l_only+cache"]["cache_fill_s"] > 0 and "cache_fill_s" not in rows["el"]
    markdown = (out_dir / f"{stem}.md").read_text()
    assert HEADER in markdown and "| full |" in markdown and "| el |" in markdown
    assert markdown.count("\n| ") == 1 + 3  # the header and one line per row
    assert HEADER in capsys.readouterr().out


def test_bad_options_are_one_line_errors(tmp_path):
    with pytest.raises(SystemExit, match="elp bench: unknown method 'elpp'"):
        main(["bench", "--tiny", "--methods", "elpp", "--out-dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="needs --precision bf16"):
        main(["bench", "--tiny", "--methods", "el+bf16w", "--out-dir", str(tmp_path)])
    settings = harness.BenchSettings(config_overrides=TINY_CONFIG)
    with pytest.raises(ValueError, match="named twice"):
        harness.run_bench(settings, elp_variants.candidates(["el", "el"], "fp32"), log=lambda line: None)
    with pytest.raises(ValueError, match="name at least one variant"):
        harness.run_bench(settings, [], log=lambda line: None)


def test_bench_variant_syntax():
    variant = parse_variant("el+ckpt+k6")
    assert (variant.method, variant.activation_checkpointing, variant.e_first_layer) == ("el", True, 6)
    with pytest.raises(ValueError, match="hidden-state cache"):
        parse_variant("el+cache")
    with pytest.raises(ValueError, match="unknown method"):
        parse_variant("elpp")
    assert [c.key for c in elp_variants.candidates(["el", "full"], "fp32", full_first=True)] == ["full", "el"]
    assert [c.key for c in elp_variants.candidates(None, "fp32")] == elp_variants.DEFAULT_VARIANTS


def test_speed_flags_build_what_the_recipe_options_build():
    variant = parse_variant("elp+sdpa+cnncache+bf16w")
    assert (variant.sdpa, variant.cnn_cache, variant.bf16_weights, variant.cache) == (True, True, True, False)
    with pytest.raises(ValueError, match="drop \\+cnncache"):
        parse_variant("l_only+cache+cnncache")
    with pytest.raises(ValueError, match="unknown flag 'fast'"):
        parse_variant("el+fast")


def test_speed_flag_variants_match_the_plain_step(tmp_path):
    """+sdpa and +cnncache compute the same features as the plain model (fp32); +bf16w needs bf16."""
    from elp.core.backbones import load_backbone

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


def test_harness_step_is_the_training_step(tmp_path):
    """The harness's step equals a hand-written forward/head/Adam step on the same seeded model."""
    settings = harness.BenchSettings(backbone="wavlm", config_overrides=TINY_CONFIG, batch_size=2, duration=0.25)
    candidate = elp_variants.candidates(["l_only"], "fp32")[0]
    trainable = harness.build_trainable(candidate, settings, tmp_path)
    batch = harness.make_batch(settings)
    before = [p.detach().clone() for p in trainable.model.learnable]
    trainable.step(batch)
    # by hand: the same seed builds the same model and head
    torch.manual_seed(settings.seed)
    model = elp_variants.build("l_only", settings, tmp_path).modules[0].train()
    head = harness.BenchHead(model.output_dim, settings.num_classes)
    assert all(torch.equal(a, b) for a, b in zip(before, model.learnable_parameters().values()))
    optimizer = torch.optim.Adam(list(model.learnable_parameters().values()) + list(head.parameters()), lr=1e-4)
    feats, mask = model(batch[0], batch[1])
    head(feats, mask, batch[2]).backward()
    optimizer.step()
    for ours, theirs, start in zip(trainable.model.learnable, model.learnable_parameters().values(), before):
        assert not torch.equal(ours, start)  # Adam moved every tensor by about lr
        assert torch.allclose(ours, theirs, atol=1e-6)


def test_interleaved_run_measures_memory_once_per_variant(monkeypatch):
    calls = []

    def fake_run(settings, candidates):
        calls.append(([c.key for c in candidates], settings.memory, settings.repeats))
        peak = {"full": 200.0, "el": 50.0}
        return [{"key": c.key, "step_s": 2.0 if c.key == "full" else 1.0, "other_load": 0.0, "threads": 1,
                 "peak_mib": peak[c.key] if settings.memory else None,
                 "memory_kind": "fake" if settings.memory else None} for c in candidates]

    monkeypatch.setattr(harness, "_run", fake_run)
    settings = harness.BenchSettings(interleave=True, repeats=4, retries=0)
    rows = harness.run_bench(settings, elp_variants.candidates(["full", "el"], "fp32"), log=lambda line: None)
    # one timing run of both without memory, then one memory run (warmup + 1 steps) per variant
    assert calls == [(["full", "el"], False, 4), (["full"], True, 1), (["el"], True, 1)]
    assert [(r["step_vs_baseline"], r["memory_vs_baseline"], r["peak_mib"]) for r in rows] == [
        (1.0, 1.0, 200.0), (0.5, 0.25, 50.0)]


def test_disturbed_runs_are_measured_again_and_the_calmest_kept(monkeypatch):
    def fake_runs(loads):
        loads = iter(loads)
        return lambda settings, candidates: [{"key": "full", "step_s": 1.0, "other_load": next(loads), "threads": 1,
                                              "peak_mib": None, "memory_kind": None}]

    monkeypatch.setattr(harness.os, "cpu_count", lambda: 1)  # 1 thread on 1 core: no spare core
    candidates = elp_variants.candidates(["full"], "fp32")
    settings = harness.BenchSettings(retries=2, max_other_load=0.25)
    monkeypatch.setattr(harness, "_run", fake_runs([5.0, 0.5, 3.0]))  # every run disturbed: 3 runs, calmest kept
    assert harness.run_bench(settings, candidates, log=lambda line: None)[0]["other_load"] == 0.5
    monkeypatch.setattr(harness, "_run", fake_runs([5.0, 0.2]))  # the second is calm: no third run
    assert harness.run_bench(settings, candidates, log=lambda line: None)[0]["other_load"] == 0.2


def test_step_vs_floor_is_the_step_over_twice_the_matching_frozen_forward(tmp_path, monkeypatch, capsys):
    """`elp bench` pairs each elp row with the weighted_sum row of the same forward path."""
    steps = {"full": 3.0, "weighted_sum": 0.5, "weighted_sum+cnncache": 0.4, "el": 1.2, "el+cnncache": 1.0,
             "el+sdpa+cnncache": 0.9, "l_only+cache": 0.1}

    def fake_run(settings, candidates):
        return [{"key": c.key, "variant": c.label, "learnable": 1, "forward_s": steps[c.key], "backward_s": 0.0,
                 "optimizer_s": 0.0, "step_s": steps[c.key], "audio_s_per_s": 1.0, "other_load": 0.0, "threads": 1,
                 "peak_mib": None, "memory_kind": None, "lora_with_grad": None, "lora_total": None}
                for c in candidates]

    monkeypatch.setattr(harness, "_run", fake_run)
    assert main(["bench", "--tiny", "--methods", *list(steps)[1:], "--no-memory", "--retries", "0",
                 "--out-dir", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "wavlm_plus_custom_cpu_fp32_b4x3s.json").read_text())
    floors = {row["key"]: row["step_vs_floor"] for row in record["rows"]}
    assert floors == {"full": 3.0, "weighted_sum": 0.5, "weighted_sum+cnncache": 0.5, "el": 1.2,
                      "el+cnncache": 1.25, "el+sdpa+cnncache": None, "l_only+cache": None}
    assert "| el+cnncache | 1 | 1.000 | 0.000 | 0.000 | 1.000 | 0.33 | 1.25 | - |" in capsys.readouterr().out
