"""The registered MLflow model: raw rows in, predictions out, preprocessing inside.

It loads the same Preprocessor, Scorer and Calibrator that produced the holdout metrics, so
what is served is exactly what was evaluated.
"""

from __future__ import annotations

from typing import Any

import mlflow.models
import mlflow.pyfunc
import numpy as np
import pandas as pd
import pyarrow as pa

from data2model.calibration import Calibrator
from data2model.preprocess import Preprocessor
from data2model.scoring import decide, load_scorer


class RawRowsModel(mlflow.pyfunc.PythonModel):
    """Binary: `prediction` and `probability`; multiclass: `prediction` and `probability_<class>`;
    regression: `prediction`. Classes come back as the values the target had."""

    def load_context(self, context) -> None:
        from pathlib import Path

        self.pre = Preprocessor.load(context.artifacts["preprocessor"])
        self.scorer = load_scorer(Path(context.artifacts["model"]))
        self.calibrator = Calibrator.load(context.artifacts["calibrator"])
        self.threshold = float(context.model_config.get("threshold", 0.5))

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        table = pa.Table.from_pandas(model_input, preserve_index=False)
        scores = self.calibrator.apply(self.scorer.predict(self.pre.transform(table)))
        return predictions_frame(scores, self.pre, self.threshold)


def predictions_frame(scores: np.ndarray, pre: Preprocessor, threshold: float) -> pd.DataFrame:
    if pre.task == "regression":
        return pd.DataFrame({"prediction": scores.astype(np.float64)})
    chosen = decide(scores, pre.task, threshold)
    labels = chosen if pre.label_rule else pre.decode(chosen)
    if pre.task == "binary":
        return pd.DataFrame({"prediction": labels, "probability": scores.astype(np.float64)})
    probabilities = {f"probability_{c}": scores[:, i].astype(np.float64) for i, c in enumerate(pre.classes)}
    return pd.DataFrame({"prediction": labels, **probabilities})


# MLflow's models-from-code: register logs this file, and loading it runs this line.
mlflow.models.set_model(RawRowsModel())
