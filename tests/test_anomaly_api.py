"""The scoring endpoint: vectors in, the running model's scores out, on the versioned
path and the original design's root path; bad vectors answered 422 naming the value;
503 while there is no model.  The app is the real one around real anomaly scoring."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from support.anomaly import settings, trained
from support.api import ApiEnv, make_env

from appliance.flowenricher.detect.anomaly import AnomalyScoring
from appliance.flowenricher.detect.features import FEATURE_NAMES

WIDTH = len(FEATURE_NAMES)
# A slow scanner's minute and an ordinary HTTPS client's, in FEATURE_NAMES order.
SCAN = [0.25, 0.25, 11.0, 15, 1, 1.0, 0.0, 3.9, 44.0, 1.0, 1.0, 0.0, 0.0, 15, 1, 150, 1.0]
CLIENT = [0.05, 0.6, 400.0, 1, 1, 0.0, 0.0, 0.0, 600.0, 12.0, 1.0, 0.0, 0.0, 0, 0, 0, 0.0]


@pytest.fixture(scope="module")
def scoring(tmp_path_factory: pytest.TempPathFactory) -> AnomalyScoring:
    return trained(tmp_path_factory.mktemp("anomaly"), seconds=180)


@pytest.fixture
def env(tmp_path: Path, scoring: AnomalyScoring) -> ApiEnv:
    return make_env(tmp_path, anomaly=scoring)


def post(env: ApiEnv, path: str, text: str) -> tuple[int, dict[str, object]]:
    response = env.client.post(path, content=text, headers={**env.headers(env.reader),
                                                              "Content-Type": "application/json"})
    return response.status_code, response.json()


def test_scores_on_both_paths(env: ApiEnv, scoring: AnomalyScoring) -> None:
    body = json.dumps({"vectors": [SCAN, CLIENT]})
    status, answer = post(env, "/api/v1/anomaly/score", body)
    assert status == 200, answer
    assert answer["feature_names"] == list(FEATURE_NAMES)
    scores = answer["scores"]
    assert isinstance(scores, list) and len(scores) == 2
    np.testing.assert_allclose(scores, scoring.score_vectors(np.array([SCAN, CLIENT])))
    assert scores[0] > scores[1]
    root_status, root = post(env, "/score", body)
    assert root_status == 200 and root == answer
    assert post(env, "/score", '{"vectors": []}') == (200, {**answer, "scores": []})
    model = env.client.get("/api/v1/anomaly/model", headers=env.headers(env.reader)).json()
    assert model["model"]["feature_names"] == list(FEATURE_NAMES) and model["model"]["trees"] == 100


@pytest.mark.parametrize("vectors, path, reason", [
    (f"[{json.dumps(SCAN)}, [NaN{', 1' * (WIDTH - 1)}]]", "$.vectors[1][0]", "nan is not a finite number"),
    (f"[{json.dumps(SCAN)}, {json.dumps(SCAN)}, [1, 2, 1e999{', 1' * (WIDTH - 3)}]]", "$.vectors[2][2]",
     "inf is not a finite number"),
    (f"[{json.dumps(SCAN)}, {json.dumps(SCAN)}, {json.dumps(SCAN)}, [-Infinity{', 0' * (WIDTH - 1)}]]",
     "$.vectors[3][0]", "-inf is not a finite number"),
    (f"[{json.dumps(SCAN)}, {json.dumps(SCAN)}, {json.dumps(SCAN)}, [1, 2, 3]]", "$.vectors[3]",
     f"has 3 values; each vector needs {WIDTH}"),
    (f'[[1, 2, "x"{", 1" * (WIDTH - 3)}]]', "$.vectors[0][2]", "valid number"),
])
def test_bad_vectors_are_422_naming_the_value(env: ApiEnv, vectors: str, path: str, reason: str) -> None:
    for url in ("/api/v1/anomaly/score", "/score"):
        status, answer = post(env, url, f'{{"vectors": {vectors}}}')
        assert status == 422, answer
        problems = answer["problems"]
        assert isinstance(problems, list) and problems[0]["path"] == path
        assert reason in problems[0]["reason"]


def test_no_model_or_no_scoring_is_503_and_tokens_are_needed(tmp_path: Path) -> None:
    idle = AnomalyScoring(settings(tmp_path / "idle"), seed=1)
    env = make_env(tmp_path, anomaly=idle)
    status, answer = post(env, "/api/v1/anomaly/score", json.dumps({"vectors": [SCAN]}))
    assert status == 503 and "no anomaly model" in str(answer["detail"])
    (tmp_path / "off").mkdir()
    off = make_env(tmp_path / "off")  # anomaly scoring not enabled
    status, answer = post(off, "/score", json.dumps({"vectors": [SCAN]}))
    assert status == 503 and "not enabled" in str(answer["detail"])
    assert env.client.post("/score", json={"vectors": [SCAN]}).status_code == 401
