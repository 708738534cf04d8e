"""The one typed model of params.yaml. Every stage reads its knobs through `load_params`."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from data2model.errors import ParamsError

PARAMS_FILE = "params.yaml"


BATCH_ROWS = 65_536  # rows per record batch in the streaming stages

class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Paths(Section):
    """Every file the DAG reads or writes; dvc.yaml interpolates these, code reads them here."""

    inputs: str = "data/inputs"
    raw: str = "data/raw.parquet"
    validation: str = "reports/validation.json"
    contract: str = "contracts/nycflights13.json"
    data_docs: str = "reports/data_docs"
    validated: str = "data/validated.parquet"
    quarantine: str = "data/quarantine.parquet"
    features: str = "data/features.parquet"
    preprocessor: str = "models/preprocessor.json"
    split_dir: str = "data/split"
    model_dir: str = "models/model"
    train_report: str = "reports/train.json"
    metrics: str = "reports/metrics.json"
    plots_dir: str = "reports/plots"
    registration: str = "reports/registration.json"
    model_card: str = "reports/model_card.md"
    calibrator: str = "models/calibrator.json"
    calibration: str = "reports/calibration.json"
    calibration_plots: str = "reports/calibration"
    label_audit: str = "reports/label_audit.json"
    label_issues: str = "reports/label_issues.parquet"
    label_audit_plots: str = "reports/label_audit"
    learning_curve: str = "reports/learning_curve.json"
    learning_curve_plots: str = "reports/learning_curve"
    dataset_card: str = "reports/dataset_card.md"
    croissant: str = "reports/croissant.json"

    def split(self, part: Literal["train", "valid", "test"]) -> str:
        return f"{self.split_dir}/{part}.parquet"

    def raw_holdout(self) -> str:
        """The holdout's rows as they arrived (with the label): what the promotion gate scores."""
        return f"{self.split_dir}/test_raw.parquet"


_RULE = re.compile(r"^\s*(>=|<=|==|!=|>|<)\s*(-?\d+(\.\d+)?)\s*$")


class Data(Section):
    source: str = "nycflights13"
    target: str = "arr_delay"
    label_rule: str | None = "> 15"
    task: Literal["binary", "multiclass", "regression"] = "binary"
    exclude: list[str] = Field(default_factory=list)
    batch_rows: int = Field(BATCH_ROWS, ge=1_000)

    @field_validator("label_rule")
    @classmethod
    def _rule_parses(cls, rule: str | None) -> str | None:
        if rule is not None and not _RULE.match(rule):
            raise ValueError(f"label_rule {rule!r} must look like '> 15' (one of > >= < <= == != and a number)")
        return rule

    @model_validator(mode="after")
    def _rule_needs_binary(self) -> "Data":
        if self.label_rule is not None and self.task != "binary":
            raise ValueError("label_rule derives a binary label: set data.task to 'binary' or remove label_rule")
        return self

    def parsed_rule(self) -> tuple[str, float] | None:
        if self.label_rule is None:
            return None
        m = _RULE.match(self.label_rule)
        return m.group(1), float(m.group(2))


# The checks of the data contract, by the name params use for them (validate.severity keys).
CHECKS = ("columns", "row_count", "exists", "type", "nulls", "range", "categories", "unique", "target_classes", "drift")


