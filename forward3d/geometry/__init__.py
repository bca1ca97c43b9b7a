"""Pure maths: SE(3)/Sim(3), quaternions, pinhole cameras, Umeyama alignment, depth fits, normals.

numpy float64 is the primary API; ``*_torch`` variants (and the transform helpers in :mod:`.se3`,
which accept either) serve the torch pipelines. Conventions: OpenCV axes, pixel centres at +0.5,
``c2w``/``w2c``, wxyz quaternions (see ``forward3d/types.py``).
"""

from forward3d.geometry.align import umeyama, umeyama_ransac
from forward3d.geometry.camera import (
    camera_to_world,
    depth_to_points,
    depth_to_points_torch,
    pixel_grid,
    pixel_grid_torch,
    project,
    project_torch,
    unproject,
    unproject_torch,
    valid_depth_mask,
    world_to_camera,
)
from forward3d.geometry.depth_fit import (
    depth_fit_mask,
    fit_scale,
    fit_scale_ransac,
    fit_scale_shift,
    fit_scale_shift_ransac,
)
from forward3d.geometry.normals import estimate_normals, normals_from_point_map
from forward3d.geometry.quaternion import (
    quat_conjugate,
    quat_multiply,
    quat_normalize,
    quat_to_rotmat,
    quat_to_rotmat_torch,
    rotmat_to_quat,
    rotmat_to_quat_torch,
    wxyz_to_xyzw,
    xyzw_to_wxyz,
)
from forward3d.geometry.se3 import (
    compose,
    inverse_se3,
    inverse_sim3,
    make_se3,
    make_sim3,
    relative_c2w,
    rotation_angle,
    skew,
    so3_exp,
    so3_log,
    split_sim3,
    transform_points,
)

__all__ = [
    "umeyama", "umeyama_ransac",
    "camera_to_world", "depth_to_points", "depth_to_points_torch", "pixel_grid", "pixel_grid_torch",
    "project", "project_torch", "unproject", "unproject_torch", "valid_depth_mask", "world_to_camera",
    "depth_fit_mask", "fit_scale", "fit_scale_ransac", "fit_scale_shift", "fit_scale_shift_ransac",
    "estimate_normals", "normals_from_point_map",
    "quat_conjugate", "quat_multiply", "quat_normalize", "quat_to_rotmat", "quat_to_rotmat_torch",
    "rotmat_to_quat", "rotmat_to_quat_torch", "wxyz_to_xyzw", "xyzw_to_wxyz",
    "compose", "inverse_se3", "inverse_sim3", "make_se3", "make_sim3", "relative_c2w", "rotation_angle",
    "skew", "so3_exp", "so3_log", "split_sim3", "transform_points",
]
