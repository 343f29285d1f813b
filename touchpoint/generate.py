"""Synthetic customer population: a deterministic, streaming event generator.

``generate(customers, days, seed)`` yields JSON-form events (DESIGN.md §1:
``event_id``, ``type``, ``channel``, ``occurred_at``, ``identifiers``,
``payload``) in ``occurred_at`` order; ``write_jsonl`` writes them one compact,
key-sorted JSON object per line. The demo, the tests and the benchmarks of
later issues feed on it, so its realism is part of its contract.

Determinism
    One ``random.Random(seed)`` drives everything, drawn in a fixed order; no
    wall clock (the default start is 2025-01-01T00:00:00Z), no ``uuid4``, no
    ``hash()``. Event ids are ``ev-<seed>-<n:09d>`` in output order; other ids
    (``T…`` transactions, ``R…`` refunds, ``S…`` sessions, ``M…`` messages,
    ``K…`` calls, ``X…`` cases) come from counters. Same arguments, same bytes.

Streaming
    Work is done day by day. Every customer has two recurring processes (a
    purchase habit and a contact habit), each parked in the bucket of the day
    it next fires; follow-ups that land on later days (a delivery receipt, a
    refund, a case closing) wait in that day's pending list. Each day's events
    are sorted by (epoch ms, creation sequence) and yielded, so memory holds
    the per-customer identifiers and one day of events, never the whole run.

Population (shares are of customers unless said otherwise)
    - ``customer_no`` ``C`` + 8 digits: everyone (loyalty members). Used at the
      branch, on web login, on cases and consent.
    - ``card``: 78 %, 16 digits, Luhn-valid, on test BINs (400000, 411111,
      424242, 555555, 510510, 222300). Used at the till for purchases and
      refunds (with the ``customer_no`` too when the loyalty card is scanned,
      55 % of card purchases) and on some branch visits.
    - ``email``: 85 % of individuals, ``first.last<n>@example.*``; 5 % of the
      events that carry it write it in mixed case. Households: about 12 % of
      customers live in households of 2-4 people who share one family email
      (``the.<last>s<n>@example.net``) and have no personal one.
    - ``phone``: 88 % of individuals have a UK mobile ``+447700900000 + n``
      (the Ofcom drama range for the first thousand); 15 % of the events that
      carry a phone write it nationally (``07700 900123``). Businesses:
      ``max(1, customers // 1000)`` shop landlines (``+44 20 7946 0xxx``),
      each shared by ``min(30, customers // 10)`` customers, who call from it
      and have no mobile. Family emails and shop landlines must not merge
      people; they are here so identity resolution meets them.
    - ``cookie``: several per person over time (a new one on 8 % of web
      sessions); ``device``: 1-3 per person.
    - Habits: weekly shoppers 30 % (gap 5-9 days), monthly 30 % (22-38 days),
      occasional 25 % (exponential gaps, mean 45-90 days), lapsing 15 %
      (weekly or monthly, then *no event at all* from a lapse day drawn in
      15-75 % of the period; 35 % of them raise a cancel request by phone a day
      or two before). Contacts (non-purchase) happen every 12-45 days on
      average (exponential gaps) for everyone.

Purchases (channel ``branch``; 12 % of shop-only baskets online, ``web``)
    Fuel stations with shops (``FS-0001``..``FS-0250``, 85 % at the customer's
    home station). Baskets: fuel-only 45 %, shop-only 30 %, fuel+shop 25 %.
    Fuel is bought to a round sum (20/30/40/50/60.00) 40 % of the time, 1 % of
    fuel fills stop at 49.99; otherwise litres x price. Totals are integer
    minor units in GBP and fall both sides of 50.00 (5000), including exact
    5000 and 4999. Refunds: 3.5 % of purchases; of those 55 % full, 30 % one
    partial, 15 % two partials; always 1-14 days after, on the same
    identifiers, never above the purchase total in sum, dropped (not moved) if
    they would fall after the end or the customer's lapse. 15 % of refunds are
    followed by a call with ``ivr_reason`` ``refund``.

Campaigns
    Every 45 days from day 10 (while 4+ days remain) a campaign
    ``CMP-YYYYMMDD`` invites 30 % of customers (sampled; lapsed ones and those
    who withdrew marketing consent skipped) by email (``campaign`` invited,
    multiplier 3, ``starts_at`` the next midnight, ``ends_at`` 14 days later,
    plus the email sent/delivered/opened/clicked chain with ``campaign_id``)
    or by SMS when they have no email. Purchases in the window by invitees
    carry ``campaign_code`` half of the time; 25 % of invitees make one extra
    purchase in the window, always with the code.

Contacts (share of contact occasions)
    web session 30 % (page views, search, login 45 % of sessions, basket add
    and abandon), email 20 % (sent, delivered 95 % else bounced, opened 45 %,
    clicked, unsubscribed 1 %), call 12 % (started with ``ivr_reason``, ended
    with ``duration_s``, ``outcome``, ``agent_id``; 85 % inbound), SMS 10 %
    (sent, delivered, opt-out 3 %), branch visit 10 %, case 8 % (complaint
    45 %, query 35 %, cancel_request 12 %, fraud 8 %; a subject line from a
    short list per category, by case number; closed 85 %, updated
    30 %), consent 10 % (marketing 65 % / profiling; granted 70 %). Opt-outs
    and unsubscribes are followed by a consent withdrawal; withdrawn customers
    get no campaign invitations until they grant again. A channel the person
    cannot be reached on falls back to a web session.

Profiles (a preference centre of its own: its own seeded random stream and
event ids ``pf-<seed>-<customer:08d>-<n>``, so adding it left every other
event as it was)
    At a customer's first activity, a ``profile`` event on ``web`` (``branch``
    without an e-mail) with the customer number (and e-mail): the name 90 %
    of the time (``First Last`` from the same names as the e-mail), language
    ``en-GB`` 80 %, else ``cy``, ``pl``, ``ur``, ``pa`` or ``gd``, and a
    preferred channel 70 % (one the person can be reached on). 20 % change
    their preferred channel or language in a second one 30-200 days later.
    They do not count towards ``bad_share``.

Bad events (``bad_share``, default 2 % of all events)
    Injected right after a good event (same time and identifiers where it
    makes sense), kinds in turn: missing_identifiers, unknown_type,
    negative_amount, float_money, future_time (ten years ahead),
    malformed_email, unknown_refund. The contract forbids extra fields, so
    their ``event_id`` tells them: ``bad-<kind>-<seed>-<n:09d>``. A
    future_time event is the only one out of ``occurred_at`` order (as a
    producer with a wrong clock would be).
"""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

