"""Tests of the synthetic mini corpora (tools/mini_corpus): real layouts, determinism,
idempotence, distinct voices and emotions that differ in measured prosody.

Every corpus is built at ``--size tiny`` into pytest's tmp_path (a few seconds in all).
"""
from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                reason="espeak-ng not installed (sudo apt-get install espeak-ng)")

from tools.mini_corpus import (espeak, fluent_speech_commands, iemocap,  # noqa: E402
                               librispeech, slurp, speech_commands, voxceleb)
from tools.mini_corpus.espeak import SPEAKER_PALETTE, EspeakError, Voice  # noqa: E402

BUILDERS = {"librispeech": librispeech, "voxceleb1": voxceleb, "iemocap": iemocap,
            "slurp": slurp, "speech_commands": speech_commands,
            "fluent_speech_commands": fluent_speech_commands}
ROOT_NAMES = {"librispeech": "LibriSpeech", "voxceleb1": "voxceleb1",
              "iemocap": "IEMOCAP_full_release", "slurp": "slurp",
              "speech_commands": "speech_commands_v0.02",
              "fluent_speech_commands": "fluent_speech_commands_dataset"}


def shared_slurp_dir() -> Path | None:
    """The real SLURP annotations beside the project (tests only; builders never look)."""
    base = os.environ.get("ELP_SHARED_DATA")
    folder = (Path(base) if base else ROOT.parent / "shared" / "data") / "slurp"
    return folder if (folder / "devel.jsonl").is_file() else None


SHARED_SLURP = shared_slurp_dir()


# ----------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------
def build_tiny(name: str, out: Path, **kwargs) -> dict:
    return BUILDERS[name].build(out, seed=kwargs.pop("seed", 0), size="tiny", **kwargs)


