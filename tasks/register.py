"""register: log the pyfunc (raw rows in, preprocessing inside) to the training run, check it
predicts, register it as a new version with alias `challenger` (and `champion` if none exists),
and tag the version with its lineage. With a champion in place, the promotion gate scores both
on the same raw holdout and moves `champion` only if the challenger passes every rule."""

from __future__ import annotations

import dataclasses
import json
import logging
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from data2model import model_card, promotion, tracking
from data2model.calibration import Calibrator
from data2model.canary import canary_started
from data2model.errors import CanaryFailed, D2MError
from data2model.lineage import lineage_tags
from data2model.params import Params
from data2model.preprocess import Preprocessor, as_utc_naive
from data2model.scoring import load_scorer
from data2model.stage import main
from data2model.tables import Footer, read_footer, read_head, read_json, read_table, write_json, write_text

log = logging.getLogger("data2model.register")
CHAMPION, CHALLENGER = promotion.CHAMPION, "challenger"
EXAMPLE_ROWS = 5
_RUNTIME = {"xgboost": ["xgboost"], "torch": ["torch"]}


def requirements(framework: str) -> list[str]:
    """Pinned to what trained the model; passing them skips MLflow's slow inference."""
    names = ["mlflow", "numpy", "pandas", "pyarrow", "pydantic", "pyyaml", *_RUNTIME[framework]]
    return [f"{n}=={metadata.version(n)}" for n in names]


def _client_type(t: pa.DataType, nulls: int) -> pa.DataType:
    """How a column of type `t` reaches the model from a client: MLflow's datetime is zone-naive
    UTC, and an integer column that can be missing (it had nulls in training) arrives as double (NaN)."""
    if pa.types.is_timestamp(t):
        return pa.timestamp("us")
    if pa.types.is_integer(t) and nulls:
        return pa.float64()
    return t


def input_schema(raw: Footer):
    """The raw columns the model takes; optional where the training data had nulls."""
    from mlflow.types import ColSpec, Schema

    def kind(t: pa.DataType) -> str:
        if pa.types.is_timestamp(t):
            return "datetime"
        if pa.types.is_boolean(t):
            return "boolean"
        if pa.types.is_integer(t):
            return "long"
        return "double" if pa.types.is_floating(t) else "string"

    return Schema([ColSpec(kind(_client_type(f.type, raw.nulls[f.name])), f.name, required=raw.nulls[f.name] == 0) for f in raw.schema])


def input_example(head: pa.Table, raw: Footer) -> pd.DataFrame:
    """The first rows of `head` in client types, which follow the nulls of all the `raw` rows."""
    head = head.slice(0, EXAMPLE_ROWS)
    for i, name in enumerate(head.column_names):
        values = as_utc_naive(head[name], name) if pa.types.is_timestamp(head.schema.field(name).type) else head[name]
        head = head.set_column(i, name, values.cast(_client_type(head.schema.field(name).type, raw.nulls[name])))
    return head.to_pandas()


def check_round_trip(expected: pd.DataFrame, served: pd.DataFrame) -> None:
    """The logged model must give the in-process predictions on its input example."""
    if list(served.columns) != list(expected.columns) or len(served) != len(expected):
        raise D2MError(f"the logged model answered columns {list(served.columns)} for {len(served)} rows, expected {list(expected.columns)}")
    for col in expected.columns:
        a, b = expected[col].to_numpy(), served[col].to_numpy()
        same = np.allclose(a, b, rtol=1e-5, equal_nan=True) if np.issubdtype(a.dtype, np.number) else (a == b).all()
        if not same:
            raise D2MError(f"the logged model's {col} differs from in-process predictions: {b[:3]} vs {a[:3]}")


