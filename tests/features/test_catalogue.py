"""Catalogue sentences: a signal says its direction and what it is compared with; context is marked."""

from __future__ import annotations

import pytest

from features.catalogue import BY_NAME, CATALOGUE, compare_word, event_type_features, format_amount, states_direction


def test_signals_compared_with_peers_say_where_they_sit() -> None:
    seats = BY_NAME["seat_utilisation_30d"]
    assert seats.explain(0.28, 0.65, "mid-market accounts") == (
        "28% of licensed seats active in the last 30 days, well below the 65% typical for mid-market accounts"
    )
    assert seats.explain(0.28) == "28% of licensed seats active in the last 30 days"  # no baseline: the fact alone
    assert BY_NAME["auto_renew"].explain(0.0, 0.9, "SMB accounts") == "Auto-renew is off, unlike most SMB accounts"
    assert BY_NAME["nps_category"].explain("detractor", "promoter", "SMB accounts").endswith("unlike most SMB accounts (promoter)")
    for feature in CATALOGUE:
        if feature.is_context:
            continue
        sample = (feature.categories[0] if feature.categories else "x") if feature.is_categorical else (-0.3 if feature.compare == "change" else 0.3)
        typical = sample if feature.is_categorical else 0.6
        assert states_direction(feature.explain(sample, typical, "SMB accounts")), feature.name


@pytest.mark.parametrize(("value", "typical", "word"), [
    (0.28, 0.65, "well below"), (0.55, 0.65, "below"), (0.62, 0.65, "close to"), (0.8, 0.65, "above"), (2.0, 0.65, "well above"),
    (3, 0, "well above"), (0, 0, "close to"), (-0.30, -0.25, "below"),
])
def test_compare_word(value: float, typical: float, word: str) -> None:
    assert compare_word(value, typical) == word


def test_context_facts_are_marked_and_state_no_direction() -> None:
    context = {f.name for f in CATALOGUE if f.is_context}
    assert {"tenure_days", "arr", "plan", "segment", "seats", "days_to_first_value", "days_to_renewal", "journey_stage"} <= context
    # Context is never given a comparison, so it could never pass as a reason.
    assert BY_NAME["tenure_days"].explain(1775, 400, "SMB accounts") == "Customer for 1,775 days"
    assert not states_direction("Customer for 1,775 days")


def test_a_rise_is_never_on_the_risky_side_of_a_feature_that_risks_falls() -> None:
    trend = BY_NAME["usage_trend_30d"]
    assert trend.risky_side(1.07, None) is False and trend.risky_side(-0.42, None) is True
    assert trend.explain(1.07) == "Product usage rose 107% over the last 30 days"
    tickets = BY_NAME["tickets_30d"]
    assert tickets.risky_side(4, 1) is True and tickets.risky_side(0, 1) is False
    assert tickets.risky_side(1.05, 1) is None  # close to typical: neither side
    assert BY_NAME["nps_trend"].explain(-3) == "NPS fell 3 points since the previous answer"
    learned = event_type_features(["unfriend"])[0]
    assert learned.risky_side(5, 1) is None  # the account's SHAP sign decides


def test_baselines_are_written_like_the_values() -> None:
    assert format_amount(0.65, "ratio") == "65%" and format_amount(0.029, "ratio") == "2.9%"
    assert format_amount(1234.0, "events") == "1,234" and format_amount(3.4, "score") == "3.4"
    assert format_amount(0.12, "score") == "+0.12"


def test_a_catalogue_stored_with_an_older_model_gets_todays_roles_and_comparisons() -> None:
    import copy

    from features.catalogue import current_entry

    trend, count = event_type_features(["unfriend"])[1:3][0], event_type_features(["unfriend"])[0]
    old_tenure = copy.copy(BY_NAME["tenure_days"])
    for feature in (trend, count, old_tenure):  # as unpickled from a model saved before roles existed
        feature.__dict__.pop("role"), feature.__dict__.pop("compare")
    assert trend.compare == "peers"  # the class default would compare a change with peers
    assert current_entry(trend).compare == "change" and current_entry(count).compare == "peers"
    assert current_entry(old_tenure).is_context