def tree(root: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every file under ``root``."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def median_f0(wav: np.ndarray, sr: int = 16000) -> float:
    """Median F0 (Hz) of voiced 40 ms frames, by autocorrelation (60-400 Hz)."""
    frame, hop = int(0.04 * sr), int(0.01 * sr)
    lo, hi = sr // 400, sr // 60
    peak = np.abs(wav).max()
    f0s = []
    for i in range(0, len(wav) - frame, hop):
        x = wav[i:i + frame] - wav[i:i + frame].mean()
        if np.sqrt(np.mean(x ** 2)) < 0.05 * peak:
            continue
        ac = np.correlate(x, x, "full")[frame - 1:]
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.4 * ac[0]:
            f0s.append(sr / lag)
    assert f0s, "no voiced frame found"
    return float(np.median(f0s))


def spectral_centroid(wav: np.ndarray, sr: int = 16000) -> float:
    spec = np.abs(np.fft.rfft(wav * np.hanning(len(wav))))
    return float((spec * np.fft.rfftfreq(len(wav), 1 / sr)).sum() / spec.sum())


def rms(wav: np.ndarray) -> float:
    return float(np.sqrt(np.mean(wav.astype(np.float64) ** 2)))


def assert_audio(path: Path, fmt: str) -> None:
    info = sf.info(str(path))
    assert (info.samplerate, info.channels, info.format, info.subtype) == \
        (16000, 1, fmt, "PCM_16"), f"{path}: {info}"
    assert 0.2 < info.frames / info.samplerate < 5.0, f"{path}: duration"


# ----------------------------------------------------------------------------------------
# fixtures: one tiny build of each corpus for the whole module
# ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("mini")
    for name in BUILDERS:
        summary = build_tiny(name, out)
        assert summary["skipped"] is False
    return {"out": out}


# ----------------------------------------------------------------------------------------
# voices and prosody
# ----------------------------------------------------------------------------------------
def test_check_voice_rejects_unknown_variant():
    variants = espeak.available_variants()
    assert {"m1", "m7", "f2", "klatt4"} <= variants
    espeak.check_voice(Voice("m3"))
    for bad in ("male3", "nosuchvoice"):  # espeak-ng would silently use the default voice
        with pytest.raises(EspeakError, match=bad):
            espeak.check_voice(Voice(bad))
        with pytest.raises(EspeakError):
            espeak.synthesize("one", Voice(bad))
    for _, voice in SPEAKER_PALETTE:
        espeak.check_voice(voice)
    assert len({v.variant for _, v in SPEAKER_PALETTE}) == len(SPEAKER_PALETTE)


def test_speakers_differ_in_measured_voice():
    text = "one two three four"
    wavs = [espeak.synthesize(text, v) for _, v in SPEAKER_PALETTE[:3]]  # M, F, M
    f0 = [median_f0(w) for w in wavs]
    centroid = [spectral_centroid(w) for w in wavs]
    # male vs female: F0 differs by far more than an octave's third
    assert f0[1] > 1.5 * f0[0], f0
    # two male voices: different pitch or spectral envelope
    assert abs(f0[2] - f0[0]) / f0[0] > 0.15 or abs(centroid[2] - centroid[0]) / centroid[0] > 0.05
    # the same voice twice gives identical samples (espeak-ng is deterministic)
    assert np.array_equal(wavs[0], espeak.synthesize(text, SPEAKER_PALETTE[0][1]))


def test_emotions_differ_in_measured_prosody():
    text = "where were you last night"
    for _, speaker in SPEAKER_PALETTE[:2]:
        wav = {e: espeak.synthesize(text, iemocap.emotion_voice(speaker, e))
               for e in ("neu", "ang", "sad", "hap")}
        loud = {e: rms(w) for e, w in wav.items()}
        dur = {e: len(w) / 16000 for e, w in wav.items()}
        f0 = {e: median_f0(w) for e, w in wav.items()}
        assert loud["ang"] > 2.5 * loud["sad"] and loud["ang"] > 1.3 * loud["neu"], loud
        assert dur["sad"] > 1.2 * dur["neu"] > 1.2 * dur["ang"], dur
        assert f0["sad"] < f0["neu"] < f0["hap"] and f0["neu"] < f0["ang"], f0


# ----------------------------------------------------------------------------------------
# LibriSpeech
# ----------------------------------------------------------------------------------------
def test_librispeech_layout(built):
    root = built["out"] / "LibriSpeech"
    assert sorted(p.name for p in root.iterdir()) == sorted(librispeech.SUBSETS)
    pattern = re.compile(r"^(train-clean-100|dev-clean|test-clean)/(\d+)/(\d+)/"
                         r"(\2-\3-\d{4}\.flac|\2-\3\.trans\.txt)$")
    files = [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()]
    assert files and all(pattern.match(f) for f in files), files
    sentences: dict[str, set[str]] = {}
    for trans in root.rglob("*.trans.txt"):
        lines = trans.read_text().splitlines()
        ids = []
        for line in lines:
            utt, text = line.split(" ", 1)
            assert re.fullmatch(r"[A-Z ]+", text) and text == text.upper()
            assert set(text.split()) <= set(librispeech.VOCABULARY)
            assert 2 <= len(text.split()) <= 4
            ids.append(utt)
            sentences.setdefault(trans.parts[-4], set()).add(text)
        assert sorted(p.stem for p in trans.parent.glob("*.flac")) == sorted(ids)
    for flac in root.rglob("*.flac"):
        assert_audio(flac, "FLAC")
        assert sf.info(str(flac)).duration <= 2.2
    for a, b in itertools.combinations(sentences.values(), 2):
        assert not a & b, "a sentence appears in two subsets"
    assert len({p.parts[-3] for p in root.glob("train-clean-100/*/*/*.flac")}) >= 2


def test_librispeech_small_plan():
    plan = librispeech.plan_utterances(0, "small")
    counts = {s: sum(1 for p in plan if p[0] == s) for s in librispeech.SUBSETS}
    assert counts == {"train-clean-100": 240, "dev-clean": 40, "test-clean": 40}
    assert len({p[2] for p in plan}) >= 6  # voices
    train_voices = {p[2] for p in plan if p[0] == "train-clean-100"}
    assert {p[2] for p in plan if p[0] in ("dev-clean", "test-clean")} <= train_voices


def test_librilight_is_copied_from_train_clean_100_beside_an_earlier_build(tmp_path):
    build_tiny("librispeech", tmp_path)  # a corpus built before --librilight existed
    sample = tmp_path / "LibriSpeech" / "dev-clean" / "2001" / "20001" / "2001-20001-0000.flac"
    mtime = sample.stat().st_mtime_ns
    summary = librispeech.build_librilight(tmp_path, size="tiny")
    assert summary["skipped"] is False and sample.stat().st_mtime_ns == mtime  # LibriSpeech/ kept
    assert summary["dev_other"] == 4 and sum(summary["librilight"].values()) == 4
    root = tmp_path / "librispeech_finetuning"
    assert sorted(p.name for p in root.iterdir()) == ["1h", "9h"]
    assert sorted(p.name for p in (root / "1h").iterdir()) == [str(fold) for fold in range(6)]
    assert all((root / part).is_dir() for part in librispeech.LIBRILIGHT_PARTS)
    copies = sorted(root.rglob("*.flac"))
    assert len(copies) == 4
    for copy in copies:
        original = tmp_path / "LibriSpeech" / "train-clean-100" / copy.parts[-3] / copy.parts[-2] / copy.name
        assert copy.read_bytes() == original.read_bytes()
        lines = (copy.parent / f"{copy.parts[-3]}-{copy.parts[-2]}.trans.txt").read_text().splitlines()
        assert lines == [line for line in (original.parent / f"{copy.parts[-3]}-{copy.parts[-2]}.trans.txt")
                         .read_text().splitlines() if line.split()[0] == copy.stem]
    dev_other = sorted((tmp_path / "LibriSpeech" / "dev-other").rglob("*.flac"))
    assert [p.stem for p in dev_other] == ["4001-40001-0000", "4001-40001-0001", "4002-40101-0000", "4002-40101-0001"]
    for flac in dev_other:
        assert_audio(flac, "FLAC")
    assert librispeech.build_librilight(tmp_path, size="tiny")["skipped"] is True


# ----------------------------------------------------------------------------------------
# VoxCeleb1
# ----------------------------------------------------------------------------------------
def test_voxceleb_layout_and_trials(built):
    root = built["out"] / "voxceleb1"
    wav_root = root / "wav"
    files = sorted(str(p.relative_to(wav_root)) for p in wav_root.rglob("*") if p.is_file())
    assert files and all(re.fullmatch(r"id\d{5}/[A-Za-z0-9_-]{11}/\d{5}\.wav", f) for f in files)
    for f in files:
        assert_audio(wav_root / f, "WAV")
    test_ids = {f"id{voxceleb.TEST_ID_BASE + i}" for i in range(voxceleb.LAYOUT["tiny"][1])}
    trials = [line.split(" ") for line in (root / "veri_test2.txt").read_text().splitlines()]
    assert trials
    for label, a, b in trials:
        assert label in ("0", "1") and a != b
        assert (wav_root / a).is_file() and (wav_root / b).is_file()
        assert a.split("/")[0] in test_ids and b.split("/")[0] in test_ids
        assert (a.split("/")[0] == b.split("/")[0]) == (label == "1")
    labels = [t[0] for t in trials]
    assert labels.count("1") == labels.count("0")
    assert len({frozenset(t[1:]) for t in trials}) == len(trials)


def test_voxceleb_small_plan_and_trials():
    import random
    plan = voxceleb.plan_files(0, "small")
    speakers = {p[1].split("/")[0] for p in plan}
    assert len(speakers) >= 12
    test_files = [p[1] for p in plan if p[0] == "test"]
    trials = voxceleb.make_trials(test_files, 100, random.Random(1))
    assert sum(t[0] for t in trials) == 100 and len(trials) == 200
    assert all(a != b for _, a, b in trials)


# ----------------------------------------------------------------------------------------
# IEMOCAP
# ----------------------------------------------------------------------------------------
LABEL_LINE = re.compile(r"^\[(\d+\.\d{4}) - (\d+\.\d{4})\]\t(Ses0[1-5][FM]_\w+?_[FM]\d{3})\t"
                        r"(neu|hap|exc|ang|sad|fru|sur|fea|dis|oth|xxx)\t"
                        r"\[(\d\.\d{4}), (\d\.\d{4}), (\d\.\d{4})\]$")


def test_iemocap_layout_and_labels(built):
    root = built["out"] / "IEMOCAP_full_release"
    assert sorted(p.name for p in root.iterdir()) == [f"Session{n}" for n in range(1, 6)]
    wavs = {}
    for p in root.rglob("*.wav"):
        rel = str(p.relative_to(root))
        m = re.fullmatch(r"Session([1-5])/sentences/wav/(Ses0\1[FM]_\w+)/(\2_[FM]\d{3})\.wav", rel)
        assert m, rel
        wavs[m.group(3)] = p
        assert_audio(p, "WAV")
    labels = {}
    for txt in root.glob("Session*/dialog/EmoEvaluation/*.txt"):
        lines = txt.read_text().split("\n")
        assert lines[0].startswith("% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]")
        assert lines[1] == ""
        for line in lines[2:]:
            if line.startswith("["):
                m = LABEL_LINE.match(line)
                assert m, line
                utt = m.group(3)
                assert utt.startswith(txt.stem + "_")
                start, end = float(m.group(1)), float(m.group(2))
                assert abs((end - start) - sf.info(str(wavs[utt])).duration) < 1e-3
                labels[utt] = m.group(4)
            else:
                assert line == "" or re.match(r"^[CA]-[EF]\d:\t", line), line
    assert set(labels) == set(wavs)
    assert {"neu", "ang", "sad", "hap", "exc", "xxx"} <= set(labels.values())
    loud = {e: np.mean([rms(sf.read(str(wavs[u]))[0]) for u in labels if labels[u] == e])
            for e in ("ang", "sad")}
    assert loud["ang"] > 2 * loud["sad"], loud


def test_iemocap_small_counts():
    import random
    rng = random.Random(0)
    turns = [t for s in iemocap.SESSIONS for t in iemocap.plan_session(s, "small", rng)]
    counts = {e: sum(t["emotion"] == e for t in turns) for e in iemocap.EMOTION_PROSODY}
    assert 300 <= len(turns) <= 400
    assert all(counts[e] <= 20 * 5 for e in ("neu", "ang", "sad", "hap"))
    assert counts["exc"] > 0 and counts["xxx"] > 0 and counts["fru"] > 0


# ----------------------------------------------------------------------------------------
# SLURP
# ----------------------------------------------------------------------------------------
def check_slurp(root: Path) -> list[dict]:
    audio = root / "slurp_real"
    listed = []
    lines = []
    for split in ("train", "devel", "test"):
        path = root / "dataset" / "slurp" / f"{split}.jsonl"
        split_lines = [json.loads(x) for x in path.read_text().splitlines()]
        assert split_lines, path
        for line in split_lines:
            assert list(line)[:9] == list(slurp.FIELD_ORDER), list(line)
            assert line["intent"] == f"{line['scenario']}_{line['action']}"
            assert line["recordings"]
            for rec in line["recordings"]:
                assert set(rec) == {"file", "wer", "ent_wer", "status"}
                assert re.fullmatch(r"audio-+\d+(-headset)?\.flac", rec["file"])
                assert (audio / rec["file"]).is_file(), rec["file"]
                listed.append(rec["file"])
            n_tokens = len(line["tokens"])
            for ent in line["entities"]:
                assert all(0 <= i < n_tokens for i in ent["span"])
        lines += split_lines
    assert sorted(listed) == sorted(p.name for p in audio.iterdir())  # nothing extra
    assert len({x["slurp_id"] for x in lines}) == len(lines)
    for f in listed[:5]:
        assert_audio(audio / f, "FLAC")
    return lines


def test_slurp_builtin_layout(built):
    lines = check_slurp(built["out"] / "slurp")
    assert {x["intent"] for x in lines} == set(slurp.BUILTIN_TEMPLATES)
    assert [x["slurp_id"] for x in lines] != [] and min(x["slurp_id"] for x in lines) == 900001
    for line in lines:
        assert line["sentence"] == " ".join(t["surface"] for t in line["tokens"])
        assert len(line["sentence"].split()) <= slurp.BUILTIN_MAX_WORDS
        assert slurp.parse_annotation(line["sentence_annotation"])[0] == line["sentence"]


def test_slurp_builtin_text_is_lexically_distinct():
    """Every intent has enough sentences for the mini recipe (48) plus pre-training text, and
    each has words of its own (the task is learnable from the words)."""
    sentences = {i: [slurp.parse_annotation(a)[0] for a in slurp.builtin_annotations(i)]
                 for i in slurp.BUILTIN_TEMPLATES}
    assert len(sentences) == 6
    assert all(len(s) >= 48 + 25 for s in sentences.values()), {i: len(s) for i, s in sentences.items()}
    words = {i: {w for s in ss for w in s.split()} for i, ss in sentences.items()}
    for intent, own in words.items():
        others = set().union(*(w for i, w in words.items() if i != intent))
        assert len(own - others) >= 8, (intent, sorted(own - others))
    # a given (seed, intent) fixes the order, whatever the corpus size
    first = slurp.builtin_lines(["news_query"], 10, seed=0)
    more = slurp.builtin_lines(["news_query", "play_music"], 20, seed=0)
    texts = lambda c: [x["sentence_annotation"] for s in slurp.SPLITS for x in c[s]]  # noqa: E731
    assert set(texts(first)) < set(texts(more))
    with pytest.raises(ValueError, match="--sentences_per_intent"):
        slurp.builtin_lines(["datetime_query"], 1000, seed=0)
    with pytest.raises(ValueError, match="no built-in sentences for intent 'qa_currency'"):
        slurp.build(Path("unused"), size="tiny", intents="qa_currency")


def test_slurp_same_bytes_with_and_without_shared_data(built, tmp_path, monkeypatch):
    """The corpus and the pre-training text never read ../shared or $ELP_SHARED_DATA."""
    import tools.pretrain_text as pretrain_text
    shared = tmp_path / "shared" / "data"
    (shared / "slurp").mkdir(parents=True)
    if SHARED_SLURP is not None:  # the real files when available, else a decoy line
        for name in ("devel.jsonl", "test.jsonl"):
            (shared / "slurp" / name).symlink_to(SHARED_SLURP / name)
    else:
        (shared / "slurp" / "devel.jsonl").write_text(json.dumps({
            "slurp_id": 1, "sentence": "decoy", "sentence_annotation": "decoy",
            "intent": "qa_decoy", "action": "decoy", "tokens": [], "scenario": "qa",
            "recordings": [{"file": "audio-1.flac"}], "entities": []}) + "\n")
    texts = {}
    for label, value in (("with", str(shared)), ("without", str(tmp_path / "absent"))):
        monkeypatch.setenv("ELP_SHARED_DATA", value)
        build_tiny("slurp", tmp_path / label)
        assert tree(tmp_path / label / "slurp") == tree(built["out"] / "slurp")
        out = tmp_path / f"{label}.txt"
        assert pretrain_text.main(["--out", str(out), "--exclude",
                                   str(tmp_path / label / "slurp" / "dataset" / "slurp")]) == 0
        texts[label] = out.read_bytes()
    assert texts["with"] == texts["without"]
    assert len(texts["with"].decode().splitlines()) == 200


def test_pretrain_text_is_disjoint_from_the_ic_corpus(tmp_path):
    import tools.pretrain_text as pretrain_text
    text = set(pretrain_text.pretrain_sentences(200))
    assert len(text) == 200
    # the mini IC recipe's corpus: 48 sentences per intent (only the text is needed here)
    corpus = slurp.builtin_lines(sorted(slurp.BUILTIN_TEMPLATES), 48, seed=0)
    used = {x["sentence"] for lines in corpus.values() for x in lines}
    assert len(used) == 6 * 48 and not text & used
    # every intent contributes
    per_intent = {i: sum(s in text for s in map(lambda a: slurp.parse_annotation(a)[0],
                                                slurp.builtin_annotations(i)))
                  for i in slurp.BUILTIN_TEMPLATES}
    assert min(per_intent.values()) >= 20, per_intent
    # a corpus that uses the reserved positions is caught by --exclude
    big = slurp.builtin_lines(["weather_query"], 80, seed=0)
    folder = tmp_path / "dataset" / "slurp"
    folder.mkdir(parents=True)
    for split in ("train", "devel", "test"):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in big[split]))
    assert pretrain_text.check_disjoint(sorted(text), folder.parent) == 0  # no jsonl there
    (folder / "devel.jsonl").rename(tmp_path / "devel.jsonl")
    (folder / "test.jsonl").unlink()  # train: the first 56 of the order, no collision
    assert pretrain_text.check_disjoint(sorted(text), folder) == 56
    (tmp_path / "devel.jsonl").rename(folder / "devel.jsonl")  # positions 56-67 collide
    with pytest.raises(ValueError, match="devel.jsonl:.*--reserve"):
        pretrain_text.check_disjoint(sorted(text), folder)


