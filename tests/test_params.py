"""params.py: the typed model of params.yaml, its error messages, and `--set` overrides."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from data2model.errors import ParamsError
from data2model.params import (
    changed_keys,
    Data,
    Params,
    Split,
    apply_overrides,
    load_params,
    parse_override,
    parse_params,
    read_raw,
    write_overrides,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def params_copy(tmp_path: Path) -> Path:
    """A folder holding a copy of the repo's params.yaml."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


def _leaves(tree: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= _leaves(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


# --- the model ------------------------------------------------------------------------------


def test_empty_params_give_the_documented_defaults():
    params = parse_params({})
    assert params == Params()
    assert params.data.target == "arr_delay"
    assert params.data.parsed_rule() == (">", 15.0)
    assert params.split.method == "time"
    assert params.train.framework == "xgboost"
    assert params.evaluate.threshold == "max_f1"
    assert params.paths.split("test") == "data/split/test.parquet"


def test_repo_params_yaml_parses_and_every_key_survives():
    params = load_params(ROOT)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    dumped = _leaves(params.as_dict())
    # Every key written in the file reaches the model under the same dotted name (aliases
    # `validate` and `register` included) with the value the file gives it.
    for key, value in _leaves(raw).items():
        assert key in dumped, key
        assert dumped[key] == value, key
    assert parse_params(params.as_dict()) == params


def test_unknown_key_is_rejected_naming_the_dotted_key():
    with pytest.raises(ParamsError) as err:
        parse_params({"train": {"bogus": 1}})
    assert "train.bogus: unknown key" in str(err.value)


def test_unknown_key_under_an_aliased_section_names_the_yaml_key():
    with pytest.raises(ParamsError) as err:
        parse_params({"validate": {"bogus": 1}})
    assert "validate.bogus: unknown key" in str(err.value)


def test_unknown_nested_key_names_the_full_path():
    with pytest.raises(ParamsError, match=r"train\.xgboost\.depth: unknown key"):
        parse_params({"train": {"xgboost": {"depth": 3}}})


def test_wrong_type_names_the_key_and_the_value():
    with pytest.raises(ParamsError) as err:
        parse_params({"train": {"num_workers": "many"}}, origin="my.yaml")
    message = str(err.value)
    assert message.startswith("my.yaml does not fit")
    assert "train.num_workers:" in message
    assert "'many'" in message


def test_every_problem_is_listed_not_only_the_first():
    with pytest.raises(ParamsError) as err:
        parse_params({"train": {"bogus": 1, "num_workers": 0}, "split": {"seed": "x"}})
    message = str(err.value)
    assert "train.bogus" in message
    assert "train.num_workers" in message
    assert "split.seed" in message


@pytest.mark.parametrize("rule, parsed", [("> 15", (">", 15.0)), (">=-3.5", (">=", -3.5)), (" == 1 ", ("==", 1.0)), ("!= 0", ("!=", 0.0))])
def test_label_rule_parses(rule, parsed):
    assert Data(label_rule=rule).parsed_rule() == parsed


@pytest.mark.parametrize("rule", ["above 15", "> abc", ">> 1", "15", "> 1 2", "=> 3"])
def test_malformed_label_rule_is_rejected_naming_the_key(rule):
    with pytest.raises(ParamsError) as err:
        parse_params({"data": {"label_rule": rule}})
    assert "data.label_rule" in str(err.value)
    assert repr(rule) in str(err.value)


@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_label_rule_is_only_for_binary(task):
    with pytest.raises(ParamsError, match="label_rule derives a binary label"):
        parse_params({"data": {"task": task, "label_rule": "> 15"}})
    assert parse_params({"data": {"task": task, "label_rule": None}}).data.task == task


def test_time_split_needs_a_time_column():
    with pytest.raises(ParamsError, match="split.method 'time' needs split.time_column"):
        parse_params({"split": {"method": "time", "time_column": None}})
    assert parse_params({"split": {"method": "random", "time_column": None}}).split == Split(method="random", time_column=None)


def test_missing_params_file_says_where_to_run(tmp_path):
    with pytest.raises(ParamsError, match="not found: run from the project root"):
        load_params(tmp_path)


@pytest.mark.parametrize("text, problem", [("train: [unclosed", "not valid YAML"), ("- a\n- b\n", "must hold a mapping")])
def test_unreadable_params_file(tmp_path, text, problem):
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(ParamsError, match=problem):
        read_raw(tmp_path / "params.yaml")


# --- overrides ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("train.num_workers=2", ("train.num_workers", 2)),
        ("train.xgboost.eta=0.1", ("train.xgboost.eta", 0.1)),
        ("data.exclude=[a, b]", ("data.exclude", ["a", "b"])),
        ("train.use_gpu=true", ("train.use_gpu", True)),
        ("tracking.uri=null", ("tracking.uri", None)),
        ("data.label_rule='>= 30'", ("data.label_rule", ">= 30")),
        (" data.source = x=y.csv", ("data.source", "x=y.csv")),
    ],
)
def test_parse_override_reads_yaml_values(text, expected):
    assert parse_override(text) == expected


@pytest.mark.parametrize("text, problem", [("nonsense", "must look like key.sub=value"), ("=5", "must look like key.sub=value"), ("data.exclude=[a, b", "not valid YAML")])
def test_parse_override_rejects_malformed_text(text, problem):
    with pytest.raises(ParamsError, match=problem) as err:
        parse_override(text)
    assert repr(text) in str(err.value)