class Validate(Section):
    """Declared part of the data contract; the profiled part lives in paths.contract."""

    required: list[str] = Field(default_factory=list)
    min_rows: int = Field(1, ge=1)
    max_rows: int | None = None
    ranges: dict[str, tuple[float | None, float | None]] = Field(default_factory=dict)
    categories: dict[str, list[str]] = Field(default_factory=dict)
    unique: list[list[str]] = Field(default_factory=list)
    null_margin: float = Field(0.05, ge=0, le=1)
    range_margin: float = Field(0.1, ge=0)
    # `check` or `check:column` -> error (blocks) | warn (reported only); unlisted checks are errors.
    severity: dict[str, Literal["error", "warn"]] = Field(default_factory=dict)
    drift_threshold: float = Field(0.25, gt=0)
    on_row_failure: Literal["fail", "quarantine"] = "fail"
    max_quarantine_fraction: float = Field(0.01, ge=0, le=1)
    gx_sample_rows: int = Field(100_000, ge=1)

    @field_validator("severity")
    @classmethod
    def _known_checks(cls, severity: dict[str, str]) -> dict[str, str]:
        unknown = sorted(k for k in severity if k.partition(":")[0] not in CHECKS)
        if unknown:
            raise ValueError(f"unknown check(s) {unknown}: keys are a check or check:column, checks are {list(CHECKS)}")
        return severity

    def severity_of(self, check: str, column: str | None) -> Literal["error", "warn"]:
        """`check:column` wins over `check`; anything not listed blocks."""
        return self.severity.get(f"{check}:{column}", self.severity.get(check, "error"))


class Features(Section):
    categorical: list[str] = Field(default_factory=list)
    max_categories: int = Field(500, ge=1)
    min_category_count: int = Field(5, ge=1)
    fit_sample_rows: int = Field(1_000_000, ge=1_000)


class Split(Section):
    method: Literal["time", "random"] = "time"
    time_column: str | None = "time_hour"
    test_fraction: float = Field(1 / 6, gt=0, lt=1)
    valid_fraction: float = Field(0.1, gt=0, lt=1)
    seed: int = 42

    @model_validator(mode="after")
    def _time_needs_column(self) -> "Split":
        if self.method == "time" and not self.time_column:
            raise ValueError("split.method 'time' needs split.time_column")
        return self


class XGBoostParams(Section):
    num_boost_round: int = Field(1000, ge=1)
    early_stopping_rounds: int = Field(50, ge=1)
    eta: float = Field(0.05, gt=0)
    max_depth: int = Field(8, ge=1)
    min_child_weight: float = Field(5.0, ge=0)
    subsample: float = Field(0.9, gt=0, le=1)
    colsample_bytree: float = Field(0.6, gt=0, le=1)
    max_cat_to_onehot: int = Field(32, ge=1)


class TorchParams(Section):
    epochs: int = Field(8, ge=1)
    batch_size: int = Field(1024, ge=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-5, ge=0)
    hidden: list[int] = Field(default_factory=lambda: [128, 64])
    embedding_dim: int = Field(16, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    early_stopping_epochs: int = Field(3, ge=1)


class Train(Section):
    framework: Literal["xgboost", "torch"] = "xgboost"
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: int = Field(1, ge=1)
    seed: int = 42
    storage_path: str = ".ray_results"
    # A checkpoint every this many boosting rounds (XGBoost) or epochs (torch), and at the end.
    checkpoint_every: int = Field(25, ge=1)
    # Checkpoints kept, best by the validation metric; the latest is kept too, to resume from.
    keep_checkpoints: int = Field(2, ge=1)
    # Worker-group restarts from the latest checkpoint before the run fails.
    max_failures: int = Field(2, ge=0)
    xgboost: XGBoostParams = Field(default_factory=XGBoostParams)
    torch: TorchParams = Field(default_factory=TorchParams)


class Evaluate(Section):
    # Binary decision threshold: a probability, or "max_f1" to pick the F1-best one on the
    # validation split (never the holdout). The served model uses the same threshold.
    threshold: float | Literal["max_f1"] = "max_f1"

    @field_validator("threshold", mode="before")
    @classmethod
    def _threshold(cls, value: Any) -> Any:
        if value == "max_f1" or (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1):
            return value
        raise ValueError("must be a probability strictly between 0 and 1, or max_f1")


class Calibration(Section):
    """The calibrate stage: ECE at several bin counts on the holdout, an optional calibrator
    fitted on validation rows and served inside the model, optional split-conformal sets."""

    # none | temperature | isotonic: what the served model applies to its probabilities
    # (classification only; regression is reported as skipped).
    method: Literal["none", "temperature", "isotonic"] = "temperature"
    bins: list[int] = Field(default_factory=lambda: [5, 10, 15, 20], min_length=1)
    # Miscoverage of the split-conformal sets (intervals for regression); null turns them off.
    conformal_alpha: float | None = Field(0.1, gt=0, lt=1)
    seed: int = 42

    @field_validator("bins")
    @classmethod
    def _bins_positive(cls, bins: list[int]) -> list[int]:
        if any(b < 1 for b in bins):
            raise ValueError("every bin count must be at least 1")
        return bins


class LabelAudit(Section):
    """The label_audit stage: confident learning on out-of-fold probabilities (classification)."""

    enabled: bool = False              # off by default: it trains `folds` extra models per run
    folds: int = Field(5, ge=2)
    max_rows: int | None = Field(100_000, ge=100)  # training rows audited (a random sample beyond this); null: all
    num_boost_round: int = Field(100, ge=1)
    eta: float = Field(0.2, gt=0)
    max_depth: int = Field(6, ge=1)
    max_issue_rate: float | None = Field(None, ge=0, le=1)  # the stage fails above this estimated rate; null: no gate
    seed: int = 42


class LearningCurve(Section):
    """The learning_curve stage: holdout error vs training rows, fitted to a*n^-b + c."""

    enabled: bool = False              # off by default: it trains len(fractions) x repeats extra models per run
    fractions: list[float] = Field(default_factory=lambda: [1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0], min_length=4)
    repeats: int = Field(2, ge=1)      # independent random orders of the training rows (more points for the fit)
    num_boost_round: int = Field(300, ge=1)
    early_stopping_rounds: int = Field(20, ge=1)
    eta: float = Field(0.1, gt=0)
    max_depth: int = Field(6, ge=1)
    seed: int = 42

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, fractions: list[float]) -> list[float]:
        if any(not 0 < f <= 1 for f in fractions) or len(set(fractions)) < 4:
            raise ValueError("need at least 4 distinct fractions of the training split, each in (0, 1]")
        return sorted(set(fractions))


