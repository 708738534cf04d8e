"""Serve the pipeline flow as a deployment so it can be started from the Prefect UI ("Run").

    prefect server start --host 127.0.0.1            # terminal 1 (UI on http://127.0.0.1:4200)
    PREFECT_API_URL=http://127.0.0.1:4200/api python -m flows.serve   # terminal 2, project root
"""

from __future__ import annotations

import os

from data2model.cli import PREFECT_DEFAULTS

if __name__ == "__main__":
    for key, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("PREFECT_RUNNER_POLL_FREQUENCY", "1")
    from flows.pipeline import pipeline

    pipeline.serve(name="data2model", limit=1)
