"""The agent's customer card page: plain server-rendered HTML, readable at a glance.

A CTI pop opens ``/agent?phone=…`` (or ``email``, ``card``, ``customer_no``,
``customer_id``); the search form at the top sends ``kind`` and ``value``.
Top to bottom: who (the name to greet them with, else the segment as the
heading; language and preferred channel, points balance and tier), why they may be
calling (the card's ``likely_reasons`` with the opening line), active
alerts, open cases, value as numbers (recency, frequency, spend) and the
last contact per channel, identifiers (masked for the agent role), the
cross-channel timeline, newest first, each entry with its facts (amounts,
categories, the points it earned and why, call direction and IVR reason,
web page, message state, case and consent changes), and how fresh the data is (one small
script asks ``/v1/lag``; the page itself needs only PostgreSQL).

Everything that comes from data goes through :func:`html.escape` (``_e``)
before it reaches the markup, attributes included; the page shell is a
:class:`string.Template` whose placeholders only ever receive escaped text
or fragments built here from escaped text. The lookup module sends the
page with a strict Content-Security-Policy (the one script runs by nonce).

The functions here are pure (card dict in, HTML text out); routes, auth and
audit are in :mod:`connectors.frontline.lookup`.
"""

from __future__ import annotations

import html
from string import Template
from typing import Any
from urllib.parse import urlsplit

from touchpoint.core.masking import ERASED

__all__ = ["SEARCH_KINDS", "login_page", "message_page", "card_page", "safe_next"]

SEARCH_KINDS: tuple[tuple[str, str], ...] = (
    ("phone", "Phone"), ("email", "E-mail"), ("customer_no", "Customer number"), ("card", "Card number"),
    ("customer_id", "Customer id"),
)
"""What the search form offers, (parameter, label)."""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


_STYLE = """
body{font:15px/1.4 system-ui,sans-serif;margin:0;color:#1b1b1b;background:#f4f5f7}
header{display:flex;gap:1em;align-items:center;background:#20344d;color:#fff;padding:.5em 1em}
header .who{margin-left:auto}
header form{display:inline}
main{max-width:60em;margin:0 auto;padding:1em}
section{background:#fff;border-radius:6px;padding:.6em 1em;margin:.7em 0;box-shadow:0 1px 2px #0002}
h1{margin:.2em 0;font-size:1.6em} h2{margin:.2em 0;font-size:1.1em;color:#20344d}
.facts{display:flex;gap:2em;flex-wrap:wrap} .facts div b{display:block;font-size:1.4em}
.reason .line{font-style:italic;color:#345}
.alert{color:#8a1c1c} .muted{color:#666} .error{color:#8a1c1c;font-weight:bold}
table{border-collapse:collapse;width:100%} td,th{text-align:left;padding:.15em .6em .15em 0}
"""

_SHELL = Template("""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title</title><style>$style</style></head>
<body><header><strong>Touchpoint</strong>$search<span class="who">$who</span></header>
<main>$body</main>$script</body></html>
""")

# Fills in the freshness line from /v1/lag; the page stays whole without it.
_LAG_SCRIPT = Template("""<script nonce="$nonce">
(function () {
  var out = document.getElementById("lag");
  function ago(ms) {
    if (ms < 1000) return ms + " ms";
    if (ms < 120000) return Math.round(ms / 1000) + " s";
    if (ms < 7200000) return Math.round(ms / 60000) + " min";
    if (ms < 172800000) return Math.round(ms / 3600000) + " h";
    return Math.round(ms / 86400000) + " days";
  }
  fetch("/v1/lag", {credentials: "same-origin"})
    .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
    .then(function (lag) {
      var text = lag.age_ms === null ? "no cards yet" : "data as of " + ago(lag.age_ms) + " ago";
      if (lag.behind !== null) text += ", " + lag.behind + " records not yet projected";
      out.textContent = text;
      out.title = lag.age_ms === null ? "" : lag.age_ms + " ms";
    })
    .catch(function () { out.textContent = "freshness unknown"; });
})();
</script>""")


def safe_next(target: str | None) -> str:
    """Where to go after login: a path on this site under ``/agent``, else ``/agent``."""
    if not target:
        return "/agent"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/agent") or target.startswith("//") \
            or "\\" in target:
        return "/agent"
    return target


