"""The DAG exactly as dvc.yaml declares it, read through DVC's own index, and how one stage runs.

A stage whose cmd is `python -m tasks.<name>` runs in this process (its `run(params)`), then
DVC commits it: the same dvc.lock entry `dvc repro` would write, without a new interpreter per
stage. Any other cmd runs through DVC itself. Either way DVC decides what is up to date.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data2model.params import load_params

_IN_PROCESS = re.compile(r"^python -m (tasks\.[A-Za-z_][A-Za-z0-9_]*)$")


@dataclass
class StageResult:
    name: str
    ran: bool
    summary: dict[str, Any]


def stage_order(root: Path | str = ".") -> list[str]:
    """Stage names of dvc.yaml, upstream first (ties broken by name, so the order is stable)."""
    import networkx as nx
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

    with Repo(str(root)) as repo:
        graph = repo.index.graph
        stages = {node: node.name for node in graph.nodes if isinstance(node, PipelineStage)}
        # DVC's edges point from a stage to the stages it depends on.
        order = nx.lexicographical_topological_sort(graph.reverse(copy=True), key=lambda n: stages.get(n, str(n)))
        return [stages[node] for node in order if node in stages]


def in_process_runner(cmd: str) -> Callable[..., dict[str, Any]] | None:
    match = _IN_PROCESS.match(cmd.strip())
    return importlib.import_module(match.group(1)).run if match else None


def run_stage(name: str, root: Path | str = ".", force: bool = False) -> StageResult:
    """Run `name` if DVC says it changed (or `force`), holding DVC's repo lock throughout."""
    from dvc.repo import Repo, lock_repo

    with Repo(str(root)) as repo, lock_repo(repo):
        (stage,) = repo.stage.collect(name)
        if not force and not stage.changed():
            return StageResult(name, ran=False, summary={})
        runner = in_process_runner(stage.cmd)
        if runner is None:
            repo.reproduce(name, single_item=True, force=True)
            return StageResult(name, ran=True, summary={})
        summary = runner(load_params(root))
        repo.commit(name, force=True)
        return StageResult(name, ran=True, summary=summary)
