"""The HTTP service's routes, on one APIRouter that medsweep.serving.serve.create_app includes, and
the bearer-token check they depend on.

A route finds its service on the app's state, set by create_app: `served` (a ServedModel), `batcher`
(a Batcher), `token` (None: no authentication), `max_batch`, `recent` (RecentPredictions),
`feedback` (FeedbackStore) and `monitor` (monitoring.Monitor). The router itself holds no service,
so one app per loaded model can include it (the tests start many).
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint and dependency annotations at
# runtime (the request and response models, Depends).
import hmac
import logging
import time
from typing import Optional, Sequence

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

import numpy as np

from medsweep.serving.inference import REFER_LABEL
from medsweep.serving.feedback import Remembered, now_iso
from medsweep.serving.monitoring import input_profile
from medsweep.serving.schemas import (Drift, Error, ExplainRequest, Explanation, FeedbackAccuracy, FeedbackRequest,
                                      FeedbackSaved, Health, Prediction, PredictRequest, PredictResponse, Reloaded,
                                      with_request_limits)
from medsweep.serving.served import ReloadError

log = logging.getLogger("medsweep.serve")
bearer = HTTPBearer(auto_error=False)


async def authorize(request: Request, credentials: Optional[HTTPAuthorizationCredentials] = Depends(bearer)) -> None:
    """401 unless the request carries the service's bearer token (every request passes where it has none).
    async: a rejection is answered on the event loop, never queued behind a forward pass."""
    token = request.app.state.token
    if token is None:
        return
    # Constant-time comparison: response timing must not reveal how much of a guess was right.
    if credentials is None or not hmac.compare_digest(credentials.credentials.encode("utf-8", "replace"),
                                                      token.encode()):
        raise HTTPException(status_code=401, detail="missing or invalid bearer token",
                            headers={"WWW-Authenticate": "Bearer"})


async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """The app's handler for a body that does not match the schema. FastAPI's default 422 body
    echoes the offending input; this one says where the problem is, not what it was."""
    errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
    return JSONResponse(status_code=422, content={"detail": errors})


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


router = APIRouter()
# 400: a body that is not JSON text at all (FastAPI's own one-line answer).
ERRORS = {400: {"model": Error}, 401: {"model": Error}, 413: {"model": Error}, 422: {"model": Error}}


@router.get("/openapi.json", include_in_schema=False, dependencies=[Depends(authorize)])
async def openapi(request: Request) -> JSONResponse:
    # Only for whoever holds the token (the schema names the routes and limits). Built anew per
    # call: a reload can change whether the model takes text pairs.
    state = request.app.state
    return JSONResponse(with_request_limits(request.app.openapi(), state.max_batch,
                                            text_pairs=bool(state.served.current.text_pair_column)))


async def feedback_accuracy(state, model) -> Optional[dict]:
    """The served version's accuracy on feedback-labelled cases (monitoring.Monitor.feedback_accuracy_of),
    or None for a service without a feedback database or monitor."""
    monitor, store = getattr(state, "monitor", None), getattr(state, "feedback", None)
    if monitor is None or store is None:
        return None
    try:
        labelled, right = await run_in_threadpool(store.accuracy, model.version, REFER_LABEL)
    except Exception as exc:  # noqa: BLE001 - a database that cannot be read leaves health answering
        log.error("feedback accuracy not read: %s", type(exc).__name__)
        return None
    return monitor.feedback_accuracy_of(model, labelled, right)


@router.get("/health")
async def health(request: Request) -> Health:
    state = request.app.state
    model = state.served.current
    monitor = getattr(state, "monitor", None)
    accuracy = await feedback_accuracy(state, model)
    return Health(status="ok", version=model.version, labels=model.label_names,
                  drift=Drift(**monitor.drift()) if monitor is not None else None,
                  feedback=FeedbackAccuracy(**accuracy) if accuracy is not None else None)


@router.get("/metrics", include_in_schema=False, dependencies=[Depends(authorize)])
async def metrics(request: Request) -> Response:
    """The Prometheus text format (a scrape job sends the bearer token: `authorization` in its config)."""
    state = request.app.state
    await feedback_accuracy(state, state.served.current)  # the feedback gauges, read now
    state.monitor.drift()  # the drift gauges, judged now
    body, content_type = state.monitor.exposition()
    return Response(content=body, media_type=content_type)


@router.post("/explain", dependencies=[Depends(authorize)], responses={**ERRORS, 500: {"model": Error}})
async def explain(body: ExplainRequest, request: Request) -> Explanation:
    """The words that drove one prediction (serving/explain.py, occlusion: how much p(predicted)
    drops without each word). One text per request: it costs a forward pass per word (at most
    the model's max_length). Not counted in the drift window: the page asks /predict first."""
    from medsweep.serving.explain import explain_one

    model = request.app.state.served.current
    if (body.text_pair is not None) != bool(model.text_pair_column):
        raise HTTPException(status_code=422, detail="this model was trained on text pairs: send text_pair too"
                            if model.text_pair_column else "this model takes single texts: do not send text_pair")
    problem = check_texts("text", [body.text]) or (check_texts("text_pair", [body.text_pair])
                                                   if body.text_pair is not None else None)
    if problem:
        raise HTTPException(status_code=422, detail=problem.replace("[0]", ""))
    try:
        record = await run_in_threadpool(explain_one, model.model, model.tokenizer, body.text, body.text_pair,
                                         model.label_names, model.max_length)
    except Exception as exc:  # noqa: BLE001 - reported without its message, which may quote the input
        log.error("explanation failed: %s", type(exc).__name__)
        raise HTTPException(status_code=500, detail="explanation failed") from None
    return Explanation(version=model.version, predicted_label=record["predicted_label"],
                       probabilities=record["probabilities"], method=record["method"], words=record["words"],
                       truncated=record["truncated"])


@router.post("/feedback", dependencies=[Depends(authorize)],
             responses={**ERRORS, 404: {"model": Error}, 500: {"model": Error}, 503: {"model": Error}})
async def feedback(body: FeedbackRequest, request: Request) -> FeedbackSaved:
    """The right label of a prediction this service made (named by its prediction_id), kept in the
    feedback database with the version that answered; 404 once the service has forgotten it (it
    remembers its last 10,000 predictions) or never made it."""
    state = request.app.state
    item = state.recent.get(body.prediction_id)
    if item is None:
        raise HTTPException(status_code=404, detail="unknown or expired prediction_id")
    if body.label not in item.labels:
        raise HTTPException(status_code=422, detail=f"label must be one of the model's labels: {', '.join(item.labels)}")
    if state.feedback is None:
        raise HTTPException(status_code=503, detail="this service has no feedback database (start it with feedback_db=)")
    try:
        row = await run_in_threadpool(state.feedback.add, body.prediction_id, item, body.label, body.comment)
    except Exception as exc:  # noqa: BLE001 - reported without its message
        log.error("feedback not saved: %s", type(exc).__name__)
        raise HTTPException(status_code=500, detail="feedback not saved") from None
    log.info("feedback saved (row %d)", row)
    return FeedbackSaved(id=row, prediction_id=body.prediction_id, model_version=item.version,
                         predicted_label=item.label, label=body.label, agrees=item.label == body.label)


@router.post("/reload", dependencies=[Depends(authorize)], responses={401: {"model": Error}, 409: {"model": Error}})
async def reload(request: Request) -> Reloaded:
    """Load the model folder again (the run's `promoted` link, resolved anew) and swap it in once it
    has loaded and predicted; requests already in flight finish on the old model. A folder that
    cannot be loaded is 409: the request was fine, the folder on disk conflicts with it, and the
    old model keeps serving (a 5xx would tell clients and balancers that this server is failing)."""
    try:
        old, new = await run_in_threadpool(request.app.state.served.reload)
    except ReloadError as exc:
        log.error("%s", exc)
        raise HTTPException(status_code=409, detail=str(exc)) from None
    log.info("reloaded: %s -> %s", old, new)
    return Reloaded(version=new, previous_version=old)


# exclude_unset: a model without prediction sets answers exactly as before (no null set fields).
@router.post("/predict", dependencies=[Depends(authorize)], responses={**ERRORS, 409: {"model": Error}, 500: {"model": Error}},
             response_model_exclude_unset=True)
async def predict(body: PredictRequest, request: Request) -> PredictResponse:
    state = request.app.state
    model = state.served.current  # read once: this request is answered by this model, whatever reloads meanwhile
    texts, pairs = body.texts, body.text_pairs
    if len(texts) > state.max_batch:
        raise HTTPException(status_code=413, detail=f"at most {state.max_batch} texts per request, got {len(texts)}")
    if pairs is not None and not model.text_pair_column:
        raise HTTPException(status_code=422, detail="this model takes single texts: do not send text_pairs")
    if pairs is None and model.text_pair_column:
        raise HTTPException(status_code=422, detail="this model was trained on text pairs: send text_pairs too")
    if pairs is not None and len(pairs) != len(texts):
        raise HTTPException(status_code=422, detail=f"text_pairs has {len(pairs)} items for {len(texts)} texts")
    problem = check_texts("texts", texts) or (check_texts("text_pairs", pairs) if pairs is not None else None)
    if problem:
        raise HTTPException(status_code=422, detail=problem)
    refer = getattr(state, "refer", None)
    if refer is not None and model.conformal_threshold is None:
        # A reload swapped in a folder without decision.json: no referral is worse than no answer.
        raise HTTPException(status_code=409, detail="refer_when is set but the model being served has no "
                                                    "prediction sets (no decision.json)")
    started = time.perf_counter()
    try:
        probs = await state.batcher.predict(model, texts, pairs)
    except Exception as exc:  # noqa: BLE001 - reported without its message, which may quote the input
        log.error("prediction failed: %s", type(exc).__name__)
        raise HTTPException(status_code=500, detail="prediction failed") from None
    log.info("predicted %d text(s) in %.0f ms", len(texts), (time.perf_counter() - started) * 1000)
    labels = model.label_names
    sets, decided = model.sets(probs), model.decide(probs)
    sizes = sets.sum(axis=1) if sets is not None else None
    referred = refer(sizes) if refer is not None and sizes is not None else np.zeros(len(probs), dtype=bool)
    answered = [REFER_LABEL if referred[i] else labels[int(decided[i])] for i in range(len(probs))]
    monitor = getattr(state, "monitor", None)
    if monitor is not None:
        profile = await run_in_threadpool(input_profile, model.tokenizer, texts, pairs, model.max_length)
        monitor.observe(model, probs, answered, profile["input_chars"].tolist(), sizes,
                        tokens=profile["input_tokens"].tolist(), unknown=profile["input_unknown"].tolist())
    recent, ids = getattr(state, "recent", None), [None] * len(probs)
    if recent is not None:
        at, deidentify = now_iso(), state.deidentify(model)
        ids = [recent.remember(Remembered(text=texts[i], text_pair=pairs[i] if pairs is not None else None,
                                          label=answered[i], probabilities=dict(zip(labels, map(float, row))),
                                          version=model.version, labels=tuple(labels), deidentify=deidentify, at=at))
               for i, row in enumerate(probs)]
    predictions = []
    for i, row in enumerate(probs):
        fields = {"label": answered[i], "probabilities": dict(zip(labels, map(float, row)))}
        if sets is not None:
            fields.update(prediction_set=[name for name, inside in zip(labels, sets[i]) if inside], set_size=int(sizes[i]))
        if ids[i] is not None:
            fields["prediction_id"] = ids[i]
        predictions.append(Prediction(**fields))
    return PredictResponse(version=model.version, labels=labels, predictions=predictions)