def test_pretrain_vocabulary_sentences_avoid_every_asr_sentence():
    import tools.pretrain_text as pretrain_text
    asr = {p[-1] for p in librispeech.plan_utterances(0, "small")}
    assert len(asr) == 320  # train, dev and test of the mini ASR corpus
    for seed in range(1, 7):  # tools/standin_backbone.sh: one draw per pre-training corpus
        text = pretrain_text.vocabulary_sentences(120, seed=seed)
        assert len(text) == len(set(text)) == 120 and text == sorted(text)
        assert not set(text) & asr
        assert all(2 <= len(s.split()) <= 4 and set(s.split()) <= set(librispeech.VOCABULARY) for s in text)
    assert pretrain_text.vocabulary_sentences(120, seed=1) == pretrain_text.vocabulary_sentences(120, seed=1)
    assert pretrain_text.vocabulary_sentences(120, seed=1) != pretrain_text.vocabulary_sentences(120, seed=2)
    # another ASR corpus seed is avoided instead
    other = {p[-1] for p in librispeech.plan_utterances(5, "small")}
    assert not set(pretrain_text.vocabulary_sentences(300, seed=1, asr_seed=5)) & other


def test_pretrain_corpus_reads_only_the_pretrain_text(tmp_path):
    """The 320 utterances of a pre-training corpus read the 200 + 120 sentences, none other
    (no fallback to random vocabulary sentences, which could be ASR sentences)."""
    import tools.pretrain_text as pretrain_text
    out = tmp_path / "text.txt"
    assert pretrain_text.main(["--out", str(out), "--vocab_sentences", "120", "--vocab_seed", "3"]) == 0
    sentences = librispeech.read_sentences(out)
    assert len(sentences) == 320
    plan = librispeech.plan_utterances(3, "small", sentences)
    assert sorted(p[-1] for p in plan) == sorted(sentences)
    assert not {p[-1] for p in plan} & {p[-1] for p in librispeech.plan_utterances(0, "small")}


