"""The ``churnflow`` command: one command per stage, plus the whole demo.

Each stage command calls the same function its Prefect task calls, so a stage runs alone
from the shell exactly as it runs inside a flow.
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import nullcontext
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from churnflow.settings import Settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help="churnflow: customer health scores, churn risk and outreach, end to end.")
console = Console()
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks: print figures (seconds, rows/s, peak memory) as JSON.")
app.add_typer(bench_app, name="bench")

AsOf = Annotated[Optional[datetime], typer.Option("--as-of", formats=["%Y-%m-%d"], help="As-of date (YYYY-MM-DD). Default: today, or the day after the newest data.")]


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False)],
    )
    for noisy in ("alembic", "mlflow", "urllib3", "httpx", "prefect", "numba", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _quiet_library_logs() -> None:
    """Inside flows, Prefect's run logger reports each stage's numbers; drop the duplicates."""
    for name in ("churnflow", "features", "models", "crm_sync"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _settings() -> Settings:
    settings = Settings()
    settings.ensure_home()
    return settings


def _engine(settings: Settings):
    from churnflow.warehouse import get_engine

    return get_engine(settings.warehouse)


def _as_of(settings: Settings, as_of: datetime | None) -> date:
    from features.build import default_as_of

    return as_of.date() if as_of else default_as_of(_engine(settings))


@app.command("demo-data")
def demo_data_cmd(
    accounts: Annotated[int, typer.Option(help="Number of accounts.")] = 1500,
    days: Annotated[int, typer.Option(help="Days of history.")] = 540,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same book).")] = 42,
) -> None:
    """Generate a demo book (canonical tables + truth) into the warehouse."""
    from churnflow.demo_data import generate_book, write_book

    settings = _settings()
    counts = write_book(_engine(settings), generate_book(accounts=accounts, days=days, seed=seed))
    _print_counts("demo book", counts)


def _run_ingest(mapping: Path, run_date: datetime | None, max_bad_share: float | None, *, load: bool) -> None:
    from ingest.load import ingest, validate
    from ingest.mapping import IngestError

    settings = _settings()
    action = ingest if load else validate
    try:
        report = action(_engine(settings), mapping, run_date.date() if run_date else None, max_bad_share=max_bad_share,
                        crm_id_field=settings.sf_account_match_field)
    except IngestError as exc:
        console.print(str(exc), style="bold red", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    console.print(report.describe(), markup=False, highlight=False, soft_wrap=True)
    if not report.ok:
        raise typer.Exit(1)


MappingOpt = Annotated[Path, typer.Option("--mapping", exists=True, dir_okay=False, help="Mapping file (YAML): where each canonical table comes from.")]
RunDateOpt = Annotated[Optional[datetime], typer.Option("--run-date", formats=["%Y-%m-%d"], help="Rows stamped after this day are rejected. Default: today.")]
MaxBadOpt = Annotated[Optional[float], typer.Option("--max-bad-share", help="Fail a table when more than this share of its rows is bad (default 0.05 or the mapping's).")]


@app.command("ingest")
def ingest_cmd(mapping: MappingOpt, run_date: RunDateOpt = None, max_bad_share: MaxBadOpt = None) -> None:
    """Load your data into the canonical tables through a mapping file; bad rows go to quarantine."""
    _run_ingest(mapping, run_date, max_bad_share, load=True)


@app.command("validate")
def validate_cmd(mapping: MappingOpt, run_date: RunDateOpt = None, max_bad_share: MaxBadOpt = None) -> None:
    """Check a mapping and its data against the contracts without loading anything."""
    _run_ingest(mapping, run_date, max_bad_share, load=False)


@app.command("features")
def features_cmd(
    as_of: AsOf = None,
    rebuild_rollups: Annotated[bool, typer.Option("--rebuild-rollups", help="Roll all usage history up again (after rows were changed in the warehouse behind churnflow's back).")] = False,
    reuse: Annotated[bool, typer.Option(help="Reuse the stored features of the day when none of their inputs changed.")] = True,
) -> None:
    """Build point-in-time features for one as-of date into account_features."""
    from features.build import materialize_features
    from features.rollups import refresh_usage_rollups

    settings = _settings()
    engine = _engine(settings)
    day = _as_of(settings, as_of)
    if rebuild_rollups:
        console.print(refresh_usage_rollups(engine, rebuild=True).describe())
    frame = materialize_features(engine, [day], recheck_days=settings.rollup_recheck_days, reuse=reuse and settings.feature_reuse,
                                 event_types_top=settings.usage_event_types_top)
    console.print(f"features as of {day}: {len(frame)} active accounts x {frame.shape[1] - 2} features -> table account_features")


@app.command("train")
def train_cmd() -> None:
    """Train on matured snapshots, log to MLflow, register, run the champion gate (refuses thin data)."""
    from models.split import InsufficientDataError
    from models.train import describe_auc, train

    settings = _settings()
    try:
        result = train(_engine(settings), settings)
    except InsufficientDataError as exc:
        console.print(f"[bold red]training refused[/bold red]: {escape(exc.cause)}", highlight=False, soft_wrap=True)
        console.print(f"fix: {exc.fix}", markup=False, highlight=False, soft_wrap=True)
        console.print("(recorded in MLflow as a refused run; no model was fitted or registered)", markup=False)
        raise typer.Exit(1) from None
    table = Table(title=f"model {settings.model_name} v{result.model_version} (run {result.run_id[:8]})")
    table.add_column("holdout metric")
    table.add_column("value", justify="right")
    for key, value in result.metrics.items():
        table.add_row(key, f"{value:.4f}")
    console.print(table)
    console.print(f"holdout {describe_auc(result.metrics)}", markup=False, highlight=False)
    console.print(f"gate: {result.reason}", markup=False, highlight=False)


@app.command("profile")
def profile_cmd(as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False) -> None:
    """Readiness: history, coverage, billing cadence, churners per slice for monthly and weekly snapshots, a verdict."""
    from models.readiness import profile_readiness
    from models.split import InsufficientDataError

    settings = _settings()
    try:
        report = profile_readiness(_engine(settings), settings)
    except (InsufficientDataError, ValueError) as exc:
        console.print(f"[bold red]not ready[/bold red]: {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    if as_json:
        console.print_json(json.dumps(report.to_dict(), default=str))
    else:
        console.print(report.describe(), markup=False, highlight=False, soft_wrap=True)


@app.command("promote")
def promote_cmd(
    version: Annotated[str, typer.Option("--version", help="Registered model version to make champion.")],
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded on the model version).")],
    by: Annotated[Optional[str], typer.Option("--by", help="Who (default: $USER).")] = None,
) -> None:
    """Override the gate: make a model version champion, recording who and why."""
    from models.registry import promote

    console.print(promote(_settings(), version, by=by or os.environ.get("USER", "unknown"), reason=reason))


@app.command("monitor")
def monitor_cmd(as_of: AsOf = None) -> None:
    """Drift (PSI) and realized performance of the champion; a breach flags it for retraining."""
    from models.monitor import monitor_champion

    settings = _settings()
    report = monitor_champion(_engine(settings), settings, _as_of(settings, as_of))
    worst = report.rows.sort_values("value", ascending=False).head(5)
    for row in worst.itertuples():
        console.print(f"{row.metric:40s} {row.value:8.3f} {'BREACH' if row.breached else ''}")
    if report.needs_retraining:
        console.print(f"[bold red]model v{report.model_version} needs retraining[/bold red]: {'; '.join(report.breaches[:5])}")
    else:
        console.print(f"model v{report.model_version}: no breach")


@app.command("override")
def override_cmd(
    account: Annotated[str, typer.Option("--account", help="account_id")],
    band: Annotated[str, typer.Option("--band", help="green, yellow or red")],
    reason: Annotated[str, typer.Option("--reason", help="Why the band is pinned.")],
    until: Annotated[datetime, typer.Option("--until", formats=["%Y-%m-%d"], help="First day it no longer applies.")],
    by: Annotated[Optional[str], typer.Option("--by", help="Who (default: $USER).")] = None,
) -> None:
    """Pin an account's band (scoring respects it until it expires; the model's band stays visible)."""
    from models.score import set_override

    settings = _settings()
    set_override(_engine(settings), account, band, reason=reason, set_by=by or os.environ.get("USER", "unknown"), expires_on=until.date())
    console.print(f"{account} pinned {band} until {until.date()}")


@app.command("score")
def score_cmd(as_of: AsOf = None) -> None:
    """Score and explain every active account with the champion model into account_scores."""
    from models.registry import NoChampionError, last_training
    from models.score import score_accounts

    settings = _settings()
    day = _as_of(settings, as_of)
    try:
        scores = score_accounts(_engine(settings), settings, day)
    except NoChampionError as exc:
        console.print(f"[bold red]not scored[/bold red]: {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    last = last_training(settings)
    if last is not None and last.decision == "refused":
        console.print(f"note: the last training on {last.started:%Y-%m-%d %H:%M} UTC was refused ({last.reason}); scored with the earlier champion",
                      markup=False, highlight=False)
    console.print(f"scored {len(scores)} accounts as of {day}: {scores['band'].value_counts().to_dict()}")


@app.command("outreach")
def outreach_cmd(as_of: AsOf = None) -> None:
    """Run the playbooks over a day's scores and record new outreach tasks."""
    from outreach.decisions import run_outreach
    from outreach.playbooks import load_playbooks
    from churnflow.warehouse import read_sql
    from models.score import load_features

    settings = _settings()
    engine = _engine(settings)
    day = _as_of(settings, as_of)
    scores = read_sql(engine, "SELECT * FROM account_scores WHERE as_of_date = :d", {"d": datetime(day.year, day.month, day.day)})
    if scores.empty:
        raise typer.BadParameter(f"no scores as of {day} in table account_scores: run `churnflow score --as-of {day}` first")
    new = run_outreach(engine, scores, load_features(engine, day, settings.usage_event_types_top), day, load_playbooks(settings.playbooks_file), seed=settings.seed)
    console.print(f"outreach as of {day}: {int((~new['held_out']).sum()) if len(new) else 0} tasks, {int(new['held_out'].sum()) if len(new) else 0} held out")


