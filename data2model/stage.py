"""What every stage edge shares: params loading, logging, and clean exits on user errors.

A stage module in tasks/ exposes `run(params) -> dict` (its edge: read inputs, call the pure
core, write outputs atomically, return a small summary) and ends with
`if __name__ == "__main__": main(run)`, which is what dvc.yaml's `cmd` executes.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn

from data2model.errors import D2MError
from data2model.params import Params, load_params

log = logging.getLogger("data2model")


def configure_logging() -> None:
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def finish(code: int) -> NoReturn:
    """End the process as a finished interpreter does, less its teardown.

    Non-daemon threads are joined and atexit handlers run (log handlers flushed, MLflow's runs
    ended, Ray shut down), as at any exit; then the process ends without finalising every module
    it imported, which does nothing a user could see: 2.2 s after `d2m run`'s summary (MLflow,
    Prefect, Ray, great-expectations, pandas, ...), about 0.2 s after a data stage's."""
    threading._shutdown()  # what the interpreter does first at exit; private (docs/operations.md)
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(run: Callable[[Params], dict[str, Any]]) -> NoReturn:
    """Entry point of a stage under `dvc repro`: exit 1 with the message on a user error."""
    configure_logging()
    start = time.perf_counter()
    try:
        summary = run(load_params())
    except D2MError as err:
        print(f"error: {err}", file=sys.stderr)
        finish(1)
    log.info("done in %.1f s: %s", time.perf_counter() - start, summary)
    finish(0)
