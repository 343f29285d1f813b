"""Keys and what they stand for (connectors.frontline.access) and the gateway's rate limiter, without I/O."""

from __future__ import annotations

import json
from typing import Any

import pytest

from connectors.frontline.access import KeyRing, Principal, Source, SourceKeys, _main, digest, presented_key
from connectors.frontline.limits import Limits, limits_of
from connectors.intake.gateway import GatewayStats, RateLimiter
from touchpoint.errors import ConfigError
from touchpoint.settings import LookupLimits, Settings

SMS = Source("sms-provider", frozenset({"sms"}), frozenset({"sms", "consent"}))


def settings(**changes: Any) -> Settings:
    return Settings(**changes)


@pytest.mark.parametrize(("headers", "key"), [
    ({"authorization": "Bearer abc"}, "abc"),
    ({"authorization": "bearer  abc "}, "abc"),
    ({"x-api-key": " abc "}, "abc"),
    ({"authorization": "Basic abc", "x-api-key": "def"}, "def"),
    ({"authorization": "Basic abc"}, None),
    ({"authorization": "Bearer "}, None),
    ({}, None),
])
def test_presented_key(headers: dict[str, str], key: str | None) -> None:
    assert presented_key(headers) == key


def test_the_two_stores_do_not_share_keys() -> None:
    both = settings(api_keys={digest("lookup"): {"name": "ada", "role": "agent"}},
                    gateway_keys={digest("gateway"): {"name": "web", "channels": ["web"], "types": ["*"]}})
    ring, sources = KeyRing(both), SourceKeys(both)
    assert ring.principal("lookup") == Principal("ada", "agent") and ring.principal("gateway") is None
    assert sources.source("gateway") == Source("web", frozenset({"web"}), None)
    assert sources.source("lookup") is None and sources.source("") is None
    assert (len(ring), len(sources)) == (1, 1)


def test_source_entry_with_every_field() -> None:
    entry = {"name": " sms-provider ", "channels": ["sms"], "types": ["sms", "consent"], "rate_per_s": 2.5,
             "burst": 10, "max_body_bytes": 4096}
    source = SourceKeys(settings(gateway_keys={digest("k").upper(): entry})).source("k")
    assert source == Source("sms-provider", frozenset({"sms"}), frozenset({"sms", "consent"}), 2.5, 10, 4096)