@app.command("sync")
def sync_cmd(  # noqa: C901 - one flag, one branch

    as_of: AsOf = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would change; write nothing.")] = False,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Re-send only the records the ledger holds as failed.")] = False,
    reconcile: Annotated[bool, typer.Option("--reconcile", help="Compare the CRM with what churnflow intended (duplicate tasks included); write nothing. Exits 1 on differences.")] = False,
    repair: Annotated[bool, typer.Option("--repair", help="Close extra Tasks that share a churnflow key (Status Completed + a note), keep one.")] = False,
) -> None:
    """Push account health fields and pending tasks to the CRM. Exits 1 when records were rejected."""
    try:
        _sync(as_of, dry_run, retry_failed, reconcile, repair)
    except typer.Exit:
        raise
    except Exception as exc:
        from requests import RequestException
        from simple_salesforce.exceptions import SalesforceError

        if not isinstance(exc, (SalesforceError, RequestException)):
            raise
        # The CRM refused or was unreachable after the retries: one clear line, no traceback.
        console.print(f"CRM request failed: {type(exc).__name__}: {str(exc)[:500]}", markup=False)
        raise typer.Exit(1) from None


def _sync(as_of: datetime | None, dry_run: bool, retry_failed: bool, reconcile: bool, repair: bool) -> None:
    from crm_sync.sync import CrmSyncFailed, sync_crm

    if sum((dry_run, retry_failed, reconcile, repair)) > 1:
        raise typer.BadParameter("use only one of --dry-run, --retry-failed, --reconcile, --repair")
    settings = _settings()
    engine = _engine(settings)
    if repair:  # tasks of every day: no as-of date
        from crm_sync.repair import repair_duplicates

        repaired = repair_duplicates(engine, settings)
        console.print(repaired.describe(), markup=False)
        if repaired.failed:
            raise typer.Exit(1)
        return
    day = _as_of(settings, as_of)
    if retry_failed:
        from crm_sync.sync import retry_failed as retry_failed_records

        retried = retry_failed_records(engine, settings, day)
        console.print(retried.describe(), markup=False)
        if any(s is not None and s.failed for s in (retried.accounts, retried.tasks)):
            raise typer.Exit(1)
        return
    if reconcile:
        from crm_sync.repair import reconcile as reconcile_crm

        differences = reconcile_crm(engine, settings, day)
        for difference in differences:
            console.print(difference.describe(), markup=False)
        console.print(f"reconcile as of {day:%Y-%m-%d}: {len(differences)} difference(s)", markup=False)
        if differences:
            raise typer.Exit(1)
        return
    try:
        summary = sync_crm(engine, settings, day, dry_run=dry_run)
    except CrmSyncFailed as failed:
        summary = failed.summary
        for line in summary.skipped_lines():
            console.print(line, markup=False)
        console.print(str(failed), markup=False)
        raise typer.Exit(1) from None
    for change in summary.changes[:200]:
        console.print(change.describe(), markup=False)
    if len(summary.changes) > 200:
        console.print(f"... and {len(summary.changes) - 200} more field change(s)", markup=False)
    for line in summary.skipped_lines():
        console.print(line, markup=False)
    console.print(summary.describe(), markup=False)