def _search_form(kind: str = "phone", value: str = "") -> str:
    options = "".join(f'<option value="{_e(k)}"{" selected" if k == kind else ""}>{_e(label)}</option>'
                      for k, label in SEARCH_KINDS)
    return ('<form method="get" action="/agent" id="search">'
            f'<select name="kind" aria-label="search by">{options}</select> '
            f'<input name="value" value="{_e(value)}" aria-label="value" '
            f'placeholder="phone, e-mail, number…" required> '
            '<button type="submit">Find</button></form>')


def _who(name: str, role: str) -> str:
    return (f'{_e(name)} ({_e(role)}) <form method="post" action="/agent/logout">'
            '<button type="submit">Log out</button></form>')


def _page(title: str, body: str, *, search: str = "", who: str = "", script: str = "") -> str:
    return _SHELL.substitute(title=_e(title), style=_STYLE, search=search, who=who, body=body, script=script)


def login_page(next_url: str, error: str | None = None) -> str:
    """The login form: an API key, kept afterwards in an HttpOnly cookie."""
    problem = f'<p class="error" id="login-error">{_e(error)}</p>' if error else ""
    body = ('<section><h1>Sign in</h1>'
            f'{problem}<form method="post" action="/agent/login" id="login">'
            f'<input type="hidden" name="next" value="{_e(safe_next(next_url))}">'
            '<label>API key <input type="password" name="key" autocomplete="current-password" required '
            'autofocus></label> <button type="submit">Sign in</button></form>'
            '<p class="muted">Your key stays in this browser session only (an HttpOnly cookie).</p></section>')
    return _page("Touchpoint · sign in", body)


def message_page(name: str, role: str, message: str, kind: str = "phone", value: str = "") -> str:
    """The search form and one message (nobody found, a bad value, …)."""
    body = f'<section><p id="message">{_e(message)}</p></section>'
    return _page("Touchpoint · agent", body, search=_search_form(kind, value), who=_who(name, role))


def _title(text: object) -> str:
    return str(text).replace("_", " ").capitalize()


def _when(iso: object) -> str:
    # "2025-03-31T10:02:46.970Z" -> "2025-03-31 10:02 UTC": minutes are enough at a glance.
    text = str(iso)
    return f"{text[:10]} {text[11:16]} UTC" if len(text) >= 16 and text[10:11] == "T" else text


def _reasons(card: dict[str, Any]) -> str:
    reasons = card.get("likely_reasons") or []
    if not reasons:
        return '<section id="reasons"><h2>Likely reasons for the call</h2><p class="muted">none known</p></section>'
    items = "".join(
        f'<li class="reason"><strong>{_e(r.get("text", r.get("code", "")))}</strong>'
        + (f'<br><span class="line">“{_e(r["opening_line"])}”</span>' if r.get("opening_line") else "")
        + "</li>" for r in reasons)
    return f'<section id="reasons"><h2>Likely reasons for the call</h2><ol>{items}</ol></section>'


def _alerts(card: dict[str, Any]) -> str:
    active = [a for a in card.get("alerts") or [] if a.get("state") != "resolved"]
    if not active:
        return '<section id="alerts"><h2>Alerts</h2><p class="muted">none active</p></section>'
    items = "".join(
        f'<li class="alert"><strong>{_e(_title(a.get("kind", "")))}</strong> ({_e(a.get("severity", ""))}), '
        f'since {_e(_when(a.get("since", "")))}: '
        f'{_e("; ".join(str(r.get("text", "")) for r in a.get("reasons") or []))}</li>' for a in active)
    return f'<section id="alerts"><h2>Alerts</h2><ul>{items}</ul></section>'


def _cases(card: dict[str, Any]) -> str:
    cases = card.get("open_cases") or []
    inner = (f'<ul>{"".join(f"<li>{_e(c)}</li>" for c in cases)}</ul>' if cases
             else '<p class="muted">none open</p>')
    return f'<section id="cases"><h2>Open cases</h2>{inner}</section>'