class DatasetCard(Section):
    """The dataset_card stage's words about the data. Left null, they come from what is known
    about the default nycflights13 source, or read "not stated" for any other source."""

    name: str | None = None
    description: str | None = None
    url: str | None = None
    license: str | None = None
    citation: str | None = None
    intended_use: str = "Not stated: set dataset_card.intended_use in params.yaml."
    limitations: list[str] = Field(default_factory=list)


class Tune(Section):
    """`d2m tune`: Ray Tune with ASHA over train.xgboost keys."""

    # train.xgboost key -> {loguniform|uniform|randint|choice: [values]}
    search_space: dict[str, dict[str, list[Any]]] = Field(default_factory=lambda: {
        "eta": {"loguniform": [0.01, 0.3]}, "max_depth": {"randint": [3, 11]}, "min_child_weight": {"loguniform": [1.0, 20.0]},
    })
    num_samples: int = Field(16, ge=1)
    max_rounds: int = Field(300, ge=1)        # ASHA's max_t, in boosting rounds
    grace_rounds: int = Field(20, ge=1)       # every trial runs at least this many rounds
    reduction_factor: float = Field(3.0, gt=1)
    seed: int = 42


class Canary(Section):
    """Before `champion` moves, the candidate is served the way `d2m serve` serves it and must
    answer its input example and holdout rows as in-process predict does, fast enough."""

    enabled: bool = True
    rows: int = Field(200, ge=1)               # holdout rows sent in one request
    tolerance: float = Field(1e-6, ge=0)       # largest allowed |served - in-process| per number
    max_p50_ms: float = Field(250.0, gt=0)     # median single-row latency bound
    start_timeout_s: float = Field(120.0, gt=0)


