"""Anomaly scoring over HTTP: feature vectors in, Isolation Forest scores out.

Two paths serve the same call:

- ``POST /api/v1/anomaly/score``, in the versioned API;
- ``POST /score`` at the root, where the original design's scoring microservice took
  ``{"vectors": [[...], ...]}`` and answered ``{"scores": [...]}``: a client written for
  that service only changes the host (and sends a token, as every call here needs).

Vectors are raw features in the order of ``feature_names`` (detect/features.py), which
the answer repeats so a client can check it built its vectors the same way; the model
applies its own transform.  ``GET /api/v1/anomaly/model`` tells whether a model is
loaded, what it was trained on and its suggested ``min_ml_score``.  Without anomaly
scoring enabled, or before the first model is trained, scoring answers 503.
"""

from __future__ import annotations

import math
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from appliance.flowenricher.detect.features import FEATURE_NAMES

from ..deps import Context, Reader
from ..errors import ERROR_RESPONSES, ErrorBody, Invalid, Problem, Unavailable

MAX_VECTORS = 10_000
_MAX_PROBLEMS = 20

router = APIRouter(tags=["anomaly"], responses={
    **ERROR_RESPONSES, 503: {"model": ErrorBody, "description": "Anomaly scoring is off or has no model yet"}})


class ScoreRequest(BaseModel):
    """Feature vectors to score, each with one number per feature, in `feature_names` order."""

    vectors: list[list[float]] = Field(max_length=MAX_VECTORS, description=(
        f"Raw feature vectors ({len(FEATURE_NAMES)} finite numbers each, in the order of feature_names)."))


class ScoreResponse(BaseModel):
    """One score (0 to 1; towards 1 is more anomalous) per vector, in request order."""

    scores: list[float]
    feature_names: list[str]
    threshold: float = Field(description="The model's suggested min_ml_score (from anomaly.contamination).")
    trained_at: float = Field(description="When the model was trained (unix seconds).")


def _problems(vectors: list[list[float]]) -> list[Problem]:
    """Vectors of the wrong length, and NaN or infinite components, each by its path."""
    width = len(FEATURE_NAMES)
    found: list[Problem] = []
    for i, vector in enumerate(vectors):
        if len(vector) != width:
            found.append(Problem(path=f"$.vectors[{i}]",
                                 reason=f"has {len(vector)} values; each vector needs {width} ({', '.join(FEATURE_NAMES)})"))
        else:
            found += [Problem(path=f"$.vectors[{i}][{j}]", reason=f"{value!r} is not a finite number")
                      for j, value in enumerate(vector) if not math.isfinite(value)]
        if len(found) >= _MAX_PROBLEMS:
            break
    return found[:_MAX_PROBLEMS]


def _score(ctx: Context, body: ScoreRequest) -> ScoreResponse:
    problems = _problems(body.vectors)
    if problems:
        raise Invalid("vectors that cannot be scored", problems)
    scoring = ctx.deps.anomaly
    model = scoring.model if scoring is not None else None
    if scoring is None or model is None:
        raise Unavailable("anomaly scoring is not enabled" if scoring is None else
                          "no anomaly model is loaded yet (the baseline has not trained one)")
    scores: list[float] = model.score(body.vectors).tolist() if body.vectors else []
    return ScoreResponse(scores=scores, feature_names=list(FEATURE_NAMES),
                         threshold=model.threshold, trained_at=model.trained_at)


@router.post("/api/v1/anomaly/score", response_model=ScoreResponse)
def score(body: ScoreRequest, ctx: Context, _: Reader) -> ScoreResponse:
    """Isolation Forest scores of feature vectors (0 to 1)."""
    return _score(ctx, body)


@router.post("/score", response_model=ScoreResponse)
def score_root(body: ScoreRequest, ctx: Context, _: Reader) -> ScoreResponse:
    """The scoring microservice's call, at the root for clients written for it (same body and answer as
    /api/v1/anomaly/score)."""
    return _score(ctx, body)


@router.get("/api/v1/anomaly/model", response_model=dict[str, Any])
def model(ctx: Context, _: Reader) -> dict[str, Any]:
    """The loaded model's metadata (null when none), the baseline size and the scoring settings."""
    if ctx.deps.anomaly is None:
        raise Unavailable("anomaly scoring is not enabled")
    return ctx.deps.anomaly.status()