def _identifiers(card: dict[str, Any]) -> str:
    rows = "".join(f"<tr><th>{_e(_title(kind))}</th><td>{_e(', '.join(str(v) for v in values))}</td></tr>"
                   for kind, values in (card.get("identifiers") or {}).items() if values)
    inner = f"<table>{rows}</table>" if rows else '<p class="muted">none</p>'
    return f'<section id="identifiers"><h2>Identifiers</h2>{inner}</section>'


def _money(minor: object, currency: object) -> str:
    return f"{minor / 100:,.2f} {currency}" if isinstance(minor, int) else ""


def _points(detail: dict[str, Any]) -> str:
    points = detail.get("points")
    if not isinstance(points, int):
        return ""
    why = "; ".join(str(reason) for reason in detail.get("points_why") or [])
    return f"{points:+,} points" + (f" ({why})" if why else "")


def describe(typ: str, detail: dict[str, Any]) -> str:
    """One timeline entry's facts in words (``detail`` as the card holds it); empty when it has none."""
    parts: list[str] = []
    if typ == "purchase":
        parts = [_money(detail.get("total_minor"), detail.get("currency")),
                 ", ".join(str(c) for c in detail.get("categories") or []), _points(detail)]
    elif typ == "refund":
        parts = [_money(detail.get("amount_minor"), detail.get("currency")),
                 f"of {detail['transaction_id']}" if detail.get("transaction_id") else "", _points(detail)]
    elif typ == "call":
        duration = detail.get("duration_s")
        parts = [_title(f"{detail.get('direction', '')} call {detail.get('phase', '')}".strip()),
                 f"IVR: {_title(detail['ivr_reason'])}" if detail.get("ivr_reason") else "",
                 f"{duration // 60} min {duration % 60} s" if isinstance(duration, int) else "",
                 _title(detail["outcome"]) if detail.get("outcome") else ""]
    elif typ == "web":
        parts = [_title(detail.get("action", "")), str(detail.get("page") or "")]
    elif typ in ("email", "sms"):
        parts = [_title(detail.get("action", "")),
                 f"campaign {detail['campaign_id']}" if detail.get("campaign_id") else ""]
    elif typ == "case":
        parts = [f"{_title(detail.get('category', ''))} case {detail.get('action', '')}",
                 f"“{detail['subject']}”" if detail.get("subject") else "",
                 f"severity {detail['severity']}" if detail.get("severity") else ""]
    elif typ == "consent":
        given = "granted" if detail.get("granted") else "withdrawn"
        parts = [f"{_title(detail.get('purpose', ''))} consent on {detail.get('channel', '')} {given}"]
    elif typ == "campaign":
        parts = [f"{_title(detail.get('action', ''))} to {detail.get('campaign_id', '')}",
                 f"×{detail['multiplier']} points" if detail.get("multiplier") else ""]
    elif typ == "branch_visit":
        parts = [_title(detail.get("purpose", "")), f"branch {detail['branch_id']}" if detail.get("branch_id") else ""]
    elif typ == "profile":
        parts = ["Name given" if detail.get("name_given") else "",
                 f"language {_language(detail['language'])}" if detail.get("language") else "",
                 f"prefers {detail['preferred_channel']}" if detail.get("preferred_channel") else ""]
    return " · ".join(part for part in parts if part)


# The languages the generator and our channels speak, named for an agent; any other tag is shown as it is.
_LANGUAGE_NAMES = {"en": "English", "en-GB": "English (UK)", "cy": "Welsh", "gd": "Scottish Gaelic", "pl": "Polish",
                   "ur": "Urdu", "pa": "Punjabi", "fr": "French", "de": "German", "es": "Spanish"}


def _language(tag: object) -> str:
    return _LANGUAGE_NAMES.get(str(tag), str(tag))


def _timeline(card: dict[str, Any]) -> str:
    events = sorted(card.get("timeline") or [], key=lambda t: str(t.get("occurred_at", "")), reverse=True)
    if not events:
        return '<section id="timeline"><h2>Timeline</h2><p class="muted">no interactions</p></section>'
    rows = "".join(f'<tr><td>{_e(_when(t.get("occurred_at", "")))}</td><td>{_e(_title(t.get("channel", "")))}'
                   f'</td><td>{_e(_title(t.get("type", "")))}</td>'
                   f'<td class="detail">{_e(describe(str(t.get("type", "")), t.get("detail") or {}))}</td></tr>'
                   for t in events)
    return (f'<section id="timeline"><h2>Timeline (newest first)</h2><table><tr><th>When</th><th>Channel</th>'
            f'<th>What</th><th>Details</th></tr>{rows}</table></section>')


