"""``python -m flows.serve`` builds the same deployments as prefect.yaml (no worker needed)."""

from __future__ import annotations

import yaml

from flows.serve import PREFECT_YAML, build_deployments


def test_serve_mirrors_prefect_yaml() -> None:
    specs = {d["name"]: d for d in yaml.safe_load(PREFECT_YAML.read_text(encoding="utf-8"))["deployments"]}
    built = {d.name: d for d in build_deployments()}
    assert set(built) == set(specs) == {"daily", "train", "monitor", "digest", "backfill", "react"}
    for name, dep in built.items():
        spec = specs[name]
        assert dep.flow_name == name
        assert [(s.schedule.cron, s.schedule.timezone) for s in dep.schedules] == [(s["cron"], s["timezone"]) for s in spec.get("schedules") or []]
        assert dep.concurrency_limit == spec.get("concurrency_limit")  # reactions for different accounts run side by side
        assert len(dep.triggers) == len(spec.get("triggers") or [])
        assert all(p.get("description") for p in dep._parameter_openapi_schema.properties.values()), name
    assert [d.name for d in build_deployments(only=["daily"])] == ["daily"]
