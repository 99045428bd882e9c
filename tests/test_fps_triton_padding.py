"""The Triton farthest point sampling kernel's padding (a cloud that is not a power of two points) never wins,
even where the origin, the padding's coordinates, is farther than any point of the cloud."""

import os
import subprocess
import sys

import pytest
import torch

from pointcloud.ops import farthest_point_sample_torch

from .conftest import REPO

INTERPRET = """
import sys, torch
from pointcloud.fps_triton import farthest_point_sample_triton
xyz = torch.load(sys.argv[1])
torch.save([farthest_point_sample_triton(xyz, 12), farthest_point_sample_triton(xyz, 12, max_block=32)], sys.argv[2])
"""


def test_padding_points_at_the_origin_never_win_for_a_cloud_far_from_it(tmp_path):
    pytest.importorskip("triton", reason="triton is not installed (the dev extra installs it on Linux)")
    from .test_pointcloud_ops import _interpreter_runs_loops

    if not _interpreter_runs_loops():
        pytest.skip("Triton < 3.7's interpreter cannot run a loop with NumPy >= 2.4")
    xyz = torch.randn(2, 37, 3, generator=torch.Generator().manual_seed(0)) * 0.1 + 10.0  # 37 of 64 slots
    torch.save(xyz, tmp_path / "xyz.pt")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    subprocess.run([sys.executable, "-c", INTERPRET, tmp_path / "xyz.pt", tmp_path / "out.pt"], env=env,
                   cwd=REPO, check=True)
    reference = farthest_point_sample_torch(xyz, 12)
    for got in torch.load(tmp_path / "out.pt"):  # in one block, and swept in tiles
        assert int(got.max()) < 37 and torch.equal(got, reference)
