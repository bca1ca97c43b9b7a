"""Visualisation without a GUI: PNG previews of reconstructions and trajectories (numpy + PIL)."""

from forward3d.viz.preview import (
    cloud_of,
    preview_cameras,
    render_points,
    render_previews,
    trajectory_plot,
    write_previews,
)

__all__ = ["cloud_of", "preview_cameras", "render_points", "render_previews", "trajectory_plot", "write_previews"]