def test_pretrain_backbone_reads_every_corpus(tmp_path):
    """tools/standin_backbone.sh hands several corpora to one pre-training run."""
    import tools.pretrain_backbone as pretrain_backbone
    for seed in (1, 2):
        build_tiny("librispeech", tmp_path / f"c{seed}", seed=seed)
    both = [*pretrain_backbone.read_librispeech_layout(tmp_path / "c1"),
            *pretrain_backbone.read_librispeech_layout(tmp_path / "c2")]
    assert len(both) == 24 and len({path for path, _, _ in both}) == 24
    out = tmp_path / "model"
    assert pretrain_backbone.main(["--corpus", str(tmp_path / "c1"), str(tmp_path / "c2"),
                                   "--out", str(out), "--arch", "tiny", "--steps", "2",
                                   "--batch-size", "4"]) == 0
    stats = json.loads((out / "pretrain_stats.json").read_text())
    assert stats["utterances"] == 24 and stats["steps"] == 2
    assert (out / "config.json").is_file()


def test_standin_is_reused_only_when_built_with_the_same_options(tmp_path):
    """exp/backbone_*_small is a cache keyed by its build options: never reused silently."""
    out = tmp_path / "backbone_wavlm_plus_small"
    out.mkdir()
    (out / "config.json").write_text("{}")  # as an older elp left it: no options file

    def run(*args):
        return subprocess.run(["bash", str(ROOT / "tools" / "standin_backbone.sh"), "--out", str(out), *args],
                              capture_output=True, text=True, timeout=60)

    proc = run()
    assert proc.returncode == 1
    assert "unrecorded" in proc.stderr and f"delete {out}" in proc.stderr
    (out / "standin_options.txt").write_text(
        "backbone=wavlm_plus steps=1600 corpora=6 threads=2 text=v2\n")
    assert run().returncode == 0  # the same options: reused, nothing built
    assert not (tmp_path / "backbone_wavlm_plus_small.work").exists()
    proc = run("--steps", "800")
    assert proc.returncode == 1 and "steps=1600" in proc.stderr and "steps=800" in proc.stderr


