"""pointcloud: point-voxel denoiser for shape generation and completion (see issue: point clouds)."""
