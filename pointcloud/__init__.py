"""pointcloud: point-voxel denoiser for shape generation and completion (see issue: point clouds)."""

from multigen import import_on_access

__getattr__ = import_on_access(__name__)
