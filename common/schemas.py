"""Request and response bodies shared by the API, the jobs path and the load tester."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# OpenAPI extension on routes whose rate-limit cost is their number of texts (bulk
# predictions, OIP infer, CloudEvents): the access guard leaves the charge to the route.
PRICED_BY_TEXTS: dict[str, object] = {"x-rate-cost": "texts"}


def media_type(content_type: str | None) -> str:
    """`application/json; charset=utf-8` -> `application/json` (lower case; "" when absent)."""
    return (content_type or "").split(";")[0].strip().lower()


def is_json(content_type: str | None) -> bool:
    """Whether a Content-Type declares JSON (`application/json`, `application/*+json`)."""
    ctype = media_type(content_type)
    return ctype == "application/json" or ctype.endswith("+json")


def ranked_body(ranked: list[tuple[str, float]]) -> dict[str, Any]:
    """`{label, score, scores}` for one ranked prediction: the shape every API returns."""
    return {"label": ranked[0][0], "score": ranked[0][1],
            "scores": [{"label": label, "score": score} for label, score in ranked]}


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(description="Text to classify. Empty or whitespace-only is refused (422 "
                      "empty_text); longer than SURGE_MAX_TEXT_CHARS is refused (422 "
                      "text_too_long); beyond the model's token limit it is truncated.")


class BulkPredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: list[str] = Field(min_length=1, description="1..SURGE_BULK_MAX_ITEMS texts.")


class LabelScore(BaseModel):
    label: str
    score: float


class BulkItem(BaseModel):
    label: str
    score: float
    scores: list[LabelScore]
    cached: bool


class PredictResponse(BulkItem):
    model: str
    version: str


class BulkPredictResponse(BaseModel):
    model: str
    version: str
    results: list[BulkItem]


class ErrorDetail(BaseModel):
    code: str
    message: str
    detail: Any = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ProtocolErrorBody(BaseModel):
    """The Open Inference Protocol's error shape (/v2)."""

    error: str


def error_docs(*codes: int, model: type[BaseModel] = ErrorResponse,
                      ) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for a route's error statuses, each with its body's model."""
    return {code: {"model": model} for code in codes}


class ModelCard(BaseModel):
    name: str
    version: str
    labels: list[str]
    max_tokens: int
    lowercase: bool
    backend: str = Field(description="the engine: onnx (ONNX Runtime), openvino (both over "
                                     "the compiled artifact) or transformers")
    identity: str = Field("", description="what the cache key names: weights hash, token "
                                          "limit, precision")
    engine: dict[str, Any] = Field(default_factory=dict,
                                   description="engine, precision, streams, threads, how it "
                                               "was chosen and its measured texts/s")
    batching: dict[str, Any] = Field(default_factory=dict,
                                     description="the engine's largest batch, padded-token "
                                                 "cap and padding rule")
    metrics: dict[str, Any]
    default: bool = Field(True, description="answers /v1/predict and jobs naming no model")


class ModelList(BaseModel):
    models: list[ModelCard]


class Readiness(BaseModel):
    status: str
    model: str | None = None
    version: str | None = None
    models: dict[str, str] = Field(default_factory=dict, description="name -> version")
    cache: dict[str, Any] = Field(default_factory=dict)
    error: str | None = Field(None, description="why the model failed to load (status failed)")
