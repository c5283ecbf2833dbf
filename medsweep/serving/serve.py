"""Serve a promoted model over HTTP:

    MEDSWEEP_API_TOKEN=<secret> python -m medsweep.serve model=<promoted dir> [host=127.0.0.1] [port=8000]
        [max_request_bytes=1000000] [max_batch=64] [allow_no_auth=false] [batch_texts=64] [batch_wait_ms=0]

GET /health (no token): {"status": "ok", "version", "labels"} of the model being served.
POST /predict with `Authorization: Bearer <token>` and {"texts": [...], "text_pairs": [...]?}:
{"version", "labels", "predictions": [{"label", "probabilities": {label: p}}]}, in input order.
POST /reload (token) or SIGHUP: load `model=` again (a `promoted` link is resolved anew) and swap it
in once loaded; requests in flight finish on the old model; a folder that cannot be loaded is 409
and the old model keeps serving. GET /openapi.json needs the token too.
Concurrent requests share forward passes (medsweep/serving/batching.py).

Safety: a bearer token is required (from $MEDSWEEP_API_TOKEN, at least 16 characters). Without one
the service refuses to start, unless allow_no_auth=true AND it listens on a loopback address only.
Request bodies over max_request_bytes get 413 before they are parsed. Request text is never logged:
the access log has method, path and status only; this module logs counts and timings, and a failed
prediction logs the exception type, not its message (tokenizer errors can quote their input).
Needs the `serve` extra: pip install "medsweep[serve]".
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint annotations at runtime, and the
# request model and security classes are local to create_app.
import asyncio
import copy
import hmac
import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Optional, Sequence, Union

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
    batch_texts: int = arg("most texts in one forward pass, gathered across concurrent requests (1: one request "
                           "at a time)", 64, "N")
    batch_wait_ms: int = arg("how long an idle service waits for more requests before a forward pass", 0, "N",
                             minimum=0)


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


class ServedModel:
    """The model being served and how to load its successor. A request reads `current` once, when it
    arrives, and uses only that object: a reload that swaps it meanwhile cannot mix two versions
    into one answer, and the request finishes on the model it started on."""

    def __init__(self, promoted, source=None):
        self.current = promoted
        # What a reload reads again: the path the service was started with (the run's `promoted`
        # link, resolved anew at each load), never the version folder it resolved to.
        self.source = source if source is not None else (promoted.source or promoted.folder)
        self.lock = threading.Lock()  # one reload at a time

    def reload(self) -> tuple[Optional[str], Optional[str]]:
        """Load `source` again and swap it in: (previous version, new version). Raises ReloadError
        (one line) and keeps serving the current model when the new one cannot be loaded."""
        from medsweep.serving.inference import load_promoted

        with self.lock:
            previous = self.current
            try:
                loaded = load_promoted(self.source)
                # One real forward pass before the swap: weights that load but cannot predict
                # (a tokenizer from another model, a head of the wrong shape) are caught here.
                loaded.predict(["reload check"], ["reload check"] if loaded.text_pair_column else None)
            except Exception as exc:  # noqa: BLE001 - any failure leaves the old model serving
                reason = str(exc).strip().splitlines()[0] if isinstance(exc, ConfigError) and str(exc).strip() \
                    else f"could not load the model in {self.source}: {type(exc).__name__}"
                raise ReloadError(f"reload failed, still serving {previous.version}: {reason[:300]}") from None
            self.current = loaded  # one reference assignment: atomic for every request that follows
            return previous.version, loaded.version


class ReloadError(Exception):
    pass


def check_texts(name: str, values: Sequence[str]) -> Optional[str]:
    """The first problem with a list of request texts, naming the item, or None."""
    for i, value in enumerate(values):
        if not value.strip():
            return f"{name}[{i}] is empty"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            # JSON can carry a lone surrogate (\ud800); no tokenizer can read it.
            return f"{name}[{i}] is not valid Unicode (a lone surrogate)"
    return None


def create_app(promoted, token: Optional[str], max_request_bytes: int = 1_000_000, max_batch: int = 64,
               batch_texts: int = 64, batch_wait_ms: float = 0.0, reload_on_sighup: bool = False):
    """The ASGI app for a loaded medsweep.serving.inference.PromotedModel. token=None: no authentication.
    `batch_texts`: most texts in one forward pass, gathered across concurrent requests (1: one request
    at a time); `reload_on_sighup`: SIGHUP reloads the model (only where the app runs on the main thread)."""
    from contextlib import asynccontextmanager

    from fastapi import Depends, FastAPI, HTTPException, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
    from pydantic import BaseModel, Field

    from medsweep.serving.batching import Batcher

    class PredictRequest(BaseModel):
        texts: list[str] = Field(min_length=1)
        text_pairs: Optional[list[str]] = None

    class Prediction(BaseModel):
        label: str
        probabilities: dict[str, float]

    class PredictResponse(BaseModel):
        version: Optional[str]
        labels: list[str]
        predictions: list[Prediction]

    class Health(BaseModel):
        status: str
        version: Optional[str]
        labels: list[str]

    class Reloaded(BaseModel):
        version: Optional[str]
        previous_version: Optional[str]

    class ErrorLocation(BaseModel):
        loc: list[Union[str, int]]
        msg: str

    class Error(BaseModel):
        # A sentence, or for a body that does not match the schema, where each problem is (never the input).
        detail: Union[str, list[ErrorLocation]]

    served = ServedModel(promoted)
    batcher = Batcher(max_texts=batch_texts, wait_s=batch_wait_ms / 1000)
    bearer = HTTPBearer(auto_error=False)

    async def authorize(credentials: Optional[HTTPAuthorizationCredentials] = Depends(bearer)) -> None:
        # async: a rejection is answered on the event loop, never queued behind a forward pass.
        if token is None:
            return
        # Constant-time comparison: response timing must not reveal how much of a guess was right.
        if credentials is None or not hmac.compare_digest(credentials.credentials.encode("utf-8", "replace"),
                                                          token.encode()):
            raise HTTPException(status_code=401, detail="missing or invalid bearer token",
                                headers={"WWW-Authenticate": "Bearer"})

    async def reload_on_signal() -> None:
        try:
            old, new = await run_in_threadpool(served.reload)
            log.info("reloaded on SIGHUP: %s -> %s", old, new)
        except ReloadError as exc:
            log.error("%s", exc)

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        loop = asyncio.get_running_loop()
        sighup = reload_on_sighup and hasattr(signal, "SIGHUP") and threading.current_thread() is threading.main_thread()
        if sighup:
            loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(reload_on_signal()))
        try:
            yield
        finally:
            if sighup:
                loop.remove_signal_handler(signal.SIGHUP)
            await batcher.stop()

    # 400: a body that is not JSON text at all (FastAPI's own one-line answer).
    errors = {400: {"model": Error}, 401: {"model": Error}, 413: {"model": Error}, 422: {"model": Error}}
    # The schema is served only to whoever holds the token (it names the routes and limits); there is
    # no /docs page: Swagger UI loads its scripts from a CDN, which a clinical deployment should not.
    app = FastAPI(title="medsweep model", version=promoted.version or "unversioned", docs_url=None, redoc_url=None,
                  openapi_url=None, lifespan=lifespan)
    app.state.served, app.state.batcher = served, batcher  # for tests and operators' debugging

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        # FastAPI's default 422 body echoes the offending input; say where the problem is, not what it was.
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        return JSONResponse(status_code=422, content={"detail": errors})

    def request_schema() -> dict:
        """FastAPI's schema with what the endpoint checks itself written in (at most max_batch texts,
        none blank, pairs exactly when the model being served takes them), so that a client or a
        fuzzer reading it knows which requests are valid. Built anew per call: a reload can change it."""
        schema = copy.deepcopy(app.openapi())
        body = schema["components"]["schemas"]["PredictRequest"]
        text = {"type": "string", "pattern": r"\S"}
        body["properties"]["texts"].update(items=text, maxItems=max_batch)
        if served.current.text_pair_column:
            body["properties"]["text_pairs"] = {"type": "array", "items": text, "minItems": 1, "maxItems": max_batch,
                                                "description": "one second text per text, same order"}
            body["required"] = ["texts", "text_pairs"]
        else:
            body["properties"]["text_pairs"] = {"type": "null", "description": "this model takes single texts"}
        return schema

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(authorize)])
    async def openapi() -> JSONResponse:
        return JSONResponse(request_schema())

    @app.get("/health")
    async def health() -> Health:
        model = served.current
        return Health(status="ok", version=model.version, labels=model.label_names)

    @app.post("/reload", dependencies=[Depends(authorize)], responses={401: {"model": Error}, 409: {"model": Error}})
    async def reload() -> Reloaded:
        """Load the model folder again (the run's `promoted` link, resolved anew) and swap it in once it
        has loaded and predicted; requests already in flight finish on the old model. A folder that
        cannot be loaded is 409: the request was fine, the folder on disk conflicts with it, and the
        old model keeps serving (a 5xx would tell clients and balancers that this server is failing)."""
        try:
            old, new = await run_in_threadpool(served.reload)
        except ReloadError as exc:
            log.error("%s", exc)
            raise HTTPException(status_code=409, detail=str(exc)) from None
        log.info("reloaded: %s -> %s", old, new)
        return Reloaded(version=new, previous_version=old)

    @app.post("/predict", dependencies=[Depends(authorize)], responses={**errors, 500: {"model": Error}})
    async def predict(request: PredictRequest) -> PredictResponse:
        model = served.current  # read once: this request is answered by this model, whatever reloads meanwhile
        texts, pairs = request.texts, request.text_pairs
        if len(texts) > max_batch:
            raise HTTPException(status_code=413, detail=f"at most {max_batch} texts per request, got {len(texts)}")
        if pairs is not None and not model.text_pair_column:
            raise HTTPException(status_code=422, detail="this model takes single texts: do not send text_pairs")
        if pairs is None and model.text_pair_column:
            raise HTTPException(status_code=422, detail="this model was trained on text pairs: send text_pairs too")
        if pairs is not None and len(pairs) != len(texts):
            raise HTTPException(status_code=422, detail=f"text_pairs has {len(pairs)} items for {len(texts)} texts")
        problem = check_texts("texts", texts) or (check_texts("text_pairs", pairs) if pairs is not None else None)
        if problem:
            raise HTTPException(status_code=422, detail=problem)
        started = time.perf_counter()
        try:
            probs = await batcher.predict(model, texts, pairs)
        except Exception as exc:  # noqa: BLE001 - reported without its message, which may quote the input
            log.error("prediction failed: %s", type(exc).__name__)
            raise HTTPException(status_code=500, detail="prediction failed") from None
        log.info("predicted %d text(s) in %.0f ms", len(texts), (time.perf_counter() - started) * 1000)
        labels = model.label_names
        return PredictResponse(version=model.version, labels=labels, predictions=[
            Prediction(label=labels[int(row.argmax())], probabilities=dict(zip(labels, map(float, row)))) for row in probs])

    return RequestSizeLimit(app, max_request_bytes)


def resolve_token(host: str, allow_no_auth: bool, environ=os.environ) -> Optional[str]:
    """The bearer token, or None where running open is explicitly allowed. Raises ConfigError."""
    token = environ.get(TOKEN_ENV, "")
    if token and not token.strip():
        raise ConfigError(f"{TOKEN_ENV} is only whitespace")
    if token != token.strip():
        # A newline from `echo ... > file` or a pasted space: clients send the token without it, so
        # every request would be refused; say so now instead.
        raise ConfigError(f"{TOKEN_ENV} starts or ends with whitespace (a trailing newline?); remove it")
    if any(not (33 <= ord(c) <= 126) for c in token):
        raise ConfigError(f"{TOKEN_ENV} must be printable ASCII without spaces (it is sent in an HTTP header)")
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
    app = create_app(promoted, token, args.max_request_bytes, args.max_batch, batch_texts=args.batch_texts,
                     batch_wait_ms=args.batch_wait_ms, reload_on_sighup=True)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="info", access_log=True)
    # Uvicorn configures its loggers when the Config is made; the filter goes on after that.
    logging.getLogger("uvicorn.access").addFilter(RedactQuery())
    uvicorn.Server(config).run()


if __name__ == "__main__":
    sys.exit(main())