@pytest.mark.skipif(SHARED_SLURP is None, reason="../shared/data/slurp not found")
def test_slurp_real_annotations(tmp_path):
    summary = slurp.build(tmp_path, size="tiny", annotations=SHARED_SLURP, num_intents=4)
    assert summary["source"] == "real"
    lines = check_slurp(tmp_path / "slurp")
    real = {}
    for name in ("devel.jsonl", "test.jsonl"):
        for x in (SHARED_SLURP / name).read_text().splitlines():
            d = json.loads(x)
            real[d["slurp_id"]] = d
    assert len({x["intent"] for x in lines}) == 4
    for line in lines:  # verbatim copies, except the capped recordings list
        original = real[line["slurp_id"]]
        assert {**original, "recordings": line["recordings"]} == line
        assert line["recordings"] == original["recordings"][:1]


def test_slurp_parse_annotation():
    sentence, tokens, entities = slurp.parse_annotation(
        "siri what is one [currency_name : american dollar] in [currency_name : yen]")
    assert sentence == "siri what is one american dollar in yen"
    assert entities == [{"span": [4, 5], "type": "currency_name"},
                        {"span": [7], "type": "currency_name"}]
    assert [t["id"] for t in tokens] == list(range(8))


# ----------------------------------------------------------------------------------------
# Speech Commands v0.02
# ----------------------------------------------------------------------------------------
def test_speech_commands_layout(built):
    root = built["out"] / "speech_commands_v0.02"
    words = set(speech_commands.COMMAND_WORDS) | set(speech_commands.AUXILIARY_WORDS)
    assert len(words) == 35 and len(speech_commands.AUXILIARY_WORDS) == 25
    clips = sorted(str(p.relative_to(root)) for p in root.glob("*/*.wav")
                   if p.parent.name != "_background_noise_")
    for rel in clips:
        word, name = rel.split("/")
        assert word in words and re.fullmatch(r"[0-9a-f]{8}_nohash_0\.wav", name), rel
        info = sf.info(str(root / rel))
        assert (info.samplerate, info.channels, info.subtype, info.frames) == \
            (16000, 1, "PCM_16", 16000), rel
    lists = {}
    for split, name in (("validation", "validation_list.txt"), ("testing", "testing_list.txt")):
        lines = (root / name).read_text().splitlines()
        assert lines == sorted(lines) and set(lines) <= set(clips)
        lists[split] = lines
    training = sorted(set(clips) - set(lists["validation"]) - set(lists["testing"]))
    lists["training"] = training
    # tiny: 2/1/1 speakers, each says the 10 command words and 1 other word
    assert {s: len(v) for s, v in lists.items()} == {"validation": 11, "testing": 11,
                                                      "training": 22}
    for split, lines in lists.items():  # the real rule: split = hash of the speaker id
        assert all(speech_commands.which_split(line) == split for line in lines), split
    speakers = {s: {line.split("/")[1].split("_")[0] for line in v} for s, v in lists.items()}
    assert not any(a & b for a, b in itertools.combinations(speakers.values(), 2))
    noise = sorted(p.name for p in (root / "_background_noise_").iterdir())
    assert noise == ["README.md", "brown_noise.wav", "pink_noise.wav", "white_noise.wav"]
    for name in noise[1:]:
        wav, sr = sf.read(str(root / "_background_noise_" / name))
        assert sr == 16000 and len(wav) == 20 * 16000 and abs(rms(wav) - 0.1) < 0.002
    # a word is louder than the floor around it, and sits at different offsets
    onsets = []
    for rel in clips[:6]:
        wav, _ = sf.read(str(root / rel))
        loud = np.flatnonzero(np.abs(wav) > 0.05)
        assert loud.size and (np.abs(wav[:200]).max() < 0.02 or np.abs(wav[-200:]).max() < 0.02)
        onsets.append(int(loud[0]))
    assert len(set(onsets)) > 3


