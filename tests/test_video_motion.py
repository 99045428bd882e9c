"""Global motion: phase correlation and the similarity fit against known shifts, zooms and rotations, and the
motion-compensated reference against the true frames of constant-velocity pans and zooms."""

import torch
import torch.nn.functional as F

from video.conditioning import blended_observed, motion_compensated
from video.metrics import psnr
from video.motion import estimate_motion, phase_correlation, warp


def _texture(size: int = 96, seed: int = 0) -> torch.Tensor:
    """A smooth random image ``(1, size, size)`` in about ``[-1, 1]`` (low-passed noise: no periodic structure)."""
    noise = torch.randn(1, 1, size, size, generator=torch.Generator().manual_seed(seed))
    smooth = F.avg_pool2d(F.pad(noise, (2, 2, 2, 2), mode="reflect"), 5, stride=1)
    return (smooth / smooth.abs().amax())[0]


def _shift(d: tuple[float, float]) -> torch.Tensor:
    """The motion ``(1, 4)`` of a pure shift by ``d`` pixels."""
    return torch.tensor([[*d, 0.0, 0.0]])


def _camera(velocity: tuple[float, float, float, float], frames: int = 8, size: int = 32,
            seed: int = 0) -> torch.Tensor:
    """Windows ``(T, 1, size, size)`` of a texture whose content moves at constant ``velocity`` (dx, dy, log-scale,
    angle per frame, about the centre): frame t is the texture moved by ``t * velocity``, cut out of its middle."""
    image = _texture(seed=seed)[None].expand(frames, -1, -1, -1)
    motion = torch.arange(frames, dtype=torch.float32)[:, None] * torch.tensor(velocity)
    moved = warp(image, motion)
    c = (image.shape[-1] - size) // 2
    return moved[..., c:c + size, c:c + size]


def _pan(velocity: tuple[float, float], frames: int = 8, size: int = 32, seed: int = 0) -> torch.Tensor:
    return _camera((*velocity, 0.0, 0.0), frames, size, seed)


def test_phase_correlation_finds_whole_pixel_moves_and_refinement_the_fraction():
    image = _texture()[None]  # (1, 1, 96, 96)
    a = image[..., 32:64, 32:64]
    for d in [(3.0, -5.0), (-13.0, 2.0), (12.0, 12.0), (2.5, 1.25), (-4.4, -0.6), (0.3, 0.0), (0.0, 0.0)]:
        b = warp(image, _shift(d))[..., 32:64, 32:64]  # b(p) = a(p - d), cut from a larger image
        whole = phase_correlation(a, b)[0]
        assert (whole - torch.tensor(d)).abs().max() <= 0.5 + 1e-6, (d, whole)
        found = estimate_motion(a, b)[0]
        assert torch.allclose(found[:2], torch.tensor(d), atol=0.05), (d, found)
        assert found[2:].abs().max() < 0.005, (d, found)  # no zoom, no rotation


def test_similarity_fit_finds_zoom_rotation_and_shift():
    """Zooms of up to 1.4x (in and out) with rotations of a few degrees and shifts, about the frame's centre."""
    image = _texture()[None]
    a = image[..., 32:64, 32:64]
    for m in [(0.0, 0.0, 0.3, 0.0), (0.0, 0.0, -0.33, 0.0), (1.5, -2.0, 0.12, 0.05), (-3.0, 1.0, -0.2, -0.08),
              (0.7, 0.4, 0.05, 0.02)]:
        b = warp(image, torch.tensor([m]))[..., 32:64, 32:64]
        found = estimate_motion(a, b)[0]
        assert (found[:2] - torch.tensor(m[:2])).abs().max() < 0.15, (m, found)
        assert (found[2:] - torch.tensor(m[2:])).abs().max() < 0.01, (m, found)


def test_warp_moves_content_and_zero_keeps_it():
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(warp(x, torch.zeros(2, 4)), x, atol=1e-6)
    moved = warp(x, torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.0]]))
    assert torch.allclose(moved[0, :, :, 2:], x[0, :, :, :-2], atol=1e-6)  # right by 2
    assert torch.allclose(moved[1, :, :-1], x[1, :, 1:], atol=1e-6)  # up by 1
    assert torch.allclose(moved[0, :, :, :2], x[0, :, :, :1].expand(-1, -1, 2), atol=1e-6)  # border repeated


def test_motion_reference_follows_a_pan_where_a_blend_blurs():
    """Interpolation (first and last frame observed), prediction (4 observed) and past prediction on pans of
    1.5-2 pixels per frame: the motion-compensated frames are far closer to the truth than the blend or copy;
    observed frames are kept exactly."""
    clips = torch.stack([_pan((1.5, -1.0), seed=0), _pan((-2.0, 0.5), seed=1)])
    B, T = clips.shape[:2]
    idx = torch.arange(T)
    for observed in ((idx == 0) | (idx == T - 1), idx < 4, idx >= 4):
        mask = observed.expand(B, T)
        ref = motion_compensated(clips, mask)
        assert torch.equal(ref[mask], clips[mask])
        inner = (slice(None), ~observed, slice(None), slice(6, -6), slice(6, -6))  # away from repeated borders
        ours = psnr(ref[inner], clips[inner]).mean()
        blend = psnr(blended_observed(clips, mask)[inner], clips[inner]).mean()
        assert ours > 30 and ours > blend + 10, (observed, ours, blend)