@app.command("digest")
def digest_cmd(
    week_ending: Annotated[Optional[datetime], typer.Option("--week-ending", formats=["%Y-%m-%d"], help="Last day of the week. Default: latest data day.")] = None,
    no_email: Annotated[bool, typer.Option("--no-email", help="Write the files only, even if SMTP is configured.")] = False,
) -> None:
    """Write the weekly executive risk digest from stored scores and tasks (and email it if SMTP is set)."""
    from digest.publish import publish_digest

    settings = _settings()
    day = _as_of(settings, week_ending)
    published = publish_digest(_engine(settings), settings, day, send=not no_email)
    console.print(f"digest: {published.path}")
    if published.emailed_to:
        console.print(f"emailed to {len(published.emailed_to)} recipient(s)")


@app.command("daily")
def daily_cmd(
    as_of: AsOf = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="CRM dry run.")] = False,
) -> None:
    """Run the daily Prefect flow (features, score, outreach, CRM sync) once."""
    from flows.pipeline import daily_flow
    from flows.runtime import PrefectStartupError, temporary_server_guard

    from crm_sync.sync import CrmSyncFailed

    _quiet_library_logs()
    try:
        with temporary_server_guard():
            result = daily_flow(as_of=as_of.date() if as_of else None, dry_run=dry_run)
    except PrefectStartupError as exc:
        _fail(str(exc))
    except CrmSyncFailed as failed:  # scores and tasks are stored; the CRM rejected records: say which, exit 1
        for line in failed.summary.skipped_lines():
            console.print(line, markup=False)
        console.print(str(failed), markup=False)
        raise typer.Exit(1) from None
    console.print_json(json.dumps(result, default=str))


