"""The stack as a whole: components in start order, and the verbs on them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from touchpoint.errors import StackError
from touchpoint.settings import Settings
from touchpoint.stack.kafka import jars_dir, kafka_component
from touchpoint.stack.postgres import postgres_component
from touchpoint.stack.process import Component, tail
from touchpoint.stack.registry import dist_dir, registry_component

Report = Callable[[str], None]


def components(settings: Settings) -> list[Component]:
    """Every component, in the order they start (the registry needs Kafka)."""
    return [kafka_component(settings), postgres_component(settings), registry_component(settings)]


def component(settings: Settings, name: str) -> Component:
    """One component by name (``kafka``, ``postgres``, ``registry``)."""
    for found in components(settings):
        if found.name == name:
            return found
    raise StackError(f"no stack component named {name!r}")


def start(settings: Settings, name: str, report: Report = print) -> None:
    """Start one component if it is not running (e.g. again after :func:`stop`)."""
    report(component(settings, name).start())


def stop(settings: Settings, name: str, report: Report = print) -> None:
    """Stop one component this stack started, leaving the others running (fault tests)."""
    report(component(settings, name).stop())


def share_downloads(settings: Settings, source_home: Path) -> None:
    """Let the stack at ``settings.home`` use the jars and distribution already fetched under ``source_home``.

    Symlinks, made only where this home has nothing yet: a second stack on the
    machine (a test's private one) then never fetches from Maven Central again.
    Its data, logs and pid files stay its own.
    """
    for located in (jars_dir, dist_dir):
        source, target = located(source_home), located(settings.home)
        if source.is_dir() and not target.exists() and not target.is_symlink():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(source, target_is_directory=True)


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
