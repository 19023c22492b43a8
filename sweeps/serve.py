"""`sweep serve`: the HTTP face of the serving engine (FastAPI + uvicorn; the only module importing them).

    sweep serve --adapter reviews@champion --adapter helpdesk=runs/helpdesk/adapter --port 8000

Endpoints: POST /predict {"adapter", "text" | "texts"} (classification), POST /generate {"adapter", "prompt",
"max_new_tokens"?, "system"?} (instruction), GET /adapters, POST /adapters/{name}/reload, GET /health.
Every refusal is a 4xx with a `detail` message: 404 unknown adapter, 400 wrong task, 413 oversized, 422 malformed.
Binds 127.0.0.1 unless told otherwise: an adapter server has no authentication of its own.
"""

from __future__ import annotations

import asyncio
import threading
import time

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from sweeps.serving import Engine, ServeError
from sweeps.sources import SourceError

MAX_BODY_BYTES = 1 << 20  # 1 MiB: far above any valid request (64 texts x 20k chars is ~1.3 M, refused anyway)


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is a 422, not silently ignored
    adapter: str
    text: str | None = None
    texts: list[str] | None = None


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    adapter: str
    prompt: str
    max_new_tokens: int | None = Field(None, ge=1)
    system: str | None = None


def create_app(engine: Engine) -> FastAPI:
    app = FastAPI(title="peft-sweeps adapter server", version="1")

    @app.exception_handler(ServeError)
    async def refused(_request: Request, exc: ServeError) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

    @app.middleware("http")
    async def body_limit(request: Request, call_next):
        size = request.headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > MAX_BODY_BYTES):
            return JSONResponse({"detail": f"request body over {MAX_BODY_BYTES} bytes"}, status_code=413)
        return await call_next(request)

    @app.post("/predict")
    async def predict(req: PredictRequest) -> dict:
        if (req.text is None) == (req.texts is None):
            raise ServeError(422, "send exactly one of `text` (a string) or `texts` (a list of strings)")
        futures = engine.submit_predict(req.adapter, [req.text] if req.text is not None else req.texts)
        results = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        return results[0] if req.text is not None else {"results": results}

    @app.post("/generate")
    async def generate(req: GenerateRequest) -> dict:
        return await asyncio.wrap_future(engine.submit_generate(req.adapter, req.prompt, req.max_new_tokens,
                                                                req.system))

    @app.get("/adapters")
    async def list_adapters() -> dict:
        return {"task": engine.task, "base": engine.base_spec, "adapters": engine.describe()}

    @app.post("/adapters/{name}/reload")
    async def reload(name: str, force: bool = False) -> dict:
        try:  # off the event loop: a download and a load take a while, other requests keep flowing
            return await asyncio.to_thread(engine.reload, name, force)
        except SourceError as exc:
            raise ServeError(409, f"kept the loaded version: {exc}") from None

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "task": engine.task, "base": engine.base_spec, "base_sha256": engine.base_sha256,
                "adapters": sorted(engine.slots), "stats": dict(engine.stats)}

    return app


def run(engine: Engine, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Serve until Ctrl-C."""
    uvicorn.run(create_app(engine), host=host, port=port, log_level=log_level)


class Background:
    """A server on a thread (tests, the benchmark): `with Background(engine) as url: ...` stops it on exit."""

    def __init__(self, engine: Engine, host: str = "127.0.0.1", port: int = 0):
        config = uvicorn.Config(create_app(engine), host=host, port=port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="sweeps-serve", daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:  # port 0: the OS picks a free port; read it back once bound
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
