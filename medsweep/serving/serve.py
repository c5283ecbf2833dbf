"""Serve a promoted model over HTTP:

    MEDSWEEP_API_TOKEN=<secret> python -m medsweep.serve model=<promoted dir> [host=127.0.0.1] [port=8000]
        [max_request_bytes=1000000] [max_batch=64] [allow_no_auth=false]

GET /health (no token): {"status": "ok", "version", "labels"}.
POST /predict with `Authorization: Bearer <token>` and {"texts": [...], "text_pairs": [...]?}:
{"version", "labels", "predictions": [{"label", "probabilities": {label: p}}]}, in input order.

Safety: a bearer token is required (from $MEDSWEEP_API_TOKEN, at least 16 characters). Without one
the service refuses to start, unless allow_no_auth=true AND it listens on a loopback address only.
Request bodies over max_request_bytes get 413 before they are parsed. Request text is never logged:
the access log has method, path and status only; this module logs counts and timings, and a failed
prediction logs the exception type, not its message (tokenizer errors can quote their input).
Needs the `serve` extra: pip install "medsweep[serve]".
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint annotations at runtime, and the
# request model and security classes are local to create_app.
import hmac
import json
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Optional, Sequence

from medsweep.config import ConfigError
from medsweep.serving.args import arg, tool_main

TOKEN_ENV = "MEDSWEEP_API_TOKEN"
MIN_TOKEN_LENGTH = 16
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
log = logging.getLogger("medsweep.serve")


@dataclass
class ServeArgs:
    model: str = arg("the promoted model folder (runs/<run>/promoted)", metavar="<promoted dir>")
    host: str = arg("the address to listen on", "127.0.0.1", "HOST")
    port: int = arg("the port (0: any free port)", 8000, "N", minimum=0)
    max_request_bytes: int = arg("larger request bodies get 413 before they are parsed", 1_000_000, "N")
    max_batch: int = arg("most texts in one request", 64, "N")
    allow_no_auth: bool = arg("run without a token: only on a loopback host, for local testing", False, "false")


class RequestSizeLimit:
    """ASGI middleware: 413 for a body over `max_bytes`, checked on the declared length and on the
    bytes actually received (chunked uploads declare none). The accepted body is at most max_bytes,
    so it is buffered and replayed to the app."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await self.reject(send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await self.reject(send)
            chunks.append(chunk)
            more = message.get("more_body", False)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def reject(self, send):
        payload = json.dumps({"detail": f"request body larger than {self.max_bytes} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})


class RedactQuery(logging.Filter):
    """Uvicorn's access log records the full path; a query string could carry text, so it is cut."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) == 5:
            client, method, path, version, status = record.args
            if isinstance(path, str) and "?" in path:
                record.args = (client, method, path.split("?", 1)[0] + "?<redacted>", version, status)
        return True


def create_app(promoted, token: Optional[str], max_request_bytes: int = 1_000_000, max_batch: int = 64):
    """The ASGI app for a loaded medsweep.serving.inference.PromotedModel. token=None: no authentication."""
    from fastapi import Depends, FastAPI, HTTPException, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
    from pydantic import BaseModel, Field

    class PredictRequest(BaseModel):
        texts: list[str] = Field(min_length=1)
        text_pairs: Optional[list[str]] = None

    bearer = HTTPBearer(auto_error=False)
    model_lock = threading.Lock()

    def authorize(credentials: Optional[HTTPAuthorizationCredentials] = Depends(bearer)) -> None:
        if token is None:
            return
        # Constant-time comparison: response timing must not reveal how much of a guess was right.
        if credentials is None or not hmac.compare_digest(credentials.credentials.encode(), token.encode()):
            raise HTTPException(status_code=401, detail="missing or invalid bearer token",
                                headers={"WWW-Authenticate": "Bearer"})

    app = FastAPI(title="medsweep model", version=promoted.version or "unversioned", docs_url=None, redoc_url=None)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        # FastAPI's default 422 body echoes the offending input; say where the problem is, not what it was.
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        return JSONResponse(status_code=422, content={"detail": errors})

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "version": promoted.version, "labels": promoted.label_names}

    @app.post("/predict", dependencies=[Depends(authorize)])
    def predict(request: PredictRequest) -> dict:
        texts, pairs = request.texts, request.text_pairs
        if len(texts) > max_batch:
            raise HTTPException(status_code=413, detail=f"at most {max_batch} texts per request, got {len(texts)}")
        if pairs is not None and len(pairs) != len(texts):
            raise HTTPException(status_code=422, detail=f"text_pairs has {len(pairs)} items for {len(texts)} texts")
        if pairs is None and promoted.text_pair_column:
            raise HTTPException(status_code=422, detail="this model was trained on text pairs: send text_pairs too")
        if any(not t.strip() for t in texts) or (pairs is not None and any(not p.strip() for p in pairs)):
            raise HTTPException(status_code=422, detail="empty text in the request")
        started = time.perf_counter()
        try:
            # FastAPI runs sync endpoints in a thread pool; a fast tokenizer must not be used by two
            # threads at once ("Already borrowed"), and one model call already uses every core.
            with model_lock:
                probs = promoted.predict(texts, pairs)
        except Exception as exc:  # noqa: BLE001 - reported without its message, which may quote the input
            log.error("prediction failed: %s", type(exc).__name__)
            raise HTTPException(status_code=500, detail="prediction failed") from None
        log.info("predicted %d text(s) in %.0f ms", len(texts), (time.perf_counter() - started) * 1000)
        labels = promoted.label_names
        return {"version": promoted.version, "labels": labels,
                "predictions": [{"label": labels[int(row.argmax())], "probabilities": dict(zip(labels, map(float, row)))}
                                for row in probs]}

    return RequestSizeLimit(app, max_request_bytes)


def resolve_token(host: str, allow_no_auth: bool, environ=os.environ) -> Optional[str]:
    """The bearer token, or None where running open is explicitly allowed. Raises ConfigError."""
    token = environ.get(TOKEN_ENV, "")
    if token:
        if len(token) < MIN_TOKEN_LENGTH:
            raise ConfigError(f"{TOKEN_ENV} is too short ({len(token)} characters; use at least {MIN_TOKEN_LENGTH}, "
                              f"e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')")
        return token
    if not allow_no_auth:
        raise ConfigError(f"refusing to start without a bearer token: set {TOKEN_ENV} "
                          f"(or, for local testing only, allow_no_auth=true with host=127.0.0.1)")
    if host not in LOOPBACK_HOSTS:
        raise ConfigError(f"allow_no_auth=true is only allowed on a loopback host {LOOPBACK_HOSTS}, not {host!r}")
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    return tool_main("medsweep.serve", ServeArgs, argv, serve, usage_prefix=f"{TOKEN_ENV}=... ")


def serve(args: ServeArgs) -> None:
    # Checked before the model loads: a misconfigured service fails in a second.
    token = resolve_token(args.host, args.allow_no_auth)
    try:
        import uvicorn
    except ImportError:
        raise ConfigError('the service needs FastAPI and uvicorn: pip install "medsweep[serve]"') from None
    from medsweep.serving.inference import load_promoted

    promoted = load_promoted(args.model)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")
    if token is None:
        log.warning("no bearer token: anyone who can reach %s:%d can use the model", args.host, args.port)
    app = create_app(promoted, token, args.max_request_bytes, args.max_batch)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="info", access_log=True)
    # Uvicorn configures its loggers when the Config is made; the filter goes on after that.
    logging.getLogger("uvicorn.access").addFilter(RedactQuery())
    uvicorn.Server(config).run()


if __name__ == "__main__":
    sys.exit(main())