class Register(Section):
    """The promotion gate: the challenger takes `champion` only if it passes every rule."""

    model_name: str = Field("nycflights-delay", min_length=1)
    # Primary metric (AUC binary, accuracy multiclass, RMSE regression) may be this much worse.
    tolerance: float = Field(0.002, ge=0)
    # Raw columns whose values are slices; a column the data lacks is skipped with a log line.
    slices: list[str] = Field(default_factory=list)
    max_slice_drop: float = Field(0.02, ge=0)
    min_slice_rows: int = Field(200, ge=1)
    # Expected calibration error (10 bins) the challenger may have; binary only.
    max_ece: float = Field(0.15, ge=0, le=1)
    # The model card's words for what the model is for and where it must not be trusted.
    canary: Canary = Field(default_factory=Canary)
    intended_use: str = "Not stated: set register.intended_use in params.yaml."
    limitations: list[str] = Field(default_factory=list)


class InferenceLog(Section):
    """A sample of served requests (features, prediction, version, time) in rotating Parquet
    files, written off the request path: what monitoring compares with the training data."""

    enabled: bool = True
    folder: str = "logs/inference"
    sample: float = Field(1.0, ge=0, le=1)       # share of requests logged
    drop: list[str] = Field(default_factory=list)  # input columns never written
    hash: list[str] = Field(default_factory=list)  # input columns written as a 64-bit hash
    rows_per_file: int = Field(10_000, ge=1)
    max_files: int = Field(100, ge=1)             # oldest files are deleted beyond this
    flush_seconds: float = Field(5.0, gt=0)
    queue_rows: int = Field(100_000, ge=1)        # requests beyond this backlog are not logged (counted)


class Serve(Section):
    """`d2m serve`: the scoring server on a registry alias, and its request limits."""

    host: str = "127.0.0.1"
    port: int = Field(5001, ge=1, le=65535)
    alias: str = Field("champion", min_length=1)
    # How often the server asks the registry where the alias points; a move is served within this.
    poll_seconds: float = Field(5.0, gt=0)
    max_rows: int = Field(10_000, ge=1)
    max_body_mb: float = Field(32.0, gt=0)
    log: InferenceLog = Field(default_factory=InferenceLog)


class Tracking(Section):
    uri: str | None = None
    experiment: str = "data2model"
    artifact_dir: str = ".mlflow/artifacts"
    default_db: str = ".mlflow/mlflow.db"

    def resolved_uri(self, root: Path) -> str:
        """params > MLFLOW_TRACKING_URI > SQLite file in the repo."""
        if self.uri:
            return self.uri
        return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root / self.default_db).resolve()}"


class Monitor(Section):
    """The monitoring flow: served traffic (the inference log) against the training reference,
    and the retraining it triggers."""

    window_hours: float = Field(24.0, gt=0)   # traffic looked at: this recent, and only since the last trigger
    min_rows: int = Field(500, ge=1)          # less traffic than this is reported, never acted on
    drift_threshold: float = Field(0.25, gt=0)  # feature PSI against the contract's reference (as validate)
    max_drifted_columns: int = Field(0, ge=0)   # more drifted columns than this is a breach
    prediction_psi_threshold: float = Field(0.25, gt=0)
    max_metric_drop: float = Field(0.05, ge=0)  # live primary metric vs the champion's holdout metric
    key: list[str] = Field(default_factory=list)  # columns joining served rows to a labels file
    trigger: bool = True                      # start the pipeline deployment on a breach
    deployment: str = "data2model-pipeline/data2model"
    cooldown_hours: float = Field(24.0, ge=0)
    state: str = "logs/monitor_state.json"
    report_dir: str = "logs/monitoring"


class Params(Section):
    paths: Paths = Field(default_factory=Paths)
    data: Data = Field(default_factory=Data)
    validate_: Validate = Field(default_factory=Validate, alias="validate")
    features: Features = Field(default_factory=Features)
    split: Split = Field(default_factory=Split)
    train: Train = Field(default_factory=Train)
    calibration: Calibration = Field(default_factory=Calibration)
    label_audit: LabelAudit = Field(default_factory=LabelAudit)
    learning_curve: LearningCurve = Field(default_factory=LearningCurve)
    dataset_card: DatasetCard = Field(default_factory=DatasetCard)
    tune: Tune = Field(default_factory=Tune)
    evaluate: Evaluate = Field(default_factory=Evaluate)
    register_: Register = Field(default_factory=Register, alias="register")
    tracking: Tracking = Field(default_factory=Tracking)
    serve: Serve = Field(default_factory=Serve)
    monitor: Monitor = Field(default_factory=Monitor)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    # `validate` and `register` are names BaseModel already has; the aliases keep the YAML keys.
    @property
    def validate(self) -> Validate:  # type: ignore[override]
        return self.validate_

    @property
    def register(self) -> Register:  # type: ignore[override]
        return self.register_

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


