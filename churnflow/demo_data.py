"""A synthetic B2B SaaS book whose churn comes from a known latent hazard.

Why this exists: churnflow's features, model, explanations and playbooks need data whose
ground truth is known. Every account here has a latent monthly state (engagement, seat
utilisation, error propensity, support pain, sentiment). A documented logistic hazard
(:data:`HAZARD_WEIGHTS`, :func:`monthly_hazard`) turns that state into a monthly churn
probability, and every observed table (usage, tickets, surveys, subscriptions) is drawn
*from the same state*, noisily. A model can therefore recover the planted signals, and the
``truth`` table lets evaluations compare predictions against the real hazard.

Design points:

* Deterministic: every random stream is seeded from ``(seed, stream id)``; the default
  ``end_date`` is fixed, so the same arguments always give identical frames.
* Vectorised numpy: Python loops run over months (about 20) and usage chunks, never over
  usage rows. Usage is produced in account chunks bounded by user-days, so a 100k-account
  book can be streamed to the warehouse with :func:`write_demo_book` in bounded memory.
* The hazard for month *m* uses the state of month *m - 1*: signals precede churn, which is
  what a model scoring at the start of a month can actually see.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import numpy as np
import pandas as pd
import sqlalchemy as sa
from scipy.special import expit, ndtr

from churnflow import schema
from churnflow.history import reset_history
from churnflow.warehouse import replace_rows

log = logging.getLogger(__name__)

DEFAULT_END_DATE = date(2026, 11, 1)
"""Fixed default end of the simulated period, so default books are reproducible."""

HAZARD_WEIGHTS: dict[str, float] = {
    # Logit-scale weights of the monthly churn hazard. A positive weight means more of the
    # driver raises churn risk; negative means it protects. Drivers are taken from the
    # account's latent state in the month *before* the hazard month.
    "intercept": -7.7,  # calibrated: ~15-20% annual logo churn, ~4-7% per 90 days
    "usage_decline": 2.5,  # month-over-month fractional drop in expected usage (0..1)
    "seat_underuse": 3.0,  # 1 - seat utilisation (0..1)
    "error_spike": 0.45,  # product error propensity above the account's baseline (>= 0)
    "slow_first_response": 0.35,  # support pain: log-scale slowness of first responses (z)
    "reopened_tickets": 1.5,  # probability a ticket gets reopened (0..1)
    "detractor_nps": 2.0,  # probability an NPS answer is a detractor, 0-6 (0..1)
    "low_csat": 1.0,  # probability a CSAT answer is 1-2 (0..1)
    "high_ces": 0.7,  # probability a CES answer is 5-7, i.e. high effort (0..1)
    "renewal_within_90d": 0.6,  # 1 when a term ends within the next 90 days
    "segment_smb": 0.45,  # 1 for smb accounts: small customers churn more
    "segment_enterprise": -0.7,  # 1 for enterprise accounts: big customers churn less
    "young_account": 0.7,  # exp(-tenure_months / 6): new accounts churn more
    "noise": 1.0,  # unobserved frailty + monthly shock (standard-normal scale)
}
"""Weights of :func:`monthly_hazard`; the single source of truth for the planted signals."""

DRIVERS: tuple[str, ...] = tuple(k for k in HAZARD_WEIGHTS if k != "intercept")

SEGMENTS = np.array(["smb", "mid_market", "enterprise"], dtype=object)
SEGMENT_SHARE = np.array([0.62, 0.28, 0.10])
PLANS = np.array(["starter", "growth", "enterprise"], dtype=object)
PLAN_SEAT_PRICE_MONTHLY = np.array([25.0, 55.0, 110.0])
INDUSTRIES = np.array(
    ["software", "retail", "healthcare", "financial services", "manufacturing", "education",
     "logistics", "media", "real estate", "professional services", "hospitality", "energy"],
    dtype=object,
)
INDUSTRY_SHARE = np.array([0.2, 0.1, 0.09, 0.1, 0.09, 0.07, 0.07, 0.06, 0.05, 0.1, 0.04, 0.03])
COUNTRIES = np.array(["US", "GB", "DE", "FR", "CA", "AU", "NL", "BR", "ES", "SE", "IN", "JP"], dtype=object)
COUNTRY_SHARE = np.array([0.42, 0.11, 0.09, 0.06, 0.07, 0.05, 0.04, 0.04, 0.03, 0.03, 0.03, 0.03])
FEATURES = np.array(
    ["dashboard", "reports", "editor", "search", "export", "integrations", "api", "alerts", "sharing", "admin"],
    dtype=object,
)
FEATURE_SHARE = np.array([0.22, 0.16, 0.15, 0.1, 0.07, 0.07, 0.08, 0.06, 0.06, 0.03])
CSMS = np.array(
    ["ana.silva", "ben.carter", "chloe.martin", "david.okafor", "emma.larsen",
     "felix.wagner", "grace.kim", "hugo.moreau", "isabel.rossi"],
    dtype=object,
)
ENTERPRISE_CSMS = np.array(["julia.novak", "kenji.tanaka", "laura.mendes"], dtype=object)
EMAIL_DOMAIN = "example.com"

_SYLLABLES = np.array(
    ["ac", "al", "ar", "bel", "bri", "cor", "da", "del", "en", "fa", "gen", "ha", "is", "jo", "ka",
     "lu", "ma", "mer", "nor", "no", "or", "pa", "quin", "ra", "ri", "sa", "sol", "ta", "tri", "ul",
     "va", "ver", "wes", "xa", "yo", "ze"],
    dtype=object,
)
_SUFFIXES = np.array(
    ["", "", "", " Labs", " Systems", " Inc", " Group", " Health", " Logistics", " Media",
     " Analytics", " GmbH", " Ltd", " Partners", " Works", " Cloud"],
    dtype=object,
)
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_SF_SUFFIX = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"

_DAY = np.timedelta64(1, "D")
_SEC_NS = 1_000_000_000
_DAY_NS = 86_400 * _SEC_NS
_BURN_IN_MONTHS = 3
USAGE_MAX_CELLS = 4_000_000
"""Upper bound on user x day cells per usage chunk: bounds memory at ~100 MB per chunk."""

# Random stream ids: each table has its own stream, so changing one table's generator does
# not reshuffle the others.
_S_ACCOUNTS, _S_LATENT, _S_SUBS, _S_TICKETS, _S_SURVEYS, _S_USAGE = 1, 2, 3, 4, 5, 6


def _rng(seed: int, stream: int, *extra: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, *extra])


_NAT = np.iinfo(np.int64).min


def _ts(ns: np.ndarray) -> np.ndarray:
    """int64 nanoseconds since the epoch (``_NAT`` = missing) as datetime64[ns], without parsing."""
    return np.asarray(ns, dtype=np.int64).view("datetime64[ns]")


def monthly_hazard(drivers: pd.DataFrame) -> np.ndarray:
    """True monthly churn probability: ``sigmoid(intercept + sum(weight * driver))``.

    Pure and vectorised so tests and docs can check each planted driver's direction. A
    driver column that is missing counts as 0.
    """
    logit = np.full(len(drivers), HAZARD_WEIGHTS["intercept"], dtype=float)
    for name in DRIVERS:
        if name in drivers.columns:
            logit += HAZARD_WEIGHTS[name] * drivers[name].to_numpy(dtype=float)
    return expit(logit)


@dataclass
class DemoWorld:
    """The simulated latent world behind a book: everything the observed tables draw from.

    Account-level arrays have length ``n``; monthly arrays are ``n x months`` for the
    calendar months that overlap the window. Day indices are relative to ``window_start``.
    """

    seed: int
    window_start: date
    end_date: date
    days: int
    account_ids: np.ndarray  # object
    segment: np.ndarray  # int 0..2
    created_day: np.ndarray  # int day index (negative: before the window)
    created_at_ns: np.ndarray  # int64 ns since epoch
    life_end_day: np.ndarray  # int day index, exclusive: churn day or ``days``
    churn_month: np.ndarray  # int month index or -1
    month_first_day: np.ndarray  # int day index of each month's first day (len months + 1)
    exists: np.ndarray  # bool n x months: created on or before the month's last day
    active_start: np.ndarray  # bool n x months: a customer at the month's start (hazard applies)
    engagement: np.ndarray  # float n x months
    utilisation: np.ndarray  # float n x months
    error_level: np.ndarray  # float n x months
    support_pain: np.ndarray  # float n x months
    relationship: np.ndarray  # float n x months (drives NPS)
    csat_latent: np.ndarray  # float n x months
    effort: np.ndarray  # float n x months (drives CES)
    hazard: np.ndarray  # float n x months (NaN where no hazard applies)
    term_months: np.ndarray  # int: 1 (monthly plan) or 12 (annual)
    created_month: np.ndarray  # int month index of creation (negative: before the window)
    first_month: np.datetime64  # calendar month of month index 0
    seats_month: np.ndarray  # int n x months: licensed seats in force (set with the subscriptions)
    users_month: np.ndarray  # int n x months: users who use the product (seats x utilisation)
    subscriptions: pd.DataFrame | None = None

    @property
    def n(self) -> int:
        return len(self.account_ids)

    @property
    def months(self) -> int:
        return self.engagement.shape[1]

    def day_ns(self, day_index: np.ndarray) -> np.ndarray:
        """Day indices to int64 nanoseconds since the epoch (midnight)."""
        base = np.datetime64(self.window_start, "ns").astype(np.int64)
        return base + np.asarray(day_index, dtype=np.int64) * _DAY_NS


# ----------------------------------------------------------------------------- accounts


def _crm_ids(n: int, seed: int) -> np.ndarray:
    """Deterministic, unique 18-character Salesforce-style Account Ids (prefix ``001``).

    The 15-character id is ``0015g00000`` plus 5 base-62 characters from a seed-dependent
    bijection of the account index; the 3-character suffix is Salesforce's real case-safe
    checksum, so the ids look and validate like the real thing.
    """
    modulus = 62**5
    offset = (seed * 7_919_191) % modulus
    codes = (np.arange(n, dtype=np.int64) * 387_420_489 + offset) % modulus  # 3**18 is coprime to 62**5
    out = np.empty(n, dtype=object)
    for i, code in enumerate(codes.tolist()):
        chars = []
        for _ in range(5):
            code, r = divmod(code, 62)
            chars.append(_BASE62[r])
        id15 = "0015g00000" + "".join(reversed(chars))
        suffix = ""
        for block in range(3):
            bits = sum(1 << k for k, ch in enumerate(id15[block * 5:block * 5 + 5]) if "A" <= ch <= "Z")
            suffix += _SF_SUFFIX[bits]
        out[i] = id15 + suffix
    return out


def _names(rng: np.random.Generator, n: int) -> np.ndarray:
    """Company names from 2-3 syllables plus an optional legal/industry suffix."""
    k = rng.integers(2, 4, n)
    parts = rng.integers(0, len(_SYLLABLES), (n, 3))
    s = _SYLLABLES[parts]
    base = s[:, 0] + s[:, 1] + np.where(k == 3, s[:, 2], "")
    base = np.array([b.capitalize() for b in base], dtype=object)
    return base + _SUFFIXES[rng.integers(0, len(_SUFFIXES), n)]


def _months_between(window_start: date, end_date: date) -> tuple[np.datetime64, int]:
    first = np.datetime64(window_start, "M")
    last = np.datetime64(end_date - timedelta(days=1), "M")
    return first, int((last - first).astype(int)) + 1


# ----------------------------------------------------------------------------- world


def simulate_world(accounts: int = 1500, days: int = 540, seed: int = 42, end_date: date | None = None) -> DemoWorld:
    """Simulate accounts, their latent monthly state, the hazard and churn outcomes.

    Cheap (``accounts x months``); every table of the book is derived from its result.
    """
    if accounts < 1 or days < 31:
        raise ValueError("need at least 1 account and 31 days")
    end = end_date or DEFAULT_END_DATE
    window_start = end - timedelta(days=days)
    ws64 = np.datetime64(window_start, "D")
    first_month, months = _months_between(window_start, end)
    month_first_day = ((first_month + np.arange(months + 1)).astype("datetime64[D]") - ws64).astype(np.int64)
    month_first_day_c = np.clip(month_first_day, 0, days)

    n = accounts
    rng = _rng(seed, _S_ACCOUNTS)
    segment = rng.choice(3, n, p=SEGMENT_SHARE)
    # Creation: ~72% long-standing customers (tenure skewed, up to 7 years), the rest
    # onboard during the window (not in its last 30 days, so they have some history).
    in_window = rng.random(n) < 0.28
    before = -1 - np.minimum(rng.exponential(520.0, n), 7 * 365).astype(np.int64)
    during = rng.integers(0, max(days - 30, 1), n)
    created_day = np.where(in_window, during, before)
    # Keep the day of month <= 28 so anniversaries are plain month arithmetic.
    created_date = ws64 + created_day
    dom = (created_date - created_date.astype("datetime64[M]").astype("datetime64[D]")).astype(np.int64)
    created_day = created_day - np.maximum(dom - 27, 0)
    created_date = ws64 + created_day
    created_at_ns = (created_date.astype("datetime64[ns]").astype(np.int64)
                     + rng.integers(8 * 3600, 18 * 3600, n) * _SEC_NS)
    created_month = (created_date.astype("datetime64[M]") - first_month).astype(np.int64)  # may be negative

    # ---- latent monthly state (burn-in months first so lags exist at month 0)
    lrng = _rng(seed, _S_LATENT)
    total = months + _BURN_IN_MONTHS
    b = lrng.normal(0.0, 0.45, n) + np.array([0.0, 0.1, 0.25])[segment]
    x = lrng.normal(0.0, 0.25, n)
    err_base = lrng.normal(0.0, 0.5, n)
    sp_base = lrng.normal(0.0, 0.45, n)
    rel_base = lrng.normal(0.0, 0.35, n)
    cs_base = lrng.normal(0.0, 0.3, n)
    ef_base = lrng.normal(0.0, 0.4, n)
    util_base = lrng.normal(0.9, 0.35, n)
    frailty = lrng.normal(0.0, 0.75, n)
    episode_prone = lrng.random(n) < 0.35  # some accounts are prone to decline episodes
    ep_left = np.zeros(n, dtype=np.int64)
    spike = np.zeros(n)
    sp_dev = np.zeros(n)
    rel_dev = np.zeros(n)
    shape = (n, total)
    E, U, ERR, SPK, SP, REL, CS, EF, NZ = (np.empty(shape) for _ in range(9))
    for k in range(total):
        m_abs = k - _BURN_IN_MONTHS
        tenure = np.maximum(m_abs - created_month, 0).astype(float)
        p_ep = np.where(episode_prone, 0.06, 0.012)
        start_ep = (ep_left == 0) & (lrng.random(n) < p_ep)
        ep_left = np.where(start_ep, lrng.integers(2, 5, n), ep_left)
        drift = np.where(ep_left > 0, -lrng.uniform(0.25, 0.5, n), 0.0)
        ep_left = np.maximum(ep_left - 1, 0)
        x = 0.85 * x + lrng.normal(0.0, 0.12, n) + drift
        ramp = -0.9 * np.exp(-tenure / 1.5)
        e = b + x + ramp
        spike = 0.45 * spike + np.where(lrng.random(n) < 0.05, lrng.gamma(2.0, 0.6, n), 0.0)
        sp_dev = 0.6 * sp_dev + lrng.normal(0.0, 0.35, n)
        sp = sp_base + sp_dev + 0.4 * spike
        rel_dev = 0.7 * rel_dev + lrng.normal(0.0, 0.3, n)
        rel = rel_base + 0.6 * (b + x) + rel_dev - 0.3 * sp - 0.25 * spike
        E[:, k] = e
        U[:, k] = expit(util_base + 1.3 * (b + x) + 0.8 * ramp)
        ERR[:, k] = err_base + spike
        SPK[:, k] = spike
        SP[:, k] = sp
        REL[:, k] = rel
        CS[:, k] = cs_base - 0.8 * sp + 0.25 * rel
        EF[:, k] = ef_base + 0.4 * spike + 0.3 * sp + 1.2 * np.exp(-tenure / 3.0)
        NZ[:, k] = frailty + lrng.normal(0.0, 0.35, n)

    level = np.exp(0.7 * E)
    decline = np.clip(1.0 - level[:, 1:] / level[:, :-1], 0.0, 1.0)  # aligned to months 1..total-1

    # ---- subscriptions skeleton: term length and renewal timing
    srng = _rng(seed, _S_SUBS)
    monthly_plan = (segment == 0) & (srng.random(n) < 0.3)
    term_months = np.where(monthly_plan, 1, 12)

    # ---- hazard and churn, month by month
    crng = _rng(seed, _S_LATENT, 1)
    sl = slice(_BURN_IN_MONTHS, total)
    exists = created_month[:, None] <= np.arange(months)[None, :]
    hazard = np.full((n, months), np.nan)
    alive = np.ones(n, dtype=bool)
    churn_month = np.full(n, -1, dtype=np.int64)
    churn_day = np.full(n, days, dtype=np.int64)
    active_start = np.zeros((n, months), dtype=bool)
    for m in range(months):
        k_prev = _BURN_IN_MONTHS + m - 1
        tenure = (m - created_month).astype(float)
        since = m - created_month
        to_renewal = np.where(since >= 0, term_months - np.mod(since, term_months), 0)
        drivers = pd.DataFrame({
            "usage_decline": decline[:, k_prev - 1],
            "seat_underuse": 1.0 - U[:, k_prev],
            "error_spike": SPK[:, k_prev],
            "slow_first_response": SP[:, k_prev],
            "reopened_tickets": _reopen_prob(SP[:, k_prev], SPK[:, k_prev]),
            "detractor_nps": _p_detractor(REL[:, k_prev]),
            "low_csat": _p_low_csat(CS[:, k_prev]),
            "high_ces": _p_high_ces(EF[:, k_prev]),
            "renewal_within_90d": (to_renewal <= 3).astype(float),
            "segment_smb": (segment == 0).astype(float),
            "segment_enterprise": (segment == 2).astype(float),
            "young_account": np.exp(-np.maximum(tenure, 0.0) / 6.0),
            "noise": NZ[:, k_prev],
        })
        h = monthly_hazard(drivers)
        at_risk = alive & (created_month < m)  # a customer at the month's start
        active_start[:, m] = at_risk
        hazard[at_risk, m] = h[at_risk]
        churns = at_risk & (crng.random(n) < h)
        lo = month_first_day_c[m]
        hi = month_first_day_c[m + 1]
        day = lo + np.floor(crng.random(n) * (hi - lo)).astype(np.int64)
        # Never on the account's first day.
        day = np.maximum(day, created_day + 1)
        churns &= day < hi
        churn_month[churns] = m
        churn_day[churns] = day[churns]
        alive &= ~churns

    # ---- seats in force per month, from the subscription terms (see _subscriptions)
    world = DemoWorld(
        seed=seed, window_start=window_start, end_date=end, days=days,
        account_ids=np.array([f"ACC{i:06d}" for i in range(n)], dtype=object),
        segment=segment, created_day=created_day, created_at_ns=created_at_ns,
        life_end_day=churn_day, churn_month=churn_month, month_first_day=month_first_day,
        exists=exists, active_start=active_start,
        engagement=E[:, sl], utilisation=U[:, sl], error_level=ERR[:, sl], support_pain=SP[:, sl],
        relationship=REL[:, sl], csat_latent=CS[:, sl], effort=EF[:, sl], hazard=hazard,
        term_months=term_months, created_month=created_month, first_month=first_month,
        seats_month=np.zeros((n, months), dtype=np.int64), users_month=np.zeros((n, months), dtype=np.int64),
    )
    world.subscriptions = _subscriptions(world)
    log.info(
        "simulated %d accounts over %d days (%d months): %d churned, mean monthly hazard %.4f",
        n, days, months, int((churn_month >= 0).sum()), float(np.nanmean(hazard)),
    )
    return world


def _reopen_prob(sp: np.ndarray, spike: np.ndarray) -> np.ndarray:
    return expit(-2.4 + 0.9 * sp + 0.5 * spike)


def _p_detractor(rel: np.ndarray) -> np.ndarray:
    """P(NPS <= 6) when NPS = round(7.9 + 2.2 * rel + N(0, 1.6))."""
    return ndtr((6.5 - 7.9 - 2.2 * rel) / 1.6)


def _p_low_csat(cs: np.ndarray) -> np.ndarray:
    """P(CSAT <= 2) when CSAT = round(4.1 + cs + N(0, 0.8))."""
    return ndtr((2.5 - 4.1 - cs) / 0.8)


def _p_high_ces(ef: np.ndarray) -> np.ndarray:
    """P(CES >= 5) when CES = round(2.6 + 1.3 * ef + N(0, 1))."""
    return ndtr(2.6 + 1.3 * ef - 4.5)


# ----------------------------------------------------------------------------- subscriptions


def _subscriptions(world: DemoWorld) -> pd.DataFrame:
    """Contract terms overlapping the window; renewals are new rows, churn is a cancellation.

    Also fills ``world.seats_month`` and ``world.users_month``. Seats move at renewal with
    utilisation (expansion when well used, shrink when under-used); a low-engagement
    renewal may step the plan down (a downgrade).
    """
    rng = _rng(world.seed, _S_SUBS, 1)
    n, months = world.n, world.months
    term = world.term_months
    created_month = world.created_month
    first_month = world.first_month
    seg = world.segment
    ws64 = np.datetime64(world.window_start, "D")
    created_date = ws64 + world.created_day
    dom = (created_date - created_date.astype("datetime64[M]").astype("datetime64[D]")).astype(np.int64)

    median_seats = np.array([6.0, 28.0, 140.0])[seg]
    seats0 = np.clip(np.round(np.exp(rng.normal(np.log(median_seats), 0.55))), 1, 2000).astype(np.int64)
    plan0 = np.select(
        [seg == 0, seg == 1],
        [np.where(rng.random(n) < 0.75, 0, 1), np.where(rng.random(n) < 0.8, 1, 2)],
        2,
    )
    discount = np.array([1.0, 0.92, 0.8])[seg] * rng.uniform(0.9, 1.0, n)
    auto_p = np.where(term == 1, 0.95, rng.uniform(0.4, 0.9, n))

    # The first term shown: the one in force at the window start, or the account's first.
    months_before = np.maximum(-created_month, 0)  # whole months between creation and window month
    k0 = months_before // term
    start_m = created_month + k0 * term  # month index (relative to first_month) of term k0
    start_day = (first_month + start_m).astype("datetime64[D]") + dom - ws64
    start_day = start_day.astype(np.int64)
    # If that term starts after the window start, the previous term was in force then.
    step_back = (world.created_day < 0) & (start_day > 0) & (k0 > 0)
    k0 = k0 - step_back
    n_terms = int(np.ceil((months + 2) / term.min())) + 2
    j = np.arange(n_terms)
    k = k0[:, None] + j[None, :]
    t_start_m = created_month[:, None] + k * term[:, None]
    t_start = ((first_month + t_start_m).astype("datetime64[D]") + dom[:, None] - ws64).astype(np.int64)
    t_end = ((first_month + t_start_m + term[:, None]).astype("datetime64[D]") + dom[:, None] - ws64).astype(np.int64)
    life_end = world.life_end_day
    keep = t_start < life_end[:, None]  # includes renewals that start before churn / window end
    keep[:, 0] = True

    # Seats and plan per term: renewals react to utilisation at renewal time.
    m_at = np.clip(np.searchsorted(world.month_first_day, t_start, side="right") - 1, 0, months - 1)
    util = np.take_along_axis(world.utilisation, m_at, axis=1)
    eng = np.take_along_axis(world.engagement, m_at, axis=1)
    growth = np.exp(rng.normal(0.03 + 0.35 * (util - 0.6), 0.08))
    shrink = (util < 0.45) & (rng.random(growth.shape) < 0.5)
    growth = np.where(shrink, np.maximum(util + 0.25, 0.4), growth)
    renewal_at_term = (term[:, None] == 12) | (rng.random(growth.shape) < 0.08)  # monthly: rare seat changes
    growth = np.where(renewal_at_term, growth, 1.0)
    growth[:, 0] = 1.0
    seats = np.clip(np.round(seats0[:, None] * np.cumprod(growth, axis=1)), 1, 3000).astype(np.int64)
    downgrade = (eng < -0.7) & (rng.random(growth.shape) < 0.35) & renewal_at_term
    downgrade[:, 0] = False
    steps = np.cumsum(downgrade, axis=1)
    plan = np.maximum(plan0[:, None] - steps, np.where(seg == 2, 1, 0)[:, None])
    price = PLAN_SEAT_PRICE_MONTHLY[plan] * 12.0 * discount[:, None] * np.where(term == 1, 1.15, 1.0)[:, None]
    arr = np.round(seats * price, 2)
    auto = rng.random(growth.shape) < auto_p[:, None]

    # Seats in force per month (month index of each term's start, forward-filled).
    seats_month = np.zeros((n, months), dtype=np.int64)
    month_idx = np.arange(months)
    for col in range(n_terms):
        ok = keep[:, col]
        sm = np.clip(np.searchsorted(world.month_first_day, t_start[:, col], side="right") - 1, 0, months)
        fill = ok[:, None] & (month_idx[None, :] >= np.where(col == 0, 0, sm)[:, None])
        seats_month = np.where(fill, seats[:, col][:, None], seats_month)
    world.seats_month = seats_month
    world.users_month = np.maximum(1, np.round(seats_month * world.utilisation)).astype(np.int64)

    rows_a, rows_c = np.nonzero(keep)
    churned = world.churn_month >= 0
    last_col = keep.shape[1] - 1 - np.argmax(keep[:, ::-1], axis=1)
    is_last = rows_c == last_col[rows_a]
    cancel = is_last & churned[rows_a]
    cancel_ns = world.day_ns(life_end[rows_a]) + rng.integers(9 * 3600, 18 * 3600, len(rows_a)) * _SEC_NS
    frame = pd.DataFrame({
        "subscription_id": [f"SUB{a:06d}-{c:02d}" for a, c in zip(rows_a.tolist(), (k[rows_a, rows_c]).tolist())],
        "account_id": world.account_ids[rows_a],
        "plan": PLANS[plan[rows_a, rows_c]],
        "seats": seats[rows_a, rows_c],
        "arr": arr[rows_a, rows_c],
        "start_date": ws64 + t_start[rows_a, rows_c],
        "end_date": ws64 + t_end[rows_a, rows_c],
        "cancelled_at": _ts(np.where(cancel, cancel_ns, _NAT)),
        # The flag as signed. Rewriting it on cancellation would leak the future: the row's
        # current value would reveal a cancellation recorded after an as-of date.
        "auto_renew": auto[rows_a, rows_c],
        "billing_period": np.where(term[rows_a] == 1, "month", "year"),
    })
    # The first shown term of an account created in the window starts at its creation date.
    return schema.coerce(frame, schema.SUBSCRIPTIONS)


# ----------------------------------------------------------------------------- tickets & surveys


def _month_of_day(world: DemoWorld, day: np.ndarray) -> np.ndarray:
    return np.clip(np.searchsorted(world.month_first_day, day, side="right") - 1, 0, world.months - 1)


@dataclass
class _TicketDraws:
    """Per-ticket arrays the surveys need: CSAT answers and CES follow-ups come from tickets."""

    account: np.ndarray
    month: np.ndarray
    closed_ns: np.ndarray
    is_open: np.ndarray
    csat_rows: np.ndarray
    csat_at_ns: np.ndarray
    csat_scores: np.ndarray


def _tickets(world: DemoWorld) -> tuple[pd.DataFrame, _TicketDraws]:
    """Support tickets: volume, priority, slowness and reopen rate follow support pain and errors."""
    rng = _rng(world.seed, _S_TICKETS)
    mfd = np.clip(world.month_first_day, 0, world.days)
    lo = np.maximum(mfd[None, :-1], world.created_day[:, None] + 1)
    hi = np.minimum(mfd[None, 1:], world.life_end_day[:, None])
    span = np.clip(hi - lo, 0, None)
    base = np.array([0.35, 0.9, 2.2])[world.segment][:, None]
    spike = np.clip(world.error_level - np.median(world.error_level, axis=1, keepdims=True), 0, None)
    lam = base * np.exp(0.45 * world.support_pain + 0.5 * spike) * span / 30.0
    counts = rng.poisson(lam)
    a, m = np.nonzero(counts)
    reps = counts[a, m]
    a = np.repeat(a, reps)
    m = np.repeat(m, reps)
    t = len(a)
    opened_day = lo[a, m] + np.floor(rng.random(t) * span[a, m]).astype(np.int64)
    opened_ns = world.day_ns(opened_day) + rng.integers(6 * 3600, 22 * 3600, t) * _SEC_NS
    order = np.lexsort((opened_ns, a))
    a, m, opened_day, opened_ns = a[order], m[order], opened_day[order], opened_ns[order]
    sp = world.support_pain[a, m]
    err = world.error_level[a, m]
    prio_logit = 0.5 * err + 0.4 * sp + rng.normal(0, 1.0, t)
    priority = np.select([prio_logit > 2.2, prio_logit > 1.0, prio_logit > -0.8], ["urgent", "high", "normal"], "low")
    channel = rng.choice(np.array(["email", "chat", "phone", "web"], dtype=object), t, p=[0.45, 0.3, 0.1, 0.15])
    prio_speed = np.select([priority == "urgent", priority == "high"], [0.25, 0.5], 1.0)
    frm = np.round(np.exp(np.log(75.0) + 0.7 * sp + rng.normal(0, 0.6, t)) * prio_speed, 1)
    reopened = rng.random(t) < _reopen_prob(sp, np.clip(err - np.median(world.error_level, axis=1)[a], 0, None))
    resolve_h = np.exp(np.log(20.0) + 0.5 * sp + 0.7 * reopened + rng.normal(0, 0.9, t))
    # A backlog of stuck tickets (more where support is struggling) stays open for weeks.
    stuck = rng.random(t) < expit(-3.5 + 0.6 * sp)
    resolve_h = np.where(stuck, resolve_h * rng.uniform(10.0, 40.0, t), resolve_h)
    closed_ns = opened_ns + (resolve_h * 3600).astype(np.int64) * _SEC_NS
    end_ns = world.day_ns(np.array(world.days))
    life_ns = world.day_ns(world.life_end_day[a])
    churned = world.churn_month[a] >= 0
    # Tickets of churned accounts get closed out at cancellation; open ones stay open at the end.
    closed_ns = np.where(churned & (closed_ns >= life_ns), life_ns - 60 * _SEC_NS, closed_ns)
    closed_ns = np.maximum(closed_ns, opened_ns + 60 * _SEC_NS)
    is_open = closed_ns >= end_ns
    # CSAT answered for ~40% of closed tickets, when the answer lands inside the account's life.
    csat_at = closed_ns + rng.integers(1800, 36 * 3600, t) * _SEC_NS
    answered = (~is_open) & (rng.random(t) < 0.4) & (csat_at < np.minimum(life_ns, end_ns))
    csat = np.clip(np.round(4.1 + world.csat_latent[a, m] + rng.normal(0, 0.8, t)), 1, 5).astype(np.int64)
    frame = pd.DataFrame({
        "ticket_id": [f"TKT{i:07d}" for i in range(t)],
        "account_id": world.account_ids[a],
        "opened_at": _ts(opened_ns),
        "closed_at": _ts(np.where(is_open, _NAT, closed_ns)),
        "priority": priority.astype(object),
        "channel": channel,
        "first_response_minutes": frm,
        "reopened": reopened,
        "csat": np.where(answered, csat, np.nan),
    })
    draws = _TicketDraws(account=a, month=m, closed_ns=closed_ns, is_open=is_open,
                         csat_rows=np.nonzero(answered)[0], csat_at_ns=csat_at[answered],
                         csat_scores=csat[answered])
    return schema.coerce(frame, schema.TICKETS), draws


_TOPICS = ("wait_time", "billing", "bugs", "onboarding", "missing_features", "praise")
_OPENERS = {
    "neg": ["Honestly disappointed.", "Not great lately.", "We are frustrated.", "This has been a rough quarter.", ""],
    "neu": ["Mostly fine.", "It does the job.", "Mixed feelings.", "OK overall.", ""],
    "pos": ["Really happy with it.", "Great experience.", "Love the product.", "Very satisfied.", ""],
}
_TOPIC_TEXT = {
    "wait_time": {
        "neg": ["Support takes days to answer and the wait time is unacceptable.",
                "Slow support: our tickets sit for ages with no reply.",
                "We keep waiting on support, and the same issue gets reopened again and again."],
        "neu": ["Support response times could be faster.", "Support is helpful but the wait is long."],
        "pos": ["Support got back to us quickly.", "Fast, friendly support team."],
    },
    "billing": {
        "neg": ["The pricing is too expensive for what we use, and the invoice was wrong again.",
                "Billing is confusing and the renewal price increase is hard to justify.",
                "We pay for seats nobody uses; the price does not make sense for us."],
        "neu": ["Pricing is a bit high for a team our size.", "The billing portal could be clearer."],
        "pos": ["Pricing feels fair for the value.", "Billing is simple and transparent."],
    },
    "bugs": {
        "neg": ["Too many bugs and errors; exports keep failing.",
                "The app crashes and throws errors every week.",
                "Constant errors in the editor make it unreliable."],
        "neu": ["Occasional bugs, nothing blocking.", "A few errors here and there after the last release."],
        "pos": ["Very stable, we rarely see an error.", "Reliable and fast, no bugs to speak of."],
    },
    "onboarding": {
        "neg": ["Onboarding was painful and the setup took far too long.",
                "Setup was confusing and nobody helped us get started.",
                "The onboarding process left our team lost."],
        "neu": ["Setup took a while but we got there.", "Onboarding docs could be clearer."],
        "pos": ["Onboarding was smooth and setup took an afternoon.", "Getting started was easy."],
    },
    "missing_features": {
        "neg": ["It is missing features we need, so the team stopped using it.",
                "Key integrations are missing and we are evaluating alternatives.",
                "Missing features force us to use another tool."],
        "neu": ["Would love a few more integrations.", "Missing a couple of reporting features."],
        "pos": ["Has every feature we need.", "The new features are exactly what we asked for."],
    },
    "praise": {
        "neg": ["Some parts are good but it is not enough."],
        "neu": ["The team likes parts of it."],
        "pos": ["The whole team loves it and would recommend it to anyone.",
                "Our CSM is fantastic and the product saves us hours every week.",
                "Best tool we have adopted this year, highly recommend."],
    },
}


def _comments(rng: np.random.Generator, tone: np.ndarray, topic_scores: np.ndarray, p_comment: np.ndarray) -> np.ndarray:
    """Generated verbatims whose tone follows the score and whose topic follows the state.

    ``tone`` is 0 negative, 1 neutral, 2 positive; ``topic_scores`` is ``rows x topics``
    (higher = more likely); rows without a comment get ``None``.
    """
    t = len(tone)
    out = np.full(t, None, dtype=object)
    if t == 0:
        return out
    gumbel = -np.log(-np.log(rng.random(topic_scores.shape)))
    topic = np.argmax(topic_scores + gumbel, axis=1)
    has = rng.random(t) < p_comment
    tone_key = np.array(["neg", "neu", "pos"])
    v1 = rng.integers(0, 1_000_000, t)
    v2 = rng.integers(0, 1_000_000, t)
    for ti, tk in enumerate(tone_key):
        openers = np.array(_OPENERS[tk], dtype=object)
        for pi, topic_name in enumerate(_TOPICS):
            sel = has & (tone == ti) & (topic == pi)
            if not sel.any():
                continue
            texts = np.array(_TOPIC_TEXT[topic_name][tk], dtype=object)
            first = openers[v1[sel] % len(openers)]
            second = texts[v2[sel] % len(texts)]
            out[sel] = np.where(first == "", second, first + " " + second)
    return out


def _topic_scores(world: DemoWorld, a: np.ndarray, m: np.ndarray, tone: np.ndarray) -> np.ndarray:
    """Per-response topic propensities from the account's latent state that month."""
    tenure_m = m - world.created_month[a]
    spike = np.clip(world.error_level[a, m] - np.median(world.error_level, axis=1)[a], 0, None)
    return np.column_stack([
        1.2 * world.support_pain[a, m],
        0.3 + 0.8 * (world.segment[a] == 0) + 1.2 * (1.0 - world.utilisation[a, m]),
        1.5 * spike + 0.3 * world.error_level[a, m],
        1.5 * np.exp(-np.maximum(tenure_m, 0) / 3.0) - 0.3,
        -0.8 * world.engagement[a, m],
        np.where(tone == 2, 1.2, -3.0),
    ])


