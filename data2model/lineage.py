"""Where a model came from: the git commit, DVC's data hashes and the Prefect flow run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml


def git_commit(root: Path | str = ".") -> str:
    """HEAD's sha, with '+dirty' when tracked files differ from it; 'unknown' outside git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()

    try:
        sha = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown"
    return f"{sha}+dirty" if dirty else sha


def data_hashes(root: Path | str = ".") -> dict[str, str]:
    """Output path -> md5 for every cached output dvc.lock records (the data version)."""
    lock = Path(root) / "dvc.lock"
    if not lock.exists():
        return {}
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    return {out["path"]: out["md5"] for stage in stages.values() for out in stage.get("outs", []) if "md5" in out}


def flow_run_id() -> str | None:
    """The Prefect flow run this stage runs in (stages run inside the flow's process)."""
    if "prefect" not in sys.modules:  # only a flow imports prefect; `dvc repro` must not pay for it
        return None
    from prefect.runtime import flow_run

    return str(flow_run.id) if flow_run.id else None


def lineage_tags(root: Path | str = ".", raw_path: str | None = None) -> dict[str, Any]:
    hashes = data_hashes(root)
    tags = {"git_commit": git_commit(root), "prefect_flow_run_id": flow_run_id() or "none"}
    if raw_path and raw_path in hashes:
        tags["data_md5"] = hashes[raw_path]
    return tags
