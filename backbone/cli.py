"""The ``touchpoint`` command line: one entry point for every verb.

Each command builds the settings once, hands them to the composition root
and reports in plain words what it did and where to look. Errors of ours
(:class:`~touchpoint.errors.TouchpointError`) end the command with their
message and exit code 1, not a traceback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated

import typer

from touchpoint.errors import TouchpointError
from touchpoint.settings import Settings, load_settings

if TYPE_CHECKING:
    from datetime import datetime

    from touchpoint.core.fold import FoldConfig

app = typer.Typer(help="Touchpoint: omnichannel customer-interaction backbone.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
stack_app = typer.Typer(help="The local default stack: Kafka (KRaft), PostgreSQL, schema registry.",
                        no_args_is_help=True)
db_app = typer.Typer(help="The PostgreSQL read model.", no_args_is_help=True)
loyalty_app = typer.Typer(help="Loyalty rules: simulate proposed rules on history.", no_args_is_help=True)
alerts_app = typer.Typer(help="Dormancy and churn alerts on their topics.", no_args_is_help=True)
projections_app = typer.Typer(help="The read model as a whole: rebuild it from the log, digest it.",
                              no_args_is_help=True)
app.add_typer(stack_app, name="stack")
app.add_typer(db_app, name="db")
app.add_typer(loyalty_app, name="loyalty")
app.add_typer(alerts_app, name="alerts")
app.add_typer(projections_app, name="projections")
privacy_app = typer.Typer(help="Erasure by crypto-shredding and subject-access exports.", no_args_is_help=True)
app.add_typer(privacy_app, name="privacy")
value_app = typer.Typer(help="Customer value: BG/NBD and Gamma-Gamma fitted on the log.", no_args_is_help=True)
app.add_typer(value_app, name="value")


def _settings() -> Settings:
    return load_settings()


@stack_app.command("up")
def stack_up() -> None:
    """Install what is missing and start Kafka, PostgreSQL and the registry (idempotent)."""
    from touchpoint.stack import stack

    stack.up(_settings())


@stack_app.command("down")
def stack_down() -> None:
    """Stop the processes `stack up` started (and only those)."""
    from touchpoint.stack import stack

    stack.down(_settings())


@stack_app.command("status")
def stack_status() -> None:
    """Show each component; exit code 0 only when all are ready."""
    from touchpoint.stack import stack

    if not stack.status(_settings()):
        raise typer.Exit(3)


@stack_app.command("logs")
def stack_logs(
    component: Annotated[str | None, typer.Argument(help="kafka, postgres or registry; all if omitted")] = None,
    lines: Annotated[int, typer.Option("--lines", "-n")] = 40,
) -> None:
    """Print the last lines of the stack's logs."""
    from touchpoint.stack import stack

    stack.logs(_settings(), component, lines)


@db_app.command("migrate")
def db_migrate() -> None:
    """Apply the read model's SQL migrations in order (a rerun is a no-op)."""
    from projections.migrate import migrate

    applied = migrate(_settings())
    print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none pending'}")


@app.command("topics")
def topics(
    check: Annotated[bool, typer.Option("--check", help="create nothing; exit 3 if a topic is missing "
                                                        "(the worker's and the projections' readiness check)")] = False,
) -> None:
    """Create Touchpoint's topics with their configs (existing ones are kept)."""
    from connectors.platform.topics import ensure_topics, missing_topics

    if check:
        missing = missing_topics(_settings())
        if missing:
            print(f"missing {len(missing)} topic(s): {', '.join(missing)}", file=sys.stderr)
            raise typer.Exit(3)
        print("every topic exists")
        return
    created = ensure_topics(_settings())
    print(f"created {len(created)} topic(s): {', '.join(created) or 'all existed'}")


@app.command("worker")
def worker(loglevel: Annotated[str | None, typer.Option(help="default: the log_level setting")] = None) -> None:
    """Run the Faust stream processors (until Ctrl-C)."""
    from streams.app import run_worker

    settings = _settings()
    run_worker(settings, loglevel or settings.log_level.lower())


@app.command("gateway")
def gateway() -> None:
    """Run the HTTP ingest gateway (POST /v1/events; OpenAPI at /docs) until Ctrl-C."""
    from connectors.intake.gateway import serve_gateway

    serve_gateway(_settings())


@app.command("api")
def api() -> None:
    """Run the front-line lookup API (GET /v1/customers/lookup?phone=…; OpenAPI at /docs) until Ctrl-C."""
    from connectors.frontline.lookup import serve_lookup

    serve_lookup(_settings())


