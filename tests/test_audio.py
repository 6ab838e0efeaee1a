"""read_audio / audio_info: formats, ark entries, mono mixing, resampling, segments."""
import logging

import kaldiio
import numpy as np
import pytest
import soundfile
import torch
from data_fixtures import write_noise

from elp.data import audio as audio_module
from elp.data.audio import AudioInfo, audio_info, num_samples, read_audio, resampled_length


def test_8k_stereo_becomes_16k_mono(tmp_path):
    path = write_noise(tmp_path / "stereo.wav", seconds=0.3, sample_rate=8000, channels=2)
    wav = read_audio(str(path))
    assert wav.dtype == torch.float32 and wav.shape == (4800,)
    assert audio_info(str(path)) == AudioInfo(num_frames=2400, sample_rate=8000, num_channels=2)
    assert num_samples(str(path)) == 4800


def test_stereo_is_channel_mean(tmp_path):
    left = np.linspace(-0.5, 0.5, 1600, dtype=np.float32)
    soundfile.write(tmp_path / "lr.wav", np.stack([left, np.zeros_like(left)], axis=1), 16000, subtype="FLOAT")
    torch.testing.assert_close(read_audio(str(tmp_path / "lr.wav")), torch.from_numpy(left / 2))


def test_flac_at_16k_is_returned_unchanged(tmp_path):
    path = write_noise(tmp_path / "a.flac", seconds=0.3)
    expected, _ = soundfile.read(path, dtype="float32")
    torch.testing.assert_close(read_audio(str(path)), torch.from_numpy(expected))


def test_odd_rate_length_matches_num_samples(tmp_path):
    path = write_noise(tmp_path / "a.wav", seconds=0.1, sample_rate=44100)  # 4410 frames
    assert read_audio(str(path)).shape[0] == num_samples(str(path)) == resampled_length(4410, 44100, 16000) == 1600


def test_kaldiio_ark_entry(tmp_path):
    samples = (np.random.default_rng(0).uniform(-0.3, 0.3, 2400) * 32767).astype(np.int16)
    ark, scp = tmp_path / "wav.ark", tmp_path / "wav.scp"
    kaldiio.save_ark(str(ark), {"utt1": (8000, samples)}, scp=str(scp))
    entry = scp.read_text().split()[1]
    assert entry.startswith(str(ark) + ":")
    wav = read_audio(entry)
    assert wav.shape == (4800,)
    assert audio_info(entry) == AudioInfo(2400, 8000, 1)
    native = read_audio(entry, target_sr=8000)
    torch.testing.assert_close(native, torch.from_numpy(samples.astype(np.float32) / 32768))


def test_segment(tmp_path):
    path = write_noise(tmp_path / "a.flac", seconds=1.0)
    full = read_audio(str(path))
    torch.testing.assert_close(read_audio(str(path), segment=(0.25, 0.5)), full[4000:8000])
    assert read_audio(str(path), segment=(0.5, -1)).shape == (8000,)
    assert num_samples(str(path), segment=(0.25, 0.5)) == 4000
    with pytest.raises(ValueError, match="empty or outside"):
        read_audio(str(path), segment=(2.0, 3.0))


def test_resampling_logged_once_per_rate(tmp_path, caplog):
    audio_module._resampling_logged.clear()
    paths = [write_noise(tmp_path / f"{i}.wav", seconds=0.05, sample_rate=rate)
             for i, rate in enumerate([8000, 8000, 22050, 16000])]
    with caplog.at_level(logging.INFO, logger="elp.data.audio"):
        for path in paths:
            read_audio(str(path))
    messages = [r.getMessage() for r in caplog.records if "resampling" in r.getMessage()]
    assert messages == ["resampling audio from 8000 Hz to 16000 Hz (logged once per source rate)",
                        "resampling audio from 22050 Hz to 16000 Hz (logged once per source rate)"]


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="audio not found"):
        read_audio(str(tmp_path / "missing.wav"))
    with pytest.raises(FileNotFoundError, match=r"wav.scp entry 'sox in.wav -t wav - \|' .*audio not found: 'in.wav'"):
        read_audio("sox in.wav -t wav - |")  # a standard pipe: its file is read natively
    with pytest.raises(ValueError, match=r"wav.scp entry 'sox in.wav -t wav - reverse \|' is a command .*allow_shell_pipes"):
        read_audio("sox in.wav -t wav - reverse |")  # not a known form: runs only with the opt-in
    with pytest.raises(ValueError, match=r"wav.scp entry '\| sox in.wav' contains '\|'.*convert the audio"):
        read_audio("| sox in.wav")
    (tmp_path / "feats.ark").write_bytes(b"u1 \x00BFM " + bytes(20))
    with pytest.raises(ValueError, match=r"utt 'u1': .*feats.ark:3' holds a Kaldi matrix \(features\), not a waveform"):
        read_audio(f"{tmp_path / 'feats.ark'}:3", utt="u1")


def test_float_ark_and_ark_segment(tmp_path):
    """A float RIFF wave inside an ark is read from its header + raw samples (no kaldiio)."""
    samples = np.linspace(-0.5, 0.5, 1600, dtype=np.float32)
    path = tmp_path / "f.wav"
    soundfile.write(path, samples, 16000, subtype="FLOAT")
    (tmp_path / "w.ark").write_bytes(b"utt1 " + path.read_bytes())
    entry = f"{tmp_path / 'w.ark'}:5"
    torch.testing.assert_close(read_audio(entry), torch.from_numpy(samples))
    torch.testing.assert_close(read_audio(entry, segment=(0.025, 0.05)), torch.from_numpy(samples[400:800]))
    assert num_samples(entry, segment=(0.025, -1)) == 1200


def test_flac_with_nan_impossible_and_float_wav_with_nan_refused(tmp_path):
    from elp.data.audio import check_audio

    clean = write_noise(tmp_path / "a.flac", seconds=0.1)
    assert check_audio(str(clean)) == AudioInfo(1600, 16000, 1)
    samples = np.zeros((1600, 2), dtype=np.float32)
    samples[1200, 1] = np.inf
    soundfile.write(tmp_path / "inf.wav", samples, 16000, subtype="FLOAT")
    with pytest.raises(ValueError, match=r"utt 'x': audio '.*inf.wav' holds 1 non-finite sample\(s\) \(NaN or inf; first at 0.075 s\)"):
        check_audio(str(tmp_path / "inf.wav"), utt="x")
    with pytest.raises(ValueError, match="holds 1 non-finite"):
        read_audio(str(tmp_path / "inf.wav"), segment=(0.05, -1))
    torch.testing.assert_close(read_audio(str(tmp_path / "inf.wav"), segment=(0.0, 0.05)), torch.zeros(800))
