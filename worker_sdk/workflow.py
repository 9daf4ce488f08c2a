"""Declaring workflows: ``Workflow`` and its ``@wf.step`` / ``@wf.on_failure`` decorators."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from worker_sdk.errors import DefinitionError

if TYPE_CHECKING:
    from worker_sdk.context import Context

StepFn = Callable[["Context"], Any]
"""A step: ``fn(ctx) -> JSON-able``, sync or ``async``."""
F = TypeVar("F", bound=Callable[..., Any])
Delivery = Literal["at_least_once", "at_most_once"]
ParentRef = str | Callable[..., Any]

NAME_RE = re.compile(r"[a-z0-9_.-]{1,64}")  # matched whole (fullmatch: no trailing newline)
DELIVERIES: tuple[str, ...] = ("at_least_once", "at_most_once")
BACKOFF_FIELDS: tuple[str, ...] = ("initial_s", "factor", "max_s", "jitter")


@dataclass(frozen=True)
class Backoff:
    """Retry backoff of a step; fields left ``None`` take the server's defaults."""

    initial_s: float | None = None
    factor: float | None = None
    max_s: float | None = None
    jitter: float | None = None  # fraction 0..1

    def to_json(self) -> dict[str, float]:
        raw = {f: getattr(self, f) for f in BACKOFF_FIELDS}
        return {k: v for k, v in raw.items() if v is not None}


@dataclass(frozen=True)
class StepSpec:
    """One declared step (or the on-failure handler) of a workflow."""

    name: str
    fn: StepFn
    action: str  # effective action, "<workflow>.<step>" unless given
    explicit_action: bool
    parents: tuple[str, ...]
    retries: int
    backoff: Mapping[str, float] | None
    timeout_s: float | None
    schedule_timeout_s: float | None
    delivery: Delivery | None
    is_async: bool

    def to_json(self) -> dict[str, Any]:
        """The step as the server wants it; unset optional fields are left out."""
        out: dict[str, Any] = {"name": self.name}
        if self.explicit_action:
            out["action"] = self.action
        if self.parents:
            out["parents"] = list(self.parents)
        if self.retries:
            out["retries"] = self.retries
        if self.backoff is not None:
            out["backoff"] = dict(self.backoff)
        if self.timeout_s is not None:
            out["timeout_s"] = self.timeout_s
        if self.schedule_timeout_s is not None:
            out["schedule_timeout_s"] = self.schedule_timeout_s
        if self.delivery is not None:
            out["delivery"] = self.delivery
        return out


def is_async_callable(fn: Callable[..., Any]) -> bool:
    call = getattr(fn, "__call__", None)  # noqa: B004 - async callable objects too
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)


def _check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise DefinitionError(
            f"{kind} name {name!r} must match [a-z0-9_.-]{{1,64}} (pass name=... to override)"
        )
    return name


def _check_number(where: str, value: float | None, *, low: float, high: float) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise DefinitionError(f"{where} must be a number in [{low}, {high}], got {value!r}")
    return float(value)


def _check_backoff(where: str, backoff: Backoff | Mapping[str, float] | None) -> dict[str, float]:
    raw = backoff.to_json() if isinstance(backoff, Backoff) else dict(backoff or {})
    unknown = sorted(set(raw) - set(BACKOFF_FIELDS))
    if unknown:
        raise DefinitionError(f"{where}: unknown backoff field(s) {unknown}")
    limits = {"initial_s": (0, 86400), "factor": (1, 100), "max_s": (0, 86400), "jitter": (0, 1)}
    for key, value in raw.items():
        low, high = limits[key]
        _check_number(f"{where}: backoff.{key}", value, low=low, high=high)
    return raw


