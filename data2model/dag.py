"""The DAG exactly as dvc.yaml declares it, read through DVC's own index, and how one stage runs.

A stage whose cmd is `python -m tasks.<name>` runs in this process (its `run(params)`), then
DVC commits it: the same dvc.lock entry `dvc repro` would write, without a new interpreter per
stage. Any other cmd runs through DVC itself. Either way DVC decides what is up to date.
"""

from __future__ import annotations

import fcntl
import importlib
import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data2model.params import load_params

WORKSPACE_LOCK = ".dvc/tmp/d2m-run.lock"
_IN_PROCESS = re.compile(r"^python -m (tasks\.[A-Za-z_][A-Za-z0-9_]*)$")


@dataclass
class StageResult:
    name: str
    ran: bool
    summary: dict[str, Any]


def stage_order() -> list[str]:
    """Stage names of dvc.yaml, upstream first (ties broken by name, so the order is stable)."""
    import networkx as nx
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

    with Repo(".") as repo:
        graph = repo.index.graph
        stages = {node: node.name for node in graph.nodes if isinstance(node, PipelineStage)}
        # DVC's edges point from a stage to the stages it depends on.
        order = nx.lexicographical_topological_sort(graph.reverse(copy=True), key=lambda n: stages.get(n, str(n)))
        return [stages[node] for node in order if node in stages]


def in_process_runner(cmd: str) -> Callable[..., dict[str, Any]] | None:
    match = _IN_PROCESS.match(cmd.strip())
    return importlib.import_module(match.group(1)).run if match else None


def run_stage(name: str) -> StageResult:
    """Run `name` (in the project root, the cwd) if DVC says it changed, holding DVC's repo
    lock throughout so a concurrent `dvc repro` cannot interleave with it."""
    from dvc.repo import Repo, lock_repo

    with Repo(".") as repo, lock_repo(repo):
        (stage,) = repo.stage.collect(name)
        if not stage.changed():
            return StageResult(name, ran=False, summary={})
        runner = in_process_runner(stage.cmd)
        if runner is None:
            repo.reproduce(name, single_item=True, force=True)
            return StageResult(name, ran=True, summary={})
        summary = runner(load_params())
        repo.commit(name, force=True)
        return StageResult(name, ran=True, summary=summary)


@contextmanager
def workspace_lock(logger: logging.Logger | logging.LoggerAdapter) -> Iterator[None]:
    """One run at a time per workspace (UI, CLI or both): DVC would stop the second with a
    LockError, so the second waits here, and says so."""
    path = Path(WORKSPACE_LOCK)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("another run is using this workspace; waiting for it to finish")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def stale_stages() -> list[str]:
    """The stages a run would run now: those whose code, data, params or outputs differ from
    dvc.lock, and every stage downstream of them."""
    import networkx as nx
    from dvc.repo import Repo, lock_repo
    from dvc.stage import PipelineStage

    with Repo(".") as repo, lock_repo(repo):
        graph = repo.index.graph
        changed = [node for node in graph.nodes if isinstance(node, PipelineStage) and node.changed()]
        # DVC's edges point from a stage to the stages it depends on: downstream is "ancestors".
        due = set(changed).union(*(nx.ancestors(graph, node) for node in changed))
        return sorted(node.name for node in due if isinstance(node, PipelineStage))


def stages_due() -> list[str] | None:
    """What `d2m run` would run now ([] when every stage is up to date, so it can answer at once
    instead of starting a flow run to skip every stage), or None when that cannot be told without
    waiting: another run holds the workspace, or this is not a DVC project (the flow says so)."""
    from dvc.exceptions import DvcException

    path = Path(WORKSPACE_LOCK)
    if not path.parent.parent.is_dir():  # no .dvc/ here
        return None
    path.parent.mkdir(exist_ok=True)
    with path.open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        try:
            return stale_stages()
        except DvcException:  # a `dvc repro` holds the repo: the flow's path waits for it
            return None
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