__all__ = ["BAD_KINDS", "DEFAULT_START", "TYPES", "Population", "generate", "population", "write_jsonl"]

DEFAULT_START = datetime(2025, 1, 1, tzinfo=UTC)
TYPES = ("purchase", "refund", "branch_visit", "call", "email", "web", "sms", "case", "consent", "campaign", "profile")
BAD_KINDS = (
    "missing_identifiers",
    "unknown_type",
    "negative_amount",
    "float_money",
    "future_time",
    "malformed_email",
    "unknown_refund",
)
HABITS = ("weekly", "monthly", "occasional", "lapsing")

_DAY = 86_400_000
_HOUR = 3_600_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CURRENCY = "GBP"

_FIRST = (
    "olivia", "amelia", "isla", "ava", "mia", "grace", "sophia", "lily", "freya", "emily",
    "oliver", "george", "noah", "arthur", "leo", "harry", "oscar", "jack", "charlie", "jacob",
    "priya", "aisha", "mohammed", "fatima", "wei", "chen", "siobhan", "callum", "rhys", "niamh",
)  # fmt: skip
_LAST = (
    "smith", "jones", "williams", "taylor", "brown", "davies", "evans", "wilson", "thomas", "johnson",
    "roberts", "robinson", "thompson", "wright", "walker", "white", "edwards", "hughes", "green", "hall",
    "khan", "patel", "singh", "ali", "murphy", "kelly", "campbell", "stewart", "morgan", "lewis",
)  # fmt: skip
_DOMAINS = ("example.com", "example.org", "example.net", "mail.example", "post.example")
_BINS = ("400000", "411111", "424242", "555555", "510510", "222300")

_LOCATIONS = 250
_FUELS = (("FUEL-UNL", 145), ("FUEL-DSL", 152), ("FUEL-SUP", 163))  # sku, minor units per litre
_ROUND_FUEL = (2000, 3000, 4000, 5000, 5000, 6000)
_SHOP = (
    ("SHOP-COFFEE", 280), ("SHOP-SANDWICH", 395), ("SHOP-CRISPS", 125), ("SHOP-WATER", 99),
    ("SHOP-CHOC", 110), ("SHOP-ENERGY", 189), ("SHOP-MILK", 145), ("SHOP-PAPER", 250),
    ("SHOP-CARWASH", 900), ("SHOP-SCREENWASH", 650), ("SHOP-OIL", 1899), ("SHOP-FLOWERS", 600),
    ("SHOP-CHARCOAL", 799), ("SHOP-CHARGER", 1499), ("SHOP-WIPERS", 1250), ("SHOP-ADBLUE", 1099),
)  # fmt: skip
_PAGES = ("/", "/offers", "/fuel-prices", "/stations", "/rewards", "/account", "/shop/car-care", "/help")
_IVR = ("balance", "card_lost", "payment_declined", "fuel_price", "account", "complaint", "campaign", "other")
_OUTCOMES = ("resolved", "resolved", "resolved", "transferred", "callback", "abandoned")
_PURPOSES = ("enquiry", "card_replacement", "account_update", "complaint", "collection", "rewards")
_CONSENT_CHANNELS = ("web", "email", "sms", "branch")
_LANGUAGES = ("cy", "pl", "ur", "pa", "gd")  # besides en-GB
_SUBJECTS = {
    "complaint": ("Charged twice at the pump", "Rude staff at the till", "Car wash out of order", "Points missing"),
    "query": ("How do I redeem points?", "Opening hours over the holidays", "Receipt for business expenses"),
    "cancel_request": ("Close my loyalty account", "Stop all marketing and close the card"),
    "fraud": ("Card used at a station I never visited", "Unknown points redemption"),
}

_CARD_SHARE = 0.78
_EMAIL_SHARE = 0.85
_MOBILE_SHARE = 0.88
_HOUSEHOLD_START = 0.045  # per customer slot -> about 12 % of customers in households of 2-4
_CAMPAIGN_EVERY = 45
_CAMPAIGN_FIRST = 10
_CAMPAIGN_DAYS = 14
_CAMPAIGN_SHARE = 0.30
_FUTURE_MS = 3650 * _DAY
_MASK64 = (1 << 64) - 1
_MASK48 = (1 << 48) - 1


def _luhn_digit(partial: str) -> str:
    """The check digit that makes ``partial`` + digit Luhn-valid."""
    total = 0
    for i, ch in enumerate(reversed(partial)):
        d = ord(ch) - 48
        if i % 2 == 0:  # doubled: the check digit will sit to its right
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


def _below(rng: random.Random) -> Callable[[int], int]:
    """``randrange(n)`` for the hot paths: one float draw instead of rejection sampling."""
    r = rng.random

    def below(n: int) -> int:
        return int(r() * n)

    return below


