"""JSON text that always encodes as UTF-8, whatever a request or a file held.

JSON may carry a lone surrogate as an escape (``"\\ud800"``): valid JSON
text, not valid Unicode. ``json.loads`` turns it into a ``str`` that UTF-8
cannot encode, so echoing it back (an event id in a refusal, a line of an
import report) raises ``UnicodeEncodeError`` wherever the text is written
with ``ensure_ascii=False``. Here such text goes back out as the escapes it
arrived as; everything else keeps its characters.
"""

from __future__ import annotations

import json
from typing import Any


def dumps(doc: Any, **options: Any) -> str:
    """``json.dumps`` without ASCII escapes, unless the document holds text UTF-8 cannot encode."""
    text = json.dumps(doc, ensure_ascii=False, **options)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(doc, ensure_ascii=True, **options)
    return text


def printable(text: str) -> str:
    """``text`` with what UTF-8 cannot encode (lone surrogates) written as backslash escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
