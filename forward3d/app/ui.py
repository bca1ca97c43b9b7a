"""The gradio page of ``forward3d app``: tabs "Video -> 3D" and "Image -> 3D Gaussians".

Every back-end of the registry (:data:`forward3d.pipelines.BACKENDS` and plug-ins) appears in the
back-end menu with its options built from its config dataclass (:mod:`forward3d.app.controls`); the
input options from :class:`~forward3d.api.SourceConfig`, the splat options from
:class:`~forward3d.pipelines.splat.SplatConfig`. Work happens in :mod:`forward3d.app.jobs`; each browser
session writes only into its private folder (:class:`~forward3d.app.session.SessionStore`).
"""

import dataclasses
import html
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from forward3d.api import SourceConfig
from forward3d.app.controls import ControlSpec, config_values, control_specs, make_component
from forward3d.app.jobs import ReconJob, VideoInput, make_downloads, prepare_input, preview_glb, summary_markdown
from forward3d.app.jobs import update_points
from forward3d.app.server import AppConfig, import_gradio
from forward3d.app.session import Session, SessionStore, check_upload_size

__all__ = ["build_app", "backend_choices", "MODES"]

log = logging.getLogger(__name__)

MODES = ("offline", "online")
LIVE_PREVIEW_S = 2.0  # online mode: seconds between two refreshes of the Model3D preview
STOP_WAIT_S = 60.0  # Stop: seconds to wait for the current frame before giving up showing the partial result
# options that the app sets itself or that name server-side output paths
_SOURCE_EXCLUDE = ("layout",)
_SPLAT_EXCLUDE = ("image", "multiview", "poses", "near", "far", "short_side", "crop", "min_opacity", "depth", "out",
                  "overwrite")
_BACKEND_EXCLUDE = ("spool_dir",)


def backend_choices() -> dict[str, type]:
    """``name -> Backend class`` of the back-ends that load (one whose dependencies are missing is left
    out with a log line)."""
    from forward3d.pipelines import available_backends, get_backend_class

    out = {}
    for name in available_backends():
        try:
            out[name] = get_backend_class(name)
        except (ImportError, TypeError, ValueError) as exc:
            log.warning("back-end %s left out of the app: %s", name, exc)
    return out


def _mode_overrides(cls: type, mode: str) -> dict[str, bool]:
    """The config values that pick ``mode`` for back-ends with an ``online`` / ``offline`` switch."""
    names = {f.name for f in dataclasses.fields(cls.config_cls)}
    out = {}
    if "online" in names:
        out["online"] = mode == "online"
    if "offline" in names:
        out["offline"] = mode == "offline"
    return out


def _viewer_html(session: Session, request: Any) -> str:
    viewer = session.viewer
    if viewer is None:
        return ""
    host = "127.0.0.1"
    try:
        host = (request.headers.get("host") or host).rsplit(":", 1)[0] or host
    except AttributeError:
        pass
    url = f"http://{html.escape(host)}:{int(viewer.port)}"
    return (f'<p>3D viewer (viser): <a href="{url}" target="_blank" id="viewer-link">{url}</a></p>'
            f'<iframe src="{url}" style="width:100%;height:520px;border:0" title="forward3d 3D viewer"></iframe>')