class Workflow:
    """A named DAG of steps. Decorate functions with ``@wf.step(...)`` to add steps."""

    def __init__(
        self,
        name: str,
        *,
        on_failure: StepFn | None = None,
        description: str | None = None,
    ) -> None:
        self._name = _check_name("workflow", name)
        self._description = description
        self._steps: dict[str, StepSpec] = {}
        self._by_fn: dict[Callable[..., Any], str] = {}
        self._on_failure: StepSpec | None = None
        if on_failure is not None:
            self.on_failure(on_failure)

    def __repr__(self) -> str:
        return f"Workflow({self._name!r}, steps={list(self._steps)})"

    @property
    def name(self) -> str:
        return self._name

    @property
    def steps(self) -> tuple[StepSpec, ...]:
        return tuple(self._steps.values())

    @property
    def on_failure_step(self) -> StepSpec | None:
        return self._on_failure

    def all_steps(self) -> tuple[StepSpec, ...]:
        """The steps plus the on-failure handler, if any."""
        extra = (self._on_failure,) if self._on_failure is not None else ()
        return (*self._steps.values(), *extra)

    def step_name(self, ref: ParentRef) -> str:
        """Resolve a step given by name or by its decorated function."""
        if isinstance(ref, str):
            return ref
        name = self._by_fn.get(ref)
        if name is None:
            label = getattr(ref, "__qualname__", repr(ref))
            raise DefinitionError(f"{label} is not a step of workflow {self._name!r}")
        return name

    @overload
    def step(self, fn: F, /) -> F: ...
    @overload
    def step(
        self,
        fn: None = None,
        /,
        *,
        parents: Iterable[ParentRef] | None = None,
        retries: int = 0,
        timeout_s: float | None = None,
        schedule_timeout_s: float | None = None,
        backoff: Backoff | Mapping[str, float] | None = None,
        delivery: Delivery | None = None,
        action: str | None = None,
        name: str | None = None,
    ) -> Callable[[F], F]: ...
    def step(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        parents: Iterable[ParentRef] | None = None,
        retries: int = 0,
        timeout_s: float | None = None,
        schedule_timeout_s: float | None = None,
        backoff: Backoff | Mapping[str, float] | None = None,
        delivery: Delivery | None = None,
        action: str | None = None,
        name: str | None = None,
    ) -> Any:
        """Declare a step; usable bare (``@wf.step``) or with options (``@wf.step(...)``)."""
        if isinstance(parents, str):
            raise DefinitionError("parents must be a list of step names or functions")
        parent_names = tuple(self.step_name(p) for p in parents or ())

        def decorate(func: F) -> F:
            spec = self._make_spec(
                func, name, action, parent_names, retries, timeout_s, schedule_timeout_s,
                backoff, delivery,
            )  # fmt: skip
            if spec.name in self._steps or (
                self._on_failure is not None and self._on_failure.name == spec.name
            ):
                raise DefinitionError(f"workflow {self._name!r} already has a step {spec.name!r}")
            self._steps[spec.name] = spec
            self._by_fn.setdefault(func, spec.name)
            return func

        return decorate(fn) if fn is not None else decorate

    @overload
    def on_failure(self, fn: F, /) -> F: ...
    @overload
    def on_failure(
        self,
        fn: None = None,
        /,
        *,
        retries: int = 0,
        timeout_s: float | None = None,
        schedule_timeout_s: float | None = None,
        backoff: Backoff | Mapping[str, float] | None = None,
        delivery: Delivery | None = None,
        action: str | None = None,
        name: str | None = None,
    ) -> Callable[[F], F]: ...
    def on_failure(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        retries: int = 0,
        timeout_s: float | None = None,
        schedule_timeout_s: float | None = None,
        backoff: Backoff | Mapping[str, float] | None = None,
        delivery: Delivery | None = None,
        action: str | None = None,
        name: str | None = None,
    ) -> Any:
        """Declare the step run when the workflow fails (it takes no parents)."""

        def decorate(func: F) -> F:
            if self._on_failure is not None:
                raise DefinitionError(f"workflow {self._name!r} already has an on_failure step")
            spec = self._make_spec(
                func, name, action, (), retries, timeout_s, schedule_timeout_s, backoff, delivery
            )
            if spec.name in self._steps:
                raise DefinitionError(f"on_failure step name {spec.name!r} is already a step")
            self._on_failure = spec
            self._by_fn.setdefault(func, spec.name)
            return func

        return decorate(fn) if fn is not None else decorate

    def _make_spec(
        self,
        fn: Callable[..., Any],
        name: str | None,
        action: str | None,
        parents: tuple[str, ...],
        retries: int,
        timeout_s: float | None,
        schedule_timeout_s: float | None,
        backoff: Backoff | Mapping[str, float] | None,
        delivery: Delivery | None,
    ) -> StepSpec:
        if not callable(fn):
            raise DefinitionError(f"a step must be a function, got {fn!r}")
        step = _check_name("step", name if name is not None else getattr(fn, "__name__", ""))
        where = f"step {self._name}.{step}"
        if action is not None and (not 1 <= len(action) <= 200 or not action.isprintable()):
            raise DefinitionError(f"{where}: action must be a printable string of 1-200 chars")
        if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 1000:
            raise DefinitionError(f"{where}: retries must be an integer 0..1000")
        if delivery is not None and delivery not in DELIVERIES:
            raise DefinitionError(f"{where}: delivery must be one of {list(DELIVERIES)}")
        if len(set(parents)) != len(parents):
            raise DefinitionError(f"{where}: parents repeat a name")
        if step in parents:
            raise DefinitionError(f"{where}: a step cannot be its own parent")
        week = 7 * 24 * 3600.0
        return StepSpec(
            name=step,
            fn=fn,
            action=action or f"{self._name}.{step}",
            explicit_action=action is not None,
            parents=parents,
            retries=retries,
            backoff=_check_backoff(where, backoff) if backoff is not None else None,
            timeout_s=_check_number(f"{where}: timeout_s", timeout_s, low=0.1, high=week),
            schedule_timeout_s=_check_number(
                f"{where}: schedule_timeout_s", schedule_timeout_s, low=0.1, high=week
            ),
            delivery=delivery,
            is_async=is_async_callable(fn),
        )

    def validate(self) -> None:
        """Check the whole DAG: non-empty, known parents, no cycle, one function per action."""
        if not self._steps:
            raise DefinitionError(f"workflow {self._name!r} has no steps")
        for spec in self._steps.values():
            missing = [p for p in spec.parents if p not in self._steps]
            if missing:
                raise DefinitionError(f"step {self._name}.{spec.name}: unknown parent(s) {missing}")
        _check_acyclic(self._name, {s.name: s.parents for s in self._steps.values()})
        seen: dict[str, StepSpec] = {}
        for spec in self.all_steps():
            other = seen.setdefault(spec.action, spec)
            if other.fn is not spec.fn:
                raise DefinitionError(
                    f"action {spec.action!r} is used by steps {other.name!r} and {spec.name!r} "
                    "with different functions"
                )

    def definition(self) -> dict[str, Any]:
        """The body of ``PUT /api/v1/workflows/{name}``."""
        self.validate()
        out: dict[str, Any] = {"steps": [s.to_json() for s in self._steps.values()]}
        if self._on_failure is not None:
            out["on_failure"] = self._on_failure.to_json()
        if self._description is not None:
            out["description"] = self._description
        return out


def _check_acyclic(workflow: str, parents: Mapping[str, tuple[str, ...]]) -> None:
    done: set[str] = set()
    for root in parents:
        path: list[str] = []
        on_path: set[str] = set()
        stack: list[tuple[str, int]] = [(root, 0)]
        while stack:
            node, idx = stack.pop()
            if idx == 0:
                if node in done:
                    continue
                path.append(node)
                on_path.add(node)
            if idx < len(parents[node]):
                stack.append((node, idx + 1))
                nxt = parents[node][idx]
                if nxt in on_path:
                    cycle = " -> ".join([*path[path.index(nxt) :], nxt])
                    raise DefinitionError(f"workflow {workflow!r} has a cycle: {cycle}")
                if nxt not in done:
                    stack.append((nxt, 0))
            else:
                done.add(node)
                on_path.discard(node)
                path.pop()