def _surveys(world: DemoWorld, tickets: _TicketDraws) -> pd.DataFrame:
    """NPS roughly quarterly, CSAT after answered tickets, CES after onboarding and support."""
    rng = _rng(world.seed, _S_SURVEYS)
    n, days = world.n, world.days
    ws_ns = world.day_ns(np.array(0))
    parts: list[pd.DataFrame] = []

    # NPS: every ~91 days from an account-specific phase; disengaged accounts answer less.
    q = np.arange(days // 91 + 2)
    phase = rng.integers(0, 91, n)
    sday = phase[:, None] + q[None, :] * 91 + rng.integers(-10, 11, (n, len(q)))
    a, qi = np.nonzero((sday >= world.created_day[:, None] + 14) & (sday < world.life_end_day[:, None]) & (sday >= 0) & (sday < days))
    d = sday[a, qi]
    m = _month_of_day(world, d)
    respond = rng.random(len(a)) < expit(-0.6 + 0.8 * world.engagement[a, m])
    a, d, m = a[respond], d[respond], m[respond]
    nps = np.clip(np.round(7.9 + 2.2 * world.relationship[a, m] + rng.normal(0, 1.6, len(a))), 0, 10)
    tone = np.select([nps <= 6, nps <= 8], [0, 1], 2)
    comment = _comments(rng, tone, _topic_scores(world, a, m, tone), np.where(tone == 1, 0.35, 0.6))
    parts.append(pd.DataFrame({"a": a, "ns": world.day_ns(d) + rng.integers(7 * 3600, 21 * 3600, len(a)) * _SEC_NS,
                               "kind": "nps", "score": nps, "comment": comment}))

    # CSAT: exactly the answers recorded on tickets.
    ta, tm, closed_ns, is_open = tickets.account, tickets.month, tickets.closed_ns, tickets.is_open
    rows = tickets.csat_rows
    a, m = ta[rows], tm[rows]
    csat_scores = tickets.csat_scores
    tone = np.select([csat_scores <= 2, csat_scores <= 3], [0, 1], 2)
    comment = _comments(rng, tone, _topic_scores(world, a, m, tone), np.where(tone == 1, 0.2, 0.45))
    parts.append(pd.DataFrame({"a": a, "ns": tickets.csat_at_ns, "kind": "csat",
                               "score": csat_scores.astype(float), "comment": comment}))

    # CES: after onboarding (accounts created in the window) and after ~15% of closed tickets.
    onboard = world.created_day >= 0
    od = world.created_day + rng.integers(30, 61, n)
    ok = onboard & (od < world.life_end_day) & (od < days) & (rng.random(n) < 0.6)
    a1 = np.nonzero(ok)[0]
    d1_ns = world.day_ns(od[a1]) + rng.integers(8 * 3600, 20 * 3600, len(a1)) * _SEC_NS
    sel = (~is_open) & (rng.random(len(ta)) < 0.15)
    a2 = ta[sel]
    d2_ns = closed_ns[sel] + rng.integers(3600, 48 * 3600, int(sel.sum())) * _SEC_NS
    keep2 = d2_ns < np.minimum(world.day_ns(world.life_end_day[a2]), world.day_ns(np.array(days)))
    a_c = np.concatenate([a1, a2[keep2]])
    ns_c = np.concatenate([d1_ns, d2_ns[keep2]])
    m_c = _month_of_day(world, (ns_c - ws_ns) // _DAY_NS)
    ces = np.clip(np.round(2.6 + 1.3 * world.effort[a_c, m_c] + rng.normal(0, 1.0, len(a_c))), 1, 7)
    tone = np.select([ces >= 5, ces >= 3], [0, 1], 2)
    comment = _comments(rng, tone, _topic_scores(world, a_c, m_c, tone), np.where(tone == 1, 0.25, 0.5))
    parts.append(pd.DataFrame({"a": a_c, "ns": ns_c, "kind": "ces", "score": ces, "comment": comment}))

    allp = pd.concat(parts, ignore_index=True)
    allp = allp.sort_values(["ns", "a"], kind="stable").reset_index(drop=True)
    frame = pd.DataFrame({
        "response_id": [f"RSP{i:07d}" for i in range(len(allp))],
        "account_id": world.account_ids[allp["a"].to_numpy()],
        "submitted_at": _ts(allp["ns"].to_numpy()),
        "kind": allp["kind"].to_numpy(),
        "score": allp["score"].to_numpy(dtype=float),
        "comment": allp["comment"].to_numpy(),
    })
    return schema.coerce(frame, schema.SURVEYS)


# ----------------------------------------------------------------------------- usage


def _usage_chunks_bounds(world: DemoWorld, max_cells: int) -> list[tuple[int, int]]:
    """Contiguous account ranges of about ``max_cells`` roster-user x day cells each.

    A function of the world and ``max_cells`` only, so every caller (in-memory book or
    streamed write) cuts the same chunks and therefore draws the same rows.
    """
    cells = np.cumsum(_roster(world).astype(np.int64) * world.days)
    chunk_of = (cells - 1) // max(int(max_cells), 1)
    cuts = np.nonzero(np.diff(chunk_of))[0] + 1
    edges = [0, *cuts.tolist(), world.n]
    return list(zip(edges[:-1], edges[1:]))


def _roster(world: DemoWorld) -> np.ndarray:
    live = world.exists & (world.month_first_day[None, :-1] < world.life_end_day[:, None])
    return np.maximum(np.where(live, world.users_month, 0).max(axis=1), 1)


def _season(world: DemoWorld) -> np.ndarray:
    """Daily activity multiplier: weekends are quiet, December dips, the holidays more so."""
    dates = np.datetime64(world.window_start, "D") + np.arange(world.days)
    weekday = (dates.astype(np.int64) + 3) % 7  # 0 = Monday
    month = dates.astype("datetime64[M]").astype(np.int64) % 12 + 1
    dom = (dates - dates.astype("datetime64[M]").astype("datetime64[D]")).astype(np.int64) + 1
    f = np.where(weekday >= 5, np.where(weekday == 5, 0.14, 0.09), 1.0)
    f = f * np.where(month == 12, 0.78, 1.0) * np.where(month == 8, 0.9, 1.0)
    holidays = ((month == 12) & (dom >= 23)) | ((month == 1) & (dom <= 2))
    return f * np.where(holidays, 0.35, 1.0)


def iter_usage_chunks(world: DemoWorld, max_cells: int = USAGE_MAX_CELLS, density: float = 1.0) -> Iterator[pd.DataFrame]:
    """Yield the usage table in account chunks, each coerced to the usage spec.

    One row per active user per active day: a user is enabled in a month when their rank
    is below the account's users (seats x utilisation) that month, and is active on a day
    with probability ``user rate x engagement activity x seasonality``. Quantity, duration
    and errors follow engagement and error propensity. Memory per chunk is bounded by
    ``max_cells`` user-days (about 25 bytes each at peak).

    ``density`` scales every user's daily activity probability: 1.0 gives about 2.8 rows
    per account per day; benchmarks lower it to reach a target shape (100k accounts with
    30M rows a year is about 0.3) without changing anything else in the world.

    Each chunk has its own random stream, so the rows depend on ``max_cells``: keep the
    default (which :func:`generate_book` and :func:`write_demo_book` use) to reproduce a book.
    """
    roster_all = _roster(world)
    season = _season(world).astype(np.float32)
    month_of_day = _month_of_day(world, np.arange(world.days))
    activity = expit(-0.55 + 1.0 * world.engagement).astype(np.float32)
    intensity = 5.0 * np.exp(0.5 * world.engagement)
    err_rate = 0.004 * np.exp(world.error_level)
    n_feat = len(FEATURES)
    for ci, (s, e) in enumerate(_usage_chunks_bounds(world, max_cells)):
        rng = _rng(world.seed, _S_USAGE, ci)
        roster = roster_all[s:e]
        ua = np.repeat(np.arange(s, e), roster)  # account of each roster user
        uj = np.arange(len(ua)) - np.repeat(np.cumsum(roster) - roster, roster)  # rank within account
        rate = _rank_sorted(rng, ua, uj)
        main_feat = rng.choice(n_feat, len(ua), p=FEATURE_SHARE)
        user_power = rng.lognormal(0.0, 0.5, len(ua))
        # Activity probability per user and month (0 when the user is not enabled that
        # month), expanded to days once; the life window is applied to the hits only.
        p_month = rate[:, None].astype(np.float32) * activity[ua] * (uj[:, None] < world.users_month[ua])
        p = p_month[:, month_of_day]
        p *= season[None, :] * np.float32(density)
        hit = rng.random(p.shape, dtype=np.float32) < p
        del p
        ui, d = np.nonzero(hit)
        del hit
        alive = (d > world.created_day[ua[ui]]) & (d < world.life_end_day[ua[ui]])
        ui, d = ui[alive], d[alive]
        r = len(ui)
        a = ua[ui]
        m = month_of_day[d]
        qty = 1 + rng.poisson(intensity[a, m] * user_power[ui])
        feat = np.where(rng.random(r) < 0.65, main_feat[ui], rng.choice(n_feat, r, p=FEATURE_SHARE))
        duration = np.round(qty * rng.lognormal(np.log(40.0), 0.6, r), 1)
        errors = rng.poisson(qty * err_rate[a, m])
        seconds = rng.integers(7 * 3600, 20 * 3600, r)
        user_ids = world.account_ids[ua] + np.char.mod("-U%04d", uj).astype(object)
        frame = pd.DataFrame({
            "account_id": world.account_ids[a],
            "occurred_at": _ts(world.day_ns(d) + seconds * _SEC_NS),
            "feature": FEATURES[feat],
            "quantity": qty.astype(float),
            "duration_s": duration,
            "errors": errors,
            "user_id": user_ids[ui],
        })
        log.debug("usage chunk %d: accounts %d-%d, %d rows", ci, s, e, r)
        yield schema.coerce(frame, schema.USAGE)


def _rank_sorted(rng: np.random.Generator, ua: np.ndarray, uj: np.ndarray) -> np.ndarray:
    """Per-user activity rates, descending by rank within each account.

    Low ranks are the core users who stay enabled when an account shrinks, so they should
    be the most active ones.
    """
    rate = rng.beta(2.0, 2.2, len(ua))
    order = np.lexsort((-rate, ua))  # by account, then rate descending
    out = np.empty_like(rate)
    out[np.lexsort((uj, ua))] = rate[order]  # rank 0 of each account gets its highest rate
    return out


# ----------------------------------------------------------------------------- book


def _accounts(world: DemoWorld) -> pd.DataFrame:
    rng = _rng(world.seed, _S_ACCOUNTS, 1)
    n = world.n
    seg = world.segment
    owner = np.where(seg == 2, ENTERPRISE_CSMS[rng.integers(0, len(ENTERPRISE_CSMS), n)],
                     CSMS[rng.integers(0, len(CSMS), n)]) + "@" + EMAIL_DOMAIN
    unowned = (seg == 0) & (rng.random(n) < 0.04)  # a few tech-touch smb accounts have no CSM
    frame = pd.DataFrame({
        "account_id": world.account_ids,
        "name": _names(rng, n),
        "industry": rng.choice(INDUSTRIES, n, p=INDUSTRY_SHARE),
        "segment": SEGMENTS[seg],
        "country": rng.choice(COUNTRIES, n, p=COUNTRY_SHARE),
        "created_at": _ts(world.created_at_ns),
        "owner_email": np.where(unowned, None, owner),
        "crm_account_id": _crm_ids(n, world.seed),
    })
    return schema.coerce(frame, schema.ACCOUNTS)


def _truth(world: DemoWorld) -> pd.DataFrame:
    """The true hazard for every month the account is a customer.

    The creation month carries hazard 0: by construction an account cannot churn before its
    first full month starts.
    """
    live = world.exists & (world.month_first_day[None, :-1] < world.life_end_day[:, None])
    live |= world.active_start  # includes a churn month whose first day is the churn day
    a, m = np.nonzero(live)
    first = (world.first_month + m).astype("datetime64[D]")
    h = world.hazard[a, m]
    frame = pd.DataFrame({"account_id": world.account_ids[a], "period_start": first, "hazard": np.nan_to_num(h, nan=0.0)})
    return schema.coerce(frame, schema.TRUTH)


def book_from_world(world: DemoWorld, include_usage: bool = True) -> dict[str, pd.DataFrame]:
    """Build every table of the book from a simulated world."""
    if world.subscriptions is None:
        raise ValueError("world has no subscriptions; build it with simulate_world")
    tickets, draws = _tickets(world)
    book = {
        "accounts": _accounts(world),
        "subscriptions": world.subscriptions,
        "usage": (pd.concat(list(iter_usage_chunks(world)), ignore_index=True) if include_usage
                  else schema.coerce(pd.DataFrame(columns=schema.USAGE.column_names), schema.USAGE)),
        "tickets": tickets,
        "surveys": _surveys(world, draws),
        "truth": _truth(world),
    }
    log.info("demo book sizes: %s", {k: len(v) for k, v in book.items()})
    return book


def generate_book(accounts: int = 1500, days: int = 540, seed: int = 42, end_date: date | None = None,
                  include_usage: bool = True) -> dict[str, pd.DataFrame]:
    """Generate a deterministic demo book: accounts, subscriptions, usage, tickets, surveys, truth.

    The simulated period is ``[end_date - days, end_date)``; ``end_date`` defaults to the
    fixed :data:`DEFAULT_END_DATE` so the same arguments always give identical frames. Pass
    ``include_usage=False`` for very large books and stream usage with
    :func:`write_demo_book` instead.
    """
    world = simulate_world(accounts=accounts, days=days, seed=seed, end_date=end_date)
    return book_from_world(world, include_usage=include_usage)


def book_end(book: dict[str, pd.DataFrame]) -> datetime:
    """The day after the book's newest stamped event: the as-of of the book as an extract."""
    stamped = {"accounts": ["created_at"], "subscriptions": ["start_date", "cancelled_at"], "usage": ["occurred_at"],
               "tickets": ["opened_at", "closed_at"], "surveys": ["submitted_at"]}
    newest = [pd.to_datetime(book[t][c]).max() for t, cols in stamped.items() if t in book for c in cols if c in book[t]]
    newest = [n for n in newest if pd.notna(n)]
    last = max(newest) if newest else pd.Timestamp(DEFAULT_END_DATE) - pd.Timedelta(days=1)
    return (last.normalize() + pd.Timedelta(days=1)).to_pydatetime()


def write_book(engine: sa.Engine, book: dict[str, pd.DataFrame],
               usage_chunks: Iterable[pd.DataFrame] | None = None, *, loaded_at: datetime | date | None = None) -> dict[str, int]:
    """Replace each of the book's tables in the warehouse; return rows written per table.

    With ``usage_chunks`` the usage table is replaced by the first chunk and appended to by
    the rest, so a book far larger than memory can be written. A book is a new world, not
    a later extract of the previous one: the state tables' history restarts, as one load at
    ``loaded_at`` (default: the book's end, :func:`book_end`).
    """
    loaded_at = loaded_at or book_end(book)
    reset_history(engine, list(book))
    counts: dict[str, int] = {}
    for name, frame in book.items():
        if name == "usage" and usage_chunks is not None:
            continue
        counts[name] = replace_rows(engine, name, frame, replace_all=True, loaded_at=loaded_at)
    if usage_chunks is not None:
        total = 0
        for i, chunk in enumerate(usage_chunks):
            total += replace_rows(engine, "usage", chunk, replace_all=(i == 0))
        if total == 0:
            replace_rows(engine, "usage", schema.coerce(pd.DataFrame(columns=schema.USAGE.column_names), schema.USAGE),
                         replace_all=True)
        counts["usage"] = total
    log.info("wrote demo book: %s", counts)
    return counts


def write_demo_book(engine: sa.Engine, accounts: int = 1500, days: int = 540, seed: int = 42,
                    end_date: date | None = None, usage_density: float = 1.0) -> dict[str, int]:
    """Generate and write a book with usage streamed in chunks: memory stays bounded at any size.

    Produces exactly the rows ``generate_book`` would with the same arguments (at the
    default ``usage_density``; see :func:`iter_usage_chunks`).
    """
    world = simulate_world(accounts=accounts, days=days, seed=seed, end_date=end_date)
    book = book_from_world(world, include_usage=False)
    return write_book(engine, book, usage_chunks=iter_usage_chunks(world, density=usage_density), loaded_at=world.end_date)
