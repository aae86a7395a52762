"""The HTTP side of ``pyimgcls serve``: a Starlette app (routes, limits, API key, errors as JSON) in
front of a :class:`~pyimgcls.serve.runner.ModelRunner`.

Every error is ``{"error": "<one line>"}`` with its status code; no response carries a stack trace.
Images are decoded by the same function as ``pyimgcls predict`` (``pyimgcls.data.load_image``, which
refuses decompression bombs from the header, before any pixel is decoded), in a thread of the
pool so the event loop never decodes."""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import io
import json
import math
import time

import anyio.to_thread
import torch
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Match, Route

from .. import __version__
from ..data import DataError, load_image
from .metrics import ServeMetrics
from .page import PAGE
from .runner import Item, ModelRunner

V2_INPUT, V2_OUTPUT = "input", "probabilities"
# An over-limit body announced by Content-Length is still read (and dropped) up to this size before
# the 413 goes out, so an ordinary client that sends its whole body first reads the answer instead
# of a connection reset; beyond it the connection is closed.
DRAIN_LIMIT = 64 << 20


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class BodyTooLarge(Exception):
    pass


class _Upload(io.BytesIO):
    """Image bytes that name themselves in load_image's messages (instead of an object address)."""

    def __init__(self, data: bytes, name: str):
        super().__init__(data)
        self.name = name

    def __str__(self) -> str:
        return self.name

    __repr__ = __str__


class _Guard:
    """Outermost ASGI layer: the request-body limit (413, from Content-Length before reading, or while
    reading a body of unannounced length) and the per-endpoint request count and latency."""

    def __init__(self, app: Starlette, metrics: ServeMetrics, max_body: int):
        self.app, self.metrics, self.max_body = app, metrics, max_body

    def endpoint(self, scope) -> str:
        """The route template (``/v2/models/{name}/infer``: bounded label values); a path that
        matches only with another method (405) counts under its route too, anything else as ``other``."""
        partial = None
        for route in self.app.routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return route.path
            if match is Match.PARTIAL and partial is None:
                partial = route.path
        return partial or "other"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            length = _content_length(scope)
            if length is not None and length > self.max_body:
                if length <= DRAIN_LIMIT:
                    more = True
                    while more:
                        more = (await receive()).get("more_body", False)
                await self._too_large(scope, receive, send_status)
                return
            seen = [0]

            async def counted_receive():
                message = await receive()
                if message["type"] == "http.request":
                    seen[0] += len(message.get("body", b""))
                    if seen[0] > self.max_body:
                        raise BodyTooLarge()
                return message

            await self.app(scope, counted_receive, send_status)
        finally:
            self.metrics.request(self.endpoint(scope), status[0], time.perf_counter() - t0)

    async def _too_large(self, scope, receive, send):
        await error(413, f"request body larger than --max-body-mb ({self.max_body} bytes)")(scope, receive, send)


def _content_length(scope) -> int | None:
    for k, v in scope["headers"]:
        if k == b"content-length":
            try:
                return int(v)
            except ValueError:
                return None
    return None


