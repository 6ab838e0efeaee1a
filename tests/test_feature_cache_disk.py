"""The caches on a finite disk: a size cap, failed writes that degrade to computing with one
warning, and ``elp cache`` listing and pruning fingerprints."""

from __future__ import annotations

import errno
import logging
import os
import time

import pytest
import torch

from elp.cli import main
from elp.core.backbones import SSLBackbone
from elp.core.model import AdaptedSSL
from elp.testing import tiny_config
from elp.train import feature_cache
from elp.train.feature_cache import (
    LAST_USED_FILE,
    CNNFeatureCache,
    CNNInputs,
    HiddenStateCache,
    audio_key,
    batch_audio_keys,
    cached_forward,
    cnn_cache_forward,
    directory_bytes,
    list_caches,
    prune_caches,
)

DAY = 86400


@pytest.fixture
def warnings():
    """The warnings of elp.train.feature_cache, as messages."""
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: records.append(record.getMessage())
    feature_cache.logger.addHandler(handler)
    yield records
    feature_cache.logger.removeHandler(handler)


def keys_of(count):
    return [audio_key(torch.full((10,), float(i))) for i in range(count)]


def entry_bytes(tmp_path) -> int:
    probe = CNNFeatureCache(tmp_path / "probe", "f" * 16, dtype="float32")
    probe.put(keys_of(1)[0], torch.ones(10, 512))
    return probe.path(keys_of(1)[0]).stat().st_size


def test_size_cap_stops_storing_with_one_warning(tmp_path, warnings):
    size = entry_bytes(tmp_path)
    root = tmp_path / "cache"
    CNNFeatureCache(root, "e" * 16, dtype="float32").put(keys_of(1)[0], torch.ones(10, 512))  # another fingerprint
    used = directory_bytes(root)
    cap_gb = (used + 2.5 * size) / 1e9  # room for two more entries
    cache = CNNFeatureCache(root, "f" * 16, dtype="float32", max_gb=cap_gb)
    keys = keys_of(4)
    stored = [cache.put(key, torch.full((10, 512), float(i))) for i, key in enumerate(keys)]
    assert stored == [True, True, False, False] and not cache.writable
    assert [key in cache for key in keys] == [True, True, False, False]
    assert directory_bytes(root) <= cap_gb * 1e9
    assert len(warnings) == 1 and f"size cap of {cap_gb:g} GB (cnn_cache_max_gb)" in warnings[0]
    assert torch.equal(cache.get(keys[1]), torch.ones(10, 512))  # reading goes on
    # two DDP ranks share what is left of the cap: one entry each
    shared = [CNNFeatureCache(tmp_path / "ranks", "f" * 16, dtype="float32", max_gb=(used + 2.5 * size) / 1e9,
                              writers=2) for _ in range(2)]
    for rank, cache in enumerate(shared):
        assert [cache.put(key, torch.ones(10, 512)) for key in keys_of(4)[2 * rank:2 * rank + 2]] == [True, False]
    with pytest.raises(ValueError, match="cnn_cache_max_gb must be a size in GB >= 0"):
        CNNFeatureCache(root, "f" * 16, max_gb=-1)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_failed_writes_degrade_to_computing_with_one_warning(tmp_path, monkeypatch, warnings, code):
    def failing(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(feature_cache, "save_file", failing)
    model = AdaptedSSL(SSLBackbone.from_config("wavlm", tiny_config("wavlm")), "weighted_sum").eval()
    cache = CNNFeatureCache.for_model(tmp_path, model)
    wavs = torch.randn(2, 8000)
    keys = batch_audio_keys(wavs, torch.tensor([8000, 8000]))
    with torch.no_grad():
        live, _ = model(wavs)
        for _ in range(3):  # three batches, every write fails
            inputs = CNNInputs.collate(keys, [None, None], list(wavs))
            feats, mask = cnn_cache_forward(model, cache, inputs, "cpu", store=True)
            assert ((feats - live) * mask[..., None]).abs().max().item() <= 5e-3  # computed (fp16 rounding)
        states = HiddenStateCache.for_model(tmp_path / "states", model)
        out, _ = cached_forward(model, states, None, wavs, keys=keys)
    assert torch.allclose(out, live, atol=1e-5)
    assert not any(key in cache for key in keys) and not list(tmp_path.rglob("*.tmp"))
    assert len(warnings) == 2  # one per cache
    assert all(os.strerror(code) in message and "stores nothing more in this run" in message for message in warnings)
    assert "CNNFeatureCache" in warnings[0] and "HiddenStateCache" in warnings[1]


def test_non_finite_features_are_still_an_error_when_the_cache_no_longer_writes(tmp_path):
    cache = CNNFeatureCache(tmp_path, "c" * 16, max_gb=0)
    assert cache.put(keys_of(1)[0], torch.ones(2, 4)) is False
    with pytest.raises(feature_cache.CacheError, match="utterance 'u8'"):
        cache.put(keys_of(1)[0], torch.full((2, 4), float("nan")), utt_id="u8")


def make_caches(root):
    """Three fingerprints used 40, 10 and 0 days ago, and a directory that is not a cache."""
    now = time.time()
    for fingerprint, days in (("a" * 16, 40), ("b" * 16, 10), ("c" * 16, 0)):
        cache = CNNFeatureCache(root, fingerprint)
        cache.put(keys_of(1)[0], torch.ones(50, 512))
        os.utime(cache.root / LAST_USED_FILE, (now - days * DAY, now - days * DAY))
    HiddenStateCache(root / "states", "d" * 16)
    (root / "notes").mkdir()
    (root / "notes" / "info.json").write_text('{"kind": "something else"}')
    return now


def test_list_and_prune_fingerprints(tmp_path, capsys):
    root = tmp_path / "cnn_cache"
    now = make_caches(root)
    assert [d.path.name for d in list_caches(root)] == [f"{c * 16}-float16" for c in "cba"]
    assert main(["cache", "list", str(root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" | ")[0] for line in lines[2:5]] == [f"| {c * 16}-float16" for c in "cba"]
    assert all(" | 1 | 51.4 kB | " in line for line in lines[2:5])
    assert lines[-1] == "3 fingerprints, 154.3 kB"
    assert main(["cache", "prune", str(root), "--keep-latest", "1", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("would remove") == 2 and len(list_caches(root)) == 3
    assert [d.path.name for d in prune_caches(root, keep_latest=1, older_than_days=20, now=now)] == \
        [f"{'a' * 16}-float16"]  # both rules: not the latest, and older than 20 days
    assert main(["cache", "prune", str(root), "--older-than", "5"]) == 0
    assert "removed" in capsys.readouterr().out
    assert [d.path.name for d in list_caches(root)] == [f"{'c' * 16}-float16"]
    assert (root / "notes" / "info.json").exists() and (root / "states").exists()  # not CNN/hidden caches of root
    assert main(["cache", "prune", str(root)]) == 1
    assert "give --keep-latest N and/or --older-than DAYS" in capsys.readouterr().err
    assert main(["cache", "list", str(tmp_path / "missing")]) == 1
    assert "is not a directory" in capsys.readouterr().err