@app.command("demo")
def demo_cmd(
    accounts: Annotated[int, typer.Option(help="Number of demo accounts.")] = 1500,
    days: Annotated[int, typer.Option(help="Days of history.")] = 540,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 42,
) -> None:
    """Generate a demo book and run the whole pipeline end to end (as Prefect flows)."""
    from crm_sync.client import local_crm
    from flows.pipeline import demo_flow
    from flows.runtime import PrefectStartupError, temporary_server_guard

    settings = _settings()
    _quiet_library_logs()
    started = datetime.now()
    try:
        with temporary_server_guard(), local_crm(settings) if settings.crm == "local" else nullcontext():
            result = demo_flow(accounts=accounts, days=days, seed=seed)
    except PrefectStartupError as exc:
        _fail(str(exc))
    elapsed = (datetime.now() - started).total_seconds()
    _print_counts("demo book", result["book"])
    trained = result["train"]
    from models.train import describe_auc

    console.print(f"\n[bold]model[/bold] v{trained['model_version']}: holdout {escape(describe_auc(trained))} (oracle {trained.get('oracle_roc_auc', float('nan')):.3f}); {escape(str(trained['reason']))}")
    daily = result["daily"]
    console.print(f"[bold]daily[/bold] as of {daily['as_of']}: {daily['accounts_scored']} accounts scored {daily['bands']}, {daily['tasks_created']} tasks, CRM: {daily['crm']}")
    console.print(f"\n[bold green]Done in {elapsed:.0f} s.[/bold green] Where to look:")
    console.print(f"  scores    : table account_scores in {settings.warehouse}")
    console.print(f"              e.g. .venv/bin/python -c \"import duckdb; print(duckdb.connect('{settings.home_dir / 'warehouse.duckdb'}', read_only=True).sql('select account_id, health_score, band, top_drivers_text from account_scores order by as_of_date desc, p_churn desc limit 10'))\"")
    console.print(f"  MLflow UI : .venv/bin/mlflow ui --backend-store-uri {settings.tracking_uri} --port 5000  -> http://127.0.0.1:5000")
    console.print(f"  digest    : {result['digest']}")
    console.print(f"  CRM       : .venv/bin/churnflow crm-server  -> https://127.0.0.1:{settings.local_crm_port}/ (self-signed certificate)")


