"""Cache storage: content keys, atomic files, errors that name the file and the fix."""

import pytest
import torch

from elp.train.feature_cache import CacheError, CNNFeatureCache, HiddenStateCache, audio_key, batch_audio_keys


def test_audio_key_is_content_not_padding_or_id():
    wav = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    padded = torch.stack([torch.cat([wav, torch.zeros(200)]), torch.randn(1200)])
    keys = batch_audio_keys(padded, torch.tensor([1000, 1200]))
    assert keys[0] == audio_key(wav) == audio_key(wav.double())  # samples as float32
    assert audio_key(wav) != audio_key(torch.cat([wav, torch.zeros(1)]))  # trailing zero is content
    changed = wav.clone()
    changed[500] += 1e-3
    assert audio_key(changed) != audio_key(wav)
    assert len(keys[0]) == 32 and int(keys[0], 16) >= 0


def test_storage_dtype_and_fingerprint_select_the_directory(tmp_path):
    key = audio_key(torch.ones(10))
    bf16 = CNNFeatureCache(tmp_path, "f" * 16, dtype="bfloat16")
    fp32 = CNNFeatureCache(tmp_path, "f" * 16, dtype="float32")
    other = CNNFeatureCache(tmp_path, "e" * 16, dtype="bfloat16")
    features = torch.randn(5, 8)
    bf16.put(key, features, utt_id="spk1/utt 1")
    fp32.put(key, features)
    assert key in bf16 and key in fp32 and key not in other
    assert torch.equal(fp32.get(key), features)
    assert torch.equal(bf16.get(key), features.bfloat16().float())
    assert not list(tmp_path.rglob(".tmp.*"))  # atomic writes leave nothing behind
    with pytest.raises(ValueError, match="cache dtype 'float64'"):
        CNNFeatureCache(tmp_path, "f" * 16, dtype="float64")


def test_padded_batches_and_missing_entries(tmp_path):
    cache = CNNFeatureCache(tmp_path, "a" * 16, dtype="float32")
    keys = [audio_key(torch.full((10,), float(i))) for i in range(3)]
    cache.put(keys[0], torch.ones(3, 4))
    cache.put(keys[1], 2 * torch.ones(5, 4))
    assert cache.get_batch(keys) is None  # one missing: the caller computes the batch
    features, lens = cache.get_batch(keys[:2], num_frames=6)
    assert features.shape == (2, 6, 4) and lens.tolist() == [3, 5]
    assert not features[0, 3:].any() and features[1, :5].eq(2).all()
    with pytest.raises(ValueError, match="num_frames=4 is shorter"):
        cache.get_batch(keys[:2], num_frames=4)
    with pytest.raises(ValueError, match="expected CNN features \\[frames, C\\] for utterance 'u9'"):
        cache.put(keys[2], torch.ones(1, 3, 4), utt_id="u9")
    with pytest.raises(ValueError, match="not a hex digest"):
        cache.path("utt1")


def test_corrupt_or_clashing_files_name_the_file_and_the_fix(tmp_path):
    cache = HiddenStateCache(tmp_path, "b" * 16)
    key, other = audio_key(torch.zeros(4)), audio_key(torch.ones(4))
    cache.put(key, torch.zeros(3, 2, 4), utt_id="u1")
    cache.path(other).parent.mkdir(exist_ok=True)
    cache.path(other).write_bytes(cache.path(key).read_bytes())  # a file under the wrong name
    with pytest.raises(CacheError, match=f"holds key '{key}'.*delete it to recompute"):
        cache.get(other)
    cache.path(key).write_bytes(b"\0" * 20)  # truncated by a crash outside our atomic write
    with pytest.raises(CacheError, match="unreadable.*delete it to recompute"):
        cache.get(key)


def test_non_finite_or_out_of_range_features_are_refused(tmp_path):
    cache = CNNFeatureCache(tmp_path, "c" * 16)  # float16 by default
    key = audio_key(torch.ones(3))
    with pytest.raises(CacheError, match="utterance 'u7' \\(beyond float16's range: use dtype bfloat16"):
        cache.put(key, torch.full((2, 4), 1e6), utt_id="u7")
    with pytest.raises(CacheError, match="utterance 'u8'; check the audio for NaN"):
        cache.put(key, torch.full((2, 4), float("nan")), utt_id="u8")
    assert key not in cache
    CNNFeatureCache(tmp_path, "c" * 16, dtype="bfloat16").put(key, torch.full((2, 4), 1e6))
