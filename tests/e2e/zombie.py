"""A bare-HTTP worker that claims one step run, then completes it when it gets the chance.

Used to play a zombie: the test SIGSTOPs it after it claimed, lets the lease pass to another
worker, SIGCONTs it, and reads the status of its late completion from stdout.
"""

from __future__ import annotations

import json
import sys
import time

import httpx


def main(url: str, action: str) -> int:
    api = f"{url}/api/v1"
    w = httpx.post(
        f"{api}/workers",
        json={"name": "zombie", "actions": [action], "slots": 1, "lease_timeout_s": 2},
    ).json()
    tasks: list[dict[str, str]] = []
    while not tasks:
        tasks = httpx.post(
            f"{api}/workers/{w['id']}/poll", json={"max_tasks": 1, "wait_s": 5}, timeout=10
        ).json()["tasks"]
    task = tasks[0]
    print(json.dumps({"claimed": task["step_run_id"], "attempt": task["attempt"]}), flush=True)
    time.sleep(1.5)  # the test stops us here
    r = httpx.post(
        f"{api}/step-runs/{task['step_run_id']}/complete",
        json={"lease_token": task["lease_token"], "output": {"by": "zombie"}},
    )
    print(json.dumps({"status": r.status_code, "body": r.json()}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], sys.argv[2]))
