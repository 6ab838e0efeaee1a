"""Libri-Light 10 h training in the LibriSpeech recipe: data preparation from the
``librispeech_finetuning`` layout (a tiny fake corpus written here), its errors, the recipe's
per-training-set lang dir and overrides file, the mini corpus plan, and (slow) the mini run."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from elp.data.kaldi_dir import read_data_dir
from elp.train.recipe import peek_experiment

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "egs" / "librispeech" / "asr"
PREP = RECIPE / "local" / "data_prep.py"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools.mini_corpus import librispeech as mini  # noqa: E402

PARTS = [f"1h/{fold}/{kind}" for fold in range(6) for kind in ("clean", "other")] + ["9h/clean", "9h/other"]


def load_prep():
    spec = importlib.util.spec_from_file_location("librispeech_data_prep", PREP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_chapter(folder: Path, spk: int, chapter: int, lines: dict[int, str]) -> None:
    """``folder/<spk>/<chapter>/``: one 0.3 s flac per line and the chapter's ``.trans.txt``."""
    chapter_dir = folder / str(spk) / str(chapter)
    chapter_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spk * 1000 + chapter)
    for n in lines:
        sf.write(chapter_dir / f"{spk}-{chapter}-{n:04d}.flac", 0.1 * rng.standard_normal(4800), 16000)
    (chapter_dir / f"{spk}-{chapter}.trans.txt").write_text(
        "".join(f"{spk}-{chapter}-{n:04d} {text}\n" for n, text in lines.items()))


def fake_corpora(base: Path) -> Path:
    """``base/LibriSpeech/dev-clean`` (2 utterances) and ``base/librispeech_finetuning`` with one
    utterance in each of the 14 folders, plus chapter 19-198 split between 1h/0/clean and 9h/clean."""
    write_chapter(base / "LibriSpeech" / "dev-clean", 84, 121123, {0: "GO DO YOU HEAR", 1: "BUT IN LESS THAN FIVE"})
    for index, part in enumerate(PARTS):
        write_chapter(base / "librispeech_finetuning" / part, 100 + index, 5000 + index, {0: f"PART {index} WORDS"})
    write_chapter(base / "librispeech_finetuning" / "1h/0/clean", 19, 198, {0: "NORTHANGER ABBEY"})
    write_chapter(base / "librispeech_finetuning" / "9h/clean", 19, 198, {1: "THIS LITTLE WORK"})
    return base


def test_train_10h_joins_the_fourteen_folders(tmp_path):
    prep = load_prep()
    fake_corpora(tmp_path)
    prep.prepare_librilight_10h(tmp_path, tmp_path / "data")
    data = read_data_dir(tmp_path / "data" / "train_10h")
    assert len(data.wav_scp) == 16
    # the chapter split between a 1h fold and 9h keeps both halves, each with its own transcript
    assert data.text["19-198-0000"] == "NORTHANGER ABBEY" and data.text["19-198-0001"] == "THIS LITTLE WORK"
    assert data.wav_scp["19-198-0001"] == str(tmp_path / "librispeech_finetuning" / "9h/clean/19/198/19-198-0001.flac")
    assert data.text["113-5013-0000"] == "PART 13 WORDS"  # 9h/other
    assert data.utt2spk["113-5013-0000"] == "113" and len(set(data.utt2spk.values())) == 15


def test_partial_or_inconsistent_librilight_is_refused(tmp_path):
    prep = load_prep()
    with pytest.raises(prep.CorpusLayoutError, match="librispeech_finetuning/ not found in .*--librilight-root"):
        prep.prepare_librilight_10h(tmp_path, tmp_path / "data")
    fake_corpora(tmp_path)
    write_chapter(tmp_path / "librispeech_finetuning" / "9h/other", 19, 198, {0: "NORTHANGER ABBEY"})
    with pytest.raises(prep.CorpusLayoutError, match=r"utterance 19-198-0000 is in both .*1h/0/clean and .*9h/other"):
        prep.prepare_librilight_10h(tmp_path, tmp_path / "data", validate=False)
    for part in ("9h/other", "1h/3/clean"):
        shutil.rmtree(tmp_path / "librispeech_finetuning" / part)
    with pytest.raises(prep.CorpusLayoutError, match=r"lacks 1h/3/clean, 9h/other \(unpack all of"):
        prep.prepare_librilight_10h(tmp_path, tmp_path / "data", validate=False)


