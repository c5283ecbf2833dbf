"""Serve a promoted model over HTTP:

    MEDSWEEP_API_TOKEN=<secret> python -m medsweep.serve model=<promoted dir> [host=127.0.0.1] [port=8000]
        [max_request_bytes=1000000] [max_batch=64] [allow_no_auth=false] [batch_texts=64] [batch_wait_ms=0]
        [refer_when=set_size>1] [feedback_db=<runs/<run>/feedback.sqlite>]

GET / (no token): the page a clinician uses (serving/page.py): enter the token once, paste a note,
see the label, probability bars, prediction set and the words that drove it, mark it right or wrong.
GET /health (no token): {"status": "ok", "version", "labels"} of the model being served.
POST /predict with `Authorization: Bearer <token>` and {"texts": [...], "text_pairs": [...]?}:
{"version", "labels", "predictions": [{"label", "probabilities": {label: p}}]}, in input order; a model
folder with a conformal threshold (decision.json) adds "prediction_set" (labels) and "set_size" to each
prediction, and refer_when=set_size>1 (or set_size!=1, which refers empty sets too) answers "refer".
Each prediction carries a `prediction_id` (a random UUID4; the service remembers its last 10,000
predictions, in memory only). POST /feedback (token) with {"prediction_id", "label", "comment"?}
keeps the right label in the feedback database (serving/feedback.py; `python -m medsweep.feedback`
exports and summarises it): 404 for a prediction it does not remember, 422 for a label the model
does not have. POST /explain (token) with {"text", "text_pair"?}: the words that drove the prediction
(occlusion, serving/explain.py). GET /metrics (token): Prometheus metrics (serving/monitoring.py);
/health adds "drift" (the PSI of the served predictions' class mix and confidence, a KS test of input
lengths and the unknown-token rate against the test split; "alerts" names the signals that crossed)
and "feedback" (the accuracy on feedback-labelled cases with its Wilson CI, beside the test accuracy).
POST /reload (token) or SIGHUP: load `model=` again (a `promoted` link is resolved anew) and swap it
in once loaded; requests in flight finish on the old model; a folder that cannot be loaded is 409
and the old model keeps serving. GET /openapi.json needs the token too.
Concurrent requests share forward passes (medsweep/serving/batching.py).

The parts: the request and response bodies in schemas.py, the routes and the token check (a
dependency) in routes.py, the model being served and its reload in served.py. This module has the
command line, the app that assembles them (create_app) and what wraps it (body size limit, log filter).

Safety: a bearer token is required (from $MEDSWEEP_API_TOKEN, at least 16 characters). Without one
the service refuses to start, unless allow_no_auth=true AND it listens on a loopback address only.
Request bodies over max_request_bytes get 413 before they are parsed. Request text is never logged:
the access log has method, path and status only; the service logs counts and timings, and a failed
prediction logs the exception type, not its message (tokenizer errors can quote their input).
Needs the `serve` extra: pip install "medsweep[serve]".
"""

import asyncio
import json
import logging
import os
import signal
import sys
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Optional, Sequence

from medsweep.config import ConfigError
from medsweep.serving.args import arg, tool_main
from medsweep.serving.served import ReloadError, ServedModel

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
    refer_when: Optional[str] = arg("answer `refer` as the label where the prediction set matches, e.g. set_size>1 "
                                    "(needs a model with decision.json)", None, "RULE")
    feedback_db: Optional[str] = arg("the SQLite database POST /feedback appends to (default: feedback.sqlite in the "
                                     "run dir of a `promoted` link, else beside the model folder)", None, "FILE")


class RequestSizeLimit:
    """ASGI middleware: 413 for a body over `max_bytes`, checked on the declared length and on the
    bytes actually received (chunked uploads declare none). The accepted body is at most max_bytes,
    so it is buffered and replayed to the app."""

    def __init__(self, app, max_bytes: int, on_reject=None):
        self.app, self.max_bytes, self.on_reject = app, max_bytes, on_reject

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await self.reject(send, scope.get("path", ""))
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await self.reject(send, scope.get("path", ""))
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

    async def reject(self, send, path: str = ""):
        if self.on_reject is not None:
            self.on_reject(path)
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


