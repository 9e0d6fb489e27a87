"""The suite's own rules: every test folder has a group, and the checks that keep the shared
fixtures read-only can see a write."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import sqlalchemy as sa

from churnflow.demo_data import generate_book
from churnflow.settings import Settings
from churnflow.warehouse import get_engine
from features.build import materialize_features
from tests.conftest import book_digest, home_digest

ROOT = Path(__file__).resolve().parents[1]


def test_every_test_folder_and_the_notebooks_have_a_group() -> None:
    from conftest import GROUPS, group_of  # the repository root's conftest.py

    folders = sorted({p.parent.relative_to(ROOT).as_posix() for p in (ROOT / "tests").rglob("test_*.py")} - {"tests"})
    assert folders and all(group_of(f"{folder}/test_x.py::test_y") in GROUPS for folder in folders), folders
    assert group_of("notebooks/01_explore_the_book.ipynb") == "system"
    assert group_of("tests/test_suite.py::test_every_test_folder_and_the_notebooks_have_a_group") == "data"
    assert group_of("elsewhere/test_x.py::test_y") is None  # no group: the collection stops


def test_a_write_to_a_trained_home_changes_its_digest_and_a_read_does_not(trained_copy: Settings) -> None:
    before = home_digest(trained_copy)
    engine = get_engine(trained_copy.warehouse)
    materialize_features(engine, [date(2026, 9, 3)])  # a read that fills the feature cache
    engine.dispose()
    assert home_digest(trained_copy) == before
    engine = get_engine(trained_copy.warehouse)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM tickets WHERE ticket_id = (SELECT MIN(ticket_id) FROM tickets)"))
    engine.dispose()
    assert home_digest(trained_copy) != before


def test_a_frame_changed_in_place_changes_the_book_digest() -> None:
    book = generate_book(accounts=20, days=60, seed=1)
    before = book_digest(book)
    assert book_digest({name: frame.copy() for name, frame in book.items()}) == before
    book["usage"].loc[book["usage"].index[0], "quantity"] += 1
    assert book_digest(book) != before