@bench_app.command("explain")
def bench_explain_cmd(rows: Annotated[int, typer.Option(help="Distinct feature rows to explain.")] = 20000) -> None:
    """Explain the same rows with shap.TreeExplainer and churnflow's explainer; values must match."""
    from models.bench import bench_explain

    settings = _settings()
    console.print_json(json.dumps(bench_explain(_engine(settings), settings, rows)))


@bench_app.command("features")
def bench_features_cmd(
    accounts: Annotated[int, typer.Option(help="Accounts in the generated book.")] = 20000,
    days: Annotated[int, typer.Option(help="Days of history (365 + 90 covers a year of snapshots).")] = 455,
    usage_density: Annotated[float, typer.Option(help="Scales daily activity: 1.0 is about 2.8 usage rows per account per day; 0.26 gives 30M rows for 100k accounts.")] = 1.0,
    postgres_url: Annotated[Optional[str], typer.Option("--postgres-url", help="Run on PostgreSQL (a throwaway schema) instead of DuckDB.")] = None,
) -> None:
    """Time a full build of 12 monthly snapshots and one incremental day (seconds, rows/s, peak memory)."""
    from features.bench import bench_features

    settings = _settings()
    figures = bench_features(settings.home_dir / "bench", accounts=accounts, days=days, usage_density=usage_density, postgres_url=postgres_url)
    console.print_json(json.dumps(figures))


@bench_app.command("crm")
def bench_crm_cmd(
    accounts: Annotated[int, typer.Option(help="Accounts to push (Accounts are seeded first, not counted).")] = 100000,
    tasks: Annotated[int, typer.Option(help="New tasks on day 1 (day 2 adds 5% more).")] = 10000,
) -> None:
    """Day 1, the same day again, day 2 with score drift, to a fresh local CRM: API calls, record writes, seconds."""
    from crm_sync.bench import bench_crm

    settings = _settings()
    workdir = settings.home_dir / "bench"
    workdir.mkdir(parents=True, exist_ok=True)
    console.print_json(json.dumps(bench_crm(accounts, tasks, workdir=workdir, min_change=settings.crm_min_health_change,
                                           min_trend=settings.crm_min_trend_change)))


@bench_app.command("ingest")
def bench_ingest_cmd(
    events: Annotated[int, typer.Option(help="Raw events in the generated export (one row each).")] = 2_000_000,
    whole: Annotated[bool, typer.Option("--whole/--no-whole", help="Also time reading the same rows whole, for comparison.")] = True,
) -> None:
    """Time a raw event table streamed in chunks beside read whole (seconds, rows/s, peak memory)."""
    import tempfile

    from ingest.bench import bench_ingest

    with tempfile.TemporaryDirectory(prefix="churnflow-bench-ingest-") as work:
        console.print_json(json.dumps(bench_ingest(Path(work), events=events, whole=whole)))


