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


def preload(framework: str) -> None:
    """Import ahead what `load_scorer` needs for a model of `framework` (a process waiting for
    one: the canary's server): the trainer's module, and what its own `preload`, if it has one,
    imports besides (XGBoost's: XGBoost without scikit-learn, which its Scorer never uses)."""
    module = importlib.import_module(f"data2model.trainers.{MODULES[framework]}")
    if hasattr(module, "preload"):
        module.preload()


def load_scorer(model_dir: str | Path) -> Scorer:
    model_dir = Path(model_dir)
    meta_path = model_dir / META
    if not meta_path.exists():
        raise D2MError(f"{model_dir} holds no trained model ({META} missing): run the train stage")
    meta = json.loads(meta_path.read_text())
    module = importlib.import_module(f"data2model.trainers.{MODULES[meta['framework']]}")
    return module.Scorer(model_dir, meta)


# A split's scores, kept for the next stage in the same process: (files key, scores), by split path.
_SCORED: dict[str, tuple[tuple, np.ndarray]] = {}


def scored_split(model_dir: str | Path, path: str | Path) -> tuple[pa.Table, np.ndarray]:
    """The split at `path` and the model's scores on it (`load_scorer(model_dir).predict`).

    `d2m run` runs calibrate and then evaluate in one process, and both score the validation
    and holdout splits with the same model: the second asks here and gets the first's scores
    (about 0.4 s at 1x). They are kept per split path, keyed by the model's and the split's
    files (path, size, mtime, inode), so a retrained model or a rewritten split is scored anew.
    The array is read-only: a caller that changed it would change the next stage's input."""
    from data2model.tables import read_table

    table = read_table(path)
    key = _files_key(Path(model_dir), Path(path))
    kept = _SCORED.get(str(path))
    if kept is None or kept[0] != key:
        scores = np.asarray(load_scorer(model_dir).predict(table))
        scores.setflags(write=False)
        _SCORED[str(path)] = kept = (key, scores)
    return table, kept[1]


def _files_key(*paths: Path) -> tuple:
    files = [f for p in paths for f in (sorted(p.rglob("*")) if p.is_dir() else [p])]
    return tuple((str(f.resolve()), st.st_size, st.st_mtime_ns, st.st_ino) for f in files if f.is_file() for st in [f.stat()])


def decide(scores: np.ndarray, task: str, threshold: float) -> np.ndarray:
    """Hard predictions (class index or value) from `predict`'s output."""
    if task == "binary":
        return (scores >= threshold).astype(np.int64)
    if task == "multiclass":
        return scores.argmax(axis=1)
    return scores
