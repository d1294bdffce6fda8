"""Train the machine-failure plug-in's model and save it to the store, like training/train.py."""
from __future__ import annotations

from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from tests.apps.machine_failure import FEATURES, MACHINE_APP, synthetic_readings
from training.data import Split
from training.evaluate import score_table
from training.train import model_exists, save


def train_if_missing() -> None:
    if model_exists(MACHINE_APP.model_name):
        return
    frame = synthetic_readings(3000)
    split = Split(frame.iloc[:2000], frame.iloc[2000:2500], frame.iloc[2500:])
    names = FEATURES.names
    model = Pipeline(
        [
            (
                "prepare",
                ColumnTransformer(
                    [
                        ("kind", OneHotEncoder(handle_unknown="ignore"), [names.index("machine_type")]),
                        (
                            "numbers",
                            Pipeline([("impute", SimpleImputer()), ("scale", StandardScaler())]),
                            [names.index(n) for n in FEATURES.numeric],
                        ),
                    ]
                ),
            ),
            ("logit", LogisticRegression()),
        ]
    )
    y_train = (split.train.failed == "yes").to_numpy(int)
    model.fit(FEATURES.matrix(split.train[names].to_dict("records")), y_train)
    test_rows = split.test[names].astype(object).where(split.test[names].notna(), None).to_dict("records")
    y_test = (split.test.failed == "yes").to_numpy(int)
    report = {
        "model": score_table(y_test, model.predict_proba(FEATURES.matrix(test_rows))[:, 1], 0.5),
        "validation_agreement": 0.0,
    }
    save(MACHINE_APP, model, {"model": "logistic_regression"}, split, report)