def _describe(err: ValidationError, origin: str) -> str:
    lines = [f"{origin} does not fit the params model:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]).rstrip("_").replace("_.", ".")
        if e["type"] == "extra_forbidden":
            lines.append(f"  - {key}: unknown key")
        else:
            lines.append(f"  - {key}: {e['msg'].removeprefix('Value error, ')} (got {e.get('input')!r})")
    return "\n".join(lines)


def parse_params(raw: dict[str, Any], origin: str = PARAMS_FILE) -> Params:
    try:
        return Params.model_validate(raw or {})
    except ValidationError as err:
        raise ParamsError(_describe(err, origin)) from None


def read_raw(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ParamsError(f"{path} not found: run from the project root (where dvc.yaml is)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ParamsError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path} must hold a mapping of sections, got {type(raw).__name__}")
    return raw


def load_params(root: Path | str = ".") -> Params:
    path = Path(root) / PARAMS_FILE
    return parse_params(read_raw(path), str(path))


def parse_override(text: str) -> tuple[str, Any]:
    """`key.sub=value` with a YAML value: `train.num_workers=2`, `data.exclude=[a, b]`."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ParamsError(f"override {text!r} must look like key.sub=value")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError as err:
        raise ParamsError(f"override {text!r}: value is not valid YAML ({err})") from None


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of `raw` with dotted keys set; the result is validated by the caller."""
    out = yaml.safe_load(yaml.safe_dump(raw)) or {}
    for dotted, value in overrides.items():
        node = out
        *parents, leaf = dotted.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ParamsError(f"override {dotted}: {part} is not a section")
            node = child
        node[leaf] = value
    return out


def _dotted(tree: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def check_overrides(overrides: dict[str, Any], root: Path | str = ".") -> Params:
    """params.yaml with `overrides` applied, validated; nothing is written."""
    path = Path(root) / PARAMS_FILE
    return parse_params(apply_overrides(read_raw(path), overrides), f"{path} with overrides")


def changed_keys(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The dotted keys whose value differs between two params trees: what a run overrides.

    A mapping is compared key by key while both sides hold the same keys; otherwise (a key added
    or removed, as in `validate.categories={}`) the whole new value is the override."""
    out: dict[str, Any] = {}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict) and value.keys() == before.keys():
            out.update(changed_keys(before, value, f"{prefix}{key}."))
        elif value != before:
            out[f"{prefix}{key}"] = value
    return out


def write_overrides(overrides: dict[str, Any], root: Path | str = ".") -> list[str]:
    """Validate `overrides` against the model, then set them in params.yaml keeping its comments.

    Returns one line per changed key; nothing is written when an override does not validate.
    """
    from ruamel.yaml import YAML

    from data2model.tables import atomic_path

    path = Path(root) / PARAMS_FILE
    typed = check_overrides(overrides, root).as_dict()
    yaml_rt = YAML()
    yaml_rt.preserve_quotes = True
    yaml_rt.width = 4096
    yaml_rt.indent(mapping=2, sequence=4, offset=2)
    yaml_rt.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    doc = yaml_rt.load(path.read_text())
    changes = []
    for dotted in overrides:
        value = _dotted(typed, dotted)  # the validated value: `1e-5` is a float, `"2"` an int
        node = doc
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        if node.get(leaf) != value:
            changes.append(f"{dotted}: {node.get(leaf)!r} -> {value!r}")
            node[leaf] = value
    if changes:
        with atomic_path(path) as tmp, tmp.open("w") as stream:
            yaml_rt.dump(doc, stream)
    return changes