def test_command_line_checks_librilight_before_the_librispeech_subsets(tmp_path):
    corpora = fake_corpora(tmp_path / "corpora")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (corpora / "librispeech_finetuning").rename(elsewhere / "librispeech_finetuning")  # not beside LibriSpeech/
    command = [sys.executable, str(PREP), "--corpus-root", str(corpora / "LibriSpeech"), "--out",
               str(tmp_path / "data"), "--subsets", "dev-clean", "--librilight-10h"]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "--librilight-10h: librispeech_finetuning/ not found in" in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "data" / "dev_clean").exists()  # failed before the long part
    result = subprocess.run([*command, "--librilight-root", str(elsewhere)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["dev_clean", "train_10h"]
    assert len(read_data_dir(tmp_path / "data" / "train_10h").wav_scp) == 16


def test_each_training_set_has_its_own_lang_dir_and_the_10h_overrides(tmp_path):
    common = [str(RECIPE / "conf" / "train.yaml"), "--tag", "t", "--data_dir", "data"]
    default = peek_experiment(common)
    assert (default["train_set"], default["lang_dir"]) == ("data/train_clean_100", "data/lang_train_clean_100")
    assert peek_experiment([*common, "--train_split", "train_960"])["lang_dir"] == "data/lang_train_960"
    ten = peek_experiment([*common, "--overrides_file", str(RECIPE / "conf" / "mini.yaml"),
                           "--overrides_file", str(RECIPE / "conf" / "librilight_10h.yaml")])
    assert (ten["benchmark"], ten["train_set"], ten["lang_dir"]) == ("asr_10h", "data/train_10h", "data/lang_train_10h")
    assert ten["valid_set"] == "data/dev_other" and ten["test_sets"][0] == "data/dev_clean"
    assert ten["valid_set"] not in ten["test_sets"] and ten["bpe_vocab"] == 100  # mini.yaml still applies
    # the plain overrides (a YAML list on the command line) parse too
    plain = peek_experiment([*common, "--train_set", "data/train_10h", "--test_sets", "[data/dev_clean]",
                             "--lang_dir", "data/lang_10h"])
    assert (plain["train_set"], plain["test_sets"], plain["lang_dir"]) == ("data/train_10h", ["data/dev_clean"],
                                                                         "data/lang_10h")


def test_mini_librilight_plan_is_part_of_train_clean_100():
    for size, total in (("small", 128), ("tiny", 4)):
        plan = mini.plan_librilight(0, size)
        train = {p[1]: p[-1] for p in mini.plan_utterances(0, size) if p[0] == "train-clean-100"}
        assert len(plan) == total and all(train[utt] == text for _, utt, _, text in plan)
        assert len({utt for _, utt, _, _ in plan}) == total
    plan = mini.plan_librilight(0, "small")
    assert {p[0] for p in plan} == set(PARTS)  # every folder holds utterances
    chapters = {}
    for part, _, chapter, _ in plan:
        chapters.setdefault(chapter, set()).add(part.split("/")[0])
    assert all(halves == {"1h", "9h"} for halves in chapters.values())  # chapters split as in the real set
    dev_other = mini.plan_dev_other(0, "small")
    others = {p[-1] for p in mini.plan_utterances(0, "small")}
    assert len(dev_other) == 40 and not {p[-1] for p in dev_other} & others
    assert mini.plan_utterances(0, "small") == mini.plan_utterances(0, "small")  # unchanged by the extra plans


@pytest.mark.slow
def test_mini_10h_run_end_to_end(tmp_path):
    from test_recipes import TINY, copy_recipe, run_recipe

    recipe = copy_recipe(tmp_path, "librispeech/asr")
    output = run_recipe(recipe, *TINY, "--prep_opts", "--librilight-10h", "--", "--overrides_file",
                        "conf/librilight_10h.yaml", "--number_of_epochs", "3", "--ckpt_interval_steps", "0")
    assert "test set data/test_other is not prepared" in output  # the mini corpus has no test-other
    result = json.loads((recipe / "exp" / "t" / "results.json").read_text())
    assert result["benchmark"] == "asr_10h" and result["metric"]["name"] == "wer"
    assert set(result["extra_metrics"]) >= {"wer_test_clean"}
    assert sorted(p.name for p in (recipe / "exp" / "t" / "decode").iterdir() if p.is_dir()) == ["dev_clean", "test_clean"]
    assert (recipe / "data" / "lang_train_10h" / "bpe.model").is_file()
    assert not (recipe / "data" / "lang_train_clean_100").exists()
    assert len(read_data_dir(recipe / "data" / "train_10h").wav_scp) == 128
    assert len(read_data_dir(recipe / "data" / "dev_other").wav_scp) == 40
