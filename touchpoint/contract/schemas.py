"""The Avro contract files: where they are, in which order they load, parsed once.

Layout. Each named type the envelope shares or each payload record lives in a
file of its own under ``schemas/`` at the repository root (``channel.avsc``,
``purchase.avsc``, ... and ``event.avsc`` last), so a change to one event type
is a one-file diff that reviewers can read. The files reference each other by
name, so they load in a fixed dependency order (:data:`SCHEMA_FILES`) with
:func:`fastavro.schema.load_schema_ordered`, which inlines every named type
once, at its first use. The result is one self-contained ``Event`` schema:
that is what the registry stores (no schema references to manage) and what
the codec writes with.

Finding the files. In a source checkout or an editable install the package
sits next to ``schemas/``; a wheel carries them as data files under
``<prefix>/share/touchpoint/schemas``. Both are tried, in that order.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any, cast

from fastavro import parse_schema
from fastavro.schema import load_schema_ordered

from touchpoint.errors import ConfigError

NAMESPACE = "touchpoint.events"
# Dependencies first: Channel is used by the envelope and by ConsentPayload;
# every payload is used by the Event's union.
SCHEMA_FILES = (
    "channel.avsc",
    "purchase.avsc",
    "refund.avsc",
    "branch_visit.avsc",
    "call.avsc",
    "email.avsc",
    "web.avsc",
    "sms.avsc",
    "case.avsc",
    "consent.avsc",
    "campaign.avsc",
    "profile.avsc",
    "event.avsc",
)


@cache
def schemas_dir() -> Path:
    """The directory holding the ``.avsc`` files."""
    candidates = (
        Path(__file__).resolve().parents[2] / "schemas",  # checkout / editable install
        Path(sys.prefix) / "share" / "touchpoint" / "schemas",  # wheel data files
    )
    for candidate in candidates:
        if (candidate / "event.avsc").is_file():
            return candidate
    raise ConfigError(f"Avro schemas not found; looked in {', '.join(map(str, candidates))}")


def schema_files(directory: Path | None = None) -> list[Path]:
    """The contract files in load order (a list, so a test can swap one for a new version)."""
    root = directory or schemas_dir()
    return [root / name for name in SCHEMA_FILES]


def expand(files: Sequence[Path]) -> dict[str, Any]:
    """One self-contained schema (plain JSON data) from files in dependency order."""
    # _write_hint=False keeps fastavro's private markers out, so the result can be dumped as JSON.
    return cast(dict[str, Any], load_schema_ordered([str(f) for f in files], _write_hint=False))


@cache
def event_schema_text() -> str:
    """The current ``Event`` schema as compact JSON: the text to register."""
    return json.dumps(expand(schema_files()), separators=(",", ":"))


@cache
def event_schema() -> Any:
    """The current ``Event`` schema parsed for fastavro (shared: do not mutate)."""
    return parse_schema(json.loads(event_schema_text()))
