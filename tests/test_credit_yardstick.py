"""The credit plug-in's yardstick (model vs rules on the test split) is saved with the model and
shown where an operator looks: GET /admin/state, the startup log, `bentoml models get`."""
from __future__ import annotations

import os
import subprocess

import httpx
import numpy as np
import pytest
import yaml

from tests.support.server import BENTOML, ServerProcess


def test_yardstick_is_shown_everywhere(client: httpx.Client, server: ServerProcess) -> None:
    model = client.get("/admin/state").json()["model"]
    tag, yardstick = model["version"], model["yardstick"]
    assert model["loaded"] and tag.startswith("credit_risk:")
    assert yardstick["metric"] == "roc_auc" and yardstick["rows"] == 891
    assert yardstick["model_beats_rules"] is True
    assert yardstick["model"]["roc_auc"] > yardstick["heuristic"]["roc_auc"]
    assert 0.5 < yardstick["agreement"] <= 1.0

    out = subprocess.run(
        [BENTOML, "models", "get", tag, "-o", "yaml"], capture_output=True, text=True, check=True,
        timeout=60, env={**os.environ, "BENTOML_DO_NOT_TRACK": "true"},
    ).stdout
    card = yaml.safe_load(out)["metadata"]["mlguard"]
    assert card["yardstick"] == yardstick
    assert card["task"] == "binary" and card["classes"] == ["good", "bad"]

    started = [line for line in server.log_text().splitlines() if f"serving {tag} (binary" in line]
    assert len(started) == 2, server.log_tail()  # one line per worker
    assert f"roc_auc model {yardstick['model']['roc_auc']:.4g}" in started[0]


def _fitted_scorecard():
    from apps.credit.app import CREDIT_APP
    from apps.credit.data import load_credit_data, split_data, to_rows
    from apps.credit.model import build_model

    features = CREDIT_APP.features
    split = split_data(load_credit_data())
    x = features.matrix(to_rows(split.train, features.names))
    y = split.train["status"].to_numpy()
    x_test = features.matrix(to_rows(split.test, features.names))
    return build_model(features, 0, bins=8, C=0.3).fit(x, y), x, y, x_test


def test_the_scorecard_scores_exactly_as_the_regression_it_was_fitted_with() -> None:
    """Scoring by lookup (no scikit-learn on the call) changes nothing but the cost."""
    from sklearn.linear_model import LogisticRegression

    card, x, y, x_test = _fitted_scorecard()
    regression = LogisticRegression(C=0.3, max_iter=2000).fit(card.design(x), y)
    expected = regression.predict_proba(card.design(x_test))
    assert list(card.classes_) == list(regression.classes_) == ["bad", "good"]
    assert np.allclose(card.predict_proba(x_test), expected, rtol=0, atol=1e-12)
    assert (card.predict(x_test) == regression.predict(card.design(x_test))).all()


def test_missing_values_and_unseen_categories_get_a_score() -> None:
    from apps.credit.app import CREDIT_APP

    card, _, _, x_test = _fitted_scorecard()
    features = CREDIT_APP.features
    row = dict(zip(features.names, x_test[0]))
    unseen = features.matrix([{**row, "home": "houseboat"}])
    missing = features.matrix([{**row, "income": None, "job": None}])
    for x in (unseen, missing):
        p = card.predict_proba(x)
        assert p.shape == (1, 2) and np.isfinite(p).all() and p.sum() == pytest.approx(1.0)
    # A category never seen in training has a column never set: its weight stays exactly 0, so
    # the row scores as if the feature said nothing.
    home = features.names.index("home")
    _, lookup, missing_col, unseen_col = card.bins_[home]
    assert card.weights_[unseen_col] == 0.0
    assert "houseboat" not in lookup and missing_col != unseen_col
