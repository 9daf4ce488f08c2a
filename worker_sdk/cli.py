"""``python -m worker_sdk module.path:attr`` (also behind the server's ``cairn worker``)."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from worker_sdk.client import resolve_url
from worker_sdk.errors import CairnError
from worker_sdk.logs import configure_default_logging
from worker_sdk.worker import Worker
from worker_sdk.workflow import Workflow

log = logging.getLogger("cairn.worker")
WORKER_FLAGS = ("url", "slots", "name", "token", "shutdown_grace")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m worker_sdk",
        description="Run a Cairn worker for the workflows (or Worker) at module.path:attr.",
    )
    parser.add_argument("target", help="module.path:attr naming a Worker, Workflow or list")
    parser.add_argument("--url", default=None, help="server URL (default $CAIRN_URL or local)")
    parser.add_argument("--slots", type=int, default=None, help="concurrent steps (default 100)")
    parser.add_argument("--name", default=None, help="worker name (default host-pid)")
    parser.add_argument("--token", default=None, help="API token (default $CAIRN_TOKEN)")
    parser.add_argument(
        "--shutdown-grace",
        type=float,
        default=None,
        metavar="S",
        help="on SIGTERM, seconds running steps get to finish before their leases are released"
        " (default 30)",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging level (default INFO)",
    )
    return parser


def load_target(spec: str) -> Any:
    """Import ``module.path:attr`` (dots in ``attr`` walk attributes)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CairnError(f"target {spec!r} must look like module.path:attr")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: the current directory is importable
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CairnError(f"{module_name!r} has no attribute {attr!r}") from None
    return obj


def build_worker(target: Any, args: argparse.Namespace) -> Worker:
    if isinstance(target, Worker):
        return override(target, args)
    if isinstance(target, Workflow):
        workflows = [target]
    elif (
        isinstance(target, list | tuple) and target and all(isinstance(w, Workflow) for w in target)
    ):
        workflows = list(target)
    else:
        raise CairnError(f"target must be a Worker, a Workflow or a list of them, not {target!r}")
    options: dict[str, Any] = {"slots": args.slots} if args.slots is not None else {}
    if args.shutdown_grace is not None:
        options["shutdown_grace_s"] = args.shutdown_grace
    return Worker(
        resolve_url(args.url),
        workflows=workflows,
        name=args.name,
        token=args.token or os.environ.get("CAIRN_TOKEN") or None,
        **options,
    )


def override(worker: Worker, args: argparse.Namespace) -> Worker:
    """A ready ``Worker`` (``shop:worker``) with what the command line sets on top: the flags
    win over the arguments it was built with, as they would for a Workflow target."""
    if args.slots is not None and args.slots < 1:
        raise CairnError("--slots must be >= 1")
    given = [f"--{k.replace('_', '-')}" for k in WORKER_FLAGS if getattr(args, k) is not None]
    if args.url is not None:
        worker.url = resolve_url(args.url)
    if args.slots is not None:
        worker.slots = args.slots
    if args.name is not None:
        worker.name = args.name
    if args.shutdown_grace is not None:
        worker.shutdown_grace_s = args.shutdown_grace
    if args.token is not None:
        worker.use_token(args.token)
    if given:
        log.info("worker %s: %s from the command line", worker.name, ", ".join(given))
    return worker


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    configure_default_logging(args.log_level)
    try:
        worker = build_worker(load_target(args.target), args)
        worker.run()
    except CairnError as exc:
        log.error("%s", exc)
        return 1
    except ImportError as exc:
        log.error("cannot import %s: %s", args.target, exc)
        return 1
    return 0
