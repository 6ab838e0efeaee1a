"""elp.eval.plots: the train log parser reads SpeechBrain's own logger output; every plot writes a
non-trivial PNG; binned WER and DET points are exact."""
import numpy as np
import pytest
import speechbrain as sb

from elp.eval import plots


def _png(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    return path


def test_train_log_from_speechbrain_logger(tmp_path):
    logger = sb.utils.train_logger.FileTrainLogger(str(tmp_path / "train_log.txt"))
    for epoch in (1, 2, 3):
        logger.log_stats(stats_meta={"epoch": epoch, "lr_head": 5e-4}, train_stats={"loss": 3.0 / epoch},
                         valid_stats={"loss": 2.0 / epoch, "error": 50.0 - epoch})
    logger.log_stats(stats_meta={"epoch": 2, "lr_head": 5e-4}, train_stats={"loss": 9.0},
                     valid_stats={"loss": 9.0, "error": 9.0})  # a resumed run repeats epoch 2
    logger.log_stats(stats_meta={"epoch loaded": 3}, test_stats={"loss": 1.0, "error": 40.0})
    table = plots.parse_train_log(tmp_path / "train_log.txt")
    assert table["epoch"] == [1.0, 2.0, 3.0]
    assert table["train loss"] == [3.0, 9.0, 1.0]
    assert table["valid error"] == [49.0, 9.0, 47.0]
    _png(plots.plot_training_curves(tmp_path / "train_log.txt", tmp_path / "curves.png"))
    (tmp_path / "bad.txt").write_text("nothing here\n")
    with pytest.raises(ValueError, match="bad.txt: no 'epoch: N"):
        plots.parse_train_log(tmp_path / "bad.txt")


def test_det_points_and_plot(tmp_path):
    p_fa, p_miss = plots.det_points([0.9, 0.8, 0.3, 0.2], [1, 0, 1, 0])
    assert p_fa.tolist() == [0.5, 0.5, 0.0, 0.0] and p_miss.tolist() == [0.0, 0.5, 0.5, 1.0]
    rng = np.random.default_rng(0)
    scores = np.r_[rng.normal(1, 1, 200), rng.normal(-1, 1, 800)]
    _png(plots.plot_det_curve(scores, np.r_[np.ones(200), np.zeros(800)], tmp_path / "det.png"))


def test_confusion_and_wer_by_length(tmp_path):
    _png(plots.plot_confusion_matrix(["a", "b", "b", "c"], ["a", "b", "c", "c"], tmp_path / "cm.png"))
    refs = {"u1": "a b", "u2": "a b c d", "u3": "a", "u4": "a b c"}
    hyps = {"u1": "a x", "u2": "a b c d", "u3": "", "u4": "a b c"}
    durations = {"u1": 1.0, "u2": 4.0, "u3": 0.5, "u4": 3.0}
    rows = plots.wer_by_length(refs, hyps, durations, num_bins=2)
    assert rows == [{"lo": 0.5, "hi": 1.0, "wer": pytest.approx(200 / 3), "num_utts": 2},
                    {"lo": 3.0, "hi": 4.0, "wer": 0.0, "num_utts": 2}]
    _png(plots.plot_wer_by_length(refs, hyps, durations, tmp_path / "wer.png", num_bins=2))
    _png(plots.plot_layer_weights({"x": [0.1, 0.9], "y": [0.5, 0.5]}, tmp_path / "lw.png"))
