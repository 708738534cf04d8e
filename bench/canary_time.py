"""Time the canary on one registered version of the project in the current folder, with the
data2model found there first (so a copy of another revision runs its own canary).

    cd <project with a registered version> && python <this repo>/bench/canary_time.py 1

Prints one JSON line: the wall seconds and what `run_canary` returned."""

from __future__ import annotations

import json
import sys
import time

sys.path.insert(0, ".")

from data2model import tracking  # noqa: E402
from data2model.canary import run_canary  # noqa: E402
from data2model.params import load_params  # noqa: E402

if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] in ("-h", "--help"):
        raise SystemExit(__doc__)
    params = load_params()
    tracking.configure(params)
    start = time.perf_counter()
    outcome = run_canary(params, params.register.model_name, sys.argv[1])
    print(json.dumps({"seconds": round(time.perf_counter() - start, 2), **outcome}))
