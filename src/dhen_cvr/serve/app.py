"""The HTTP service (FastAPI + uvicorn, DESIGN section 7)::

    POST /v1/score   one user x N candidates -> calibrated pCVR per served head
    GET  /healthz    {"status": "ok"}
    GET  /metadata   model version, heads, spec, limits
    GET  /openapi.json, /docs

Requests are JSON only (nothing is unpickled from the network), validated by the
spec-built schema (:mod:`dhen_cvr.serve.schema`): a bad request is a 422 whose message
names the field; a body over ``max_body_bytes`` is a 413. Each request is logged as one
JSON line (logger ``dhen_cvr.serve.access``). uvicorn drains in-flight requests on
SIGTERM/SIGINT before exiting (graceful shutdown).
"""

# No ``from __future__ import annotations`` here: FastAPI reads the endpoint's body type
# (a class built at run time from the spec) from its annotation object.

import json
import logging
import time
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dhen_cvr.errors import DataError
from dhen_cvr.runtime import retain_freed_cpu_memory
from dhen_cvr.serve.artefact import ServingModel
from dhen_cvr.serve.encode import encode_request
from dhen_cvr.serve.schema import RequestSchema, ScoreResponse

__all__ = ["DEFAULT_MAX_BODY_BYTES", "DEFAULT_MAX_CANDIDATES", "create_app", "run_server"]

DEFAULT_MAX_CANDIDATES = 1000
DEFAULT_MAX_BODY_BYTES = 8 << 20
ACCESS_LOG = logging.getLogger("dhen_cvr.serve.access")


class _BodyLimit:
    """ASGI middleware: 413 for a body over ``limit`` bytes (by Content-Length, or while
    streaming a chunked body), before the application reads it."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await self._refuse(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse(
            {"detail": f"request body over the limit of {self.limit} bytes"}, status_code=413
        )
        await response(scope, receive, send)


class _TooLarge(Exception):
    pass


def _error(loc: list[Any], msg: str, status: int = 422) -> JSONResponse:
    return JSONResponse(
        {"detail": [{"loc": loc, "msg": msg, "type": "value_error"}]}, status_code=status
    )


def create_app(
    model: ServingModel,
    *,
    max_candidates: int = DEFAULT_MAX_CANDIDATES,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> FastAPI:
    """The service for ``model`` (an artefact or an eager run, :mod:`.artefact`)."""
    schema = RequestSchema(model.spec, max_candidates)
    body_type = schema.model
    app = FastAPI(
        title="dhen-cvr scoring",
        version=model.model_version,
        description="pCVR of one user against N candidate ads (served heads, calibrated).",
    )
    metadata = {
        **model.metadata,
        "max_candidates": max_candidates,
        "max_body_bytes": max_body_bytes,
        "spec": model.spec.model_dump(mode="json", exclude_none=True),
    }

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        details = [
            {k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in err.errors()
        ]
        return JSONResponse({"detail": jsonable_encoder(details)}, status_code=422)

    @app.exception_handler(DataError)
    async def bad_data(request: Request, err: DataError) -> JSONResponse:
        return _error(["body"], str(err))

    app.add_middleware(_BodyLimit, limit=max_body_bytes)  # inside the access log

    @app.middleware("http")
    async def access_log(request: Request, call_next: Any) -> Any:
        start = time.perf_counter()
        response = await call_next(request)
        ACCESS_LOG.info(
            json.dumps(
                {
                    "ts": round(time.time(), 3),
                    "client": request.client.host if request.client else None,
                    "method": request.method,
                    "path": request.url.path,
                    "status": response.status_code,
                    "ms": round((time.perf_counter() - start) * 1e3, 2),
                    "candidates": getattr(request.state, "candidates", None),
                }
            )
        )
        return response

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok", "model_version": model.model_version}

    @app.get("/metadata")
    def get_metadata() -> dict[str, Any]:
        return metadata

    def score(body: body_type, request: Request) -> ScoreResponse:  # type: ignore[valid-type]
        """pCVR per served head for each candidate (request order)."""
        plain = schema.dump(body)
        request.state.candidates = len(plain["candidates"])
        probs = model.request(*encode_request(model.spec, plain))
        rows = probs.double().tolist()
        return ScoreResponse(
            model_version=model.model_version,
            request_time=plain["request_time"],
            heads=model.heads,
            scores=[dict(zip(model.heads, row, strict=True)) for row in rows],
        )

    app.post(
        "/v1/score",
        response_model=ScoreResponse,
        responses={413: {"description": "body too large"}},
    )(score)
    return app


def run_server(
    model: ServingModel,
    host: str,
    port: int,
    *,
    max_candidates: int = DEFAULT_MAX_CANDIDATES,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    threads: int = 1,
    graceful_timeout_s: float = 10.0,
) -> None:
    """Serve until SIGTERM/SIGINT (in-flight requests finish, up to ``graceful_timeout_s``)."""
    import uvicorn

    torch.set_num_threads(threads)
    retain_freed_cpu_memory()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    app = create_app(model, max_candidates=max_candidates, max_body_bytes=max_body_bytes)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        access_log=False,  # ours is structured (ACCESS_LOG)
        log_config=None,
        timeout_graceful_shutdown=int(graceful_timeout_s),
        limit_concurrency=256,
    )
    uvicorn.Server(config).run()