def _national(e164: str) -> str:
    """``+447700900123`` -> ``07700 900123``; ``+442079460005`` -> ``020 7946 0005``."""
    if e164.startswith("+447"):
        return f"0{e164[3:7]} {e164[7:]}"
    return f"0{e164[3:5]} {e164[5:9]} {e164[9:]}"


@functools.cache
def _time_tables() -> tuple[list[str], list[str]]:
    """``HH:MM:`` per minute of the day and ``SS.mmmZ`` per ms of the minute.

    Formatting is the hottest step per event; three lookups and two
    concatenations beat ``datetime.isoformat`` several times over.
    """
    hhmm = [f"{h:02d}:{m:02d}:" for h in range(24) for m in range(60)]
    ssmmm = [f"{s:02d}.{ms:03d}Z" for s in range(60) for ms in range(1000)]
    return hhmm, ssmmm


def _epoch_ms(instant: datetime) -> int:
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=UTC)
    return (instant - _EPOCH) // timedelta(milliseconds=1)


@dataclass(frozen=True, slots=True)
class Population:
    """Who the generated people are: parallel lists indexed by customer number 0..n-1.

    Only the generator and tests need it; identifiers here are their clear,
    canonical form (E.164 phones, lower-case emails) even where events write
    them otherwise.
    """

    start_ms: int
    customer_no: list[str]
    name: list[str]
    card: list[str | None]
    email: list[str | None]
    mobile: list[str | None]
    landline: list[str | None]
    habit: list[str]
    lapse_day: list[int]  # -1 when the customer never lapses
    home: list[int]
    devices: list[int]
    purchase_gap: list[float]
    contact_gap: list[float]

    def lapse_at(self, i: int) -> datetime | None:
        """The instant from which customer ``i`` has no events, or None."""
        day = self.lapse_day[i]
        if day < 0:
            return None
        return _EPOCH + timedelta(milliseconds=self.start_ms + day * _DAY)


