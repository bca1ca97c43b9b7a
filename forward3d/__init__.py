"""forward3d: feed-forward 3D scene reconstruction on CPU or GPU."""

from forward3d.types import Frame, Gaussians, Intrinsics, Mesh, PointCloud, PointMap, Reconstruction

__version__ = "0.1.0"

__all__ = ["Frame", "Gaussians", "Intrinsics", "Mesh", "PointCloud", "PointMap", "Reconstruction", "__version__"]
