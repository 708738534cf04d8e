"""Serve the project's flows as deployments, runnable from the Prefect UI ("Run"). `d2m up`
starts this module after the Prefect server; by hand:

    PREFECT_API_URL=http://127.0.0.1:4200/api python -m flows.serve   # project root

A deployment's optional cron comes from D2M_CRON_<NAME> (e.g. D2M_CRON_DATA2MODEL='0 3 * * *').
"""

from __future__ import annotations

import importlib
import os

from data2model.cli import PREFECT_DEFAULTS

# Every deployment `d2m up` serves, as (module:flow, deployment name): one line each.
# A flow module may define `default_parameters()`, read here so the UI form starts from it.
DEPLOYMENTS = (
    ("flows.pipeline:pipeline", "data2model"),
    ("flows.batch_score:batch_score", "batch-score"),
    ("flows.monitor:monitor", "monitor"),  # schedule it: D2M_CRON_MONITOR='*/30 * * * *'
)


def cron_variable(name: str) -> str:
    return "D2M_CRON_" + name.upper().replace("-", "_")


def deployment(entrypoint: str, name: str):
    """One deployment, one run at a time: the server holds a second run in AwaitingConcurrencySlot.

    The flow checks its parameters itself (pydantic, at run start). The server's schema check is
    off because Prefect 3.8 drops every schema key named `required` before checking, which
    deletes our `validate.required` field and then rejects it as unknown."""
    module_name, _, attr = entrypoint.partition(":")
    module = importlib.import_module(module_name)
    defaults = getattr(module, "default_parameters", dict)()
    return getattr(module, attr).to_deployment(
        name=name, parameters=defaults, concurrency_limit=1, cron=os.environ.get(cron_variable(name)) or None, enforce_parameter_schema=False,
    )


def main() -> None:
    for key, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("PREFECT_RUNNER_POLL_FREQUENCY", "1")
    from prefect import serve

    serve(*(deployment(entrypoint, name) for entrypoint, name in DEPLOYMENTS))


if __name__ == "__main__":
    main()
