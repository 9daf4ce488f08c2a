"""Workflow definitions: validation and normalisation (pure, no database)."""

from __future__ import annotations

import re
from typing import Any

from db.errors import InvalidDefinition

NAME_RE = re.compile(r"[a-z0-9_.-]{1,64}")
DELIVERIES = ("at_least_once", "at_most_once")
DEFAULT_BACKOFF = {"initial_s": 1.0, "factor": 2.0, "max_s": 60.0, "jitter": 0.2}
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_SCHEDULE_TIMEOUT_S = 300.0
MAX_RETRIES = 1000
MAX_TIMEOUT_S = 7 * 24 * 3600.0
ON_FAILURE = "on_failure"


def _number(step: str, field: str, value: Any, *, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidDefinition(f"step {step!r}: {field} must be a number")
    if not low <= float(value) <= high:
        raise InvalidDefinition(f"step {step!r}: {field} must be between {low} and {high}")
    return float(value)


def _backoff(step: str, raw: Any) -> dict[str, float]:
    if raw is None:
        return dict(DEFAULT_BACKOFF)
    if not isinstance(raw, dict):
        raise InvalidDefinition(f"step {step!r}: backoff must be an object")
    unknown = set(raw) - set(DEFAULT_BACKOFF)
    if unknown:
        raise InvalidDefinition(f"step {step!r}: unknown backoff field(s) {sorted(unknown)}")
    merged = {**DEFAULT_BACKOFF, **raw}
    return {
        "initial_s": _number(step, "backoff.initial_s", merged["initial_s"], low=0, high=86400),
        "factor": _number(step, "backoff.factor", merged["factor"], low=1, high=100),
        "max_s": _number(step, "backoff.max_s", merged["max_s"], low=0, high=86400),
        "jitter": _number(step, "backoff.jitter", merged["jitter"], low=0, high=1),
    }


STEP_FIELDS = {
    "name",
    "action",
    "parents",
    "retries",
    "backoff",
    "timeout_s",
    "schedule_timeout_s",
    "delivery",
}


def _step(workflow: str, raw: Any, *, allow_parents: bool) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise InvalidDefinition("every step must be an object")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidDefinition(f"step name {name!r} must match [a-z0-9_.-]{{1,64}}")
    unknown = set(raw) - STEP_FIELDS
    if unknown:
        raise InvalidDefinition(f"step {name!r}: unknown field(s) {sorted(unknown)}")
    action = raw.get("action") or f"{workflow}.{name}"
    if not isinstance(action, str) or not 1 <= len(action) <= 200 or not action.isprintable():
        raise InvalidDefinition(f"step {name!r}: action must be a printable string of 1-200 chars")
    parents = raw.get("parents") or []
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise InvalidDefinition(f"step {name!r}: parents must be a list of step names")
    if parents and not allow_parents:
        raise InvalidDefinition("the on_failure step cannot have parents")
    if len(set(parents)) != len(parents):
        raise InvalidDefinition(f"step {name!r}: parents repeat a name")
    retries = raw.get("retries", 0)
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= MAX_RETRIES:
        raise InvalidDefinition(f"step {name!r}: retries must be an integer 0..{MAX_RETRIES}")
    delivery = raw.get("delivery") or "at_least_once"
    if delivery not in DELIVERIES:
        raise InvalidDefinition(f"step {name!r}: delivery must be one of {list(DELIVERIES)}")
    timeout = raw.get("timeout_s", DEFAULT_TIMEOUT_S)
    sched = raw.get("schedule_timeout_s", DEFAULT_SCHEDULE_TIMEOUT_S)
    return {
        "name": name,
        "action": action,
        "parents": list(parents),
        "retries": retries,
        "backoff": _backoff(name, raw.get("backoff")),
        "timeout_s": _number(name, "timeout_s", timeout, low=0.1, high=MAX_TIMEOUT_S),
        "schedule_timeout_s": _number(
            name, "schedule_timeout_s", sched, low=0.1, high=MAX_TIMEOUT_S
        ),
        "delivery": delivery,
    }


def _check_acyclic(steps: list[dict[str, Any]]) -> None:
    parents = {s["name"]: s["parents"] for s in steps}
    state: dict[str, int] = {}  # 1 = visiting, 2 = done
    for root in parents:
        if state.get(root) == 2:
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        path: list[str] = []
        while stack:
            node, idx = stack.pop()
            if idx == 0:
                if state.get(node) == 1:
                    raise InvalidDefinition(f"cycle: {' -> '.join([*path, node])}")
                if state.get(node) == 2:
                    continue
                state[node] = 1
                path.append(node)
            ps = parents[node]
            if idx < len(ps):
                stack.append((node, idx + 1))
                nxt = ps[idx]
                if state.get(nxt) == 1:
                    cycle = [*path[path.index(nxt) :], nxt]
                    raise InvalidDefinition(f"cycle: {' -> '.join(cycle)}")
                if state.get(nxt) != 2:
                    stack.append((nxt, 0))
            else:
                state[node] = 2
                path.pop()


def normalize(workflow: str, raw: Any, *, max_steps: int) -> dict[str, Any]:
    """Validate a definition and fill in defaults. Raises InvalidDefinition naming the offence."""
    if not NAME_RE.fullmatch(workflow):
        raise InvalidDefinition(f"workflow name {workflow!r} must match [a-z0-9_.-]{{1,64}}")
    if not isinstance(raw, dict):
        raise InvalidDefinition("the definition must be an object with a 'steps' list")
    unknown = set(raw) - {"steps", "on_failure", "description"}
    if unknown:
        raise InvalidDefinition(f"unknown field(s) {sorted(unknown)}")
    raw_steps = raw.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise InvalidDefinition("'steps' must be a non-empty list")
    if len(raw_steps) > max_steps:
        raise InvalidDefinition(f"{len(raw_steps)} steps is over the limit of {max_steps}")
    steps = [_step(workflow, s, allow_parents=True) for s in raw_steps]
    names = [s["name"] for s in steps]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InvalidDefinition(f"duplicate step name(s) {dupes}")
    known = set(names)
    for s in steps:
        missing = [p for p in s["parents"] if p not in known]
        if missing:
            raise InvalidDefinition(f"step {s['name']!r}: unknown parent(s) {missing}")
        if s["name"] in s["parents"]:
            raise InvalidDefinition(f"cycle: step {s['name']!r} is its own parent")
    _check_acyclic(steps)
    out: dict[str, Any] = {"steps": steps}
    description = raw.get("description")
    if description is not None:
        if not isinstance(description, str) or len(description) > 2000:
            raise InvalidDefinition("description must be a string of at most 2000 chars")
        out["description"] = description
    if raw.get("on_failure") is not None:
        handler = _step(workflow, raw["on_failure"], allow_parents=False)
        if handler["name"] in known:
            raise InvalidDefinition(f"on_failure step name {handler['name']!r} is already a step")
        out["on_failure"] = handler
    return out
