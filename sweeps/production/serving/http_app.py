"""`sweep serve`: the HTTP face of the serving engine (FastAPI + uvicorn; no other module imports them).

    sweep serve --adapter reviews@champion --adapter helpdesk=runs/helpdesk/adapter --port 8000

Endpoints: POST /predict {"adapter", "text" | "texts"} (classification), POST /generate {"adapter", "prompt",
"max_new_tokens"?, "system"?} (instruction), GET /adapters, POST /adapters/{name}/reload, GET /health.
Every refusal is a 4xx with a `detail` message: 401 no or wrong token, 404 unknown adapter, 400 wrong task,
413 oversized, 422 malformed.

Auth: a bearer token from $SWEEPS_SERVE_TOKEN or `--token-file` (never a flag value: argv shows in `ps`). With a
token every endpoint but /health needs `Authorization: Bearer <token>`; without one the server binds loopback only
(anything else is refused before the model loads). Both checks are ASGI middleware around the app, auth outermost:
an unauthenticated request is answered before a byte of its body is read, and a body is counted as it arrives
(chunked bodies carry no Content-Length), so a 413 comes before more than MAX_BODY_BYTES were read.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import os
import threading
import time
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from sweeps.production.serving.engine import Engine, ServeError
from sweeps.production.sources import SourceError

MAX_BODY_BYTES = 1 << 20  # 1 MiB: far above any valid request (64 texts x 20k chars is ~1.3 M, refused anyway)
TOKEN_ENV = "SWEEPS_SERVE_TOKEN"
OPEN_PATHS = frozenset({"/health"})  # load balancers and `curl` probes need no token


class ServeConfigError(ValueError):
    """The server refuses to start (no token on a non-loopback bind, an unreadable token file)."""


def load_token(token_file: Path | None = None) -> str | None:
    """The bearer token: `token_file`'s contents when given, else $SWEEPS_SERVE_TOKEN; None when neither is set."""
    if token_file is not None:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ServeConfigError(f"cannot read --token-file {token_file}: {exc.strerror or exc}") from None
        if not token:
            raise ServeConfigError(f"--token-file {token_file} is empty")
        return token
    return os.environ.get(TOKEN_ENV, "").strip() or None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # any other name may resolve to a public interface
        return False


def require_token(host: str, token: str | None) -> None:
    """Anything but loopback (0.0.0.0, ::, a LAN address, a host name) serves only with a token."""
    if token is None and not is_loopback(host):
        raise ServeConfigError(
            f"--host {host} is reachable from other machines and the server would have no authentication: set "
            f"{TOKEN_ENV} or pass --token-file PATH (a file holding the token), or bind 127.0.0.1")


async def _send_json(send, status: int, detail: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


class BearerAuth:
    """ASGI middleware: `Authorization: Bearer <token>` on every path but OPEN_PATHS, compared in constant time."""

    def __init__(self, app, token: str):
        self.app, self.token = app, token.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, given = header.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token):
            return await self.app(scope, receive, send)
        why, challenge = (("wrong bearer token", b'Bearer error="invalid_token"') if header else
                          ("this server needs a bearer token: Authorization: Bearer <token>", b"Bearer"))
        await _send_json(send, 401, why, [(b"www-authenticate", challenge)])


class BodyLimit:
    """ASGI middleware: read the body up to `limit` bytes, counting what arrives (Content-Length or not); 413 at
    the first chunk past it, without reading further. The app then receives the buffered body, so a handler
    never sees more than `limit` bytes (FastAPI buffers a JSON body whole anyway)."""

    def __init__(self, app, limit: int = MAX_BODY_BYTES):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_big = f"request body over {self.limit} bytes"
        size = dict(scope["headers"]).get(b"content-length")
        if size is not None and (not size.isdigit() or int(size) > self.limit):
            return await _send_json(send, 413, too_big)  # declared too big: refused before reading any of it
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client went away mid-body: nobody to answer
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.limit:
                return await _send_json(send, 413, too_big)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as the server would report it

        await self.app(scope, replay, send)


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


def create_app(engine: Engine, token: str | None = None, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    app = FastAPI(title="peft-sweeps adapter server", version="1")
    app.add_middleware(BodyLimit, limit=max_body_bytes)
    if token is not None:
        app.add_middleware(BearerAuth, token=token)  # added last = outermost: runs before the body is read

    @app.exception_handler(ServeError)
    async def refused(_request: Request, exc: ServeError) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

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


def run(engine: Engine, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
        token: str | None = None) -> None:
    """Serve until Ctrl-C."""
    require_token(host, token)
    uvicorn.run(create_app(engine, token), host=host, port=port, log_level=log_level)


class Background:
    """A server on a thread (tests, the benchmark): `with Background(engine) as url: ...` stops it on exit."""

    def __init__(self, engine: Engine, host: str = "127.0.0.1", port: int = 0, token: str | None = None):
        require_token(host, token)
        # A request stuck in a handler must not keep the thread (and a test) alive on exit: 5 s, then cancel.
        config = uvicorn.Config(create_app(engine, token), host=host, port=port, log_level="warning",
                                timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="sweeps-serve", daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:  # port 0: the OS picks a free port; read it back once bound
            if time.monotonic() > deadline or not self.thread.is_alive():
                self.__exit__()  # `with` calls no __exit__ when __enter__ raises: stop the thread here
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        if self.thread.is_alive():
            self.server.force_exit = True  # still draining: stop now (the thread is a daemon besides)
            self.thread.join(timeout=5)