def slice_values(holdout: pa.Table, columns: list[str]) -> dict[str, np.ndarray]:
    """The configured slice columns the holdout has; the others are skipped with a log line."""
    missing = [c for c in columns if c not in holdout.column_names]
    if missing:
        log.info("register.slices: %s not in the data, skipped", ", ".join(missing))
    return {c: holdout[c].to_numpy(zero_copy_only=False) for c in columns if c in holdout.column_names}


def holdout_scores(params: Params, task: str, models: list) -> list[promotion.Scores]:
    """Score pyfuncs on the same raw holdout: overall, per slice and (binary) calibration."""
    holdout = read_table(params.paths.raw_holdout())
    y = promotion.truth(holdout, task, params.data.target)
    slices = slice_values(holdout, params.register.slices)
    return [
        promotion.score(task, y, model.predict(promotion.model_frame(holdout, model.metadata.get_input_schema())), slices, params.register.min_slice_rows)
        for model in models
    ]


def row_counts(params: Params) -> dict[str, int]:
    """Rows in the raw table and each split, from Parquet footers (nothing is read)."""
    import pyarrow.parquet as pq

    files = {"raw": params.paths.raw, **{part: params.paths.split(part) for part in ("train", "valid", "test")}}
    return {name: pq.ParquetFile(path).metadata.num_rows for name, path in files.items() if Path(path).exists()}


def card_facts(params: Params, summary: dict[str, Any], tags: dict[str, Any], metrics: dict[str, Any], scores: promotion.Scores, rows: dict[str, int], framework: str) -> dict[str, Any]:
    """What the model card says, gathered from this stage's inputs and results."""
    from datetime import datetime, timezone

    validation = read_json(params.paths.validation) if Path(params.paths.validation).exists() else {}
    metric, higher = promotion.PRIMARY[params.data.task]
    split = params.split
    return {
        "model_name": summary["model_name"], "version": summary["version"], "aliases": summary["aliases"],
        "registered_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "task": params.data.task, "framework": framework, "num_workers": params.train.num_workers,
        "data": {
            "source": params.data.source, "target": params.data.target, "label_rule": params.data.label_rule,
            "md5": tags.get("data_md5"), "rows": rows,
            "split": f"{split.method} (holdout {split.test_fraction:.0%}{', the latest by ' + split.time_column if split.method == 'time' else ''})",
            "validation": f"{validation.get('evaluated_expectations', '?')} checks passed, {len(validation.get('warnings', []))} warning(s)" if validation else "no report",
        },
        "metrics": metrics, "threshold": metrics.get("threshold", "-"),
        "holdout": {"metric": metric, "higher_is_better": higher, "slices": scores.slices, "ece": scores.ece, "min_rows": params.register.min_slice_rows},
        "gate": summary.get("gate"),
        "lineage": {k: tags[k] for k in ("git_commit", "mlflow_run_id", "prefect_flow_run_id")},
        "intended_use": params.register.intended_use, "limitations": params.register.limitations,
    }


def link_dataset_card(client, params: Params, name: str, version: str, run_id: str) -> None:
    """The data version's card and Croissant metadata: artifacts of the run, named by version tags."""
    for path in (params.paths.dataset_card, params.paths.croissant):
        client.log_artifact(run_id, path, artifact_path="dataset_card")
    client.set_model_version_tag(name, version, "dataset_card", f"runs:/{run_id}/dataset_card/{Path(params.paths.dataset_card).name}")
    client.set_model_version_tag(name, version, "croissant", f"runs:/{run_id}/dataset_card/{Path(params.paths.croissant).name}")


