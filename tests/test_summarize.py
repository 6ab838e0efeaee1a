"""recipes/summarize.py on synthetic results.json files."""
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "recipes" / "summarize.py"

import elp.eval.results as summarize  # noqa: E402  (the library module the script drives)


def make_result(task="asr", corpus="librispeech", backbone="wavlm_base_plus", method="elp",
                value=12.5, params=1_234_567, tag="", **extra):
    higher = task != "asr"
    result = {
        "benchmark": task, "corpus": corpus, "backbone": backbone, "method": method, "tag": tag,
        "metric": {"name": "wer" if task == "asr" else "accuracy", "value": value,
                   "higher_is_better": higher, "chance": 25.0 if higher else 100.0},
        "learnable_params": params, "train_wall_s": 3600.0, "peak_mem_mb": 2048.0,
    }
    result.update(extra)
    return result


def write(root, rel, result):
    path = Path(root) / rel / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))
    return path


@pytest.fixture
def egs(tmp_path):
    root = tmp_path / "egs"
    write(root, "librispeech/asr/exp/elp", make_result(method="elp", value=8.25,
                                                       params=1_000_000,
                                                       extra_metrics={"cer": 3.5}))
    write(root, "librispeech/asr/exp/full", make_result(method="full", value=6.0,
                                                        params=90_000_000))
    write(root, "iemocap/er/exp/elp", make_result(task="er", corpus="iemocap", method="elp",
                                                  value=70.0, params=500_000))
    write(root, "iemocap/er/exp/lora", make_result(task="er", corpus="iemocap", method="lora",
                                                   value=66.5, params=300_000))
    return root


def test_summary_md_json_png(egs, tmp_path):
    out = tmp_path / "exp" / "summary"
    results = summarize.summarize([egs], out)
    assert len(results) == 4
    # table: header plus one row per result, canonical order (full before elp), best bold
    table = [line for line in (tmp_path / "exp" / "summary.md").read_text().splitlines()
             if line.startswith("|")]
    assert table[0].startswith("| benchmark | corpus | backbone | method |")
    rows = [summarize._split_row(line) for line in table[2:]]
    assert [(r[0], r[3]) for r in rows] == [("asr", "full"), ("asr", "elp"),
                                            ("er", "lora"), ("er", "elp")]
    columns = summarize.SUMMARY_COLUMNS
    full_asr, elp_asr, lora_er, elp_er = (dict(zip(columns, r)) for r in rows)
    assert full_asr["value"] == "**6.00**" and elp_asr["value"] == "8.25"  # lower WER wins
    assert elp_er["value"] == "**70.00**" and lora_er["value"] == "66.50"  # higher acc wins
    assert elp_asr["metric"] == "wer ↓" and elp_er["metric"] == "accuracy ↑"
    assert elp_asr["chance"] == "100.00" and elp_er["chance"] == "25.00"
    assert elp_asr["learnable params"] == "1,000,000 (1.00M)"
    assert elp_asr["other metrics"] == "cer 3.50"
    assert elp_asr["train time"] == "60.0 min" and elp_asr["peak mem"] == "2.00 GB"
    # json
    data = json.loads((tmp_path / "exp" / "summary.json").read_text())
    assert data["num_results"] == 4
    by_method = {(r["benchmark"], r["method"]): r for r in data["results"]}
    assert by_method[("asr", "elp")]["metric"]["value"] == 8.25
    assert by_method[("er", "lora")]["learnable_params"] == 300_000
    assert by_method[("asr", "elp")]["source"].endswith("asr/exp/elp/results.json")
    # png
    png = tmp_path / "exp" / "summary.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_cli_writes_the_three_files(egs, tmp_path):
    out = tmp_path / "exp" / "summary"
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    result = subprocess.run([sys.executable, str(SCRIPT), "--exp-root", str(egs), "--out",
                             str(out)], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    for ext in (".md", ".json", ".png"):
        assert Path(f"{out}{ext}").stat().st_size > 0
    empty = tmp_path / "empty"
    empty.mkdir()
    result = subprocess.run([sys.executable, str(SCRIPT), "--exp-root", str(empty), "--out",
                             str(out)], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 1 and "no results.json" in result.stderr


def test_invalid_results_name_file_and_field(egs, tmp_path):
    bad = make_result(method="prefix")
    del bad["metric"]["higher_is_better"]
    bad_path = write(egs, "librispeech/asr/exp/prefix", bad)
    with pytest.raises(summarize.ResultsError, match="higher_is_better") as error:
        summarize.load_results([egs])
    assert str(bad_path) in str(error.value)
    (egs / "broken" / "results.json").parent.mkdir()
    (egs / "broken" / "results.json").write_text("{not json")
    results = summarize.load_results([egs], skip_invalid=True)
    assert len(results) == 4


def test_duplicate_run_keeps_the_newest_file(egs):
    newer = write(egs, "librispeech/asr/exp/elp_rerun", make_result(method="elp", value=7.0))
    os.utime(newer, (newer.stat().st_atime + 10, newer.stat().st_mtime + 10))
    results = summarize.load_results([egs])
    elp = [r for r in results if (r["benchmark"], r["method"]) == ("asr", "elp")]
    assert len(elp) == 1 and elp[0]["metric"]["value"] == 7.0


def test_write_results_json_round_trip(tmp_path):
    path = tmp_path / "exp" / "results.json"
    written = summarize.write_results_json(path, make_result(tag="seed1"))
    assert json.loads(path.read_text())["tag"] == "seed1" and "date" in written
    with pytest.raises(summarize.ResultsError, match="learnable_params"):
        summarize.write_results_json(path, make_result(params=-1))


def test_results_md_row_updated_not_duplicated(tmp_path):
    results_md = tmp_path / "egs" / "librispeech" / "asr" / "RESULTS.md"
    summarize.append_results_line(results_md, make_result(method="elp", value=9.0))
    summarize.append_results_line(results_md, make_result(method="lora", value=11.0))
    summarize.append_results_line(results_md, make_result(method="elp", value=8.0))
    summarize.append_results_line(results_md, make_result(method="elp", value=8.5, tag="seed2"))
    lines = results_md.read_text().splitlines()
    assert lines.count(summarize.RESULTS_HEADER) == 1
    rows = [dict(zip(summarize.RESULTS_COLUMNS, summarize._split_row(line)))
            for line in lines[lines.index(summarize.RESULTS_HEADER) + 2:]]
    assert [(r["method"], r["tag"], r["value"]) for r in rows] == [
        ("elp", "-", "8.00"), ("lora", "-", "11.00"), ("elp", "seed2", "8.50")]
    assert rows[0]["learnable params"] == "1,234,567 (1.23M)"


def test_results_md_keeps_existing_prose(tmp_path):
    results_md = tmp_path / "RESULTS.md"
    results_md.write_text("# LibriSpeech ASR\n\nNotes about the setup.\n")
    summarize.append_results_line(results_md, make_result())
    summarize.append_results_line(results_md, copy.deepcopy(make_result(value=5.0)))
    text = results_md.read_text()
    assert text.startswith("# LibriSpeech ASR\n\nNotes about the setup.\n\n| benchmark |")
    assert text.count("| asr |") == 1 and "5.00" in text