def test_speech_commands_split_rule_and_small_plan():
    ids = [f"{i:08x}" for i in range(0, 20000 * 7919, 7919)]
    shares = {s: sum(speech_commands.which_split(i) == s for i in ids) / len(ids)
              for s in ("validation", "testing", "training")}
    assert abs(shares["validation"] - 0.1) < 0.01 and abs(shares["testing"] - 0.1) < 0.01
    assert speech_commands.which_split("left/0a7c2a8d_nohash_3.wav") == \
        speech_commands.which_split("0a7c2a8d")
    # stricter split -> different assignment (percentages are honoured)
    assert all(speech_commands.which_split(i, 0.0, 0.0) == "training" for i in ids[:50])
    plan = speech_commands.plan_files(0, "small")
    counts = {s: sum(p[0] == s for p in plan) for s in speech_commands.SPLITS}
    assert counts == {"training": 264, "validation": 44, "testing": 44}
    per_word = {w: sum(p[1].startswith(f"{w}/") and p[0] == "training" for p in plan)
                for w in speech_commands.COMMAND_WORDS}
    assert set(per_word.values()) == {24}
    auxiliary = [p[1].split("/")[0] for p in plan
                 if p[1].split("/")[0] in speech_commands.AUXILIARY_WORDS]
    assert len(auxiliary) == 32 and len(set(auxiliary)) == 25  # every word, about once
    voices = {p[2] for p in plan}
    assert len(voices) == 32 and len({v.variant for v in voices}) >= 15
    for voice in voices:
        espeak.check_voice(voice)