def run(params: Params) -> dict[str, Any]:
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types.utils import _infer_schema

    import data2model
    from data2model import served_model
    from data2model.served_model import predictions_frame

    pre = Preprocessor.load(params.paths.preprocessor)
    scorer, calibrator = load_scorer(params.paths.model_dir), Calibrator.load(params.paths.calibrator)
    raw = read_footer(params.paths.raw, columns=list(pre.input_columns))  # types and nulls: nothing else of the raw rows is needed
    example = input_example(read_head(params.paths.raw, EXAMPLE_ROWS, raw.schema.names), raw)
    metrics = read_json(params.paths.metrics)
    threshold = metrics.get("threshold", 0.5)
    expected = predictions_frame(calibrator.apply(scorer.predict(pre.transform(pa.Table.from_pandas(example, preserve_index=False)))), pre, threshold)
    name = params.register.model_name
    tracking.configure(params)
    with canary_started(params, name) as canary:  # its server imports while the version is logged, and loads it while the gate scores
        with tracking.resume_run(read_json(params.paths.train_report)["run_id"]) as active:
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=served_model.__file__,
                artifacts={"preprocessor": params.paths.preprocessor, "model": params.paths.model_dir, "calibrator": params.paths.calibrator},
                model_config={"threshold": threshold},
                code_paths=[str(Path(data2model.__file__).parent)],
                pip_requirements=requirements(scorer.meta["framework"]),
                signature=ModelSignature(inputs=input_schema(raw), outputs=_infer_schema(expected)),
                input_example=example,
            )
            challenger = mlflow.pyfunc.load_model(info.model_uri)
            check_round_trip(expected, challenger.predict(example))
            run_id = active.info.run_id
        client = mlflow.MlflowClient()
        version = mlflow.register_model(info.model_uri, name).version
        check = canary.serve(version) if canary else None
        champion = promotion.current_champion(client, name)
        rows = row_counts(params)
        tags = {
            **lineage_tags(".", params.paths.raw),
            "mlflow_run_id": run_id,
            "params": json.dumps(params.as_dict(), sort_keys=True),
            "holdout_metrics": json.dumps(metrics, sort_keys=True),
            **{f"rows.{part}": n for part, n in rows.items()},
        }
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, str(value))
        client.set_registered_model_alias(name, CHALLENGER, version)
        summary = {"model_name": name, "version": int(version), "aliases": [CHALLENGER], "run_id": run_id, "model_uri": f"models:/{name}/{version}"}
        models = [challenger] if champion is None else [challenger, mlflow.pyfunc.load_model(f"models:/{name}/{champion}")]
        scores = holdout_scores(params, pre.task, models)
        decision = promotion.decide(pre.task, scores[1], scores[0], params.register) if champion is not None else None
        promote, reason = (decision.promote, decision.reason) if decision else (True, "the first version: no champion to compare with")
        if promote:  # the canary runs before every move of champion, the first one included
            try:
                promotion.move_champion(client, name, version, "gate" if decision else "first", reason, check=check)
                summary["aliases"].append(CHAMPION)
            except CanaryFailed as err:
                promote, reason = False, f"{reason}; but {err}"
    if decision is None:
        summary["first"] = {"promoted": promote, "reason": reason}
        if not promote:
            log.warning("version %s is not champion: %s", version, reason)
    else:
        decision = dataclasses.replace(decision, promote=promote, reason=reason)
        gate_tags = {"gate.champion_version": champion, "gate.decision": "promoted" if promote else "kept champion", "gate.reason": reason, "gate.table": json.dumps(decision.table)}
        for key, value in gate_tags.items():
            client.set_model_version_tag(name, version, key, value)
        summary["gate"] = {"champion_version": int(champion), **decision.as_dict()}
        log.info("gate vs champion version %s: %s (%s)", champion, gate_tags["gate.decision"], reason)
    card = model_card.render(card_facts(params, summary, tags, metrics, scores[0], rows, scorer.meta["framework"]))
    client.update_model_version(name, version, description=card)
    write_text(card, params.paths.model_card)
    client.log_artifact(run_id, params.paths.model_card)
    link_dataset_card(client, params, name, version, run_id)
    write_json(summary, params.paths.registration)
    log.info("registered %s version %s with alias(es) %s", name, version, ", ".join(summary["aliases"]))
    return summary


if __name__ == "__main__":
    main(run)
