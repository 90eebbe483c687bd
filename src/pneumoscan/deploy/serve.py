"""A small web app over a trained run: upload X-rays, get probability, label and Grad-CAM.

    pneumoscan serve runs/default            # http://127.0.0.1:8000/

- ``GET /``: a page to upload one or more X-rays (plain HTML and a little JavaScript, no
  external resources);
- ``POST /api/predict`` (multipart, field ``file``, repeatable; ``?gradcam=1`` adds the
  overlay as base64 PNG): one result per file, a bad file gets an ``error`` entry and the
  others are still predicted;
- ``GET /health``: the model's id (run name + hash of model.keras) and status.

Uploads are decoded once, from memory (no temporary files), by the shared loader
(:func:`pneumoscan.imaging.load_image`) in the request's own thread, then scored by the
micro-batching queue (:mod:`.batching`) together with the images of other requests that
arrived at the same time; the rows are labelled by the same ``Predictor`` code as the
command line, so the app applies exactly its preprocessing, calibration and threshold. The
answer is 200 when at least one file was predicted, 422 (same JSON) when none could be, 503
with ``Retry-After`` when the queue is full. With an API key file (:mod:`.auth`), every
``/api/*`` request needs the key; each request is logged in one line, never the image.
The app binds 127.0.0.1 unless told otherwise.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException

from ..inference.predictor import WARNING_SEPARATOR, Entry, Predictor
from ..models.predict import load_run_model
from ..runs import Run
from .auth import ApiKey, request_log
from .batching import DEFAULT_MAX_BATCH, DEFAULT_MAX_QUEUE, DEFAULT_MAX_WAIT_MS, BatchQueue, Overloaded, TooManyImages

log = logging.getLogger(__name__)

UPLOAD_FIELD = "file"
DEFAULT_MAX_UPLOAD_MB = 20.0
DEFAULT_MAX_FILES = 16


class UploadTooLarge(Exception):
    """A request body or one uploaded file is over the configured limit."""


@dataclass(frozen=True)
class Limits:
    max_file_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * 1024 * 1024)
    max_files: int = DEFAULT_MAX_FILES

    @property
    def max_request_bytes(self) -> int:
        # Room for every allowed file plus the multipart headers around them.
        return self.max_files * self.max_file_bytes + 1024 * 1024

    def describe_file_limit(self) -> str:
        return f"{self.max_file_bytes / (1024 * 1024):.3g} MB per file"


RETRY_AFTER_SECONDS = 1


@dataclass(frozen=True)
class Batching:
    max_batch: int = DEFAULT_MAX_BATCH
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS
    max_queue: int = DEFAULT_MAX_QUEUE


def set_threads(threads: int | None) -> int:
    """One inference at a time runs on every core (the batcher is the model's only caller);
    TensorFlow's inter-op pool is kept to one thread so it does not fight the decoding threads."""
    threads = threads or os.cpu_count() or 1
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow already started (an app made inside a running program): keep its pools
        log.info("TensorFlow's thread pools were already set; keeping them")
    return threads


class ModelService:
    """Everything a request needs: the predictor, the model id, the batching queue, and (lazily)
    a Keras model for Grad-CAM."""

    def __init__(self, run_dir: str | Path, engine: str = "keras", batching: Batching | None = None,
                 threads: int | None = None):
        self.run = Run(Path(run_dir))
        self.engine = engine
        self.threads = set_threads(threads)
        self.predictor = Predictor.from_run(self.run.root, engine=engine, threads=self.threads)
        self.model_id = self.run.model_id()
        self.batching = batching or Batching()
        self.queue = BatchQueue(self.predictor.scores, self.batching.max_batch, self.batching.max_wait_ms,
                                self.batching.max_queue, pad=engine == "keras")
        self.queue.warm_up((self.predictor.image_size, self.predictor.image_size))
        self._keras_model = self.predictor.classifier if engine == "keras" else None
        self._explainer = None
        self._lock = threading.RLock()

    def keras_model(self):
        """Grad-CAM needs gradients, so it always runs on the Keras model, whatever the engine."""
        with self._lock:
            if self._keras_model is None:
                self._keras_model = load_run_model(self.run)
            return self._keras_model

    def explainer(self):
        """One Grad-CAM explainer for the app's life: it traces its graph once, not per request."""
        from ..report.gradcam import GradCam

        with self._lock:
            if self._explainer is None:
                self._explainer = GradCam(self.keras_model())
            return self._explainer

    def health(self) -> dict:
        from .. import __version__

        return {"status": "ok", "model_id": self.model_id, "run": self.run.root.name, "engine": self.engine,
                "image_size": self.predictor.image_size, "threshold": self.predictor.threshold,
                "temperature": self.predictor.temperature, "scope_threshold": self.predictor.scope_threshold,
                "batching": {"max_batch": self.batching.max_batch, "max_wait_ms": self.batching.max_wait_ms,
                             "max_queue": self.batching.max_queue, "batches": self.queue.batches,
                             "images": self.queue.images},
                "threads": self.threads, "pneumoscan_version": __version__}

    def decode(self, uploads: list[tuple[str, bytes]]):
        """[(client file name, content)] -> a Batch of rows, unlabelled; each upload decoded once,
        from memory, by the loader the command line uses."""
        entries = [Entry(name, content) for name, content in uploads]
        return self.predictor.unlabelled(entries, [self.predictor.load_entry(e) for e in entries])

    async def analyse_async(self, uploads: list[tuple[str, bytes]], with_gradcam: bool) -> list[dict]:
        """One result dict per upload, in order: decoded in a worker thread, scored by the
        batching queue with whatever other requests are waiting (raises Overloaded when full)."""
        batch = await run_in_threadpool(self.decode, uploads)
        if batch.readable:
            futures = self.queue.submit(batch.images)
            scored = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
            probs = [p for p, _ in scored]
            ood = None if any(o is None for _, o in scored) else [o for _, o in scored]
            self.predictor.fill(batch.readable, probs, ood)
        results = [self._result(row) for row in batch.rows]
        if with_gradcam and batch.readable:
            by_row = {id(row): result for row, result in zip(batch.rows, results)}
            readable = [(by_row[id(row)], image) for row, image in zip(batch.readable, batch.images)]
            await run_in_threadpool(self._add_gradcam, readable)
        return results

    def close(self) -> None:
        self.queue.close()

    def _result(self, row: dict) -> dict:
        result = {"filename": row["path"], "probability": None, "label": None, "ood_score": None, "in_scope": None,
                  "threshold": self.predictor.threshold, "warnings": [], "error": None}
        if row["warning"]:
            result["warnings"] = [w for w in row["warning"].split(WARNING_SEPARATOR) if w]
        if row["error"]:
            result["error"] = row["error"]
        else:
            result["probability"] = float(row["probability"])
            result["label"] = row["label"] or None
            if row["in_scope"] is not None:
                result["ood_score"], result["in_scope"] = float(row["ood_score"]), bool(row["in_scope"])
        return result

    def _add_gradcam(self, readable: list[tuple[dict, np.ndarray]]) -> None:
        from ..report.gradcam import overlay

        images = np.stack([image for _, image in readable])
        try:
            maps = self.explainer()(images)
        except Exception as exc:  # a missing heat map must not cost the user the prediction itself
            log.exception("Grad-CAM failed")
            for result, _ in readable:
                result["warnings"].append(f"Grad-CAM unavailable ({type(exc).__name__})")
            return
        for (result, image), heat in zip(readable, maps):
            result["gradcam_png_base64"] = _png_base64(overlay(image, heat))


def _client_name(filename: str | None) -> str:
    """The file name the client sent, without any folder part (shown back to the user)."""
    return re.split(r"[\\/]", filename or "")[-1] or "upload"


def _png_base64(rgb: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _limited_receive(receive, max_bytes: int):
    """Wrap an ASGI receive so a body over ``max_bytes`` stops being read (chunked bodies too)."""
    received = 0

    async def limited():
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > max_bytes:
                raise UploadTooLarge(f"request body over {max_bytes / (1024 * 1024):.0f} MB")
        return message

    return limited


class GuardAndLog:
    """Pure ASGI middleware (Starlette's BaseHTTPMiddleware costs every request a task and a
    stream): the API key check on ``/api/*``, and one log line per request."""

    def __init__(self, app, api_key: ApiKey | None, model_id: str):
        self.app, self.api_key, self.model_id = app, api_key, model_id

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), [500]

        async def send_and_note(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        if self.api_key is not None and scope["path"].startswith("/api/") and not self.api_key.allows(Headers(scope=scope)):
            response = JSONResponse({"error": "missing or wrong API key: send the header 'Authorization: Bearer <key>'"},
                                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send_and_note)
        else:
            await self.app(scope, receive, send_and_note)
        request_log.info("%s %s %d %.0fms model=%s files=%s", scope["method"], scope["path"], status[0],
                         1000 * (time.perf_counter() - started), self.model_id, scope.get("pneumoscan_files", "-"))


def create_app(run_dir: str | Path, engine: str = "keras", max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
               max_files: int = DEFAULT_MAX_FILES, service: ModelService | None = None, api_key: ApiKey | None = None,
               batching: Batching | None = None, threads: int | None = None):
    """The FastAPI app for ``run_dir``; the model is loaded here, before the first request.
    With ``api_key``, every ``/api/*`` request must carry it (``Authorization: Bearer KEY``)."""
    if max_upload_mb <= 0 or max_files < 1:
        raise ValueError("the upload limit must be positive and at least one file must be allowed per request")
    service = service or ModelService(run_dir, engine, batching=batching, threads=threads)
    limits = Limits(int(max_upload_mb * 1024 * 1024), max_files)
    page = resources.files("pneumoscan.deploy").joinpath("static/index.html").read_text(encoding="utf-8")
    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        service.close()  # the batching worker stops with the server

    app = FastAPI(title="pneumoscan", version=service.health()["pneumoscan_version"], lifespan=lifespan,
                  docs_url=None, redoc_url=None)  # the docs pages load scripts from a CDN
    app.state.service = service

    def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    app.add_middleware(GuardAndLog, api_key=api_key, model_id=service.model_id)

    @app.exception_handler(TooManyImages)
    async def too_many(request, exc):
        return error(413, str(exc))

    @app.exception_handler(Overloaded)
    async def overloaded(request, exc):
        return error(503, f"busy ({exc}); retry in {RETRY_AFTER_SECONDS} s",
                     {"Retry-After": str(RETRY_AFTER_SECONDS)})

    @app.exception_handler(UploadTooLarge)
    async def too_large(request, exc):
        return error(413, f"upload too large: {exc}; the limit is {limits.describe_file_limit()}, "
                          f"{limits.max_files} files per request")

    @app.exception_handler(HTTPException)
    async def http_error(request, exc):
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc):
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return error(400, f"invalid request: {problems}")

    @app.exception_handler(Exception)
    async def internal(request, exc):
        # The client gets one line; the traceback goes to the server log only.
        log.exception("error while handling %s %s", request.method, request.url.path)
        return error(500, f"internal error ({type(exc).__name__}); the server log has the details")

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return HTMLResponse(page, headers={
            # Everything the page needs is inline; nothing may be loaded from elsewhere.
            "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                                       "img-src data:; connect-src 'self'; form-action 'self'",
        })

    @app.get("/health")
    async def health():
        return {**service.health(), "auth_required": api_key is not None}

    @app.post("/api/predict")
    async def predict(request: Request, gradcam: bool = False):
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limits.max_request_bytes:
            raise UploadTooLarge(f"request of {int(declared) / (1024 * 1024):.1f} MB")
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            return error(400, f"send the images as multipart/form-data in the field '{UPLOAD_FIELD}'")
        limited = Request(request.scope, receive=_limited_receive(request.receive, limits.max_request_bytes))
        form = await limited.form(max_files=limits.max_files)
        try:
            files = [f for f in form.getlist(UPLOAD_FIELD) if isinstance(f, UploadFile)]
            if not files:
                return error(400, f"no file uploaded: send one or more images in the multipart field '{UPLOAD_FIELD}'")
            for f in files:
                if f.size is not None and f.size > limits.max_file_bytes:
                    raise UploadTooLarge(f"{f.filename} is {f.size / (1024 * 1024):.1f} MB")
            uploads = [(_client_name(f.filename), await f.read()) for f in files]
        finally:
            await form.close()
        request.scope["pneumoscan_files"] = len(uploads)
        results = await service.analyse_async(uploads, gradcam)
        body = {"model_id": service.model_id, "engine": service.engine,
                "threshold": service.predictor.threshold, "results": results}
        if all(result["error"] for result in results):
            # Nothing could be predicted: the request was understood, its content unusable.
            return JSONResponse(body, status_code=422)
        return body

    return app


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, engine: str = "keras",
          max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, max_files: int = DEFAULT_MAX_FILES,
          api_key_file: str | Path | None = None, batching: Batching | None = None, threads: int | None = None) -> None:
    """Load the run's model and serve the app until interrupted."""
    import uvicorn

    api_key = ApiKey.from_file(api_key_file) if api_key_file else None  # a bad key file fails before the model loads
    app = create_app(run_dir, engine=engine, max_upload_mb=max_upload_mb, max_files=max_files, api_key=api_key,
                     batching=batching, threads=threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if api_key is None and host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s without --api-key-file: anyone who can reach this address can use it", host)
    print(f"pneumoscan: serving {app.state.service.model_id} ({engine}) on http://{host}:{port}/", flush=True)
    # uvicorn's own access log would repeat each request; pneumoscan.requests logs it once, with the outcome.
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)