def _contact(card: dict[str, Any]) -> str:
    """RFM as numbers and the last contact per channel."""
    rfm = card.get("rfm") or {}
    recency = rfm.get("recency_days")
    monetary = rfm.get("monetary_minor")
    figures = (
        f'<div>Last purchase<b id="recency">{_e(f"{recency} days ago" if isinstance(recency, int) else "never")}</b>'
        f'</div><div>Purchases, 12 months<b id="frequency">{_e(rfm.get("frequency", 0))}</b></div>'
        f'<div>Spent, 12 months<b id="monetary">'
        f'{_e(f"{monetary / 100:,.2f}" if isinstance(monetary, int) else "—")}</b></div>')
    rows = "".join(f"<tr><th>{_e(_title(channel))}</th><td>{_e(_when(at))}</td></tr>"
                   for channel, at in sorted((card.get("last_contact") or {}).items(), key=lambda c: str(c[1]),
                                             reverse=True))
    last = f'<table id="last-contact">{rows}</table>' if rows else '<p class="muted">no contact yet</p>'
    return (f'<section id="contact"><h2>Value and last contact</h2><div class="facts">{figures}</div>'
            f'<h2>Last contact by channel</h2>{last}</section>')


def card_page(name: str, role: str, customer_id: str, as_of: str, card: dict[str, Any], *, nonce: str,
              kind: str = "phone", value: str = "", resolved_from: str | None = None) -> str:
    """The customer card page (``card`` already masked for the caller's role).

    :param nonce: the Content-Security-Policy nonce the freshness script runs by.
    """
    loyalty = card.get("loyalty") or {}
    merged = (f'<p class="muted">{_e(resolved_from)} was merged into this customer.</p>'
              if resolved_from else "")
    balance = loyalty.get("balance")
    person = card.get("person") or {}
    # The name to greet the caller with; none given yet (or erased): the segment is the heading, as before.
    called = person.get("name") if isinstance(person.get("name"), str) and person.get("name") != ERASED else None
    segment = _title(card.get("value_segment", "unknown"))
    heading = (f'<h1 id="name">{_e(called)}</h1><span class="muted">Value segment</span> <b id="segment">'
               f'{_e(segment)}</b>' if called else
               f'<span class="muted">Value segment</span><h1 id="segment">{_e(segment)}</h1>'
               f'<span class="muted" id="name">{_e("name erased" if person.get("name") == ERASED else "no name given")}'
               '</span>')
    prefers = person.get("preferred_channel")
    summary = (
        f'<section id="summary">{heading}'
        '<div class="facts">'
        f'<div>Language<b id="language">{_e(_language(person["language"]) if person.get("language") else "—")}</b>'
        f'</div><div>Prefers<b id="preferred-channel">{_e(_title(prefers) if prefers else "—")}</b></div>'
        f'<div>Points balance<b id="balance">{_e(f"{balance:,}" if isinstance(balance, int) else "—")}</b></div>'
        f'<div>Tier<b id="tier">{_e(_title(loyalty.get("tier") or "—"))}</b></div>'
        f'<div>Contacts<b>{_e((card.get("counts") or {}).get("total", 0))}</b></div>'
        '</div>'
        f'<p class="muted">Customer <span id="customer-id">{_e(customer_id)}</span> · card as of '
        f'{_e(_when(as_of))} · <span id="lag">checking freshness…</span></p>{merged}</section>'
    )
    body = (summary + _reasons(card) + _alerts(card) + _cases(card) + _contact(card) + _identifiers(card)
            + _timeline(card))
    return _page(f"Touchpoint · {called or _title(card.get('value_segment', 'customer'))}", body,
                 search=_search_form(kind, value), who=_who(name, role),
                 script=_LAG_SCRIPT.substitute(nonce=_e(nonce)))