def test_speech_commands_clip_too_long_is_an_error():
    with pytest.raises(EspeakError, match="yes/x_nohash_0.wav.*longer than a 1 s clip"):
        speech_commands.place_in_clip(np.zeros(16001, np.float32), np.random.default_rng(0),
                                      "yes/x_nohash_0.wav")


# ----------------------------------------------------------------------------------------
# Fluent Speech Commands
# ----------------------------------------------------------------------------------------
def test_fluent_speech_commands_layout(built):
    root = built["out"] / "fluent_speech_commands_dataset"
    assert sorted(p.name for p in root.iterdir()) == ["data", "wavs"]
    speakers = {}
    for split in fluent_speech_commands.SPLITS:
        lines = (root / "data" / f"{split}_data.csv").read_text().splitlines()
        assert lines[0] == ",path,speakerId,transcription,action,object,location"
        rows = [line.split(",") for line in lines[1:]]
        assert [int(r[0]) for r in rows] == list(range(len(rows))) and len(rows) == 8
        for _, path, spk, sentence, *intent in rows:
            assert re.fullmatch(r"wavs/speakers/([A-Za-z0-9]{16})/[0-9a-f]{8}-[0-9a-f]{4}-11e9-[0-9a-f]{4}-[0-9a-f]{12}\.wav",
                                path).group(1) == spk
            assert sentence in fluent_speech_commands.PHRASES[tuple(intent)]
            assert_audio(root / path, "WAV")
        assert {tuple(r[4:]) for r in rows} == set(fluent_speech_commands.PHRASES)  # every intent in every split
        speakers[split] = {r[2] for r in rows}
    assert not any(a & b for a, b in itertools.combinations(speakers.values(), 2))
    assert len(list(root.glob("wavs/speakers/*/*.wav"))) == 24