def build_app(config: AppConfig, store: SessionStore):
    """The gradio Blocks of the app (not launched; :func:`forward3d.app.server.launch_app` serves it)."""
    gr = import_gradio()
    backends = backend_choices()
    if not backends:
        raise ImportError("no reconstruction back-end could be loaded")
    default = config.backend if config.backend in backends else next(iter(backends))
    source_specs = control_specs(SourceConfig, exclude=_SOURCE_EXCLUDE)
    from forward3d.pipelines.splat import SplatConfig

    splat_specs = control_specs(SplatConfig, exclude=_SPLAT_EXCLUDE)
    ttl = int(config.session_ttl)

    with gr.Blocks(title="forward3d", delete_cache=(max(60, ttl // 4), ttl)) as demo:
        gr.Markdown("## forward3d: feed-forward 3D reconstruction")
        with gr.Tab("Video -> 3D"):
            with gr.Row():
                with gr.Column(scale=1):
                    with gr.Tabs():
                        with gr.Tab("Video / webcam"):
                            video = gr.Video(sources=["upload", "webcam"], label="video (upload or record)",
                                             elem_id="video-input")
                        with gr.Tab("Images"):
                            images = gr.File(file_count="multiple", file_types=["image"], label="images",
                                             elem_id="images-input")
                        with gr.Tab("RGB-D zip"):
                            zipf = gr.File(file_types=[".zip"], label="zip of an RGB-D dataset folder (TUM, Redwood, "
                                           "ScanNet, Replica, 7-Scenes)", elem_id="zip-input")
                        with gr.Tab("Stream URL"):
                            url = gr.Textbox(label="stream URL", placeholder="http://PHONE:4747/video",
                                             elem_id="url-input")
                    backend = gr.Dropdown(list(backends), value=default, label="back-end", elem_id="backend")
                    backend_info = gr.Markdown(backends[default].describe())
                    mode = gr.Radio(list(MODES), value="offline", label="mode",
                                    info="online: frames one at a time, results shown as they come (streaming "
                                         "back-ends)", elem_id="mode")
                    with gr.Row():
                        run_btn = gr.Button("Run", variant="primary", elem_id="run")
                        stop_btn = gr.Button("Stop", variant="stop", elem_id="stop")
                    with gr.Accordion("input options", open=False):
                        source_comps = [make_component(s, elem_id=f"opt-source-{s.name}") for s in source_specs]
                    groups, backend_comps = {}, {}
                    specs_of: dict[str, list[ControlSpec]] = {}
                    for name, cls in backends.items():
                        specs_of[name] = control_specs(cls.config_cls, exclude=_BACKEND_EXCLUDE)
                        with gr.Accordion(f"{name} options", open=False, visible=name == default) as grp:
                            backend_comps[name] = [make_component(s, elem_id=f"opt-{name}-{s.name}") for s in specs_of[name]]
                        groups[name] = grp
                with gr.Column(scale=2):
                    status = gr.Markdown("", elem_id="status")
                    viewer = gr.HTML("", elem_id="viewer")
                    model3d = gr.Model3D(label="result (GLB)", elem_id="model3d", height=420)
                    downloads = gr.File(label="downloads", file_count="multiple", interactive=False,
                                        elem_id="downloads")
                    summary = gr.Markdown("", elem_id="summary")

        with gr.Tab("Image -> 3D Gaussians"):
            with gr.Row():
                with gr.Column(scale=1):
                    photo = gr.Image(type="filepath", label="photo", elem_id="photo")
                    depth = gr.File(label="depth map (16-bit PNG in mm, .npy or float TIFF in metres; optional with "
                                          "a depth model)", elem_id="depth-input")
                    with gr.Accordion("options", open=False):
                        splat_comps = [make_component(s, elem_id=f"opt-splat-{s.name}") for s in splat_specs]
                    splat_btn = gr.Button("Make 3D Gaussians", variant="primary", elem_id="splat-run")
                with gr.Column(scale=2):
                    splat_status = gr.Markdown("", elem_id="splat-status")
                    splat_model = gr.Model3D(label="3D Gaussians", elem_id="splat-model", height=420)
                    renders = gr.Gallery(label="renders", columns=3, elem_id="renders")
                    orbit = gr.Video(label="orbit", elem_id="orbit")
                    splat_files = gr.File(label="downloads", file_count="multiple", interactive=False,
                                          elem_id="splat-downloads")

        # ------------------------------------------------------------------------------ behaviour
        def on_backend(name: str):
            return [gr.update(visible=n == name) for n in groups] + [backends[name].describe()]

        backend.change(on_backend, backend, [*groups.values(), backend_info])

        outputs = [status, model3d, viewer, downloads, summary]
        all_backend_comps = [c for name in backends for c in backend_comps[name]]

        def run_video(data: dict, request: gr.Request, progress=gr.Progress()):
            try:
                yield from _run_video(data, request, progress)
            except gr.Error:
                raise
            except Exception as exc:  # one message in the page, never a traceback
                log.exception("run failed")
                raise gr.Error(f"the run failed: {exc}") from None

        def _run_video(data: dict, request: gr.Request, progress: Any):
            session = store.get(getattr(request, "session_hash", None))
            backend_v, mode_v = data[backend], data[mode]
            video_v, images_v, zip_v, url_v = data[video], data[images], data[zipf], data[url]
            src_vals = [data[c] for c in source_comps]
            mine = [data[c] for c in backend_comps[backend_v]]
            try:
                cls = backends[backend_v]
                if mode_v == "online" and not cls.capabilities.streaming:
                    raise ValueError(f"back-end {backend_v} does not stream: choose the offline mode (streaming "
                                     f"back-ends: {', '.join(n for n, c in backends.items() if c.capabilities.streaming)})")
                source = SourceConfig(**config_values(source_specs, src_vals, "input option "))
                options = {**config_values(specs_of[backend_v], mine, f"{backend_v} option "),
                           **_mode_overrides(cls, mode_v)}
                cls.config_cls(**options)  # bad values: one message now, before any upload is copied
                run_dir = session.new_run_folder()
                inp = VideoInput(video=video_v, images=[getattr(f, "name", f) for f in images_v or []] or None,
                                 zip=getattr(zip_v, "name", zip_v), url=(url_v or "").strip() or None)
                path = prepare_input(inp, run_dir, config.max_upload_bytes, config.max_unzipped_bytes)
            except (ValueError, TypeError, FileNotFoundError) as exc:
                raise gr.Error(str(exc)) from None
            live = None
            if config.viewer:
                try:
                    from forward3d.viz.live import LiveViewConfig, LiveViewer

                    live = LiveViewer(LiveViewConfig(view=True, host=config.host, port=0, interval=0.5),
                                      title=f"forward3d app: {backend_v}")
                except ImportError as exc:
                    log.warning("no embedded 3D view: %s", exc)
            session.set_viewer(live)
            job = ReconJob(path, backend_v, options, source, run_dir / "out", viewer=live).start()
            session.job = job
            yield {status: f"running **{backend_v}** ({mode_v})...", viewer: _viewer_html(session, request),
                   model3d: None, downloads: None, summary: ""}
            seen = fails = 0
            acc_pts, acc_cols, last_preview, k = [], [], time.monotonic(), 0
            try:
                for p in job.progress_stream():
                    if p.total:
                        progress((min(p.frames, p.total), p.total), desc=f"{backend_v}: frames", unit="frames")
                    if p.done:
                        break
                    msg = f"running **{backend_v}** ({mode_v}): {p.frames} frame(s) read"
                    if mode_v != "online":
                        yield {status: msg}
                        continue
                    seen += len(p.updates)
                    fails += sum(not u.status.ok for u in p.updates)
                    pts, cols = update_points(p.updates)
                    acc_pts.append(pts)
                    acc_cols.append(cols)
                    out = {status: msg}
                    if seen and time.monotonic() - last_preview > LIVE_PREVIEW_S:
                        last_preview, k = time.monotonic(), k + 1
                        pts, cols = np.concatenate(acc_pts), np.concatenate(acc_cols)
                        if len(pts):
                            out[model3d] = str(preview_glb(pts, cols, run_dir / "live" / f"partial-{k:04d}.glb"))
                        fps = p.updates[-1].frames_per_s if p.updates else 0.0
                        out[status] = (f"{msg}; {seen} frame(s) reconstructed, {fails} tracking failure(s)"
                                       + (f", {fps:.1f} frames/s" if fps else ""))
                    yield out
            finally:
                if not job.done:  # cancelled from the page (Stop) or the tab closed
                    job.stop()
            yield final_outputs(job, session, request)

        def final_outputs(job: ReconJob, session: Session, request: Any) -> dict:
            if job.error:
                raise gr.Error(job.error)
            d = make_downloads(job.result, job.out.parent / "downloads")
            recon = job.result.recon
            word = "stopped: partial result" if recon.interrupted else "done"
            return {status: f"**{word}**: {len(recon)} frames in {job.result.seconds:.1f} s",
                    model3d: str(d.model) if d.model else None, downloads: [str(f) for f in d.files()],
                    summary: summary_markdown(job.result), viewer: _viewer_html(session, request)}

        run_evt = run_btn.click(run_video, {video, images, zipf, url, backend, mode, *source_comps, *all_backend_comps},
                                outputs)

        def stop(request: gr.Request):
            session = store.get(getattr(request, "session_hash", None))
            job = session.job
            if job is None or job.done:
                return {status: "nothing is running"}
            job.stop()
            if not job.join(STOP_WAIT_S):
                return {status: f"stopping: the current frame is still running after {STOP_WAIT_S:.0f} s"}
            try:
                return final_outputs(job, session, request)
            except gr.Error as exc:
                return {status: f"stopped: {exc}"}

        stop_btn.click(stop, None, outputs, cancels=[run_evt])

        def run_splat(data: dict, request: gr.Request, progress=gr.Progress()):
            from forward3d.pipelines.splat import splat_image_file

            photo_v, depth_v, values = data[photo], data[depth], [data[c] for c in splat_comps]
            session = store.get(getattr(request, "session_hash", None))
            try:
                if not photo_v:
                    raise ValueError("no photo: upload an image")
                check_upload_size(photo_v, config.max_upload_bytes)
                depth_path = getattr(depth_v, "name", depth_v)
                if depth_path:
                    check_upload_size(depth_path, config.max_upload_bytes)
                options = config_values(splat_specs, values, "option ")
                run_dir = session.new_run_folder("splat")
                cfg = SplatConfig(image=str(photo_v), depth=depth_path or None, out=str(run_dir / "out"), **options)
                progress(0.1, desc="3D Gaussians")
                result, paths = splat_image_file(cfg, progress=False)
            except Exception as exc:  # one message in the page, never a traceback
                log.debug("splat failed", exc_info=True)
                name = Path(str(photo_v)).name if photo_v else "input"
                msg = str(exc)
                raise gr.Error(msg if name in msg else f"{name}: {msg}") from None
            views = [(str(v), k[len("view_"):]) for k, v in paths.items() if k.startswith("view_")]
            files = [str(paths[k]) for k in ("ply", "splat", "depth") if k in paths]
            return (f"**{result.method}**: {len(result.gaussians):,} Gaussians ({result.width}x{result.height})",
                    str(paths["splat"]), views, str(paths["video"]) if "video" in paths else None, files)

        splat_btn.click(run_splat, {photo, depth, *splat_comps}, [splat_status, splat_model, renders, orbit,
                                                                 splat_files])

        def on_unload(request: gr.Request):
            store.remove(getattr(request, "session_hash", None))

        demo.unload(on_unload)
    return demo
