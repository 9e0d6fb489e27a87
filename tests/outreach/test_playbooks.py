"""Playbooks: the YAML language is validated at load, naming the file, playbook and key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from churnflow.vocabulary import BANDS, TASK_PRIORITIES
from outreach.playbooks import PlaybookError, load_playbooks


def test_default_playbooks_load() -> None:
    book = load_playbooks()
    assert {pb.name for pb in book.playbooks} >= {"renewal_at_risk", "usage_collapse", "support_pain", "detractor_follow_up"}


@pytest.mark.parametrize(
    ("mutation", "message"),
    [
        (("field", "days_to_renewl"), "renewal_at_risk.*unknown field 'days_to_renewl'"),
        (("op", "approximately"), "renewal_at_risk.*unknown op 'approximately'"),
        (("value", "soon"), "renewal_at_risk.*needs a numeric field and value"),
    ],
)
def test_a_typo_is_refused_at_load_naming_playbook_and_key(tmp_path: Path, mutation: tuple[str, str], message: str) -> None:
    text = (Path(__file__).parents[2] / "outreach" / "playbooks.yaml").read_text()
    key, bad = mutation
    original = {"field": "days_to_renewal", "op": "le", "value": "120"}[key]
    needle = "{field: days_to_renewal, op: le, value: 120}"
    assert needle in text
    path = tmp_path / "playbooks.yaml"
    path.write_text(text.replace(needle, needle.replace(f"{key}: {original}", f"{key}: {bad}"), 1))
    with pytest.raises(PlaybookError, match=message) as info:
        load_playbooks(path)
    assert str(path) in str(info.value)


def test_unknown_placeholder_and_team_are_refused(tmp_path: Path) -> None:
    text = (Path(__file__).parents[2] / "outreach" / "playbooks.yaml").read_text()
    path = tmp_path / "p.yaml"
    path.write_text(text.replace("{account_name} (health {health_score})", "{acount_name}", 1))
    with pytest.raises(PlaybookError, match="acount_name"):
        load_playbooks(path)
    path.write_text(text.replace("owner: team:support_ops", "owner: team:nobody", 1))
    with pytest.raises(PlaybookError, match="team:nobody"):
        load_playbooks(path)


def test_band_and_priority_words_come_from_the_vocabulary(tmp_path: Path) -> None:
    text = (Path(__file__).parents[2] / "outreach" / "playbooks.yaml").read_text()
    path = tmp_path / "p.yaml"
    path.write_text(text.replace("priority: High", "priority: Urgent", 1))
    with pytest.raises(PlaybookError, match=re.escape(f"unknown priority 'Urgent'; use one of {', '.join(TASK_PRIORITIES)}")):
        load_playbooks(path)
    needle = "{field: band, op: eq, value: red}"
    assert needle in text
    path.write_text(text.replace(needle, "{field: band, op: eq, value: amber}", 1))
    with pytest.raises(PlaybookError, match=re.escape(f"no value(s) ['amber']; allowed {', '.join(BANDS)}")):
        load_playbooks(path)