def _build_population(rng: random.Random, customers: int, days: int, start_ms: int) -> Population:
    r = rng.random
    rr = _below(rng)
    uni = rng.uniform
    off_c = rr(100_000_000)
    off_k = rr(1_000_000_000)
    customer_no: list[str] = []
    name: list[str] = []
    card: list[str | None] = []
    email: list[str | None] = []
    mobile: list[str | None] = []
    habit: list[str] = []
    lapse_day: list[int] = []
    home: list[int] = []
    devices: list[int] = []
    purchase_gap: list[float] = []
    contact_gap: list[float] = []
    in_household = bytearray(customers)
    hh_left = 0
    hh_email = ""
    households = 0
    lapse_lo = max(1, int(days * 0.15))
    lapse_hi = max(lapse_lo, int(days * 0.75))
    for i in range(customers):
        # 7919 and 104729 are primes, coprime with 10**k: these are permutations, so unique.
        customer_no.append(f"C{(i * 7919 + off_c) % 100_000_000:08d}")
        if r() < _CARD_SHARE:
            body = f"{_BINS[rr(len(_BINS))]}{(i * 104_729 + off_k) % 1_000_000_000:09d}"
            card.append(body + _luhn_digit(body))
        else:
            card.append(None)
        first = _FIRST[rr(len(_FIRST))]
        last = _LAST[rr(len(_LAST))]
        name.append(f"{first.title()} {last.title()}")
        if hh_left == 0 and i + 1 < customers and r() < _HOUSEHOLD_START:
            hh_left = min(2 + rr(3), customers - i)
            households += 1
            hh_email = f"the.{last}s{households}@example.net"
        if hh_left:
            hh_left -= 1
            in_household[i] = 1
            email.append(hh_email)
        elif r() < _EMAIL_SHARE:
            pattern = rr(3)
            if pattern == 0:
                local = f"{first}.{last}{i + 1}"
            elif pattern == 1:
                local = f"{first[0]}{last}{i + 1}"
            else:
                local = f"{first}_{last}{i + 1}"
            email.append(f"{local}@{_DOMAINS[rr(len(_DOMAINS))]}")
        else:
            email.append(None)
        mobile.append(f"+44{7_700_900_000 + i}" if r() < _MOBILE_SHARE else None)
        u = r()
        if u < 0.30:
            habit.append("weekly")
            purchase_gap.append(uni(5.0, 9.0))
            lapse_day.append(-1)
        elif u < 0.60:
            habit.append("monthly")
            purchase_gap.append(uni(22.0, 38.0))
            lapse_day.append(-1)
        elif u < 0.85:
            habit.append("occasional")
            purchase_gap.append(uni(45.0, 90.0))
            lapse_day.append(-1)
        else:
            habit.append("lapsing")
            purchase_gap.append(uni(5.0, 9.0) if r() < 0.5 else uni(22.0, 38.0))
            lapse_day.append(lapse_lo + rr(lapse_hi - lapse_lo + 1))
        contact_gap.append(uni(12.0, 45.0))
        home.append(rr(_LOCATIONS))
        devices.append(1 + rr(3))

    landline: list[str | None] = [None] * customers
    size = min(30, customers // 10)
    if size >= 2:
        shops = max(1, customers // 1000)
        candidates = [i for i in range(customers) if not in_household[i]]
        shops = min(shops, len(candidates) // size)
        chosen = rng.sample(candidates, shops * size)
        for n, i in enumerate(chosen):
            landline[i] = f"+4420{79_460_000 + n // size}"
            mobile[i] = None  # they call from the shop
    return Population(
        start_ms=start_ms,
        customer_no=customer_no,
        name=name,
        card=card,
        email=email,
        mobile=mobile,
        landline=landline,
        habit=habit,
        lapse_day=lapse_day,
        home=home,
        devices=devices,
        purchase_gap=purchase_gap,
        contact_gap=contact_gap,
    )


def _check_args(customers: int, days: int, bad_share: float) -> None:
    if customers < 1:
        raise ValueError(f"customers must be at least 1, got {customers}")
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    if not 0.0 <= bad_share < 1.0:
        raise ValueError(f"bad_share must be in [0, 1), got {bad_share}")


def population(customers: int, days: int, seed: int, start: datetime | None = None) -> Population:
    """The people ``generate`` with the same arguments draws events for.

    :param customers: how many people.
    :param days: length of the period (lapse days fall inside it).
    :param seed: the same seed as given to :func:`generate`.
    :param start: the same start as given to :func:`generate`.
    """
    _check_args(customers, days, 0.0)
    start_ms = _epoch_ms(start or DEFAULT_START)
    return _build_population(random.Random(seed), customers, days, start_ms)


def generate(
    customers: int,
    days: int,
    seed: int,
    start: datetime | None = None,
    bad_share: float = 0.02,
) -> Iterator[dict[str, Any]]:
    """Yield the events of a synthetic population in ``occurred_at`` order.

    :param customers: how many people.
    :param days: length of the period, from ``start``.
    :param seed: the only source of randomness; same arguments, same events.
    :param start: first instant (UTC; a naive datetime is taken as UTC);
        default 2025-01-01T00:00:00Z.
    :param bad_share: share of all events that are deliberately invalid,
        tagged ``bad-<kind>-`` in their ``event_id``.
    """
    _check_args(customers, days, bad_share)
    return _Generator(customers, days, seed, _epoch_ms(start or DEFAULT_START), bad_share).run()


def write_jsonl(events: Iterable[dict[str, Any]], fh: TextIO) -> int:
    """Write one compact, key-sorted JSON object per line; return how many."""
    encode = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode
    write = fh.write
    count = 0
    chunk: list[str] = []
    append = chunk.append
    for event in events:
        append(encode(event))
        count += 1
        if len(chunk) >= 2048:
            chunk.append("")
            write("\n".join(chunk))
            chunk.clear()
    if chunk:
        chunk.append("")
        write("\n".join(chunk))
    return count


# An event before formatting: (epoch ms, creation sequence, type, channel, identifiers, payload).
_Raw = tuple[int, int, str, str, dict[str, str], dict[str, Any]]


class _Generator:
    """The day-by-day engine behind :func:`generate` (one use only)."""

    def __init__(self, customers: int, days: int, seed: int, start_ms: int, bad_share: float) -> None:
        self.rng = rng = random.Random(seed)
        self.rr = _below(rng)
        self.n = customers
        self.days = days
        self.seed = seed
        self.start_ms = start_ms
        self.end_ms = start_ms + days * _DAY
        self.bad_p = bad_share / (1.0 - bad_share)  # per good event, so bad/all == bad_share
        self.pop = _build_population(rng, customers, days, start_ms)
        self.buckets: list[list[int] | None] = [[] for _ in range(days)]
        self.pending: list[list[_Raw] | None] = [None] * days
        self.current: list[_Raw] = []
        self.day_end = start_ms + _DAY
        self.limit = self.end_ms
        self.seq = 0
        self.ids = {"T": 0, "R": 0, "S": 0, "M": 0, "K": 0, "X": 0}
        self.cookie_gen = bytearray(customers)
        self.no_marketing = bytearray(customers)
        self.invited: dict[int, tuple[str, int, int]] = {}
        self.prefixes: dict[int, str] = {}
        self.hhmm, self.ssmmm = _time_tables()
        # Profiles come from a stream of their own (the module docstring): the rest is as it was without them.
        self.profile_rng = random.Random(f"profiles-{seed}")
        self.profiled = bytearray(customers)
        self.own_ids: dict[int, str] = {}  # creation sequence -> event id, for events outside the ev-<n> series
        self._schedule_first()

    # -- scheduling ---------------------------------------------------------

    def _schedule_first(self) -> None:
        r = self.rng.random
        buckets = self.buckets
        days = self.days
        pop = self.pop
        for i in range(self.n):
            d = int(r() * (max(1, min(days, int(pop.purchase_gap[i])))))
            buckets[d].append(i << 2)  # type: ignore[union-attr]
            d = int(r() * (max(1, min(days, int(pop.contact_gap[i])))))
            buckets[d].append(i << 2 | 1)  # type: ignore[union-attr]
            lapse = pop.lapse_day[i]
            if lapse >= 3 and r() < 0.35:
                buckets[lapse - 1 - int(r() * 2)].append(i << 2 | 2)  # type: ignore[union-attr]

    def _next_id(self, kind: str) -> str:
        n = self.ids[kind] + 1
        self.ids[kind] = n
        return f"{kind}{n:010d}"

    def _emit(self, ms: int, typ: str, channel: str, ids: dict[str, str], payload: dict[str, Any]) -> bool:
        """Queue one event; dropped (False) at or after the customer's limit."""
        if ms >= self.limit:
            return False
        seq = self.seq
        self.seq = seq + 1
        raw = (ms, seq, typ, channel, ids, payload)
        if ms < self.day_end:
            self.current.append(raw)
        else:
            day = (ms - self.start_ms) // _DAY
            lst = self.pending[day]
            if lst is None:
                self.pending[day] = lst = []
            lst.append(raw)
        return True

    def _iso(self, ms: int) -> str:
        """``ms`` since the epoch as ``YYYY-MM-DDTHH:MM:SS.mmmZ``, from cached pieces."""
        day, rem = divmod(ms, _DAY)
        prefix = self.prefixes.get(day)
        if prefix is None:
            prefix = self.prefixes[day] = (_EPOCH + timedelta(days=day)).strftime("%Y-%m-%dT")
        minute, sub = divmod(rem, 60_000)
        return prefix + self.hhmm[minute] + self.ssmmm[sub]

    # -- the run ------------------------------------------------------------

    def run(self) -> Iterator[dict[str, Any]]:
        pop = self.pop
        lapse_day = pop.lapse_day
        rng = self.rng
        rand = rng.random
        expo = rng.expovariate
        buckets = self.buckets
        days = self.days
        end_ms = self.end_ms
        prefixes = self.prefixes
        hhmm = self.hhmm
        ssmmm = self.ssmmm
        last_day = -1
        prefix = ""
        seed = self.seed
        bad_p = self.bad_p
        n = 0
        bad_count = 0
        for d in range(days):
            day_ms = self.start_ms + d * _DAY
            self.day_end = day_ms + _DAY
            self.current = self.pending[d] or []
            self.pending[d] = None
            if d >= _CAMPAIGN_FIRST and (d - _CAMPAIGN_FIRST) % _CAMPAIGN_EVERY == 0 and d + 4 <= days:
                self._campaign(d, day_ms)
            bucket = buckets[d]
            buckets[d] = None
            for code in bucket or ():
                i = code >> 2
                proc = code & 3
                lapse = lapse_day[i]
                if lapse >= 0:
                    if d >= lapse:
                        continue  # lapsed: the process stops for good
                    self.limit = self.start_ms + lapse * _DAY
                else:
                    self.limit = end_ms
                if not self.profiled[i]:
                    self.profiled[i] = 1
                    self._profiles(i, d)
                if proc == 0:
                    self._purchase(i, day_ms, campaign_only=False)
                    gap = pop.purchase_gap[i]
                    if pop.habit[i] == "occasional":
                        step = 1 + int(expo(1.0 / gap))
                    else:
                        step = max(1, round(gap * (0.8 + 0.4 * rand())))
                    if d + step < days:
                        buckets[d + step].append(code)  # type: ignore[union-attr]
                elif proc == 1:
                    self._contact(i, day_ms)
                    step = 1 + int(expo(1.0 / pop.contact_gap[i]))
                    if d + step < days:
                        buckets[d + step].append(code)  # type: ignore[union-attr]
                elif proc == 2:
                    self._farewell(i, day_ms)
                else:
                    self._purchase(i, day_ms, campaign_only=True)
            events = self.current
            self.current = []
            events.sort()
            for ms, seq, typ, channel, ids, payload in events:
                if typ == "profile":  # outside the ev-<n> series and the bad events (the module docstring)
                    yield {"event_id": self.own_ids.pop(seq), "type": typ, "channel": channel,
                           "occurred_at": self._iso(ms), "identifiers": ids, "payload": payload}
                    continue
                n += 1
                day, rem = divmod(ms, _DAY)
                if day != last_day:
                    last_day = day
                    prefix = prefixes.get(day) or self._iso(ms)[:11]
                minute, sub = divmod(rem, 60_000)
                yield {
                    "event_id": f"ev-{seed}-{n:09d}",
                    "type": typ,
                    "channel": channel,
                    "occurred_at": prefix + hhmm[minute] + ssmmm[sub],
                    "identifiers": ids,
                    "payload": payload,
                }
                if bad_p and rand() < bad_p:
                    n += 1
                    kind = BAD_KINDS[bad_count % len(BAD_KINDS)]
                    bad_count += 1
                    yield self._bad(kind, n, ms, channel, ids)

    # -- activities ---------------------------------------------------------

    def _tod(self) -> int:
        """A time of day between 07:00 and 22:00, in ms."""
        return 7 * _HOUR + int(self.rng.random() * 15 * _HOUR)

    def _email_id(self, i: int) -> str | None:
        email = self.pop.email[i]
        if email is not None and self.rng.random() < 0.05:
            return email.title()  # people type it as they like; identity case-folds
        return email

    def _phone_id(self, i: int) -> str | None:
        phone = self.pop.landline[i] or self.pop.mobile[i]
        if phone is not None and self.rng.random() < 0.15:
            return _national(phone)
        return phone

    def _cookie(self, i: int, rotate: bool) -> str:
        gen = self.cookie_gen[i]
        if rotate and gen < 255:
            gen += 1
            self.cookie_gen[i] = gen
        return f"ck-{((i << 8 | gen) * 0x9E3779B97F4A7C15) & _MASK64:016x}"

    def _device(self, i: int) -> str:
        k = self.rr(self.pop.devices[i])
        return f"dev-{((i << 2 | k) * 0x5DEECE66D) & _MASK48:012x}"

    def _purchase(self, i: int, day_ms: int, campaign_only: bool) -> None:
        rng = self.rng
        r = rng.random
        pop = self.pop
        t = day_ms + self._tod()
        camp = self.invited.get(i)
        in_window = camp is not None and camp[1] <= t < camp[2]
        if campaign_only and not in_window:
            return
        u = r()
        fuel = u < 0.70  # fuel-only 45 %, fuel+shop 25 %
        shop = u >= 0.45  # shop-only 30 %
        lines: list[dict[str, Any]] = []
        total = 0
        if fuel:
            sku, ppl = _FUELS[int(r() * len(_FUELS))]
            v = r()
            if v < 0.40:
                amount = _ROUND_FUEL[int(r() * len(_ROUND_FUEL))]
            elif v < 0.41:
                amount = 4999
            else:
                amount = ppl * (8 + int(r() * 48))
            litres = max(1, round(amount / ppl))
            lines.append({"sku": sku, "category": "fuel", "quantity": litres, "amount_minor": amount})
            total = amount
        if shop:
            for _ in range(1 + int(r() * 4)):
                sku, price = _SHOP[int(r() * len(_SHOP))]
                qty = 1 + (int(r() * 3) if r() < 0.3 else 0)
                lines.append({"sku": sku, "category": "shop", "quantity": qty, "amount_minor": price * qty})
                total += price * qty
        online = not fuel and r() < 0.12
        if online:
            channel = "web"
            location = "WEB"
            ids = {"customer_no": pop.customer_no[i], "cookie": self._cookie(i, False)}
        else:
            channel = "branch"
            home = pop.home[i] if r() < 0.85 else int(r() * _LOCATIONS)
            location = f"FS-{home + 1:04d}"
            card = pop.card[i]
            if card is None:
                ids = {"customer_no": pop.customer_no[i]}
            elif r() < 0.55:
                ids = {"card": card, "customer_no": pop.customer_no[i]}
            else:
                ids = {"card": card}
        tid = self._next_id("T")
        payload: dict[str, Any] = {
            "transaction_id": tid,
            "location_id": location,
            "lines": lines,
            "total_minor": total,
            "currency": _CURRENCY,
        }
        if camp is not None and in_window and (campaign_only or r() < 0.5):
            payload["campaign_code"] = camp[0]
        self._emit(t, "purchase", channel, ids, payload)
        if r() < 0.035:
            self._refunds(i, t, channel, ids, tid, lines, total)

    def _refunds(
        self, i: int, t: int, channel: str, ids: dict[str, str], tid: str, lines: list[dict[str, Any]], total: int
    ) -> None:
        rng = self.rng
        r = self.rng.random
        u = rng.random()
        if u < 0.55 or total < 4:
            amounts = [total]
        elif u < 0.85:
            if len(lines) > 1:  # one line taken back
                amounts = [lines[int(r() * len(lines))]["amount_minor"]]
            else:
                amounts = [max(1, total * (20 + int(r() * 61)) // 100)]
        else:
            first = max(1, total * (20 + int(r() * 31)) // 100)
            amounts = [first, max(1, (total - first) * (20 + int(r() * 71)) // 100)]
        when = t + _DAY * (1 + int(r() * 14)) + int(r() * (6 * _HOUR))
        for amount in amounts:
            rid = self._next_id("R")
            payload = {"refund_id": rid, "transaction_id": tid, "amount_minor": amount, "currency": _CURRENCY}
            self._emit(when, "refund", channel, dict(ids), payload)
            when += _DAY * (1 + int(r() * 10))
        if rng.random() < 0.15 and (self.pop.mobile[i] or self.pop.landline[i]):
            self._call(i, t + _DAY * (1 + int(r() * 14)) + int(r() * (2 * _DAY)), "refund", inbound=True)

    def _contact(self, i: int, day_ms: int) -> None:
        r = self.rng.random
        pop = self.pop
        t = day_ms + self._tod()
        u = r()
        if u < 0.30:
            self._web(i, t)
        elif u < 0.50:
            if pop.email[i] is None:
                self._web(i, t)
            else:
                self._email_chain(i, t, None)
        elif u < 0.62:
            if pop.mobile[i] is None and pop.landline[i] is None:
                self._web(i, t)
            else:
                inbound = r() < 0.85
                self._call(i, t, _IVR[self.rr(len(_IVR))] if inbound else None, inbound)
        elif u < 0.72:
            if pop.mobile[i] is None:
                self._web(i, t)
            else:
                self._sms_chain(i, t, None)
        elif u < 0.82:
            self._branch_visit(i, t)
        elif u < 0.90:
            self._case(i, t, None)
        else:
            self._consent(i, t, None, None, None)

    def _web(self, i: int, t: int) -> None:
        rng = self.rng
        r = rng.random
        cookie = self._cookie(i, r() < 0.08)
        base = {"cookie": cookie, "device": self._device(i)}
        sid = self._next_id("S")
        emit = self._emit
        for _ in range(1 + int(r() * 4)):
            page = _PAGES[int(r() * len(_PAGES))]
            emit(t, "web", "web", dict(base), {"session_id": sid, "action": "page_view", "page": page})
            t += 1000 * (5 + int(r() * 120)) + int(r() * 1000)
        if r() < 0.45:
            base["customer_no"] = self.pop.customer_no[i]
            email = self._email_id(i)
            if email is not None and r() < 0.4:
                base["email"] = email
            emit(t, "web", "web", dict(base), {"session_id": sid, "action": "login", "page": "/account"})
            t += 1000 * (5 + int(r() * 60))
        if r() < 0.25:
            emit(t, "web", "web", dict(base), {"session_id": sid, "action": "search", "page": "/search"})
            t += 1000 * (5 + int(r() * 60))
        if r() < 0.30:
            emit(t, "web", "web", dict(base), {"session_id": sid, "action": "basket_add", "page": "/shop/car-care"})
            if r() < 0.4:
                t += 60_000 * (5 + int(r() * 40))
                emit(t, "web", "web", dict(base), {"session_id": sid, "action": "basket_abandon"})

    def _email_chain(self, i: int, t: int, campaign_id: str | None) -> None:
        rng = self.rng
        r = rng.random
        email = self._email_id(i)
        assert email is not None
        mid = self._next_id("M")
        extra = {"campaign_id": campaign_id} if campaign_id else {}
        emit = self._emit
        emit(t, "email", "email", {"email": email}, {"message_id": mid, "action": "sent", **extra})
        t += 1000 * (1 + int(r() * 90))
        if r() >= 0.95:
            emit(t, "email", "email", {"email": email}, {"message_id": mid, "action": "bounced", **extra})
            return
        emit(t, "email", "email", {"email": email}, {"message_id": mid, "action": "delivered", **extra})
        if r() < 0.45:
            t += 60_000 * (1 + int(r() * (24 * 60)))
            emit(t, "email", "email", {"email": email}, {"message_id": mid, "action": "opened", **extra})
            if r() < 0.30:
                t += 1000 * (3 + int(r() * 300))
                emit(t, "email", "email", {"email": email}, {"message_id": mid, "action": "clicked", **extra})
        if r() < 0.01:
            t += 1000 * (5 + int(r() * 600))
            if emit(t, "email", "email", {"email": email}, {"message_id": mid, "action": "unsubscribed", **extra}):
                self._consent(i, t + 1000, "marketing", "email", False)

    def _sms_chain(self, i: int, t: int, campaign_id: str | None) -> None:
        rng = self.rng
        r = rng.random
        phone = self._phone_id(i)
        assert phone is not None
        mid = self._next_id("M")
        extra = {"campaign_id": campaign_id} if campaign_id else {}
        emit = self._emit
        emit(t, "sms", "sms", {"phone": phone}, {"message_id": mid, "action": "sent", **extra})
        if r() < 0.97:
            t += 1000 * (1 + int(r() * 30))
            emit(t, "sms", "sms", {"phone": phone}, {"message_id": mid, "action": "delivered", **extra})
            if r() < 0.03:
                t += 60_000 * (1 + int(r() * 600))
                if emit(t, "sms", "sms", {"phone": phone}, {"message_id": mid, "action": "opt_out", **extra}):
                    self._consent(i, t + 1000, "marketing", "sms", False)

    def _call(self, i: int, t: int, ivr_reason: str | None, inbound: bool) -> None:
        rng = self.rng
        r = self.rng.random
        phone = self._phone_id(i)
        assert phone is not None
        ids = {"phone": phone}
        if rng.random() < 0.5:  # identified in the IVR
            ids["customer_no"] = self.pop.customer_no[i]
        cid = self._next_id("K")
        direction = "inbound" if inbound else "outbound"
        started: dict[str, Any] = {"call_id": cid, "direction": direction, "phase": "started"}
        if ivr_reason is not None:
            started["ivr_reason"] = ivr_reason
        self._emit(t, "call", "phone", dict(ids), started)
        duration = 20 + int(r() * 1200)
        ended = {
            "call_id": cid,
            "direction": direction,
            "phase": "ended",
            "duration_s": duration,
            "outcome": _OUTCOMES[int(r() * len(_OUTCOMES))],
            "agent_id": f"A-{1 + int(r() * 60):03d}",
        }
        self._emit(t + duration * 1000 + int(r() * 1000), "call", "phone", ids, ended)

    def _branch_visit(self, i: int, t: int) -> None:
        rng = self.rng
        pop = self.pop
        ids = {"customer_no": pop.customer_no[i]}
        card = pop.card[i]
        if card is not None and rng.random() < 0.4:
            ids["card"] = card
        home = pop.home[i] if rng.random() < 0.85 else self.rr(_LOCATIONS)
        payload = {"branch_id": f"FS-{home + 1:04d}", "purpose": _PURPOSES[self.rr(len(_PURPOSES))]}
        self._emit(t, "branch_visit", "branch", ids, payload)

    def _case(self, i: int, t: int, category: str | None) -> None:
        rng = self.rng
        r = rng.random
        pop = self.pop
        if category is None:
            u = r()
            category = "complaint" if u < 0.45 else "query" if u < 0.80 else "cancel_request" if u < 0.92 else "fraud"
        ids = {"customer_no": pop.customer_no[i]}
        v = r()
        if v < 0.4 and (pop.mobile[i] or pop.landline[i]):
            channel = "phone"
            ids["phone"] = self._phone_id(i)  # type: ignore[assignment]
        elif v < 0.75 and pop.email[i] is not None:
            channel = "email"
            ids["email"] = self._email_id(i)  # type: ignore[assignment]
        else:
            channel = "branch"
        xid = self._next_id("X")
        subjects = _SUBJECTS[category]  # picked by the case's number: no draw from the random stream
        opened: dict[str, Any] = {"case_id": xid, "action": "opened", "category": category,
                                  "subject": subjects[int(xid[1:]) % len(subjects)]}
        if category == "fraud":
            opened["severity"] = "high"
        elif category == "complaint":
            opened["severity"] = ("low", "medium", "high")[int(r() * 3)]
        self._emit(t, "case", channel, dict(ids), opened)
        if r() < 0.30:
            updated = {"case_id": xid, "action": "updated", "category": category}
            self._emit(t + _DAY * (1 + int(r() * 3)), "case", channel, dict(ids), updated)
        if r() < 0.85:
            closed = {"case_id": xid, "action": "closed", "category": category}
            self._emit(t + _DAY * (1 + int(r() * 20)) + int(r() * _DAY), "case", channel, ids, closed)

    def _consent(self, i: int, t: int, purpose: str | None, channel: str | None, granted: bool | None) -> None:
        rng = self.rng
        pop = self.pop
        if purpose is None:
            purpose = "marketing" if rng.random() < 0.65 else "profiling"
        if channel is None:
            channel = _CONSENT_CHANNELS[self.rr(len(_CONSENT_CHANNELS))]
            if channel == "email" and pop.email[i] is None or channel == "sms" and pop.mobile[i] is None:
                channel = "web"
        if granted is None:
            granted = rng.random() < 0.70
        ids = {"customer_no": pop.customer_no[i]}
        if channel in ("email", "web") and pop.email[i] is not None:
            email = self._email_id(i)
            assert email is not None
            ids["email"] = email
        elif channel == "sms":
            ids["phone"] = self._phone_id(i)  # type: ignore[assignment]
        if self._emit(t, "consent", channel, ids, {"purpose": purpose, "channel": channel, "granted": granted}):
            if purpose == "marketing":
                self.no_marketing[i] = 0 if granted else 1

    def _profiles(self, i: int, d: int) -> None:
        """Customer ``i``'s profile at their first activity (day ``d``), and for some a change later."""
        r = self.profile_rng.random
        pop = self.pop
        reachable = ["branch", "web", *(["email"] if pop.email[i] else []),
                     *(["sms", "phone"] if pop.mobile[i] else []), *(["phone"] if pop.landline[i] else [])]
        ids = {"customer_no": pop.customer_no[i]}
        if pop.email[i] is not None:
            ids["email"] = pop.email[i]  # type: ignore[assignment]
        channel = "web" if pop.email[i] is not None else "branch"
        payload: dict[str, Any] = {
            "name": pop.name[i] if r() < 0.90 else None,
            "language": "en-GB" if r() < 0.80 else _LANGUAGES[int(r() * len(_LANGUAGES))],
            "preferred_channel": reachable[int(r() * len(reachable))] if r() < 0.70 else None,
        }
        ms = self.start_ms + d * _DAY + 7 * _HOUR + int(r() * 15 * _HOUR)
        if self._emit(ms, "profile", channel, ids, payload):
            self.own_ids[self.seq - 1] = f"pf-{self.seed}-{i:08d}-1"
        if r() < 0.20:
            change: dict[str, Any] = {"name": None, "language": None, "preferred_channel": None}
            if r() < 0.5:
                change["preferred_channel"] = reachable[int(r() * len(reachable))]
            else:
                change["language"] = _LANGUAGES[int(r() * len(_LANGUAGES))]
            later = ms + (30 + int(r() * 171)) * _DAY
            if later < self.end_ms and self._emit(later, "profile", channel, ids, change):
                self.own_ids[self.seq - 1] = f"pf-{self.seed}-{i:08d}-2"

    def _farewell(self, i: int, day_ms: int) -> None:
        """A lapsing customer's last word: a call and a cancel request."""
        t = day_ms + self._tod()
        if self.pop.mobile[i] or self.pop.landline[i]:
            self._call(i, t, "cancel", inbound=True)
            t += 30 * 60_000
        self._case(i, t, "cancel_request")

    def _campaign(self, d: int, day_ms: int) -> None:
        rng = self.rng
        r = self.rng.random
        pop = self.pop
        prefix = self._iso(day_ms)
        cid = f"CMP-{prefix[0:4]}{prefix[5:7]}{prefix[8:10]}"
        starts = day_ms + _DAY - (day_ms % _DAY)  # the next midnight UTC
        ends = starts + _CAMPAIGN_DAYS * _DAY
        starts_at = self._iso(starts)
        ends_at = self._iso(ends)
        first_window_day = (starts - self.start_ms) // _DAY
        invitees = rng.sample(range(self.n), int(self.n * _CAMPAIGN_SHARE))
        for i in invitees:
            lapse = pop.lapse_day[i]
            if 0 <= lapse <= d or self.no_marketing[i]:
                continue
            if pop.email[i] is not None:
                channel = "email"
                ids = {"email": self._email_id(i)}
            elif pop.mobile[i] is not None:
                channel = "sms"
                ids = {"phone": self._phone_id(i)}
            else:
                continue
            self.limit = self.start_ms + lapse * _DAY if lapse >= 0 else self.end_ms
            t = day_ms + 8 * _HOUR + int(r() * (10 * _HOUR))
            payload = {
                "campaign_id": cid,
                "action": "invited",
                "multiplier": 3,
                "starts_at": starts_at,
                "ends_at": ends_at,
            }
            if not self._emit(t, "campaign", channel, ids, payload):  # type: ignore[arg-type]
                continue
            if channel == "email":
                self._email_chain(i, t + 1000, cid)
            else:
                self._sms_chain(i, t + 1000, cid)
            self.invited[i] = (cid, starts, ends)
            if rng.random() < 0.25:
                extra_day = first_window_day + int(r() * _CAMPAIGN_DAYS)
                if extra_day < self.days:
                    self.buckets[extra_day].append(i << 2 | 3)  # type: ignore[union-attr]

    # -- bad events ---------------------------------------------------------

    def _bad(self, kind: str, n: int, ms: int, channel: str, ids: dict[str, str]) -> dict[str, Any]:
        """One deliberately invalid event, tagged ``bad-<kind>-`` in its id."""
        event_id = f"bad-{kind}-{self.seed}-{n:09d}"
        ids = dict(ids)
        typ = "web"
        payload: dict[str, Any]
        if kind == "missing_identifiers":
            ids = {}
            channel = "web"
            payload = {"session_id": f"S-bad-{n}", "action": "page_view", "page": "/"}
        elif kind == "unknown_type":
            typ = "loyalty_upgrade"
            payload = {"tier": "gold"}
        elif kind in ("negative_amount", "float_money"):
            typ = "purchase"
            channel = "branch"
            amount: int | float = -450 if kind == "negative_amount" else 12.99
            payload = {
                "transaction_id": f"T-bad-{n}",
                "location_id": "FS-0001",
                "lines": [{"sku": "SHOP-FLOWERS", "category": "shop", "quantity": 1, "amount_minor": amount}],
                "total_minor": amount,
                "currency": _CURRENCY,
            }
        elif kind == "future_time":
            channel = "web"
            ms += _FUTURE_MS
            payload = {"session_id": f"S-bad-{n}", "action": "page_view", "page": "/"}
        elif kind == "malformed_email":
            typ = channel = "email"
            ids = {"email": ("jo.bloggs.example.com", "jo@@example.com", "jo bloggs@example", "@example.net")[n % 4]}
            payload = {"message_id": f"M-bad-{n}", "action": "sent"}
        else:  # unknown_refund
            typ = "refund"
            channel = "branch"
            payload = {
                "refund_id": f"R-bad-{n}",
                "transaction_id": f"T-unknown-{n}",
                "amount_minor": 1200,
                "currency": _CURRENCY,
            }
        return {
            "event_id": event_id,
            "type": typ,
            "channel": channel,
            "occurred_at": self._iso(ms),
            "identifiers": ids,
            "payload": payload,
        }
