"""Load a trained model folder and predict on encoded features: one path for evaluation and
serving, so the holdout metrics describe exactly what is served.

`predict` returns P(class 1) for binary, an (n, classes) probability matrix for multiclass and
the value for regression.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from data2model.errors import D2MError
from data2model.trainers import META

MODULES = {"xgboost": "xgboost_ray", "torch": "torch_mlp"}


class Scorer(Protocol):
    meta: dict[str, Any]

    def predict(self, features: pa.Table) -> np.ndarray: ...


def load_scorer(model_dir: str | Path) -> Scorer:
    model_dir = Path(model_dir)
    meta_path = model_dir / META
    if not meta_path.exists():
        raise D2MError(f"{model_dir} holds no trained model ({META} missing): run the train stage")
    meta = json.loads(meta_path.read_text())
    module = importlib.import_module(f"data2model.trainers.{MODULES[meta['framework']]}")
    return module.Scorer(model_dir, meta)


def decide(scores: np.ndarray, task: str, threshold: float) -> np.ndarray:
    """Hard predictions (class index or value) from `predict`'s output."""
    if task == "binary":
        return (scores >= threshold).astype(np.int64)
    if task == "multiclass":
        return scores.argmax(axis=1)
    return scores
