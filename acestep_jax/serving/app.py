"""The HTTP API (FastAPI) over a :class:`~acestep_jax.serving.scheduler.Scheduler`.

Endpoints (all but the health checks need ``Authorization: Bearer KEY`` when a key is set):

- ``POST /v1/generate``: a request in the project's or the reference's format → ``202``
  with the job (``id``, ``status``, ``queue_position``; ``Location: /v1/jobs/{id}``).
- ``GET /v1/jobs/{id}``: status (``queued``, ``running``, ``done``, ``failed``,
  ``cancelled``), stage, progress in outputs, queue position, output links;
  ``?wait=S`` holds the answer until the job finishes or ``S`` seconds pass.
- ``GET /v1/jobs/{id}/audio?index=i``: output ``i``'s file (``409`` until written).
- ``DELETE /v1/jobs/{id}``: cancel a queued or running job, or delete a finished one's files.
- ``POST /generate``: the reference's ``infer-api.py`` body, answered when the audio is
  ready (``output_path`` is the audio's URL here); ``checkpoint_path``, ``output_path`` and
  ``device_id`` are refused: the server owns its model, devices and disk.
- ``POST /v1/uploads``: an audio file (the body, any audio ``Content-Type``) for the tasks
  with source audio → ``201`` with its ``id``, which a request names as ``src_upload``.
- ``GET /v1/jobs/{id}/record?index=i``: output ``i``'s record (the request that reproduces it).
- ``GET /v1/loras`` (the LoRAs requests may name), ``GET /v1/fields`` (every request field
  with its type, bounds, default and help: what the page builds its form from).
- ``GET /``: the page (see ``page.html``), a form over this API for people.
- ``GET /healthz`` (and the reference's ``/health``), ``GET /metrics`` (Prometheus text).

Bad bodies get ``400`` (not JSON), ``413`` (too large), ``415`` (not ``application/json``)
or ``422`` naming the field; a full queue gets ``429`` with ``Retry-After``; a server
shutting down, or one that cannot write its journal (a full disk), ``503`` with
``Retry-After``. With an API key the OpenAPI pages (``/docs``, ``/redoc``,
``/openapi.json``) are off.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import Depends, FastAPI, HTTPException
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse
from starlette.requests import Request as HTTPRequest

from acestep_jax.codec.audio_io import MEDIA_TYPES
from acestep_jax.sampling import SamplingParams
from acestep_jax.serving.metrics import CONTENT_TYPE
from acestep_jax.serving.requests import (
    FIELDS,
    REQUEST_DEFAULTS,
    Request,
    RequestError,
    parse_request,
)
from acestep_jax.serving.scheduler import (
    CANCELLED,
    DONE,
    FAILED,
    QUEUED,
    Draining,
    Job,
    JournalError,
    QueueFull,
    Scheduler,
)
from acestep_jax.serving.uploads import UploadError


@dataclass(frozen=True)
class AppConfig:
    api_key: str | None = None  # bearer token; None: no authentication
    max_body_bytes: int = 1 << 20
    sync_timeout_s: float = 600.0  # how long POST /generate waits for its audio
    max_poll_wait_s: float = 60.0  # the longest ?wait= of GET /v1/jobs/{id}


class _BodyError(Exception):
    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


PAGE = Path(__file__).with_name("page.html")
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH")  # metric labels; others: "other"


async def _read_body(request: HTTPRequest, limit: int, what: str) -> bytes:
    """The request's body; a ``413`` as soon as it (or its announced length) passes ``limit`` bytes."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise _BodyError(413, f"{what} exceeds {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _BodyError(413, f"{what} exceeds {limit} bytes")
    return bytes(body)


async def _json_body(request: HTTPRequest, limit: int):
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json":
        raise _BodyError(415, f"the body must be JSON sent as Content-Type: application/json, got {media or 'none'!r}")
    body = await _read_body(request, limit, "the body")
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as e:
        raise _BodyError(400, f"the body is not valid JSON: {str(e)[:200]}") from None


