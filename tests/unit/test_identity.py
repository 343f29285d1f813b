"""Identity resolution: mint, link, merge, guardrails, shared keys, unmerge by re-fold."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from touchpoint.core.identity import (
    IdentityConfig,
    IdentityState,
    Linked,
    LinkRefused,
    Merged,
    Minted,
    Resolution,
    apply,
    customer_id_for,
    resolve,
)
from touchpoint.core.normalise import Identifier, normalise

SECRET = b"test-secret"


def ident(kind: str, value: str) -> Identifier:
    return normalise(kind, value, secret=SECRET)


def key(kind: str, value: str) -> str:
    return ident(kind, value).key


def cid(kind: str, value: str) -> str:
    return customer_id_for(key(kind, value))


def run(events: list[dict[str, str]], config: IdentityConfig | None = None) -> tuple[IdentityState, list[Resolution]]:
    """Resolve and apply events ``e1``, ``e2``, ... in order."""
    config = config or IdentityConfig()
    state = IdentityState()
    out = []
    for n, ids in enumerate(events, 1):
        res = resolve(state, [ident(k, v) for k, v in ids.items()], f"e{n}", config)
        for decision in res.decisions:
            apply(state, decision)
        out.append(res)
    return state, out


def decisions(results: list[Resolution]) -> list[Any]:
    return [d for r in results for d in r.decisions]


# -- given / when / then tables --------------------------------------------------

C1, C2 = {"customer_no": "C1"}, {"customer_no": "C2"}


@pytest.mark.parametrize(
    ("name", "events", "then_customer", "then_decisions"),
    [
        (
            "first event mints from its strongest identifier and links the rest",
            [{"email": "a@example.com", "customer_no": "C1", "cookie": "k1"}],
            lambda: cid("customer_no", "C1"),
            lambda: [
                Minted("e1", cid("customer_no", "C1"), key("customer_no", "C1"), "customer_no"),
                Linked("e1", cid("customer_no", "C1"), key("email", "a@example.com"), "email"),
                Linked("e1", cid("customer_no", "C1"), key("cookie", "k1"), "cookie"),
            ],
        ),
        (
            "a known identifier links a new one",
            [C1, {"customer_no": "C1", "phone": "07700 900001"}],
            lambda: cid("customer_no", "C1"),
            lambda: [
                Minted("e1", cid("customer_no", "C1"), key("customer_no", "C1"), "customer_no"),
                Linked("e2", cid("customer_no", "C1"), key("phone", "+447700900001"), "phone"),
            ],
        ),
        (
            "a new strongest identifier joins the owner of a weaker known one (no mint)",
            [{"cookie": "k1"}, {"customer_no": "C1", "cookie": "k1"}],
            lambda: cid("cookie", "k1"),
            lambda: [
                Minted("e1", cid("cookie", "k1"), key("cookie", "k1"), "cookie"),
                Linked("e2", cid("cookie", "k1"), key("customer_no", "C1"), "customer_no"),
            ],
        ),
        (
            "two customers on one event merge into the one minted first",
            [{"email": "a@example.com"}, C1, {"customer_no": "C1", "email": "A@Example.com"}],
            lambda: cid("email", "a@example.com"),
            lambda: [
                Minted("e1", cid("email", "a@example.com"), key("email", "a@example.com"), "email"),
                Minted("e2", cid("customer_no", "C1"), key("customer_no", "C1"), "customer_no"),
                Merged(
                    "e3",
                    cid("email", "a@example.com"),
                    cid("customer_no", "C1"),
                    key("customer_no", "C1"),
                    f"one event carries identifiers of both {cid('email', 'a@example.com')} "
                    f"and {cid('customer_no', 'C1')}",
                ),
            ],
        ),
        (
            "national and E.164 phone are one identifier",
            [{"phone": "07700 900001"}, {"phone": "+447700900001"}],
            lambda: cid("phone", "+447700900001"),
            lambda: [Minted("e1", cid("phone", "+447700900001"), key("phone", "+447700900001"), "phone")],
        ),
        (
            "a redelivered event decides nothing new",
            [{"customer_no": "C1", "email": "a@example.com"}] * 2,
            lambda: cid("customer_no", "C1"),
            lambda: [
                Minted("e1", cid("customer_no", "C1"), key("customer_no", "C1"), "customer_no"),
                Linked("e1", cid("customer_no", "C1"), key("email", "a@example.com"), "email"),
            ],
        ),
    ],
)
def test_linking(name: str, events: list[dict[str, str]], then_customer: Any, then_decisions: Any) -> None:
    _, results = run(events)
    assert results[-1].customer_id == then_customer(), name
    assert decisions(results) == then_decisions(), name


def test_transitive_chain_a_b_then_b_c() -> None:
    state, results = run(
        [{"device": "d1"}, {"cookie": "k1"}, {"phone": "+447700900001"}, {"device": "d1", "cookie": "k1"},
         {"cookie": "k1", "phone": "+447700900001"}]
    )  # fmt: skip
    a, b, c = cid("device", "d1"), cid("cookie", "k1"), cid("phone", "+447700900001")
    assert [d for d in decisions(results) if isinstance(d, Merged)] == [
        Merged("e4", a, b, key("cookie", "k1"), f"one event carries identifiers of both {a} and {b}"),
        Merged("e5", a, c, key("phone", "+447700900001"), f"one event carries identifiers of both {a} and {c}"),
    ]
    assert {state.canonical(x) for x in (a, b, c)} == {a}
    assert state.customers() == [a]
    assert {state.lookup(key(k, v)) for k, v in [("device", "d1"), ("cookie", "k1"), ("phone", "+447700900001")]} == {a}


def test_merge_of_merges_keeps_every_alias_resolving() -> None:
    # Groups {A, B} (survivor A) and {C, D} (survivor C), C minted before A: joining them makes C survive.
    state, results = run(
        [
            {"cookie": "kc"},  # C
            {"cookie": "ka"},  # A
            {"cookie": "kb"},  # B
            {"cookie": "kd"},  # D
            {"device": "x", "cookie": "ka"},
            {"device": "x", "cookie": "kb"},  # A absorbs B
            {"device": "y", "cookie": "kc"},
            {"device": "y", "cookie": "kd"},  # C absorbs D
            {"email": "z@example.com", "cookie": "kb"},
            {"email": "z@example.com", "cookie": "kd"},  # C absorbs A (with B)
        ]
    )
    a, b, c, d = (cid("cookie", k) for k in ("ka", "kb", "kc", "kd"))
    merges = [(m.survivor, m.merged) for m in decisions(results) if isinstance(m, Merged)]
    assert merges == [(a, b), (c, d), (c, a)]
    assert all(state.canonical(x) == c for x in (a, b, c, d))
    assert sorted(state.aliases[c]) == sorted([a, b, d])
    assert state.count(c, "cookie") == 4 and state.count(c, "device") == 2
    assert results[-1].customer_id == c


def test_old_ids_still_resolve_after_merge() -> None:
    state, _ = run([{"cookie": "k1"}, {"cookie": "k2"}, {"cookie": "k1", "device": "d"},
                    {"cookie": "k2", "device": "d"}])
    assert state.canonical(cid("cookie", "k2")) == cid("cookie", "k1")
    assert state.lookup(key("cookie", "k2")) == cid("cookie", "k1")
    assert state.canonical("cus_unknown") == "cus_unknown"


def test_resolve_is_pure() -> None:
    state, _ = run([C1, {"email": "a@example.com"}])
    before = copy.deepcopy((state.owner, state.keys, state.alias, state.aliases, state.seq, state.refused))
    resolve(state, [ident("customer_no", "C1"), ident("email", "a@example.com")], "e9", IdentityConfig())
    assert (state.owner, state.keys, state.alias, state.aliases, state.seq, state.refused) == before


# -- guardrails -------------------------------------------------------------------


def test_family_email_with_two_customer_numbers_does_not_merge() -> None:
    fam = {"email": "the.smiths1@example.net"}
    state, results = run([{**C1, **fam}, {**C2, **fam}, fam])
    one, two = cid("customer_no", "C1"), cid("customer_no", "C2")
    assert results[1].customer_id == two
    assert decisions(results)[2:] == [
        Minted("e2", two, key("customer_no", "C2"), "customer_no"),
        LinkRefused("e2", two, key("email", "the.smiths1@example.net"), "email", one,
                    f"would give {two} 2 customer_no (limit 1)"),
    ]  # fmt: skip
    assert state.customers() == [one, two]
    assert results[1].identifiers == (ident("customer_no", "C2"),)  # the refused email is not attributed
    assert results[2].customer_id == one  # the email alone stays with who had it first


def test_landline_shared_by_thirty_customers_merges_none() -> None:
    line = {"phone": "020 7946 0001"}
    events = [{"customer_no": f"C{i:02d}", **line} for i in range(30)] + [line]
    state, results = run(events)
    assert len(state.customers()) == 30
    assert not [d for d in decisions(results) if isinstance(d, Merged)]
    refused = [d for d in decisions(results) if isinstance(d, LinkRefused)]
    assert len(refused) == 29 and all("customer_no (limit 1)" in d.reason for d in refused)
    assert all(state.count(c, "customer_no") == 1 for c in state.customers())


def test_plain_link_over_a_limit_is_refused_and_recorded_once() -> None:
    events = [{**C1, "email": f"a{i}@example.com"} for i in range(6)] + [{**C1, "email": "a5@example.com"}]
    state, results = run(events)
    one = cid("customer_no", "C1")
    refused = [d for d in decisions(results) if isinstance(d, LinkRefused)]
    assert refused == [LinkRefused("e6", one, key("email", "a5@example.com"), "email", None,
                                   f"would give {one} 6 email (limit 5)")]  # fmt: skip
    assert state.count(one, "email") == 5
    assert results[-1].customer_id == one


def test_limits_are_configurable() -> None:
    config = IdentityConfig(limits={"cookie": 1})
    state, results = run([{"device": "d", "cookie": "k1"}, {"device": "d", "cookie": "k2"}], config)
    assert state.count(cid("device", "d"), "cookie") == 1
    assert isinstance(results[1].decisions[0], LinkRefused)


@pytest.mark.parametrize(
    ("limits", "message"),
    [({"email": 0}, "at least 1"), ({"passport": 1}, "unknown identifier kind"), ({"card": "3"}, "integer")],
)
def test_bad_limits_are_refused(limits: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        IdentityConfig(limits=limits)


# -- shared keys and unmerge --------------------------------------------------------


def test_shared_key_never_links_and_alone_gets_a_pseudo_customer() -> None:
    line = key("phone", "+442079460001")
    config = IdentityConfig(shared=frozenset({line}))
    state, results = run(
        [{**C1, "phone": "+442079460001"}, {"phone": "020 7946 0001"}, {"phone": "+442079460001"}], config
    )
    one, shop = cid("customer_no", "C1"), customer_id_for(line)
    assert decisions(results) == [
        Minted("e1", one, key("customer_no", "C1"), "customer_no"),
        LinkRefused("e1", one, line, "phone", None, "marked shared"),
        Minted("e2", shop, line, "phone", shared=True),
    ]
    assert [r.customer_id for r in results] == [one, shop, shop]
    assert state.lookup(line) is None
    assert results[0].identifiers == (ident("customer_no", "C1"),)


def test_unmerge_by_refold_with_the_key_marked_shared() -> None:
    log = [
        {"email": "b@example.com"},  # B
        {**C1, "device": "family-tablet"},  # A
        {"email": "b@example.com", "device": "family-tablet"},  # joins A and B: wrong
        {"email": "b@example.com", "cookie": "kb"},
        {**C1, "cookie": "ka"},
    ]
    state, results = run(log)
    a, b = cid("customer_no", "C1"), cid("email", "b@example.com")
    assert state.customers() == [b] and state.canonical(a) == b
    why = next(d for d in decisions(results) if isinstance(d, Merged))
    assert why.via_key == key("device", "family-tablet") and why.event_id == "e3"  # names the key to mark shared

    state, results = run(log, IdentityConfig(shared=frozenset({key("device", "family-tablet")})))
    assert state.customers() == [b, a]
    assert not [d for d in decisions(results) if isinstance(d, Merged)]
    assert state.lookup(key("cookie", "kb")) == b and state.lookup(key("cookie", "ka")) == a


# -- decisions as data ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("decision", "json"),
    [
        (Minted("e1", "cus_1", "email:k", "email"),
         {"decision": "minted", "event_id": "e1", "customer_id": "cus_1", "key": "email:k", "kind": "email", "shared": False}),  # noqa: E501
        (Linked("e1", "cus_1", "cookie:k", "cookie"),
         {"decision": "linked", "event_id": "e1", "customer_id": "cus_1", "key": "cookie:k", "kind": "cookie"}),
        (Merged("e2", "cus_1", "cus_2", "email:k", "why"),
         {"decision": "merged", "event_id": "e2", "survivor": "cus_1", "merged": "cus_2", "via_key": "email:k", "reason": "why"}),  # noqa: E501
        (LinkRefused("e3", "cus_1", "email:k", "email", "cus_2", "why"),
         {"decision": "link_refused", "event_id": "e3", "customer_id": "cus_1", "key": "email:k", "kind": "email",
          "other_customer_id": "cus_2", "reason": "why"}),
    ],
)  # fmt: skip
def test_decisions_to_json(decision: Any, json: dict[str, Any]) -> None:
    assert decision.to_json() == json


# -- properties ------------------------------------------------------------------------

_VALUES = {
    "customer_no": ["C1", "C2", "C3", "C4"],
    "card": ["4111111111111111", "4000000000000002", "5555555555554444"],
    "email": ["a@example.com", "b@example.com", "fam@example.net"],
    "phone": ["+447700900001", "07700 900002", "+442079460001"],
    "device": ["d1", "d2", "d3"],
    "cookie": ["k1", "k2", "k3", "k4", "k5"],
}
_EVENT = st.dictionaries(st.sampled_from(list(_VALUES)), st.integers(0, 4), min_size=1).map(
    lambda d: {k: _VALUES[k][i % len(_VALUES[k])] for k, i in d.items()}
)
_LIMITS = st.fixed_dictionaries({k: st.integers(1, 3) for k in _VALUES})


@settings(max_examples=150, deadline=None)
@given(events=st.lists(_EVENT, max_size=30), limits=_LIMITS)
def test_identifiers_never_exceed_limits(events: list[dict[str, str]], limits: dict[str, int]) -> None:
    state, results = run(events, IdentityConfig(limits=limits))
    for customer in state.customers():
        for kind, limit in limits.items():
            assert state.count(customer, kind) <= limit
    for res in results:  # every event lands on a live customer
        assert state.canonical(res.customer_id) in state.customers()
    owners = {state.lookup(k) for k in state.owner}
    assert owners <= set(state.customers())


@settings(max_examples=100, deadline=None)
@given(events=st.lists(_EVENT, max_size=30))
def test_resolution_is_deterministic(events: list[dict[str, str]]) -> None:
    first, one = run(events)
    second, two = run(events)
    assert one == two
    assert first.owner == second.owner and first.alias == second.alias
