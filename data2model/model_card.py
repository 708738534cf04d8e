"""The model card of a registered version: what it was trained on, how well it does overall, per
slice and in calibration, how it was promoted, what it is for and where not to trust it.

`render` is pure (a dict of facts in, Markdown out); the register stage gathers the facts and
stores the card as the version's description, an MLflow artifact and `paths.model_card`.
"""

from __future__ import annotations

from typing import Any

WORST_SLICES = 10


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _num(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def render(facts: dict[str, Any]) -> str:
    data, lineage = facts["data"], facts["lineage"]
    label = f"{data['target']} {data['label_rule']}" if data.get("label_rule") else data["target"]
    rows = data["rows"]
    sections = [
        f"# Model card: {facts['model_name']} version {facts['version']}",
        f"Registered {facts['registered_at']} with alias(es) {', '.join(facts['aliases'])}. "
        f"Task: {facts['task']}, predicting `{label}`. Trained with {facts['framework']} on Ray Train "
        f"({facts['num_workers']} worker(s)); the model takes raw rows and does its own preprocessing.",
        "## Data",
        _table(["", ""], [
            ["source", f"`{data['source']}`"],
            ["data version (md5 of the raw table)", f"`{data['md5'] or 'unknown'}`"],
            ["rows: raw / train / valid / holdout", " / ".join(f"{rows.get(k, '-'):,}" if isinstance(rows.get(k), int) else "-" for k in ("raw", "train", "valid", "test"))],
            ["split", data["split"]],
            ["validation", data["validation"]],
        ]),
        "## Holdout metrics",
        _table(["metric", "value"], [[k, _num(v)] for k, v in sorted(facts["metrics"].items()) if isinstance(v, (int, float)) and not isinstance(v, bool)]),
    ]
    scores = facts["holdout"]
    if scores["slices"]:
        worst = sorted(scores["slices"].items(), key=lambda kv: kv[1][0] * (1 if scores["higher_is_better"] else -1))[:WORST_SLICES]
        sections += [
            f"## Slices ({scores['metric']}, the {len(worst)} weakest of {len(scores['slices'])} with at least {scores['min_rows']} holdout rows)",
            _table(["slice", "rows", scores["metric"]], [[name, f"{n:,}", _num(value)] for name, (value, n) in worst]),
        ]
    else:
        sections += ["## Slices", f"No value of the `register.slices` columns has at least {scores['min_rows']} holdout rows (`register.min_slice_rows`), so no slice is reported."]
    if scores.get("ece") is not None:
        sections += ["## Calibration", f"Expected calibration error on the holdout (10 bins): {scores['ece']:.4f}. Decision threshold: {_num(facts['threshold'])}. The reliability diagram is `reports/plots/calibration.png`."]
    gate = facts.get("gate")
    sections += ["## Promotion", (
        f"Scored against champion version {gate['champion_version']} on the same holdout: "
        f"{'promoted to champion' if gate['promote'] else 'not promoted'}. {gate['reason']}."
        if gate else "First version of this model: champion by default, no earlier champion to compare with."
    )]
    sections += [
        "## Lineage",
        _table(["", ""], [
            ["git commit", f"`{lineage['git_commit']}`"],
            ["MLflow run", f"`{lineage['mlflow_run_id']}`"],
            ["Prefect flow run", f"`{lineage['prefect_flow_run_id']}`"],
        ]),
        "## Intended use",
        facts["intended_use"],
        "## Limitations",
        "\n".join(f"- {item}" for item in facts["limitations"]) or "None stated: set register.limitations in params.yaml.",
    ]
    return "\n\n".join(sections) + "\n"