class _CountResponses:
    """ASGI middleware counting every response (an unhandled error as 500) by method, route and
    code, each label from a bounded set. Plain ASGI, so endpoints still see a client hang up."""

    def __init__(self, app, counter):
        self.app, self.counter = app, counter

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        code = "500"

        async def sending(message):
            nonlocal code
            if message["type"] == "http.response.start":
                code = str(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            method = scope["method"] if scope["method"] in HTTP_METHODS else "other"
            self.counter.inc(method=method, route=getattr(scope.get("route"), "path", "unmatched"), code=code)


def _invalid(err: RequestError) -> JSONResponse:
    field = err.field.encode("utf-8", "backslashreplace").decode()  # a key may hold a lone surrogate
    return JSONResponse({"detail": [{"loc": ["body", field], "msg": err.message, "type": "value_error"}]},
                        status_code=422)


def _waiting(job: Job) -> bool:
    """Whether some output of ``job`` still waits in the queue."""
    return job.status == QUEUED or job.stage == "queued"


async def _wait(scheduler: Scheduler, job: Job, timeout: float, until) -> None:
    """Return once ``until()`` holds (checked at each change of ``job``) or ``timeout`` passes."""
    loop = asyncio.get_running_loop()
    changed = asyncio.Event()
    stop = scheduler.watch(job, lambda: loop.call_soon_threadsafe(changed.set))
    try:
        deadline = loop.time() + timeout
        while True:
            changed.clear()
            remaining = deadline - loop.time()
            if until() or remaining <= 0:
                return
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                pass
    finally:
        stop()


async def _disconnected(http: HTTPRequest, every: float = 0.5) -> None:
    """Return once the client of ``http`` has hung up."""
    while not await http.is_disconnected():
        await asyncio.sleep(every)


def request_fields() -> list[dict]:
    """The request fields as the page reads them (from the one field table)."""
    defaults = {**{f.name: f.default for f in dataclasses.fields(SamplingParams)}, **REQUEST_DEFAULTS,
                **{f.name: f.default for f in dataclasses.fields(Request) if f.default is not dataclasses.MISSING},
                "prompt": ""}
    out = []
    for f in FIELDS:
        default = defaults.get(f.name)
        out.append({"name": f.name, "kind": f.kind, "help": f.help, "low": f.low, "high": f.high,
                    "choices": list(f.choices), "per_item": f.per_item, "nullable": f.nullable,
                    "default": list(default) if isinstance(default, tuple) else default})
    return out


def job_view(scheduler: Scheduler, job: Job) -> dict:
    """A job as the API shows it."""
    r = job.request
    return {
        "id": job.id, "status": job.status, "stage": job.stage,
        "progress": {"outputs_done": len(job.outputs), "outputs": r.count if r else 0},
        "queue_position": scheduler.position(job),
        "accepted_at": job.accepted_at, "started_at": job.started_at, "finished_at": job.finished_at,
        "error": job.error,
        "outputs": [{"index": o.index, "url": f"/v1/jobs/{job.id}/audio?index={o.index}", "seconds": o.seconds,
                     "seed": r.seeds[o.index] if r else None,
                     "retake_seed": r.retake_seeds[o.index] if r else None}
                    for o in sorted(job.outputs.values(), key=lambda o: o.index)],
        "request": r.to_dict() if r else None,
    }


def create_app(scheduler: Scheduler, config: AppConfig = AppConfig()) -> FastAPI:
    """The API over ``scheduler``, which the app starts and stops with its lifespan."""

    @asynccontextmanager
    async def lifespan(app):
        scheduler.start()
        yield
        await run_in_threadpool(scheduler.stop)

    docs = {} if config.api_key is None else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="acestep-jax", summary="ACE-Step v1 music generation, batched", lifespan=lifespan, **docs)
    app.state.scheduler = scheduler
    metrics = scheduler.metrics

    app.add_middleware(_CountResponses, counter=metrics.http)

    @app.exception_handler(_BodyError)
    async def body_error(request, err: _BodyError):
        return JSONResponse({"detail": err.detail}, status_code=err.status)

    @app.exception_handler(RequestError)
    async def request_error(request, err: RequestError):
        return _invalid(err)

    async def authorized(request: HTTPRequest) -> None:
        if config.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), config.api_key.encode()):
            raise HTTPException(401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"})

    auth = [Depends(authorized)]

    def parse(data, reference: bool | None):
        request = scheduler.attach(parse_request(data, scheduler.limits, reference=reference))
        scheduler.check(request)
        return request

    async def accept(http: HTTPRequest, reference: bool | None) -> Job:
        request = await run_in_threadpool(parse, await _json_body(http, config.max_body_bytes), reference)
        try:
            return await run_in_threadpool(scheduler.submit, request)
        except QueueFull as e:
            raise HTTPException(429, str(e), headers={"Retry-After": str(e.retry_after)}) from None
        except (Draining, JournalError) as e:
            raise HTTPException(503, str(e), headers={"Retry-After": "30"}) from None

    def get_job(job_id: str) -> Job:
        job = scheduler.job(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id}")
        return job

    @app.post("/v1/generate", status_code=202, dependencies=auth)
    async def submit(http: HTTPRequest):
        """Queue a request (the project's or the reference's format); returns the job."""
        job = await accept(http, None)
        return JSONResponse(job_view(scheduler, job), status_code=202, headers={"Location": f"/v1/jobs/{job.id}"})

    @app.get("/v1/jobs/{job_id}", dependencies=auth)
    async def status(job_id: str, wait: float = 0.0):
        """A job's status; ``wait``: hold the answer until it finishes or ``wait`` seconds pass."""
        job = get_job(job_id)
        if wait > 0:  # released at drain, so shutting down never waits for a poll
            await _wait(scheduler, job, min(wait, config.max_poll_wait_s), lambda: job.finished or scheduler.draining)
        return job_view(scheduler, job)

    @app.get("/v1/jobs/{job_id}/audio", dependencies=auth)
    async def audio(job_id: str, index: int = 0):
        """Output ``index`` of a job as an audio file."""
        job = get_job(job_id)
        if job.request is None or not 0 <= index < job.request.count:
            raise HTTPException(404, f"job {job_id} has no output {index}")
        output = job.outputs.get(index)
        if output is None and job.finished:
            raise HTTPException(410, f"output {index} was never written: job {job.id} is {job.status}")
        if output is None:
            raise HTTPException(409, f"output {index} is not ready (job {job.status})")
        fmt = job.request.format
        return FileResponse(output.audio, media_type=MEDIA_TYPES[fmt],
                            filename=f"{job.request.name or job.id}_{index}.{fmt}")

    @app.delete("/v1/jobs/{job_id}", dependencies=auth)
    async def cancel(job_id: str):
        """Cancel a queued or running job, or delete a finished one and its files."""
        result = await run_in_threadpool(scheduler.cancel, job_id)
        if result is None:
            raise HTTPException(404, f"no job {job_id}")
        return {"id": job_id, "status": result}

    @app.post("/generate", dependencies=auth)
    async def generate_reference(http: HTTPRequest):
        """The reference's ``/generate``: answers when the audio is ready."""
        job = await accept(http, True)
        waiting = asyncio.ensure_future(_wait(scheduler, job, config.sync_timeout_s,
                                              lambda: job.finished or (scheduler.draining and _waiting(job))))
        hung_up = asyncio.ensure_future(_disconnected(http))
        await asyncio.wait({waiting, hung_up}, return_when=asyncio.FIRST_COMPLETED)
        for task in (waiting, hung_up):
            task.cancel()
        if hung_up.done() and not hung_up.cancelled() and not job.finished:  # no one is left to find the job
            metrics.disconnects.inc()
            await run_in_threadpool(scheduler.cancel, job.id)
            return JSONResponse({"detail": f"the client went away; job {job.id} was cancelled"}, status_code=499)
        if job.status == DONE:
            return {"status": "success", "output_path": f"/v1/jobs/{job.id}/audio",
                    "message": "Audio generated successfully", "job_id": job.id,
                    "outputs": [f"/v1/jobs/{job.id}/audio?index={i}" for i in range(job.request.count)],
                    "actual_seeds": list(job.request.seeds), "retake_seeds": list(job.request.retake_seeds),
                    "audio_duration": job.request.params.duration}
        if job.status == FAILED:
            raise HTTPException(500, f"Error generating audio: {job.error}")
        if job.status == CANCELLED:
            raise HTTPException(409, f"job {job.id} was cancelled")
        if scheduler.draining:
            raise HTTPException(503, f"the server is shutting down; job {job.id} is journaled and resumes at the "
                                f"next start (GET /v1/jobs/{job.id})", headers={"Retry-After": "30"})
        raise HTTPException(504, f"job {job.id} is not finished after {config.sync_timeout_s:g} s; "
                            f"poll GET /v1/jobs/{job.id}")

    @app.post("/v1/uploads", status_code=201, dependencies=auth)
    async def upload(http: HTTPRequest):
        """Store an audio file for a request's ``src_upload`` (decoded and checked now)."""
        body = await _read_body(http, scheduler.uploads.max_bytes, "the upload")
        try:
            stored = await run_in_threadpool(scheduler.add_upload, body)
        except UploadError as e:
            raise HTTPException(e.status, str(e)) from None
        except OSError as e:
            raise HTTPException(503, f"the upload cannot be stored: {e}", headers={"Retry-After": "30"}) from None
        return JSONResponse({**dataclasses.asdict(stored), "expires_in_s": scheduler.uploads.ttl_s}, status_code=201)

    @app.get("/v1/jobs/{job_id}/record", dependencies=auth)
    async def record(job_id: str, index: int = 0):
        """Output ``index``'s record: the request that reproduces it, and how it was made."""
        job = get_job(job_id)
        output = job.outputs.get(index)
        if output is None:
            raise HTTPException(404, f"job {job_id} has no written output {index}")
        return FileResponse(output.record, media_type="application/json",
                            filename=f"{job.request.name or job.id}_{index}.json")

    @app.get("/v1/loras", dependencies=auth)
    async def loras():
        """The LoRAs a request may name (``lora``), as the operator listed them."""
        return {"loras": list(scheduler.limits.loras)}

    @app.get("/v1/fields")
    async def fields():
        """Every request field: name, type, bounds, choices, default, help (the page's form)."""
        return {"fields": request_fields(), "limits": {"max_duration": scheduler.limits.max_duration,
                                                       "max_steps": scheduler.limits.max_steps,
                                                       "max_outputs": scheduler.limits.max_outputs}}

    @app.get("/", include_in_schema=False)
    async def page():
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    @app.get("/healthz")
    @app.get("/health", include_in_schema=False)
    async def health():
        """``200`` while serving; ``503`` while shutting down or while the journal cannot be written."""
        problem = scheduler.storage_error
        status = "draining" if scheduler.draining else "storage_error" if problem else "ok"
        body = {"status": status, "queued_outputs": scheduler.queued_outputs()}
        if problem:
            body["storage_error"] = problem
        return JSONResponse(body, status_code=200 if status == "ok" else 503)

    @app.get("/metrics", dependencies=auth)
    async def prometheus():
        return PlainTextResponse(metrics.registry.render(), media_type=CONTENT_TYPE)

    return app
