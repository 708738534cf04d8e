"""The model card renderer: facts in, Markdown out."""

from __future__ import annotations

from data2model.model_card import render


def facts(**changes):
    base = {
        "model_name": "m", "version": 3, "aliases": ["challenger"], "registered_at": "2026-11-24 12:00 UTC",
        "task": "regression", "framework": "xgboost", "num_workers": 2, "threshold": "-",
        "data": {"source": "data/inputs/x.csv", "target": "y", "label_rule": None, "md5": "abc", "rows": {"raw": 1200, "train": 800, "valid": 100, "test": 300}, "split": "random", "validation": "5 checks passed"},
        "metrics": {"rmse": 1.5, "r2": 0.25, "rows": 300, "task": "regression"},
        "holdout": {"metric": "rmse", "higher_is_better": False, "slices": {"a=1": (2.0, 250), "a=2": (1.0, 250), "a=3": (3.0, 200)}, "ece": None, "min_rows": 200},
        "gate": {"champion_version": 2, "promote": False, "reason": "rmse 1.5 vs champion 1.4 is worse by more than tolerance 0.002"},
        "lineage": {"git_commit": "deadbeef", "mlflow_run_id": "r1", "prefect_flow_run_id": "none"},
        "intended_use": "Testing.", "limitations": [],
    }
    return {**base, **changes}


def test_card_lists_the_worst_slices_first_for_a_lower_is_better_metric():
    card = render(facts())
    assert card.index("a=3") < card.index("a=1") < card.index("a=2")
    assert "1,200 / 800 / 100 / 300" in card and "`abc`" in card
    assert "not promoted" in card and "worse by more than tolerance" in card
    assert "## Calibration" not in card  # regression: no ECE
    assert "None stated: set register.limitations" in card
    assert "| task |" not in card  # only numbers in the metrics table


def test_card_of_a_first_binary_version_says_so_and_shows_calibration():
    card = render(facts(task="binary", gate=None, threshold=0.1401234, aliases=["challenger", "champion"],
                        holdout={"metric": "auc", "higher_is_better": True, "slices": {"c=1": (0.7, 300), "c=2": (0.6, 300)}, "ece": 0.1, "min_rows": 200},
                        limitations=["Only 2013."]))
    assert "First version of this model" in card
    assert "0.1000" in card and "threshold: 0.1401" in card
    assert card.index("c=2") < card.index("c=1")
    assert "- Only 2013." in card
