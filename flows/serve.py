"""Run churnflow's deployments without a work pool or worker: ``python -m flows.serve``.

One long-lived process registers the deployments of prefect.yaml (same names, schedules,
timezone, parameters, descriptions and concurrency limits) with the Prefect server in
PREFECT_API_URL and executes their runs itself (scheduled ones, and custom runs started from
the UI or ``prefect deployment run``). Stopping the process stops the runs (the schedules
stay on the server, paused until a server or worker picks them up again).

prefect.yaml stays the single source of truth: this module reads it instead of repeating
schedules in Python. Use either this or ``prefect deploy`` + a worker for one server, not
both: the names are the same, and a served deployment that updates one created by
``prefect deploy`` keeps its pull steps, so its runs crash looking for flow code. This
refuses to start over such deployments unless ``--replace`` (which deletes them first).
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any

import yaml

PROJECT_DIR = Path(__file__).resolve().parents[1]
PREFECT_YAML = PROJECT_DIR / "prefect.yaml"


def _load_flow(entrypoint: str) -> Any:
    path, func = entrypoint.split(":")
    module = ".".join(Path(path).with_suffix("").parts)
    return getattr(importlib.import_module(module), func)


def build_deployments(prefect_yaml: Path = PREFECT_YAML, only: list[str] | None = None) -> list[Any]:
    """RunnerDeployments for the deployments in prefect.yaml (optionally only some names)."""
    from prefect.schedules import Cron

    config = yaml.safe_load(prefect_yaml.read_text(encoding="utf-8"))
    deployments = []
    for spec in config["deployments"]:
        if only and spec["name"] not in only:
            continue
        deployments.append(
            _load_flow(spec["entrypoint"]).to_deployment(
                name=spec["name"],
                description=spec.get("description"),
                tags=spec.get("tags"),
                parameters=spec.get("parameters") or {},
                schedules=[Cron(s["cron"], timezone=s.get("timezone")) for s in spec.get("schedules") or []],
                concurrency_limit=spec.get("concurrency_limit"),
                triggers=_triggers(spec.get("triggers") or []),
            )
        )
    return deployments


def _triggers(specs: list[dict[str, Any]]) -> list[Any]:
    """prefect.yaml's ``triggers:`` entries as Prefect's deployment trigger objects."""
    from pydantic import TypeAdapter
    from prefect.events import DeploymentTriggerTypes

    return [TypeAdapter(DeploymentTriggerTypes).validate_python(spec) for spec in specs]


def worker_deployments(deployments: list[Any]) -> list[tuple[str, Any]]:
    """(full name, id) of existing deployments with these names that a work pool runs."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    found = []
    with get_client(sync_client=True) as client:
        for dep in deployments:
            full = f"{dep.flow_name}/{dep.name}"
            try:
                existing = client.read_deployment_by_name(full)
            except ObjectNotFound:
                continue
            if existing.work_pool_name or existing.pull_steps:
                found.append((full, existing.id))
    return found


def main(argv: list[str] | None = None) -> None:
    from prefect import serve
    from prefect.client.orchestration import get_client

    parser = argparse.ArgumentParser(prog="python -m flows.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="serve only these deployment names (default: all in prefect.yaml)")
    parser.add_argument("--limit", type=int, default=1, help="flow runs this process executes at once (default 1)")
    parser.add_argument("--replace", action="store_true", help="delete deployments of the same names made by `prefect deploy` first")
    args = parser.parse_args(argv)
    deployments = build_deployments(only=args.only)
    conflicts = worker_deployments(deployments)
    if conflicts and not args.replace:
        names = ", ".join(name for name, _ in conflicts)
        raise SystemExit(f"{names}: deployed for a work pool (prefect deploy). Serve with --replace to delete and re-create them, "
                         "or keep using the worker.")
    with get_client(sync_client=True) as client:
        for name, deployment_id in conflicts:
            client.delete_deployment(deployment_id)
            print(f"deleted worker deployment {name} (--replace)")
    serve(*deployments, limit=args.limit)


if __name__ == "__main__":
    main()