@bench_app.command("events")
def bench_events_cmd(
    events: Annotated[int, typer.Option(help="Detractor surveys timed from the HTTP acknowledgement to the Task and health fields in the CRM (one account each).")] = 20,
    interval: Annotated[float, typer.Option(help="Seconds between the timed events.")] = 3.0,
    burst_events: Annotated[int, typer.Option(help="Events posted at once after the timed ones (0: no burst).")] = 1000,
    burst_accounts: Annotated[int, typer.Option(help="Accounts the burst is spread over.")] = 100,
    api_url: Annotated[Optional[str], typer.Option(help="A running Prefect server's API URL (default: start one).")] = None,
    intake_url: Annotated[Optional[str], typer.Option(help="A running intake, e.g. http://127.0.0.1:8787 (default: start one; needs CHURNFLOW_EVENTS_SECRET).")] = None,
    serve: Annotated[bool, typer.Option("--serve/--no-serve", help="Serve the react deployment (python -m flows.serve --only react); --no-serve if yours runs it.")] = True,
    limit: Annotated[int, typer.Option(help="React runs the served deployment executes at once.")] = 4,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the burst's reactions to finish.")] = 600,
) -> None:
    """Latency and load of the event reaction path on a running stack (docs/events.md); needs a loaded book and a champion."""
    from flows.events_bench import bench_events

    settings = _settings()
    console.print_json(json.dumps(bench_events(settings, settings.home_dir / "bench" / "events", events=events, interval=interval,
                                               burst_events=burst_events, burst_accounts=burst_accounts, api_url=api_url,
                                               intake_url=intake_url, serve=serve, serve_limit=limit, timeout=timeout), default=str))


@app.command("crm-pull")
def crm_pull_cmd() -> None:
    """Read account owners (and renewal dates, if a field is configured) back from the CRM."""
    from crm_sync.pull import pull_crm_accounts

    settings = _settings()
    console.print(pull_crm_accounts(_engine(settings), settings).describe())


@app.command("crm-server")
def crm_server_cmd(port: Annotated[Optional[int], typer.Option(help="Port (default: settings.local_crm_port).")] = None) -> None:
    """Run the local Salesforce-compatible server in the foreground, on the demo's CRM state."""
    from crm_sync.client import serve_local_crm

    settings = _settings()
    serve_local_crm(settings, port=port)


@app.command("serve-events")
def serve_events_cmd(
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8787,
    host: Annotated[str, typer.Option(help="Interface to bind (0.0.0.0 to accept webhooks from other machines).")] = "127.0.0.1",
) -> None:
    """Receive survey, ticket and product-failure webhooks (docs/events.md); each accepted event triggers a reaction."""
    from events.intake import serve

    serve(host=host, port=port, settings=_settings())


@app.command("docs")
def docs_cmd(out: Annotated[Path, typer.Option(help="Docs folder.")] = Path("docs")) -> None:
    """Regenerate docs/data-model.md, docs/features.md and docs/mapping.md from their declarations."""
    from churnflow.docs import generated_docs

    out.mkdir(parents=True, exist_ok=True)
    for name, text in generated_docs().items():
        (out / name).write_text(text, encoding="utf-8")
        console.print(f"wrote {out / name}")


def _error_line(message: str) -> None:
    err = Console(stderr=True)
    err.print("[bold red]error:[/bold red] ", end="")
    err.print(message, markup=False, highlight=False, soft_wrap=True)


def _fail(message: str, code: int = 1) -> None:
    """One clear message on stderr and a non-zero exit: what a user sees for an expected failure."""
    _error_line(message)
    raise typer.Exit(code)


def _print_counts(title: str, counts: dict[str, int]) -> None:
    table = Table(title=title)
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name, rows in counts.items():
        table.add_row(name, f"{rows:,}")
    console.print(table)



def main() -> None:
    """The console entry point: expected failures are one clear line and exit code 1."""
    import sqlalchemy as sa

    from churnflow.errors import ChurnflowError

    try:
        app()
    except ChurnflowError as exc:
        _error_line(str(exc))
        raise SystemExit(1) from None
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        first = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or ["unknown error"])[0]
        _error_line(f"cannot use the warehouse: {first}")
        raise SystemExit(1) from None
    except sa.exc.ProgrammingError as exc:
        missing = _missing_table(exc)
        if missing is None:
            raise
        _error_line(f"the warehouse has no table '{missing}' yet: load your data first (`churnflow ingest --mapping <file>`, "
                    f"or a demo book with `churnflow demo-data`), then run the stages in order (see `churnflow --help`)")
        raise SystemExit(1) from None


def _missing_table(exc: Exception) -> str | None:
    """The table a failed statement named as missing (DuckDB and PostgreSQL wordings), if that was the failure."""
    import re

    text = str(getattr(exc, "orig", None) or exc)
    found = re.search(r'Table with name "?([\w.]+)"? does not exist|relation "([\w.]+)" does not exist', text)
    return (found.group(1) or found.group(2)) if found else None


if __name__ == "__main__":
    main()