class Server:
    """The app and its state. ``api_key`` None leaves the prediction endpoints open."""

    def __init__(self, runner: ModelRunner, *, max_body: int, timeout_s: float, api_key: str | None,
                 kernels: str):
        self.runner, self.max_body, self.timeout_s, self.kernels = runner, max_body, timeout_s, kernels
        self.api_key = api_key.encode() if api_key is not None else None
        self.loop: asyncio.AbstractEventLoop | None = None
        meta = runner.meta
        self.name = meta["model"]
        self.classes = list(meta["class_names"])
        self.shape = (meta["in_channels"], meta["image_size"], meta["image_size"])
        self.metrics = ServeMetrics(runner.sizes, runner.queue_depth, lambda: runner.busy, runner.ready.is_set,
                                    lambda: runner.load_seconds, lambda: runner.warmup_seconds)
        runner.on_batch = self.metrics.batch
        routes = [
            Route("/", self.page, methods=["GET"]),
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/readyz", self.readyz, methods=["GET"]),
            Route("/metrics", self.metrics_text, methods=["GET"]),
            Route("/v1/models", self.v1_models, methods=["GET"]),
            Route("/v1/predict", self.v1_predict, methods=["POST"]),
            Route("/v2", self.v2_server, methods=["GET"]),
            Route("/v2/health/live", self.v2_live, methods=["GET"]),
            Route("/v2/health/ready", self.v2_ready, methods=["GET"]),
            Route("/v2/models/{name}", self.v2_model, methods=["GET"]),
            Route("/v2/models/{name}/ready", self.v2_model_ready, methods=["GET"]),
            Route("/v2/models/{name}/infer", self.v2_infer, methods=["POST"]),
        ]
        handlers = {HTTPException: self._http_error, BodyTooLarge: self._body_too_large,
                    Exception: self._internal_error}
        self.starlette = Starlette(routes=routes, exception_handlers=handlers, lifespan=self._lifespan)
        self.app = _Guard(self.starlette, self.metrics, max_body)

    # ------------------------------------------------------------------------------ plumbing
    @contextlib.asynccontextmanager
    async def _lifespan(self, app):
        self.loop = asyncio.get_running_loop()
        self.runner.start_warmup()
        yield
        await anyio.to_thread.run_sync(self.runner.stop)

    def begin_drain(self) -> None:
        """SIGTERM: from now on the worker dispatches queued requests at once (the server stops
        accepting connections and waits for the open ones to be answered)."""
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.runner.begin_drain)

    async def _http_error(self, request, exc: HTTPException):
        messages = {404: f"not found: {request.url.path}",
                    405: f"method {request.method} not allowed on {request.url.path}"}
        return error(exc.status_code, messages.get(exc.status_code, str(exc.detail)), exc.headers)

    async def _body_too_large(self, request, exc):
        return error(413, f"request body larger than --max-body-mb ({self.max_body} bytes)")

    async def _internal_error(self, request, exc):
        return error(500, "internal server error")

    def _unauthorized(self, request: Request) -> Response | None:
        if self.api_key is None:
            return None
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.api_key):
            return None
        return error(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                     {"WWW-Authenticate": 'Bearer realm="pyimgcls"'})

    def _not_ready(self) -> Response | None:
        if self.runner.ready.is_set():
            return None
        return error(503, "model not ready (warming up)", {"Retry-After": "1"})

    async def _infer(self, item: Item, t0: float):
        """Queue ``item`` and wait for its answer; a Response when it has none (503, 504, 500)."""
        left = self.timeout_s - (time.perf_counter() - t0)
        if left <= 0:
            return error(504, f"request took longer than --request-timeout ({self.timeout_s:g} s)")
        why = self.runner.submit(item)
        if why == "full":
            return error(503, f"server busy: {self.runner.max_queue} requests already queued (--max-queue)",
                         {"Retry-After": "1"})
        if why is not None:
            return error(503, "server shutting down", {"Retry-After": "1"})
        try:
            return await asyncio.wait_for(item.future, left)
        except TimeoutError:
            self.runner.abandon(item)
            return error(504, f"request took longer than --request-timeout ({self.timeout_s:g} s)")
        except RuntimeError:
            return error(500, "inference failed (see the server log)")

    # ------------------------------------------------------------------------------ open endpoints
    async def page(self, request):
        return HTMLResponse(PAGE)

    async def healthz(self, request):
        return JSONResponse({"status": "alive"})

    async def readyz(self, request):
        if self.runner.draining:
            return error(503, "draining (shutting down)")
        if not self.runner.ready.is_set():
            return error(503, "model not ready (warming up)", {"Retry-After": "1"})
        return JSONResponse({"status": "ready"})

    async def metrics_text(self, request):
        return Response(self.metrics.text(), media_type="text/plain; version=0.0.4; charset=utf-8")

    def _model_info(self) -> dict:
        m = self.runner.meta
        return {"name": self.name, "classes": self.classes, "num_classes": len(self.classes),
                "input": {"channels": self.shape[0], "height": self.shape[1], "width": self.shape[2],
                          "mean": list(m["mean"]), "std": list(m["std"])},
                "kernels": self.kernels, "device": str(self.runner.device),
                "checkpoint": self.runner.checkpoint, "checkpoint_sha256": self.runner.sha256,
                "max_batch_size": self.runner.max_batch, "padded_batch_sizes": list(self.runner.sizes),
                "ready": self.runner.ready.is_set(), "auth_required": self.api_key is not None}

    async def v1_models(self, request):
        return JSONResponse({"models": [self._model_info()]})

    async def v2_server(self, request):
        return JSONResponse({"name": "pyimgcls", "version": __version__, "extensions": []})

    async def v2_live(self, request):
        return JSONResponse({"live": True})

    async def v2_ready(self, request):
        ready = self.runner.ready.is_set() and not self.runner.draining
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    def _unknown_model(self, request) -> Response | None:
        name = request.path_params["name"]
        if name == self.name:
            return None
        return error(404, f"unknown model {name!r}; this server serves {self.name!r}")

    async def v2_model(self, request):
        if (r := self._unknown_model(request)) is not None:
            return r
        c, h, w = self.shape
        m = self.runner.meta
        return JSONResponse({
            "name": self.name, "versions": ["1"], "platform": "pyimgcls",
            "inputs": [{"name": V2_INPUT, "datatype": "FP32", "shape": [-1, c, h, w]}],
            "outputs": [{"name": V2_OUTPUT, "datatype": "FP32", "shape": [-1, len(self.classes)]}],
            "parameters": {
                "max_batch_size": self.runner.max_batch, "classes": self.classes,
                "checkpoint_sha256": self.runner.sha256,
                "input_preprocessing": (f"already normalised: pixels in [0, 1] resized to {h}x{w} "
                                        f"({'grayscale' if c == 1 else 'RGB'}, bilinear), then per channel "
                                        f"(x - mean) / std"),
                "mean": list(m["mean"]), "std": list(m["std"]),
                "output": "softmax probabilities, one row per input image"}})

    async def v2_model_ready(self, request):
        if (r := self._unknown_model(request)) is not None:
            return r
        ready = self.runner.ready.is_set() and not self.runner.draining
        return JSONResponse({"name": self.name, "ready": ready}, status_code=200 if ready else 503)

    # ------------------------------------------------------------------------------ predictions
    async def v1_predict(self, request: Request):
        t0 = time.perf_counter()
        if (r := self._unauthorized(request)) is not None:
            return r
        if (r := self._not_ready()) is not None:
            return r
        text = request.query_params.get("top_k", "5")
        try:
            top_k = int(text)
        except ValueError:
            top_k = 0
        if top_k < 1:
            return error(400, f"top_k must be a positive integer, got {text!r}")
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media == "multipart/form-data":
            try:
                form = await request.form(max_files=1, max_fields=16, max_part_size=self.max_body)
            except (MultiPartException, HTTPException) as e:
                return error(400, f"malformed multipart body: {getattr(e, 'message', None) or e.detail}")
            upload = form.get("image")
            if upload is None or isinstance(upload, str):
                return error(400, "multipart field 'image' (a file) is missing")
            data, name = await upload.read(), upload.filename or "image"
            await form.close()     # the upload's spooled temporary file
        elif media.startswith("image/"):
            data, name = await request.body(), "request body"
        else:
            return error(415, f"Content-Type must be multipart/form-data (field 'image') or image/*, "
                              f"got {media or 'none'!r}")
        if not data:
            return error(400, "empty image")
        c, s = self.shape[0], self.shape[1]
        try:
            x = await anyio.to_thread.run_sync(load_image, _Upload(data, name), s, c)
        except DataError as e:
            return error(400, str(e))
        item = Item(x.unsqueeze(0), True, top_k, self.loop.create_future(), self.loop)
        answer = await self._infer(item, t0)
        if isinstance(answer, Response):
            return answer
        probs, idx = answer
        return JSONResponse({"model": self.name, "predictions": [
            {"index": j, "label": self.classes[j], "probability": round(q, 6)} for q, j in zip(probs, idx)]})

    async def v2_infer(self, request: Request):
        t0 = time.perf_counter()
        if (r := self._unauthorized(request)) is not None:
            return r
        if (r := self._unknown_model(request)) is not None:
            return r
        if (r := self._not_ready()) is not None:
            return r
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if "inference-header-content-length" in request.headers or media == "application/octet-stream":
            return error(400, "the binary tensor extension is not supported: send the tensor as JSON 'data'")
        if media not in ("", "application/json"):
            return error(415, f"Content-Type must be application/json, got {media!r}")
        body = await request.body()
        try:
            x, request_id = await anyio.to_thread.run_sync(self._parse_v2, body)
        except ValueError as e:
            return error(400, str(e))
        item = Item(x, False, None, self.loop.create_future(), self.loop)
        answer = await self._infer(item, t0)
        if isinstance(answer, Response):
            return answer
        out = {"model_name": self.name, "model_version": "1",
               "outputs": [{"name": V2_OUTPUT, "datatype": "FP32", "shape": list(answer.shape),
                            "data": answer.reshape(-1).tolist()}]}
        if request_id is not None:
            out["id"] = request_id
        return JSONResponse(out)

    def _parse_v2(self, body: bytes) -> tuple[torch.Tensor, str | None]:
        """A v2 inference request -> (the input tensor [N, C, H, W], the request id); ValueError with
        the reason otherwise."""
        try:
            req = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"body is not valid JSON: {e}") from None
        if not isinstance(req, dict):
            raise ValueError("body must be a JSON object with 'inputs'")
        binary = (isinstance(req.get("parameters"), dict) and "binary_data_output" in req["parameters"]) or any(
            isinstance(t, dict) and isinstance(t.get("parameters"), dict)
            and ({"binary_data_size", "binary_data"} & set(t["parameters"]))
            for t in list(req.get("inputs") or []) + list(req.get("outputs") or []))
        if binary:
            raise ValueError("the binary tensor extension is not supported: send the tensor as JSON 'data'")
        inputs = req.get("inputs")
        if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
            raise ValueError(f"'inputs' must hold exactly one tensor, named {V2_INPUT!r}")
        t = inputs[0]
        if t.get("name") != V2_INPUT:
            raise ValueError(f"input name must be {V2_INPUT!r}, got {t.get('name')!r}")
        if t.get("datatype") != "FP32":
            raise ValueError(f"input datatype must be 'FP32', got {t.get('datatype')!r}")
        shape, (c, h, w) = t.get("shape"), self.shape
        if (not isinstance(shape, list) or len(shape) != 4 or not all(type(v) is int for v in shape)
                or shape[0] < 1 or shape[1:] != [c, h, w]):
            raise ValueError(f"input shape must be [N, {c}, {h}, {w}] with N >= 1, got {shape!r}")
        if shape[0] > self.runner.max_batch:
            raise ValueError(f"input shape[0] = {shape[0]} is more than --max-batch-size ({self.runner.max_batch})")
        outputs = req.get("outputs")
        if outputs is not None:
            if not isinstance(outputs, list) or any(not isinstance(o, dict) or o.get("name") != V2_OUTPUT
                                                    for o in outputs):
                raise ValueError(f"the only output is {V2_OUTPUT!r}")
        request_id = req.get("id")
        if request_id is not None and not isinstance(request_id, str):
            raise ValueError("'id' must be a string")
        try:
            x = torch.tensor(t.get("data"), dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError("input 'data' must be a flat (or nested) list of numbers") from None
        if x.numel() != math.prod(shape):
            raise ValueError(f"input 'data' holds {x.numel()} numbers, shape {shape} needs {math.prod(shape)}")
        if not torch.isfinite(x).all():
            raise ValueError("input 'data' holds NaN or infinite values")
        return x.reshape(shape), request_id