@asynccontextmanager
async def lifespan(app, reload_on_sighup: bool = False):
    """The app's lifetime: the batcher's worker runs through it; with reload_on_sighup (honoured only
    where the app runs on the main thread, where signal handlers can be set), SIGHUP reloads the model."""
    from fastapi.concurrency import run_in_threadpool

    served, batcher = app.state.served, app.state.batcher

    async def reload_on_signal() -> None:
        try:
            old, new = await run_in_threadpool(served.reload)
            log.info("reloaded on SIGHUP: %s -> %s", old, new)
        except ReloadError as exc:
            log.error("%s", exc)

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


def create_app(promoted, token: Optional[str], max_request_bytes: int = 1_000_000, max_batch: int = 64,
               batch_texts: int = 64, batch_wait_ms: float = 0.0, reload_on_sighup: bool = False,
               refer_when: Optional[str] = None, feedback_db: Optional[str] = None):
    """The ASGI app for a loaded medsweep.serving.inference.PromotedModel. token=None: no authentication.
    `batch_texts`: most texts in one forward pass, gathered across concurrent requests (1: one request
    at a time); `reload_on_sighup`: SIGHUP reloads the model (only where the app runs on the main thread);
    `refer_when` (e.g. "set_size>1"): the label of a prediction whose conformal set matches is `refer`;
    `feedback_db`: where POST /feedback writes (default: serving.feedback.default_db of the model's
    source; the file is created on the first feedback)."""
    # FastAPI is the `serve` extra: imported here, so that the command line can say how to install it.
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError

    from medsweep.serving.batching import Batcher
    from medsweep.serving.feedback import FeedbackStore, RecentPredictions, default_db, trained_deidentified
    from medsweep.serving.monitoring import MeasureRequests, Monitor
    from medsweep.serving.inference import check_refer_rule, refer_rule
    from medsweep.serving.page import router as page_router
    from medsweep.serving.routes import invalid_request, router

    refer = refer_rule(refer_when)
    check_refer_rule(refer, promoted)

    # The schema is served only to whoever holds the token (routes.py); there is no /docs page:
    # Swagger UI loads its scripts from a CDN, which a clinical deployment should not.
    app = FastAPI(title="medsweep model", version=promoted.version or "unversioned", docs_url=None, redoc_url=None,
                  openapi_url=None, lifespan=partial(lifespan, reload_on_sighup=reload_on_sighup))
    # What the routes read (routes.py); served and batcher are also for tests and operators' debugging.
    app.state.served = ServedModel(promoted)
    app.state.batcher = Batcher(max_texts=batch_texts, wait_s=batch_wait_ms / 1000)
    app.state.token, app.state.max_batch, app.state.refer = token, max_batch, refer
    app.state.recent = RecentPredictions()
    source = promoted.source or promoted.folder
    # None: a model loaded from no folder and no feedback_db= (POST /feedback is 503 there).
    db = feedback_db if feedback_db is not None else (default_db(source) if source is not None else None)
    app.state.feedback = FeedbackStore(db) if db is not None else None
    deidentified: dict = {}  # model folder -> trained on de-identified text (read once per version)

    def deidentify(model) -> bool:
        if model.folder not in deidentified:
            deidentified[model.folder] = trained_deidentified(model.folder)
        return deidentified[model.folder]

    app.state.deidentify = deidentify
    app.state.monitor = monitor = Monitor()
    app.add_middleware(MeasureRequests, monitor=monitor)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.include_router(router)
    app.include_router(page_router)  # the page at / (static files, no token; its API calls carry one)
    # A refused body is answered before the app (and its MeasureRequests) sees it: counted here.
    return RequestSizeLimit(app, max_request_bytes, on_reject=lambda path: monitor.request(path, 413, 0.0))


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
    from medsweep.serving.inference import refer_rule

    refer_rule(args.refer_when)  # a malformed rule fails before the model loads (create_app checks it against the model)
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
                     batch_wait_ms=args.batch_wait_ms, reload_on_sighup=True, refer_when=args.refer_when,
                     feedback_db=args.feedback_db or None)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="info", access_log=True)
    # Uvicorn configures its loggers when the Config is made; the filter goes on after that.
    logging.getLogger("uvicorn.access").addFilter(RedactQuery())
    uvicorn.Server(config).run()


if __name__ == "__main__":
    sys.exit(main())