@app.command("project")
def project() -> None:
    """Run the projection writers into PostgreSQL (until Ctrl-C)."""
    from projections.run import run_projections

    run_projections(_settings())


@projections_app.command("rebuild")
def projections_rebuild(
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="records per poll and transaction")] = 5000,
    progress: Annotated[bool, typer.Option(help="progress bar on stderr")] = True,
) -> None:
    """Truncate the read model and replay the projection topics into it up to their current end, then exit.

    Stop `touchpoint project` first; start it again afterwards to follow the log.
    """
    from projections.rebuild import rebuild
    from touchpoint.logs import configure_logging

    settings = _settings()
    configure_logging(settings.log_level, settings.log_json)
    report = rebuild(settings, progress=progress, batch_size=batch_size)
    print(report.line(), flush=True)


@projections_app.command("checksum")
def projections_checksum() -> None:
    """Print a SHA-256 per read-model table and in total (positions and wall-clock columns left out)."""
    from projections.checksum import checksum

    for line in checksum(_settings().pg_conninfo()).lines():
        print(line)


@privacy_app.command("erase")
def privacy_erase(
    customer: Annotated[str, typer.Option("--customer", help="customer id (an alias id erases its survivor)")],
) -> None:
    """Erase a customer: destroy their identifiers' keys, record the erasure in the log, purge the read model."""
    from connectors.operations.privacy import erase

    print(erase(_settings(), customer))


@privacy_app.command("export")
def privacy_export(
    customer: Annotated[str, typer.Option("--customer", help="customer id (or one of its aliases)")],
) -> None:
    """Print everything held about a customer, identifiers opened, as one JSON document (subject access)."""
    from connectors.operations.privacy import export

    print(json.dumps(export(_settings(), customer), indent=2, sort_keys=True, default=str))


@app.command("generate")
def generate_cmd(
    customers: Annotated[int, typer.Option(min=1, help="people in the population")] = 1000,
    days: Annotated[int, typer.Option(min=1, help="length of the history")] = 365,
    seed: Annotated[int, typer.Option(help="same seed, same bytes")] = 1,
    bad_share: Annotated[float, typer.Option(min=0.0, max=0.5, help="share of deliberately bad events")] = 0.02,
    out: Annotated[str, typer.Option(help="JSON-lines file to write, - for stdout")] = "-",
    publish: Annotated[bool, typer.Option(help="publish to Kafka through the producer library instead")] = False,
) -> None:
    """Generate a synthetic population's events (JSON lines, or straight to Kafka)."""
    from touchpoint.generate import generate, write_jsonl

    events = generate(customers, days, seed, bad_share=bad_share)
    if publish:
        from connectors.intake.producer import publish_all

        summary = publish_all(_settings(), events)
        print(summary)
        return
    if out == "-":
        count = write_jsonl(events, sys.stdout)
    else:
        with open(out, "w", encoding="utf-8") as fh:
            count = write_jsonl(events, fh)
    print(f"wrote {count} events to {out if out != '-' else 'stdout'}", file=sys.stderr)


def _fold_config(settings: Settings, config: str | None, rules: str | None) -> FoldConfig:
    """The fold's knobs: the --config file or the settings, with --rules on top."""
    from pathlib import Path

    from touchpoint.core.fold import FoldConfig

    if config:
        fold_config = FoldConfig.load(config)
    else:
        fold_config = FoldConfig(region=settings.phone_region, loyalty_rules=settings.loyalty_rules)
    if rules:
        fold_config = fold_config.model_copy(update={"loyalty_rules": Path(rules)})
    return fold_config


def _instant(option: str, text: str | None) -> datetime | None:
    """An ISO-8601 instant with its zone from an option (None when not given).

    :raises ConfigError: not an instant, or no zone.
    """
    from datetime import datetime

    from touchpoint.errors import ConfigError

    if not text:
        return None
    try:
        instant = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ConfigError(f"{option}: {text!r} is not an ISO-8601 instant") from exc
    if instant.tzinfo is None:
        raise ConfigError(f"{option}: give a time zone, e.g. 2026-01-31T00:00:00Z")
    return instant


def _with_value_model(fold_config: FoldConfig, path: str) -> FoldConfig:
    """The fold config scoring with the value model at ``path``, checked here once (before a fold's processes
    each read it).

    :raises ConfigError: not a value model.
    """
    from pathlib import Path

    from touchpoint.core.value import ValueModel
    from touchpoint.errors import ConfigError

    try:
        ValueModel.load(path)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    return fold_config.model_copy(update={"value_model": Path(path)})


