"""The stack as a whole: components in start order, and the verbs on them."""

from __future__ import annotations

from collections.abc import Callable

from touchpoint.settings import Settings
from touchpoint.stack.kafka import kafka_component
from touchpoint.stack.postgres import postgres_component
from touchpoint.stack.process import Component, tail
from touchpoint.stack.registry import registry_component

Report = Callable[[str], None]


def components(settings: Settings) -> list[Component]:
    """Every component, in the order they start (the registry needs Kafka)."""
    return [kafka_component(settings), postgres_component(settings), registry_component(settings)]


def up(settings: Settings, report: Report = print) -> None:
    """Start whatever is not running yet; idempotent."""
    for component in components(settings):
        report(component.start())


def down(settings: Settings, report: Report = print) -> None:
    """Stop what this stack started, in reverse order."""
    for component in reversed(components(settings)):
        report(component.stop())


def status(settings: Settings, report: Report = print) -> bool:
    """Report each component; True when all are running and ready."""
    all_ready = True
    for component in components(settings):
        report(component.status())
        all_ready = all_ready and component.pid() is not None and component.ready()
    return all_ready


def logs(settings: Settings, name: str | None, lines: int, report: Report = print) -> None:
    """Print the last lines of each component's log (or of one)."""
    for component in components(settings):
        if name in (None, component.name):
            report(f"==> {component.log_file} <==")
            report(tail(component.log_file, lines))
