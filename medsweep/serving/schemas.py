"""The HTTP service's request and response bodies (pydantic), and the request schema as a client
should read it: what the service checks beyond the types (how many texts, none blank, pairs or not).

The class names are the component names in the service's OpenAPI schema. Needs pydantic (the
`serve` extra brings it with FastAPI); only medsweep.serving.serve and routes import this module.
"""

import copy
from typing import Optional, Union

from pydantic import BaseModel, Field


class PredictRequest(BaseModel):
    texts: list[str] = Field(min_length=1)
    text_pairs: Optional[list[str]] = None


class Prediction(BaseModel):
    # The argmax label, or "refer" where the service's refer_when rule matched the prediction set.
    label: str
    probabilities: dict[str, float]
    # Only from a model folder with a conformal threshold (decision.json): the split-conformal set.
    prediction_set: Optional[list[str]] = None
    set_size: Optional[int] = None
    # What POST /feedback names this prediction by (a random UUID4, remembered for the service's
    # last 10,000 predictions).
    prediction_id: Optional[str] = None


class PredictResponse(BaseModel):
    version: Optional[str]
    labels: list[str]
    predictions: list[Prediction]


class Drift(BaseModel):
    # The served window vs the test split (serving/monitoring.py); null until `window` reaches the
    # minimum (100) or where the model folder has no test predictions (or, for the input statistics,
    # was promoted before their reference was saved). `alerts` names the signals over their threshold.
    class_mix_psi: Optional[float] = None
    confidence_psi: Optional[float] = None
    input_length_ks: Optional[float] = None  # the two-sample KS p-value of character lengths
    input_length_ks_statistic: Optional[float] = None
    unknown_token_rate: Optional[float] = None
    unknown_token_rate_reference: Optional[float] = None
    window: int
    alerts: list[str]
    reference: Optional[str] = None


class FeedbackAccuracy(BaseModel):
    # The served version on the cases POST /feedback labelled (answers `refer` left out), with its
    # Wilson 95% interval, beside its test accuracy at promotion.
    labelled: int
    accuracy: Optional[float] = None
    accuracy_ci95: Optional[list[float]] = None
    test_accuracy: Optional[float] = None


class Health(BaseModel):
    status: str
    version: Optional[str]
    labels: list[str]
    drift: Optional[Drift] = None
    feedback: Optional[FeedbackAccuracy] = None


class ExplainRequest(BaseModel):
    text: str = Field(min_length=1)
    text_pair: Optional[str] = None


class Word(BaseModel):
    segment: int  # 0: the text, 1: the pair
    start: int  # character span in that segment
    end: int
    word: str
    score: float  # how much p(predicted) drops without the word (occlusion)


class Explanation(BaseModel):
    version: Optional[str]
    predicted_label: str
    probabilities: dict[str, float]
    method: str
    words: list[Word]
    truncated: bool


class FeedbackRequest(BaseModel):
    prediction_id: str = Field(min_length=1, max_length=64)
    label: str = Field(min_length=1)  # the right label: one of the model's labels
    comment: Optional[str] = Field(default=None, max_length=10_000)


class FeedbackSaved(BaseModel):
    id: int
    prediction_id: str
    model_version: Optional[str]
    predicted_label: str
    label: str
    agrees: bool


class Reloaded(BaseModel):
    version: Optional[str]
    previous_version: Optional[str]


class ErrorLocation(BaseModel):
    loc: list[Union[str, int]]
    msg: str


class Error(BaseModel):
    # A sentence, or for a body that does not match the schema, where each problem is (never the input).
    detail: Union[str, list[ErrorLocation]]


def with_request_limits(openapi: dict, max_batch: int, text_pairs: bool) -> dict:
    """A copy of FastAPI's schema with what /predict checks itself written in (at most max_batch
    texts, none blank, pairs exactly when the model being served takes them), so that a client or a
    fuzzer reading it knows which requests are valid."""
    schema = copy.deepcopy(openapi)
    body = schema["components"]["schemas"]["PredictRequest"]
    text = {"type": "string", "pattern": r"\S"}
    body["properties"]["texts"].update(items=text, maxItems=max_batch)
    if text_pairs:
        body["properties"]["text_pairs"] = {"type": "array", "items": text, "minItems": 1, "maxItems": max_batch,
                                            "description": "one second text per text, same order"}
        body["required"] = ["texts", "text_pairs"]
    else:
        body["properties"]["text_pairs"] = {"type": "null", "description": "this model takes single texts"}
    return schema
