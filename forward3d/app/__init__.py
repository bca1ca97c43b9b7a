"""``forward3d app``: the Gradio web app (extra ``[app]``).

Tabs "Video -> 3D" (a video, images, an RGB-D dataset zip, a webcam recording or a stream URL through
any registered back-end, offline or online, with a Model3D preview, an embedded viser view and the
downloads) and "Image -> 3D Gaussians" (a photo + depth -> 3DGS). From Python::

    from forward3d.app import AppConfig, launch_app

    server = launch_app(AppConfig(port=7860), block=False)
    print(server.url)
    ...
    server.close()

Pieces: :mod:`.session` (private per-session folders, expiry, port search), :mod:`.controls` (controls
from config dataclasses), :mod:`.jobs` (inputs, the background run, downloads), :mod:`.ui` (the page),
:mod:`.server` (options and launch). gradio is imported only by :mod:`.ui` and :func:`launch_app`.
"""

from forward3d.app.server import AppConfig, AppServer, launch_app

__all__ = ["AppConfig", "AppServer", "launch_app"]
