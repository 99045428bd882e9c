"""Learning: a tiny video model beats copy-last-frame on held-out moving digits."""

import pytest

from multigen.config import load_config
from multigen.trainer import read_log, train
from video.domain import Video, VideoConfig


@pytest.mark.slow
def test_tiny_model_beats_copy_last_frame_on_held_out_clips(tmp_path):
    """600 CPU steps of the tiny config (about 1.5 minutes; residual generation, the default), then future
    prediction of 3 frames from 3 on 16 held-out clips, best of 2 samples (MCVD protocol). Measured best-of-2
    PSNR 13.08 dB (seed 0) and 12.78 dB (seed 1) against 12.19 dB for copy-last-frame; the untrained model
    gives 8.6 dB, so this needs the motion to be learned. The mean over samples is only level with the baseline
    at this size (12.66 and 12.30): see the README for the default model."""
    cfg = load_config(VideoConfig, "configs/video/tiny.yaml", [
        "train.max_steps=600", "train.checkpoint_every=0", "train.tensorboard=false", "train.log_every=100",
        "eval.num_clips=16", "eval.samples_per_clip=2", f"train.output_dir={tmp_path}",
    ])
    train(Video, cfg)
    metrics = [r for r in read_log(tmp_path) if "eval/future/psnr_best" in r][-1]
    assert metrics["eval/future/psnr_best"] > metrics["eval/future/baseline_psnr"] + 0.2, metrics
    assert metrics["eval/future/psnr_mean"] > metrics["eval/future/baseline_psnr"] - 0.3, metrics