def test_motion_reference_follows_zooms_and_turns():
    """A zoom in, a zoom out and a zoom with a turn and a pan (log-scale 0.04-0.05 per frame, 1 degree per frame):
    interpolation and prediction far closer to the truth than the blend."""
    clips = torch.stack([_camera((0.0, 0.0, 0.05, 0.0), seed=3), _camera((0.0, 0.0, -0.05, 0.0), seed=4),
                         _camera((1.0, -0.5, 0.04, 0.0175), seed=5)])
    B, T = clips.shape[:2]
    idx = torch.arange(T)
    for observed in ((idx == 0) | (idx == T - 1), idx < 4):
        mask = observed.expand(B, T)
        ref = motion_compensated(clips, mask)
        inner = (slice(None), ~observed, slice(None), slice(6, -6), slice(6, -6))
        ours = psnr(ref[inner], clips[inner]).mean()
        blend = psnr(blended_observed(clips, mask)[inner], clips[inner]).mean()
        assert ours > 30 and ours > blend + 8, (observed, ours, blend)


def test_motion_reference_fills_entering_content_from_the_other_keyframe():
    """Between two keyframes of a pan, the content that enters the view is in the later keyframe: the whole frame,
    borders included, is reconstructed (exactly for a whole-pixel pan), where repeating borders would not be."""
    clips = torch.stack([_pan((2.0, 0.0), seed=2), _pan((1.5, -1.0), seed=0)])
    idx = torch.arange(8)
    mask = ((idx == 0) | (idx == 7)).expand(2, 8)
    ref = motion_compensated(clips, mask)
    whole = psnr(ref[:, 1:7], clips[:, 1:7]).mean(1)
    assert whole[0] > 59 and whole[1] > 30, whole  # 60: the cap on PSNR


def test_motion_reference_without_motion_to_estimate():
    """One observed frame: a copy; nothing observed: zeros; a static clip: the frames themselves."""
    clips = _pan((1.0, 1.0))[None].expand(3, -1, -1, -1, -1).clone()
    clips[2] = clips[2, :1]  # static
    mask = torch.zeros(3, 8, dtype=torch.bool)
    mask[0, 3] = True
    mask[2, [0, 7]] = True
    ref = motion_compensated(clips, mask)
    assert torch.equal(ref[0], clips[0, 3:4].expand(8, -1, -1, -1))
    assert torch.equal(ref[1], torch.zeros_like(ref[1]))
    assert torch.allclose(ref[2], clips[2], atol=1e-5)


def test_motion_reference_uses_frame_positions():
    """Observed frames 10 positions apart with content moving 0.5 pixel per position: the frame 4 positions after
    the first is moved by 2 pixels."""
    clip = _pan((0.5, 0.0), frames=11)[[0, 4, 10]][None]  # frames at positions 0, 4, 10
    mask = torch.tensor([[True, False, True]])
    ref = motion_compensated(clip, mask, torch.tensor([[0, 4, 10]]))
    inner = (0, 1, slice(None), slice(6, -6), slice(6, -6))
    assert psnr(ref[inner], clip[inner]) > 30


def test_motion_is_estimated_in_float32_under_bf16_autocast():
    """A bf16 training step or evaluation (autocast) estimates exactly the float32 motion and reference: the
    Gauss-Newton products would otherwise round to bf16 (and solve mixed dtypes)."""
    clips = torch.stack([_pan((1.5, -1.0), seed=0), _camera((0.5, 0.0, 0.04, 0.01), seed=1)])
    a, b = clips[:, 0], clips[:, 3]
    mask = (torch.arange(8) < 4).expand(2, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        motion, ref = estimate_motion(a, b), motion_compensated(clips, mask)
    assert motion.dtype == ref.dtype == torch.float32
    assert torch.equal(motion, estimate_motion(a, b)) and torch.equal(ref, motion_compensated(clips, mask))


def test_refinement_never_ends_worse_than_it_starts_and_counts_only_pixels_from_inside():
    """A Gauss-Newton step is kept only where it lowers the error: from any start, on frames where the linear model
    is poor (unrelated, unsmoothed noise), the refined motion's error is at most the start's. A shift of 2.5 pixels
    draws 2.5 columns from outside the frame: 3 of 48 columns are left out of the error."""
    from video.motion import _residual, refine_motion

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(16, 1, 32, 32, generator=g), torch.randn(16, 1, 32, 32, generator=g)
    start = torch.randn(16, 4, generator=g) * torch.tensor([2.0, 2.0, 0.05, 0.05])
    before, after = _residual(a, b, start)[2], _residual(a, b, refine_motion(a, b, start))[2]
    assert (after <= before).all(), (after - before).max()
    inside = _residual(torch.randn(1, 1, 48, 48), torch.randn(1, 1, 48, 48), _shift((2.5, 0.0)))[1]
    assert inside[0, 0].sum(1).eq(45).all()


def test_the_evaluations_motion_baseline_is_the_motion_compensated_reference():
    """On pans the evaluation's ``baseline_motion`` scores follow the camera (far above the blend's, and the
    reference's own PSNR on the generated frames), for every task."""
    from multigen.config import load_config
    from video.domain import Video, VideoConfig

    domain = Video(load_config(VideoConfig, overrides=[
        "data.frames=8", "data.size=32", "model.base_channels=8", "model.channel_mults=[1]", "model.attn_levels=[]",
        "diffusion.timesteps=20", "sample.steps=1", "eval.samples_per_clip=1", "eval.context=3"]))
    clips = torch.stack([_pan((1.5, 0.5), seed=1), _pan((-1.0, 1.0), seed=2)])
    scores = domain.evaluation_scores(domain.build_model().eval(), clips, torch.Generator().manual_seed(0))
    for task, mask in domain.task_masks(8).items():
        motion = motion_compensated(clips, mask.expand(2, 8))
        expected = psnr(motion[:, ~mask], clips[:, ~mask]).mean()
        torch.testing.assert_close(scores[f"{task}/baseline_motion_psnr"], expected)
        assert scores[f"{task}/baseline_motion_psnr"] > scores[f"{task}/baseline_psnr"] + 3, task