def test_apply_overrides_creates_missing_sections_and_leaves_the_input_alone():
    raw = {"train": {"num_workers": 1}}
    out = apply_overrides(raw, {"train.xgboost.eta": 0.1, "evaluate.threshold": 0.4, "train.num_workers": 2})
    assert out == {"train": {"num_workers": 2, "xgboost": {"eta": 0.1}}, "evaluate": {"threshold": 0.4}}
    assert raw == {"train": {"num_workers": 1}}
    assert parse_params(out).train.xgboost.eta == 0.1


def test_apply_overrides_refuses_to_descend_into_a_value():
    with pytest.raises(ParamsError, match="override data.target.sub: target is not a section"):
        apply_overrides({"data": {"target": "arr_delay"}}, {"data.target.sub": 1})


def test_write_overrides_sets_the_key_reports_it_and_keeps_comments(params_copy):
    path = params_copy / "params.yaml"
    before = path.read_text()
    changes = write_overrides({"train.xgboost.max_depth": 6}, params_copy)
    after = path.read_text()
    assert changes == ["train.xgboost.max_depth: 8 -> 6"]
    assert load_params(params_copy).train.xgboost.max_depth == 6
    comments = [line.split("#", 1)[1] for line in before.splitlines() if "#" in line]
    assert comments and all(c in after for c in comments)
    assert [p.name for p in params_copy.iterdir()] == ["params.yaml"]  # no temp file left behind


def test_write_overrides_changes_only_the_overridden_line(params_copy):
    path = params_copy / "params.yaml"
    before = path.read_text().splitlines()
    write_overrides({"train.xgboost.max_depth": 6}, params_copy)
    after = path.read_text().splitlines()
    assert len(after) == len(before)
    changed = [(a, b) for a, b in zip(before, after) if a != b]
    assert changed == [("    max_depth: 8", "    max_depth: 6")]


def test_write_overrides_adds_a_key_the_file_does_not_name(params_copy):
    changes = write_overrides({"validate.min_rows": 100}, params_copy)
    assert changes == ["validate.min_rows: None -> 100"]
    assert load_params(params_copy).validate.min_rows == 100


def test_write_overrides_with_the_current_value_writes_nothing(params_copy):
    path = params_copy / "params.yaml"
    before = path.read_bytes()
    assert write_overrides({"train.xgboost.max_depth": 8, "data.target": "arr_delay"}, params_copy) == []
    assert path.read_bytes() == before


def test_override_with_an_equal_number_in_exponent_form_changes_nothing(params_copy):
    path = params_copy / "params.yaml"
    before = path.read_bytes()
    key, value = parse_override("train.torch.weight_decay=1e-5")
    assert write_overrides({key: value}, params_copy) == []
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    "overrides, named",
    [
        ({"train.bogus": 1}, "train.bogus"),
        ({"train.xgboost.max_depth": 6, "train.num_workers": "many"}, "train.num_workers"),
        ({"data.task": "regression"}, "label_rule"),
    ],
)
def test_invalid_override_writes_nothing(params_copy, overrides, named):
    path = params_copy / "params.yaml"
    before = path.read_bytes()
    with pytest.raises(ParamsError) as err:
        write_overrides(overrides, params_copy)
    assert named in str(err.value)
    assert "with overrides" in str(err.value)
    assert path.read_bytes() == before
    assert [p.name for p in params_copy.iterdir()] == ["params.yaml"]


def test_severity_keys_are_checks_or_check_and_column():
    rules = parse_params({"validate": {"severity": {"drift": "warn", "range:month": "warn", "range": "error"}}}).validate
    assert rules.severity_of("drift", "distance") == "warn"
    assert rules.severity_of("range", "month") == "warn"  # the column entry wins
    assert rules.severity_of("range", "day") == "error"
    assert rules.severity_of("nulls", "day") == "error"  # unlisted checks block


@pytest.mark.parametrize("severity", [{"rnage": "warn"}, {"bogus:month": "warn"}, {"drift": "info"}], ids=["typo", "unknown-check", "unknown-level"])
def test_severity_rejects_unknown_checks_and_levels(severity):
    with pytest.raises(ParamsError, match=r"validate\.severity"):
        parse_params({"validate": {"severity": severity}})


def test_quarantine_settings_are_typed():
    with pytest.raises(ParamsError, match=r"validate\.on_row_failure"):
        parse_params({"validate": {"on_row_failure": "drop"}})
    with pytest.raises(ParamsError, match=r"validate\.max_quarantine_fraction"):
        parse_params({"validate": {"max_quarantine_fraction": 1.5}})


def test_changed_keys_are_the_leaves_that_differ():
    old = load_params(ROOT).as_dict()
    new = load_params(ROOT).as_dict()
    new["train"]["xgboost"]["eta"] = 0.2
    new["validate"]["ranges"]["distance"] = [1.0, 100.0]
    assert changed_keys(old, new) == {"validate.ranges.distance": [1.0, 100.0], "train.xgboost.eta": 0.2}
    assert changed_keys(old, load_params(ROOT).as_dict()) == {}


def test_changed_keys_replace_a_mapping_whose_keys_changed():
    old = {"validate": {"categories": {"origin": ["EWR"]}, "min_rows": 1}}
    new = {"validate": {"categories": {}, "min_rows": 1}}
    assert changed_keys(old, new) == {"validate.categories": {}}
