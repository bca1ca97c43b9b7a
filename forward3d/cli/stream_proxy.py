"""``forward3d stream-proxy SOURCE_URL``: re-serve one MJPEG/HTTP camera (e.g. DroidCam
``http://PHONE:4747/video``, which accepts a single client) to many clients. See
:mod:`forward3d.viz.stream_proxy`."""

from __future__ import annotations

import argparse

from forward3d.viz.stream_proxy import ProxyConfig

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = ProxyConfig()
    p.add_argument("source", metavar="SOURCE_URL", help="the camera's MJPEG or JPEG URL, e.g. http://PHONE:4747/video")
    p.add_argument("--host", default=d.host, help="address to listen on (default 127.0.0.1: this machine only; "
                                                  "0.0.0.0 serves the camera to the network)")
    p.add_argument("--port", type=int, default=d.port, help="port to listen on (0: any free port)")
    p.add_argument("--max-clients", type=int, default=d.max_clients, help="clients served at once")
    p.add_argument("--read-timeout", type=float, default=d.read_timeout,
                   help="seconds without data after which the upstream is reconnected")
    p.add_argument("--backoff-max", type=float, default=d.backoff_max, help="longest wait between reconnections, s")


def run(args: argparse.Namespace) -> int:
    from forward3d.viz.stream_proxy import StreamProxy

    cfg = ProxyConfig(host=args.host, port=args.port, max_clients=args.max_clients,
                      read_timeout=args.read_timeout, backoff_max=max(args.backoff_max, ProxyConfig.backoff_min))
    proxy = StreamProxy(args.source, cfg).start()
    base = proxy.url.rsplit("/", 1)[0]
    print(f"forward3d stream-proxy: {args.source} -> {proxy.url} (snapshot {base}/snapshot.jpg, status "
          f"{base}/status); Ctrl-C to stop", flush=True)
    proxy.serve_forever()
    s = proxy.stats()
    print(f"forward3d stream-proxy: stopped ({s['frames_in']} frames in, {s['upstream_connections']} upstream "
          f"connections, {s['clients_total']} clients)", flush=True)
    return 0