@loyalty_app.command("simulate")
def loyalty_simulate(
    events: Annotated[str, typer.Argument(help="history: events in the contract's JSON form, one per line")],
    rules: Annotated[str, typer.Option("--rules", help="the proposed rules file (YAML or JSON)")],
    current: Annotated[str | None, typer.Option("--current", help="the rules in force (default: "
                                                                   "TOUCHPOINT_LOYALTY_RULES, else shipped)")] = None,
    config: Annotated[str | None, typer.Option("--config", help="fold config JSON (identity, segments)")] = None,
    movers: Annotated[int, typer.Option(min=0, help="biggest movers to list")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Score the same history under the current and the proposed loyalty rules, and compare."""
    from touchpoint.core.loyalty import default_rules, load_rules
    from touchpoint.core.loyalty_simulation import format_report, simulate

    settings = _settings()
    proposed = load_rules(rules)
    current_path = current or settings.loyalty_rules
    current_rules = load_rules(current_path) if current_path else default_rules()

    def lines() -> Iterator[bytes]:
        with open(events, "rb") as fh:
            yield from fh

    report = simulate(lines, current_rules, proposed, secret=settings.identifier_key.get_secret_value().encode(),
                      config=_fold_config(settings, config, None), movers=movers)
    sys.stdout.write((json.dumps(report, indent=2) if as_json else format_report(report)) + "\n")


@value_app.command("fit")
def value_fit(
    events: Annotated[str, typer.Argument(help="history: events in the contract's JSON form, one per line")],
    calibration_end: Annotated[str, typer.Option("--calibration-end", help="the last day (YYYY-MM-DD, UTC) whose "
                                                                           "purchases count")],
    unit: Annotated[str, typer.Option("--unit", help="time unit of t_x and T: week or day")] = "week",
    config: Annotated[str | None, typer.Option("--config", help="fold config JSON (identity, segments)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the fit as one JSON object")] = False,
    out: Annotated[str | None, typer.Option("--out", help="write the value model (the fit, with the settings' "
                                                          "margin, discount and horizons) to this file, for "
                                                          "`touchpoint fold --value-model`")] = None,
) -> None:
    """Fit BG/NBD (repeat purchases, P(alive)) and Gamma-Gamma (spend) on the customers the history folds into."""
    from datetime import date
    from pathlib import Path

    from touchpoint.core.fold import folded
    from touchpoint.core.value import UNITS, ValueModel, fit, summaries_of
    from touchpoint.errors import ConfigError

    try:
        end = date.fromisoformat(calibration_end)
    except ValueError as exc:
        raise ConfigError(f"--calibration-end: {calibration_end!r} is not a date like 1997-09-30") from exc
    if unit not in UNITS:
        raise ConfigError(f"--unit: {unit!r} is not one of {', '.join(UNITS)}")
    settings = _settings()
    with open(events, "rb") as fh:
        folder = folded(list(fh), config=_fold_config(settings, config, None),
                        secret=settings.identifier_key.get_secret_value().encode())
    try:
        fitted = fit(summaries_of(folder.views, end, unit).values(), end, unit)
    except ValueError as exc:
        raise ConfigError(f"value fit: {exc}") from exc
    doc = fitted.to_json()
    if out:
        model = ValueModel(fitted, settings.value_margin, settings.value_annual_discount, settings.value_horizon_months,
                           settings.value_expected_days)
        Path(out).write_text(json.dumps(model.to_json(), indent=2) + "\n", encoding="utf-8")
        doc["model_version"] = model.version
    if as_json:
        sys.stdout.write(json.dumps(doc) + "\n")
        return
    bg, gg, ll = doc["bg_nbd"], doc["gamma_gamma"], doc["log_likelihood"]
    sys.stdout.write(
        f"{doc['customers']:,} customers with a purchase by {end} ({doc['repeat_customers']:,} with repeat purchases), "
        f"time in {unit}s\n"
        f"BG/NBD:      r = {bg['r']:.4g}, alpha = {bg['alpha']:.4g}, a = {bg['a']:.4g}, b = {bg['b']:.4g} "
        f"(log-likelihood {ll['bg_nbd']:,.1f})\n"
        f"Gamma-Gamma: p = {gg['p']:.4g}, q = {gg['q']:.4g}, v = {gg['v']:.4g} "
        f"(log-likelihood {ll['gamma_gamma']:,.1f})\n"
        + (f"value model {doc['model_version']} written to {out}\n" if out else ""))


@value_app.command("report")
def value_report(
    events: Annotated[str, typer.Argument(help="history: events in the contract's JSON form, one per line")],
    value_model: Annotated[str, typer.Option("--value-model", help="the value model file (`touchpoint value fit "
                                                                   "--out`)")],
    as_of: Annotated[str | None, typer.Option("--as-of", help="score as of this ISO-8601 instant (default: the "
                                                               "latest event)")] = None,
    config: Annotated[str | None, typer.Option("--config", help="fold config JSON (identity, segments, "
                                                                 "stages)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as one JSON object")] = False,
) -> None:
    """CLV and P(alive) by value segment and by life-cycle stage, over the customers the history folds into."""
    from touchpoint.core.fold import fold
    from touchpoint.core.value import report

    instant = _instant("--as-of", as_of)
    settings = _settings()
    fold_config = _with_value_model(_fold_config(settings, config, None), value_model)
    with open(events, "rb") as fh:
        doc = fold(list(fh), instant, fold_config, settings.identifier_key.get_secret_value().encode())
    found = report(doc["customers"])
    if as_json:
        sys.stdout.write(json.dumps(found) + "\n")
        return
    lines = [f"value model {', '.join(found['model_versions'])}; {found['all']['customers']:,} customers, "
             f"{found['all']['buyers']:,} with a purchase"]
    for by in ("segment", "stage"):
        lines.append(f"by {by}:")
        for key, figures in found[f"by_{by}"].items():
            clv, alive = figures.get("clv"), figures.get("p_alive")
            lines.append(f"  {key:<10} {figures['customers']:>8,} customers {figures['buyers']:>8,} buyers"
                         + (f"  CLV total {clv['total']:>12,.2f} mean {clv['mean']:>9,.2f} "
                            f"median {clv['median']:>9,.2f}  P(alive) mean {alive['mean']:.3f} "
                            f"median {alive['median']:.3f}" if clv else ""))
    sys.stdout.write("\n".join(lines) + "\n")


@app.command("fold")
def fold_cmd(
    events: Annotated[str, typer.Argument(help="events in the contract's JSON form, one per line")],
    as_of: Annotated[str | None, typer.Option("--as-of", help="render views as of this ISO-8601 instant")] = None,
    config: Annotated[str | None, typer.Option("--config", help="JSON file: identity limits, shared "
                                                                 "identifiers, segment thresholds")] = None,
    rules: Annotated[str | None, typer.Option("--rules", help="loyalty rules file (default: the config's, "
                                                               "else TOUCHPOINT_LOYALTY_RULES, else shipped)")] = None,
    jobs: Annotated[int | None, typer.Option("--jobs", min=1, help="processes to fold in (default: one per "
                                                                   "core; the output is the same)")] = None,
    value_model: Annotated[str | None, typer.Option("--value-model", help="a value model file (`touchpoint value "
                                                                           "fit --out`): every customer gets its "
                                                                           "value")] = None,
) -> None:
    """Fold events through the pure core offline (the workers' code) and print the views as JSON."""
    from touchpoint.fold_parallel import default_jobs, fold_file_to_json
    from touchpoint.logs import configure_logging

    settings = _settings()
    configure_logging(settings.log_level, settings.log_json)  # on stderr: why a fold ran in one process
    fold_config = _fold_config(settings, config, rules)
    if value_model:
        fold_config = _with_value_model(fold_config, value_model)
    instant = _instant("--as-of", as_of)
    out = fold_file_to_json(events, jobs=jobs or default_jobs(), as_of=instant, config=fold_config,
                            secret=settings.identifier_key.get_secret_value().encode())
    sys.stdout.flush()
    sys.stdout.buffer.write(out)  # hundreds of MB for a big file: no decode, no copy
    sys.stdout.buffer.write(b"\n")
    sys.stdout.buffer.flush()


@app.command("ingest")
def ingest(
    path: Annotated[str, typer.Argument(help="events as JSON lines (.jsonl/.ndjson) or CSV (.csv)")],
    report: Annotated[str | None, typer.Option(help="where refused lines go (default FILE.rejected.jsonl)")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="events per Kafka transaction")] = 500,
) -> None:
    """Import a file of events: resumable after a crash, exactly once on the topics.

    Exit code 0 when every line was accepted, 2 when some were refused (see the report).
    """
    from pathlib import Path

    from connectors.intake.file_import import import_file

    summary = import_file(_settings(), Path(path), report_path=Path(report) if report else None,
                          batch_size=batch_size, progress=sys.stderr.isatty())
    print(summary)
    if summary.rejected:
        raise typer.Exit(2)


@alerts_app.command("tail")
def alerts_tail(
    kind: Annotated[str | None, typer.Option("--kind", help="dormancy or churn (both if omitted), or access: lookup "
                                                            "keys reading far more than usual, or blocked")] = None,
    segment: Annotated[str | None, typer.Option("--segment", help="platinum, gold, iron or lead; all if "
                                                                  "omitted")] = None,
    from_beginning: Annotated[bool, typer.Option("--from-beginning", help="replay the topics from their start "
                                                                          "(default: only new alerts)")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="one compact JSON alert per line")] = False,
    max_alerts: Annotated[int | None, typer.Option("--max", min=1, help="stop after printing N alerts")] = None,
    timeout: Annotated[float | None, typer.Option("--timeout", min=0.0, help="stop after S seconds")] = None,
) -> None:
    """Print alerts as they arrive on the alert topics, one line each (human-readable or --json)."""
    from connectors.operations.alerts import format_access_alert, format_alert, tail_alerts
    from connectors.platform.access_wire import AccessAlertSerde
    from connectors.platform.alert_wire import KINDS, SEGMENTS, AlertSerde
    from connectors.platform.registry import RegistryClient

    if kind is not None and kind not in (*KINDS, "access"):
        raise typer.BadParameter(f"{kind!r}: expected one of {', '.join((*KINDS, 'access'))}", param_hint="--kind")
    if segment is not None and segment not in SEGMENTS:
        raise typer.BadParameter(f"{segment!r}: expected one of {', '.join(SEGMENTS)}", param_hint="--segment")
    if segment is not None and kind == "access":
        raise typer.BadParameter("access alerts are about keys, not customers: they have no segment",
                                 param_hint="--segment")
    access = kind == "access"
    settings = _settings()
    printed = 0
    with RegistryClient(settings.registry_url) as registry:
        alerts = tail_alerts(settings, AccessAlertSerde(registry) if access else AlertSerde(registry),
                             (kind,) if kind else KINDS, from_beginning=from_beginning, timeout_s=timeout)
        human = format_access_alert if access else format_alert
        try:
            for doc in alerts:
                if segment is not None and doc["segment"] != segment:
                    continue
                line = json.dumps(doc, separators=(",", ":"), ensure_ascii=False) if as_json else human(doc)
                print(line, flush=True)
                printed += 1
                if max_alerts is not None and printed >= max_alerts:
                    break
        except KeyboardInterrupt:
            pass
        finally:
            alerts.close()  # closes the consumer now, not whenever the generator is collected


@app.command("clock")
def clock(
    every: Annotated[float, typer.Option("--every", min=0.001, help="seconds between ticks")] = 60.0,
    once: Annotated[bool, typer.Option("--once", help="publish one tick and exit")] = False,
    at: Annotated[str | None, typer.Option("--at", help="publish one tick for this ISO-8601 instant "
                                                         "(implies --once)")] = None,
) -> None:
    """Write event-time ticks into the identity agent's input, so dormancy can be noticed (until Ctrl-C)."""
    import signal
    import threading
    from datetime import UTC, datetime

    from connectors.operations.clock import publish_tick, run_clock, tick_topic
    from touchpoint.core.instants import epoch_ms, iso_ms
    from touchpoint.logs import configure_logging

    settings = _settings()
    configure_logging(settings.log_level, settings.log_json)
    if at is not None or once:
        instant = _instant("--at", at) or datetime.now(UTC)
        offset = publish_tick(settings, instant)
        print(f"tick {iso_ms(epoch_ms(instant))} published to {tick_topic(settings)} at offset {offset}")
        return
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"clock: a tick every {every:g} s to {tick_topic(settings)} (Ctrl-C to stop)", flush=True)
    published = run_clock(settings, every, stop)
    print(f"clock stopped after {published} tick(s)")


@app.command("demo")
def demo(
    customers: Annotated[int, typer.Option(min=1, help="How many people to generate.")] = 2000,
    days: Annotated[int, typer.Option(min=1, help="Days of history, ending today.")] = 365,
    seed: Annotated[int | None, typer.Option(help="The population's seed [default: a new one per run]",
                                             show_default=False)] = None,
    serve: Annotated[bool | None, typer.Option(
        "--serve/--no-serve", help="Keep running for the agent page until Ctrl-C [default: when stdin is a terminal]",
        show_default=False)] = None,
) -> None:
    """Bring the stack up and run the backbone end to end; prints what happened and where to look."""
    from backbone.demo import run_demo

    run_demo(_settings(), customers=customers, days=days, seed=seed, serve=serve)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except TouchpointError as exc:
        print(f"touchpoint: {exc}", file=sys.stderr)
        sys.exit(1)