def test_fluent_speech_commands_small_plan():
    rows = fluent_speech_commands.plan_rows(0, "small")
    assert {s: len(r) for s, r in rows.items()} == {"train": 300, "valid": 90, "test": 90}
    voices = {s: {r[4] for r in v} for s, v in rows.items()}
    assert [len(v) for v in voices.values()] == [10, 3, 3] and len(set().union(*voices.values())) == 16
    for split_rows in rows.values():  # each speaker says each phrase once
        per_speaker = {}
        for _, spk, sentence, _, _ in split_rows:
            per_speaker.setdefault(spk, []).append(sentence)
        assert all(sorted(s) == sorted(p for _, p in fluent_speech_commands.phrases("small"))
                   for s in per_speaker.values())
    assert len({r[0] for v in rows.values() for r in v}) == 480


# ----------------------------------------------------------------------------------------
# determinism and idempotence
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(BUILDERS))
def test_build_is_deterministic(name, built, tmp_path):
    build_tiny(name, tmp_path)
    assert tree(tmp_path / ROOT_NAMES[name]) == tree(built["out"] / ROOT_NAMES[name])


def test_rerun_is_instant_and_guarded(tmp_path):
    first = build_tiny("librispeech", tmp_path)
    marker = espeak.done_marker(tmp_path, "librispeech")
    assert marker.is_file() and not first["skipped"]
    sample = next((tmp_path / "LibriSpeech").rglob("*.flac"))
    mtime = sample.stat().st_mtime_ns
    start = time.time()
    assert build_tiny("librispeech", tmp_path)["skipped"] is True
    assert time.time() - start < 0.5 and sample.stat().st_mtime_ns == mtime
    with pytest.raises(FileExistsError, match="--force"):
        build_tiny("librispeech", tmp_path, seed=1)
    assert build_tiny("librispeech", tmp_path, seed=1, force=True)["skipped"] is False
    # a corpus folder this builder did not make is never overwritten
    foreign = tmp_path / "other"
    (foreign / "LibriSpeech").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="not made by this builder"):
        build_tiny("librispeech", foreign)


def test_cli(tmp_path):
    cmd = [sys.executable, str(ROOT / "tools" / "mini_corpus" / "voxceleb.py"),
           "--out", str(tmp_path), "--size", "tiny", "--seed", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "voxceleb1" / "veri_test2.txt").is_file()
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert again.returncode == 0 and "already built" in again.stderr