@pytest.mark.parametrize(("entry", "says"), [
    ({"channels": ["sms"], "types": ["sms"]}, "needs a non-empty name"),
    ({"name": "x", "channels": "sms", "types": ["sms"]}, "needs 'channels'"),
    ({"name": "x", "channels": ["sms"], "types": ["purchases"]}, "unknown types 'purchases'; known: purchase"),
    ({"name": "x", "channels": ["*"], "types": ["*"], "burst": 1.5}, "burst must be a positive integer"),
    ({"name": "x", "channels": ["*"], "types": ["*"], "burst": True}, "burst must be a positive integer"),
    ({"name": "x", "channels": ["*"], "types": ["*"], "rate_per_s": None}, "rate_per_s must be a positive number"),
    ({"name": "x", "channels": ["*"], "types": ["*"], "max_body_bytes": -1}, "max_body_bytes must be"),
])
def test_invalid_source_entries_name_the_setting_and_the_entry(entry: Any, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        SourceKeys(settings(gateway_keys={digest("secret-key"): entry}))
    message = str(caught.value)
    assert message.startswith("TOUCHPOINT_GATEWAY_KEYS: entry " + digest("secret-key")[:12])
    assert says in message and "secret-key" not in message


def test_lookup_entries_are_checked_as_before() -> None:
    with pytest.raises(ConfigError, match=r"TOUCHPOINT_API_KEYS: entry .* has role 'boss'"):
        KeyRing(settings(api_keys={digest("k"): {"name": "x", "role": "boss"}}))
    with pytest.raises(ConfigError, match="must be .* and optionally burst, daily_customers, per_minute"):
        KeyRing(settings(api_keys={digest("k"): {"name": "x", "role": "agent", "channels": "*"}}))
    with pytest.raises(ConfigError, match="TOUCHPOINT_GATEWAY_KEYS: entry k… is not a sha256 hex digest"):
        SourceKeys(settings(gateway_keys={"k": {"name": "x", "channels": ["*"], "types": ["*"]}}))


@pytest.mark.parametrize(("own", "says"), [
    ({"per_minute": 0}, "per_minute: Input should be greater than 0"),
    ({"burst": 1.5}, "burst: Input should be a valid integer"),
    ({"daily_customers": 0}, "daily_customers: Input should be greater than or equal to 1"),
])
def test_a_keys_own_limits_are_checked(own: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        KeyRing(settings(api_keys={digest("k"): {"name": "x", "role": "service", **own}}))
    assert says in str(caught.value) and "(x)" in str(caught.value)


def test_a_keys_limits_are_its_own_then_its_roles_from_the_settings_then_the_defaults() -> None:
    ring = KeyRing(settings(api_keys={digest("a"): {"name": "a", "role": "agent", "daily_customers": 50},
                                      digest("s"): {"name": "s", "role": "service"},
                                      digest("o"): {"name": "o", "role": "operations"}},
                            api_limits={"service": {"per_minute": 600, "burst": 20}}))
    agent, service, ops = (ring.principal(k) for k in "aso")
    assert agent is not None and service is not None and ops is not None
    set_ = settings(api_limits={"service": {"per_minute": 600, "burst": 20}})
    assert limits_of(set_, agent) == Limits(6 / 60, 10.0, 50, shards=1)  # its own ceiling, the rest the agent's
    assert limits_of(set_, service) == Limits(10.0, 20.0, None, shards=2)  # the settings' service limits
    assert limits_of(set_, ops) == Limits(12 / 60, 20.0, 500, shards=2)


@pytest.mark.parametrize(("burst", "shards"), [(1, 1), (10, 1), (19, 1), (20, 2), (40, 4), (160, 16), (2000, 16)])
def test_a_buckets_shards_are_one_per_ten_of_burst_at_most_sixteen(burst: int, shards: int) -> None:
    assert Limits.of(LookupLimits(per_minute=60, burst=burst)).shards == shards


@pytest.mark.parametrize(("channel", "event_type", "refusal"), [
    ("sms", "sms", None),
    ("sms", "consent", None),
    ("branch", "purchase", ("channel", "source sms-provider may not publish on channel 'branch' "
                                       "(its key allows: sms)")),
    ("sms", "purchase", ("type", "source sms-provider may not publish events of type 'purchase' "
                                 "(its key allows: consent, sms)")),
    (None, "sms", None),          # no channel: the contract refuses it, with its own reason
    (["sms"], 7, None),
    (None, "purchase", ("type", "source sms-provider may not publish events of type 'purchase' "
                                "(its key allows: consent, sms)")),
])
def test_scope(channel: object, event_type: object, refusal: tuple[str, str] | None) -> None:
    assert SMS.refusal(channel, event_type) == refusal


def test_every_channel_and_type() -> None:
    assert Source("cti", None, None).refusal("branch", "purchase") is None


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_burst_refill_and_wait() -> None:
    clock = Clock()
    limiter = RateLimiter(50.0, clock)
    slow = Source("slow", None, None, rate_per_s=0.5, burst=3)
    assert [limiter.take(slow) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take(slow) == pytest.approx(2.0)   # a token is 2 s away at half a request per second
    clock.now += 1.5
    assert limiter.take(slow) == pytest.approx(0.5)   # refused requests take nothing
    clock.now += 0.5
    assert limiter.take(slow) == 0.0
    clock.now += 3600
    assert [limiter.take(slow) for _ in range(4)][-1] > 0  # refilled to the burst, no further


def test_one_bucket_per_source_name_and_the_default_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(1.0, clock)
    old_key, new_key = Source("web", None, None), Source("web", frozenset({"web"}), None)
    other = Source("cti", None, None)
    assert limiter.rate(old_key) == 1.0
    # Default burst: two seconds' worth of the default rate, shared by a rotated key and its successor.
    assert [limiter.take(old_key), limiter.take(new_key), limiter.take(old_key) > 0] == [0.0, 0.0, True]
    assert limiter.take(other) == 0.0


def test_stats_document() -> None:
    stats = GatewayStats()
    stats.count(None, "no_key")
    stats.count("sms", "requests", 2)
    stats.count("sms", "out_of_scope", 3)
    stats.count("sms", "accepted", 5)
    doc = stats.doc()
    assert doc["refusals"] == {"no_key": 1, "invalid_key": 0, "no_keys_configured": 0, "rate_limited": 0,
                               "too_large": 0, "out_of_scope": 3}
    assert doc["sources"] == {"sms": {"requests": 2, "accepted": 5, "rejected": 0, "out_of_scope": 3,
                                      "rate_limited": 0, "too_large": 0}}
    assert doc["since"].endswith("Z")


def _new_key(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[str, dict[str, Any]]:
    assert _main(["new-key", *argv]) == 0
    out = capsys.readouterr().out.splitlines()
    key = out[0].rsplit(": ", 1)[1]
    entries: dict[str, Any] = json.loads(out[2])
    return key, entries


def test_new_gateway_key_is_accepted_by_the_gateway_store(capsys: pytest.CaptureFixture[str]) -> None:
    key, entries = _new_key(capsys, "--name", "sms-provider", "--channels", "sms", "--types", "sms", "consent",
                            "--rate-per-s", "20", "--burst", "40")
    assert list(entries) == [digest(key)] and len(key) >= 40
    assert SourceKeys(settings(gateway_keys=entries)).source(key) == \
        Source("sms-provider", frozenset({"sms"}), frozenset({"sms", "consent"}), 20.0, 40)


def test_new_lookup_key_is_unchanged(capsys: pytest.CaptureFixture[str]) -> None:
    key, entries = _new_key(capsys, "--name", "ada", "--role", "agent")
    assert entries == {digest(key): {"name": "ada", "role": "agent"}}


@pytest.mark.parametrize("argv", [
    ["--name", "x", "--channels", "sms"],                                # no --types
    ["--name", "x", "--role", "agent", "--types", "sms"],                # gateway option on a lookup key
    ["--name", "x", "--role", "agent", "--channels", "sms", "--types", "sms"],
    ["--name", "x", "--channels", "fax", "--types", "sms"],
    ["--name", "x", "--channels", "sms", "--types", "sms", "--burst", "0"],
])
def test_new_key_refuses_bad_combinations(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        _main(["new-key", *argv])
    assert exited.value.code == 2
    assert "error" in capsys.readouterr().err
