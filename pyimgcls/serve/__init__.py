"""``pyimgcls serve``: an HTTP inference server for checkpoints written by ``pyimgcls train``, on our
kernels, with dynamic batching, health and readiness probes, Prometheus metrics and a web page.

Layout: :mod:`.runner` (the worker thread that owns the model: dynamic batching, padding, warm-up),
:mod:`.app` (the Starlette app: endpoints, limits, API key, errors), :mod:`.metrics` (Prometheus),
:mod:`.page` (the HTML page). :func:`main` is the CLI command: it binds the socket, loads the model
(a bad checkpoint or address ends the command with one line and exit status 2, before anything is
served), then runs uvicorn while the model warms up (``/readyz`` answers 503 until it has). SIGTERM
stops accepting connections, dispatches every queued request at once and exits once each is answered.
"""
from __future__ import annotations

import socket
import sys

from ..errors import ArgumentValueError

__all__ = ["main", "read_api_key"]

SWITCH_INTERVAL_S = 0.0005


def read_api_key(path: str) -> str:
    """The key is the file's content with surrounding whitespace stripped; an empty one is refused."""
    try:
        with open(path, encoding="utf-8") as f:
            key = f.read().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ArgumentValueError(f"--api-key-file: cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    if not key:
        raise ArgumentValueError(f"--api-key-file: {path} is empty")
    if any(ch.isspace() for ch in key) or not key.isprintable():
        raise ArgumentValueError(f"--api-key-file: the key in {path} must be one printable word (no spaces)")
    return key


def _listen(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                          proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE)[0]
        # proto IPPROTO_TCP (not 0): asyncio sets TCP_NODELAY only on connections of such a socket, and
        # without it every response (headers, then body: two writes) waits ~40 ms for a delayed ACK.
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(2048)
        except OSError:
            sock.close()
            raise
        return sock
    except OSError as e:   # socket.gaierror is an OSError
        raise ArgumentValueError(f"--host/--port: cannot listen on {host}:{port}: "
                                 f"{getattr(e, 'strerror', None) or e}") from None


def main(args) -> int:
    import uvicorn

    from ..training import loop as _loop
    from .app import Server
    from .runner import ModelRunner

    api_key = read_api_key(args.api_key_file) if args.api_key_file else None
    device = _loop.pick_device(args.kernels, args.device)
    kernels = _loop.resolve_kernels(args.kernels, device)
    sock = _listen(args.host, args.port)
    runner = ModelRunner(args.checkpoint, device, kernels, args.max_batch_size, args.max_delay_ms / 1000.0,
                         args.max_queue, threads=args.threads)
    try:
        try:
            runner.load()
        except (KeyError, TypeError, RuntimeError) as e:
            # a checkpoint whose meta or weights do not match a model (the loader's own errors, which
            # name the file, pass through unchanged)
            raise ArgumentValueError(f"--checkpoint: cannot build the model from {args.checkpoint}: "
                                     f"{type(e).__name__}: {e}") from None
        server = Server(runner, max_body=int(args.max_body_mb * (1 << 20)), timeout_s=args.request_timeout,
                        api_key=api_key, kernels=kernels)
        config = uvicorn.Config(server.app, log_level="warning", access_log=False, lifespan="on",
                                server_header=False, proxy_headers=False,
                                timeout_graceful_shutdown=args.request_timeout + args.max_delay_ms / 1000 + 30)

        class _Uvicorn(uvicorn.Server):
            def handle_exit(self, sig, frame):
                super().handle_exit(sig, frame)
                server.begin_drain()

        # The worker thread re-takes the GIL after every kernel; while the event loop is busy with
        # requests it would wait up to the switch interval (5 ms by default) each time, tens of times
        # per forward pass. A shorter interval bounds that wait.
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        host, port = sock.getsockname()[:2]
        url_host = f"[{host}]" if ":" in host else host
        c, s = server.shape[0], server.shape[1]
        print(f"pyimgcls serve: {server.name} ({len(server.classes)} classes, {c}x{s}x{s}) from {args.checkpoint} "
              f"(sha256 {runner.sha256[:12]}), kernels {kernels} on {device}, batches up to "
              f"{args.max_batch_size} (padded to {', '.join(map(str, runner.sizes))}), "
              f"auth {'on' if api_key else 'off'}; listening on http://{url_host}:{port}", flush=True)
        _Uvicorn(config).run(sockets=[sock])
    finally:
        runner.stop()
        sock.close()
    print("pyimgcls serve: stopped", file=sys.stderr, flush=True)
    return 0
