"""Parameter counts of the spec (section 3), on the real Base configs, and the `elp params` CLI."""

import subprocess
import sys

import pytest

from elp.cli import main
from elp.core.params import count_learnable

# docs/DESIGN.md "Counts" (WavLM Base+ config; the same for every Base model except `full`)
SPEC_COUNTS = {"el": 9_127_436, "conventional": 9_535_488, "e_only": 4_786_176, "l_only": 4_737_036,
               "weighted_sum": 13}


@pytest.mark.parametrize("backbone", ["wavlm_plus", "wav2vec2", "hubert"])
def test_spec_counts(backbone):
    for method, count in SPEC_COUNTS.items():
        assert count_learnable(backbone, method)["total"] == count, method
    for k in (1, 10, 50):
        assert count_learnable(backbone, "elp", prompt_frames=k)["total"] == 9_127_436 + 512 * k


def test_full_counts_the_transformer_layers_and_encoder_layer_norm():
    # 12 x (4 x (768*768+768) + 2 x 1536 + 768*3072+3072 + 3072*768+768) + 1536 = 85,056,000
    assert count_learnable("wav2vec2", "full")["total"] == 85_056_000
    assert count_learnable("hubert", "full")["total"] == 85_056_000
    # + WavLM's relative position bias: 320*12 embedding + 12 x (64*8+8 gate Linear + 12 gate consts)
    assert count_learnable("wavlm_plus", "full")["total"] == 85_056_000 + 3_840 + 12 * (520 + 12)


def test_lora_and_prefix_counts():
    # rank 8 on q and v: 12 layers x 2 projections x (8*768 + 768*8)
    assert count_learnable("wavlm_plus", "lora")["total"] == 12 * 2 * 2 * 8 * 768
    assert count_learnable("wavlm_plus", "prefix", prefix_frames=10)["total"] == 12 * 10 * 768
    assert count_learnable("wavlm_large", "el")["total"] == 23 * (1024 * 256 + 256 + 256 * 1024 + 1024 + 2048) \
        + 24 * (1024 * 512 + 512 + 1024) + 24 + 24 * 2 * 2048


def test_cli_prints_the_table(capsys):
    assert main(["params", "--backbone", "wavlm_plus"]) == 0
    out = capsys.readouterr().out
    for text in ["| wavlm_plus | el | 9,127,436 |", "| wavlm_plus | conventional | 9,535,488 |",
                 "| wavlm_plus | e_only | 4,786,176 |", "| wavlm_plus | l_only | 4,737,036 |",
                 "| wavlm_plus | full | 85,066,224 |", "| wavlm_plus | elp | 9,132,556 |"]:
        assert text in out


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "elp.cli", "params", "--methods", "el", "--json"],
                            capture_output=True, text=True, check=True)
    assert '"total": 9127436' in result.stdout


def test_cli_defaults_are_the_adapter_kinds_defaults(capsys):
    from elp.core.adapters import LayerPrefixes, LoRA, PromptAdapter

    assert (PromptAdapter.options["prompt_frames"], LayerPrefixes.options["prefix_frames"],
            LoRA.options["lora_rank"]) == (10, 10, 8)
    assert main(["params", "--backbone", "wavlm_plus", "--methods", "p_only", "prefix", "lora", "--json"]) == 0
    out = capsys.readouterr().out
    assert '"total": 5120' in out and '"total": 92160' in out and '"total": 294912' in out
    assert count_learnable("wavlm_plus", "el", options={"e_dim": 128})["groups"]["e"] == 11 * (768 * 128 * 2 + 128 + 768 + 1536)


def test_elp_params_options_lists_every_method_option_and_knob(capsys):
    from elp.cli import main
    from elp.core.methods import default_options
    from elp.core.model import RUNTIME_KNOBS

    assert main(["params", "--options"]) == 0
    names = [line.split("|")[1].strip() for line in capsys.readouterr().out.splitlines()[2:]]
    assert names == [*default_options(), *RUNTIME_KNOBS]


@pytest.mark.parametrize("flag", ["--prompt-frames", "--prefix-frames", "--lora-rank"])
def test_elp_params_refuses_a_zero_size_in_one_line(flag):
    from elp.cli import main

    with pytest.raises(SystemExit, match=f"elp params: {flag} 0: must be at least 1"):
        main(["params", flag, "0"])
