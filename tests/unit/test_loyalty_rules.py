"""Loyalty rules as data: scoring tables for every rule type, versions, the registry, rules files."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from touchpoint.core.instants import epoch_ms
from touchpoint.core.loyalty import (
    RULE_TYPES,
    BasketThresholdParams,
    CampaignInvitedParams,
    CategoriesTogetherParams,
    Hit,
    Invitation,
    LoyaltyRules,
    MultiplierRule,
    NoRulesInForce,
    PurchaseFacts,
    RuleVersion,
    ScoringContext,
    default_rules,
    load_rules,
    parse_rules,
    rule_type,
    score,
)
from touchpoint.errors import ConfigError

T0 = epoch_ms(datetime(2025, 1, 1, tzinfo=UTC))
DAY = 86_400_000
DEFAULT = default_rules().versions[0]


def fuel(amount: int) -> tuple[str, str, int, int]:
    return ("UNL95", "fuel", 10, amount)


def shop(amount: int, sku: str = "COFFEE") -> tuple[str, str, int, int]:
    return (sku, "shop", 1, amount)


def facts(*lines: tuple[str, str, int, int], at: int = T0 + 2 * DAY) -> PurchaseFacts:
    return PurchaseFacts(ms=at, total_minor=sum(line[3] for line in lines), lines=lines, transaction_id="T1")


def invite(starts_day: float | None = 1, ends_day: float | None = 15, multiplier: int | None = None,
           at_day: float = 0, campaign: str = "CMP-1") -> Invitation:
    return Invitation(campaign, f"ev-{campaign}", T0 + int(at_day * DAY),
                      None if starts_day is None else T0 + int(starts_day * DAY),
                      None if ends_day is None else T0 + int(ends_day * DAY), multiplier)  # fmt: skip


def version(*rules: dict[str, Any], **fields: Any) -> RuleVersion:
    return RuleVersion.model_validate({"version": "t", "effective_from": "2000-01-01T00:00:00Z",
                                       "rules": list(rules), **fields})  # fmt: skip


# -- the default rules, rule by rule and in combination -------------------------------

DEFAULT_TABLE = [
    # (given lines, invitations, purchase time) -> (points, multiplier, rule ids)
    pytest.param([fuel(4999)], [], None, 49, 1, (), id="fuel-only-one-unit-below-threshold"),
    pytest.param([fuel(5000)], [], None, 100, 2, ("big_basket",), id="threshold-exactly-50.00"),
    pytest.param([shop(4999)], [], None, 49, 1, (), id="shop-only-below"),
    pytest.param([shop(6000)], [], None, 120, 2, ("big_basket",), id="shop-only-over-threshold"),
    pytest.param([fuel(3000), shop(450)], [], None, 68, 2, ("fuel_and_shop",), id="fuel-and-shop-under-threshold"),
    pytest.param([fuel(6000), shop(450)], [], None, 128, 2, ("big_basket",), id="fuel-and-shop-over-no-stack"),
    pytest.param([fuel(99)], [], None, 0, 1, (), id="below-one-point"),
    pytest.param([fuel(1000)], [], None, 10, 1, (), id="uninvited"),
    pytest.param([fuel(1000)], [invite()], T0 + DAY - 1, 10, 1, (), id="campaign-before-window"),
    pytest.param([fuel(1000)], [invite()], T0 + DAY, 30, 3, ("campaign",), id="campaign-window-start"),
    pytest.param([fuel(1000)], [invite()], T0 + 14 * DAY, 30, 3, ("campaign",), id="campaign-inside-window"),
    pytest.param([fuel(1000)], [invite()], T0 + 15 * DAY - 1, 30, 3, ("campaign",), id="campaign-last-ms"),
    pytest.param([fuel(1000)], [invite()], T0 + 15 * DAY, 10, 1, (), id="campaign-window-end-excluded"),
    pytest.param([fuel(1000)], [invite()], T0 + 40 * DAY, 10, 1, (), id="campaign-after-window"),
    pytest.param([fuel(1000)], [invite(multiplier=5)], None, 50, 5, ("campaign",), id="invitation-carries-x5"),
    pytest.param([fuel(1000)], [invite(multiplier=1)], None, 10, 1, ("campaign",), id="invitation-carries-x1"),
    pytest.param([fuel(1000)], [invite(None, None, at_day=0)], T0 + 13 * DAY, 30, 3, ("campaign",),
                 id="no-window-14-days-from-invitation"),
    pytest.param([fuel(1000)], [invite(None, None, at_day=0)], T0 + 14 * DAY, 10, 1, (),
                 id="no-window-ends-after-14-days"),
    pytest.param([fuel(6000), shop(450)], [invite()], None, 192, 3, ("campaign",),
                 id="campaign-beats-x2-no-stacking"),
    pytest.param([fuel(1000)], [invite(multiplier=2, campaign="A"), invite(multiplier=4, campaign="B")], None,
                 40, 4, ("campaign",), id="two-invitations-highest-wins"),
]  # fmt: skip


@pytest.mark.parametrize(("lines", "invitations", "at", "points", "multiplier", "rule_ids"), DEFAULT_TABLE)
def test_default_rules_score(
    lines: list[tuple[str, str, int, int]],
    invitations: list[Invitation],
    at: int | None,
    points: int,
    multiplier: int,
    rule_ids: tuple[str, ...],
) -> None:
    given = facts(*lines) if at is None else facts(*lines, at=at)
    result = score(given, DEFAULT, invitations)
    assert (result.points, result.multiplier, result.rule_ids) == (points, multiplier, rule_ids)


@pytest.mark.parametrize(
    ("lines", "invitations", "reason"),
    [
        ([fuel(3000), shop(450)], [], "×2: fuel and shop in one visit"),
        ([fuel(5000)], [], "×2: basket of 50.00 or more"),
        ([fuel(1000)], [invite()], "×3: invited to campaign CMP-1"),
        ([fuel(1000)], [], "×1: 1 point per 1.00"),
    ],
)
def test_reasons_are_for_people(
    lines: list[tuple[str, str, int, int]], invitations: list[Invitation], reason: str
) -> None:
    assert score(facts(*lines), DEFAULT, invitations).reason == reason


# -- stacking and the rule types' parameters ----------------------------------------

BASKET = {"id": "big_basket", "type": "basket_threshold", "multiplier": 2}
TOGETHER = {"id": "fuel_and_shop", "type": "categories_together", "multiplier": 2}
CAMPAIGN = {"id": "campaign", "type": "campaign_invited", "multiplier": 3}

STACKING_TABLE = [
    pytest.param([BASKET, TOGETHER], [fuel(6000), shop(450)], [], 128, 2, ("big_basket",), id="no-stack-highest"),
    pytest.param([BASKET, {**TOGETHER, "stacks": True}], [fuel(6000), shop(450)], [], 256, 4,
                 ("big_basket", "fuel_and_shop"), id="stacks-on-top"),
    pytest.param([BASKET, {**TOGETHER, "stacks": True}], [fuel(3000), shop(450)], [], 68, 2,
                 ("fuel_and_shop",), id="stacking-alone"),
    pytest.param([BASKET, {**TOGETHER, "stacks": True}, CAMPAIGN], [fuel(6000), shop(450)], [invite()], 384, 6,
                 ("campaign", "fuel_and_shop"), id="highest-non-stacking-times-stacking"),
    pytest.param([{**BASKET, "stacks": True}, {**TOGETHER, "stacks": True}, {**CAMPAIGN, "stacks": True}],
                 [fuel(6000), shop(450)], [invite()], 768, 12, ("big_basket", "fuel_and_shop", "campaign"),
                 id="all-stack"),
    pytest.param([{**BASKET, "multiplier": 3}, TOGETHER], [fuel(6000), shop(450)], [], 192, 3, ("big_basket",),
                 id="higher-wins-whatever-the-order"),
    pytest.param([{**BASKET, "params": {"threshold_minor": 10000}}], [fuel(9999)], [], 99, 1, (),
                 id="threshold-param-below"),
    pytest.param([{**BASKET, "params": {"threshold_minor": 10000}}], [fuel(10000)], [], 200, 2, ("big_basket",),
                 id="threshold-param-at"),
    pytest.param([{**TOGETHER, "params": {"categories": ["fuel", "shop", "wash"]}}], [fuel(6000), shop(450)], [],
                 64, 1, (), id="three-categories-missing-one"),
    pytest.param([{**TOGETHER, "params": {"categories": ["wash"]}}], [("W1", "wash", 1, 800)], [], 16, 2,
                 ("fuel_and_shop",), id="one-category"),
    pytest.param([{**CAMPAIGN, "params": {"use_invitation_multiplier": False}}], [fuel(1000)],
                 [invite(multiplier=7)], 30, 3, ("campaign",), id="ignore-invitation-multiplier"),
    pytest.param([{**CAMPAIGN, "params": {"max_multiplier": 4}}], [fuel(1000)], [invite(multiplier=7)], 40, 4,
                 ("campaign",), id="invitation-multiplier-capped"),
    pytest.param([BASKET], [fuel(5000)], [], 100, 2, ("big_basket",), id="minor-per-point"),
]  # fmt: skip


@pytest.mark.parametrize(("rules", "lines", "invitations", "points", "multiplier", "rule_ids"), STACKING_TABLE)
def test_stacking_and_params(
    rules: list[dict[str, Any]],
    lines: list[tuple[str, str, int, int]],
    invitations: list[Invitation],
    points: int,
    multiplier: int,
    rule_ids: tuple[str, ...],
) -> None:
    result = score(facts(*lines), version(*rules), invitations)
    assert (result.points, result.multiplier, result.rule_ids) == (points, multiplier, rule_ids)


def test_stacked_reason_names_every_rule() -> None:
    rules = version(BASKET, {**TOGETHER, "stacks": True, "label": "fuel + shop"})
    assert score(facts(fuel(6000), shop(450)), rules).reason == (
        "×4: basket of 50.00 or more (×2); fuel + shop (×2, stacks)"
    )


def test_minor_per_point_is_the_base() -> None:
    assert score(facts(fuel(1234)), version(minor_per_point=10)).points == 123


# The extra built-in type: one function and this table.
SPEND = {"id": "spend", "type": "category_spend", "multiplier": 2}


@pytest.mark.parametrize(
    ("params", "lines", "points"),
    [
        pytest.param({"skus": ["CARWASH"]}, [fuel(2000), shop(800, "CARWASH")], 56, id="sku-bought"),
        pytest.param({"skus": ["CARWASH"]}, [fuel(2000), shop(800)], 28, id="sku-not-bought"),
        pytest.param({"categories": ["fuel"], "min_amount_minor": 4000}, [fuel(4000)], 80, id="fuel-spend-at"),
        pytest.param({"categories": ["fuel"], "min_amount_minor": 4000}, [fuel(3999), shop(500)], 44,
                     id="fuel-spend-below-shop-does-not-count"),
        pytest.param({"categories": ["fuel"], "skus": ["CARWASH"], "min_amount_minor": 4000},
                     [fuel(3000), shop(1000, "CARWASH")], 80, id="categories-and-skus-add-up"),
        pytest.param({"categories": ["fuel"]}, [("UNL95", "fuel", 1, 0), shop(700)], 7, id="zero-amount-line"),
    ],
)  # fmt: skip
def test_category_spend(params: dict[str, Any], lines: list[tuple[str, str, int, int]], points: int) -> None:
    assert score(facts(*lines), version({**SPEND, "params": params})).points == points


# -- the registry: a new type is one function -------------------------------------------


class _WeekendParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    days: tuple[int, ...] = (5, 6)


@pytest.fixture
def weekend_type() -> Iterator[str]:
    @rule_type("weekend", _WeekendParams)
    def _weekend(facts: PurchaseFacts, rule: MultiplierRule, ctx: ScoringContext) -> Hit | None:
        day = datetime.fromtimestamp(facts.ms / 1000, UTC).weekday()
        return Hit("weekend visit") if day in rule.params.days else None

    yield "weekend"
    del RULE_TYPES["weekend"]


@pytest.mark.parametrize(
    ("day", "points"),
    [(2, 10), (3, 20), (4, 20), (5, 10)],  # T0 + 3 days = Saturday 2025-01-04
)
def test_a_registered_type_scores_without_engine_change(weekend_type: str, day: int, points: int) -> None:
    rules = version({"id": "wk", "type": weekend_type, "multiplier": 2})
    assert score(facts(fuel(1000), at=T0 + day * DAY), rules).points == points


def test_registering_a_type_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="already registered"):
        rule_type("basket_threshold", BasketThresholdParams)(lambda facts, rule, ctx: None)


def test_params_are_typed_models() -> None:
    rules = version(BASKET, TOGETHER, CAMPAIGN)
    assert rules.rules[0].params == BasketThresholdParams(threshold_minor=5000)
    assert rules.rules[1].params == CategoriesTogetherParams(categories=("fuel", "shop"))
    assert rules.rules[2].params == CampaignInvitedParams()


# -- versions -------------------------------------------------------------------------

TWO = LoyaltyRules.model_validate({"versions": [
    {"version": "v1", "effective_from": "2025-01-01T00:00:00Z"},
    {"version": "v2", "effective_from": "2025-06-01T00:00:00+02:00"},
]})  # fmt: skip
V2_MS = epoch_ms(datetime(2025, 5, 31, 22, tzinfo=UTC))


@pytest.mark.parametrize(
    ("ms", "expected"),
    [(T0, "v1"), (T0 + 1, "v1"), (V2_MS - 1, "v1"), (V2_MS, "v2"), (V2_MS + 10 * 365 * DAY, "v2")],
)
def test_version_at_boundaries(ms: int, expected: str) -> None:
    assert TWO.version_at(ms).version == expected


def test_before_the_first_version_is_an_error() -> None:
    with pytest.raises(NoRulesInForce, match=r"no loyalty rules in force at 2024-12-31T23:59:59.999Z.*'v1'"):
        TWO.version_at(T0 - 1)
    assert issubclass(NoRulesInForce, ValueError)


def test_version_named() -> None:
    assert TWO.version_named("v2").effective_ms == V2_MS
    with pytest.raises(KeyError):
        TWO.version_named("v3")


# -- rules files ---------------------------------------------------------------------

GOOD = """\
versions:
  - version: "1"
    effective_from: 2025-01-01T00:00:00Z
    tiers:
      - {name: bronze, min_points: 0}
      - {name: silver, min_points: 100}
    rules:
      - id: big_basket
        type: basket_threshold
        multiplier: 2
        params:
          threshold_minor: 5000
  - version: "2"
    effective_from: 2025-06-01T00:00:00Z
"""


def _with(line: int, replacement: str) -> str:
    lines = GOOD.splitlines()
    lines[line - 1] = replacement
    return "\n".join(lines) + "\n"


BAD_FILES = [
    # (given the file text) -> (the line named, words of the message)
    pytest.param(_with(12, "          threshold_minor: lots"), 12, "params.threshold_minor", id="bad-param-value"),
    pytest.param(_with(12, "          threshold: 5000"), 12, "params.threshold", id="unknown-param"),
    pytest.param(_with(9, "        type: triple_everything"), 9, "unknown rule type 'triple_everything'",
                 id="unknown-type"),
    pytest.param(_with(10, "        multiplier: 0"), 10, "rules[0].multiplier", id="multiplier-zero"),
    pytest.param(_with(10, "        multiplier: 1.5"), 10, "rules[0].multiplier", id="multiplier-fraction"),
    pytest.param(_with(10, "        colour: red"), 10, "rules[0].colour: Extra inputs", id="extra-field"),
    pytest.param(_with(3, "    effective_from: 2025-01-01 00:00:00"), 3, "timezone", id="naive-time"),
    pytest.param(_with(3, "    effective_from: soon"), 3, "effective_from", id="not-a-time"),
    pytest.param(_with(14, "    effective_from: 2024-06-01T00:00:00Z"), 14, "increasing effective_from",
                 id="versions-out-of-order"),
    pytest.param(_with(13, '  - version: "1"'), 13, "named twice", id="version-named-twice"),
    pytest.param(_with(6, "      - {name: silver, min_points: 0}"), 6, "must increase", id="tiers-not-increasing"),
    pytest.param(_with(5, "      - {name: bronze, min_points: 10}"), 5, "start at 0", id="first-tier-not-zero"),
    pytest.param(_with(2, "  - version: 1"), 2, "valid string", id="version-not-a-string"),
    pytest.param(_with(2, "  - effective: 1"), 2, "versions[0].version: Field required", id="missing-field"),
    pytest.param(GOOD + "    version: \"3\"\n", 15, "given twice", id="duplicate-key"),
    pytest.param(_with(11, "        params: [1, 2"), 12, "not valid YAML", id="yaml-syntax"),
    pytest.param("versions: []\n", 1, "at least one version", id="no-versions"),
    pytest.param(_with(12, "          threshold_minor: 5000\n"
                           "      - {id: big_basket, type: basket_threshold, multiplier: 3}"), 13, "used twice",
                 id="rule-id-twice"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "line", "words"), BAD_FILES)
def test_rules_file_errors_name_the_file_and_line(tmp_path: Path, text: str, line: int, words: str) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_rules(path)
    message = str(caught.value)
    assert f"{path}:{line}:" in message
    assert words in message


def test_every_problem_is_listed() -> None:
    text = _with(10, "        multiplier: 0").replace("threshold_minor: 5000", "threshold_minor: -1")
    message = str(pytest.raises(ConfigError, parse_rules, text, "r.yaml").value)
    assert "r.yaml:10:" in message and "r.yaml:12:" in message


def test_good_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(GOOD)
    rules = load_rules(path)
    assert [v.version for v in rules.versions] == ["1", "2"]
    assert rules.versions[0].rules[0].params.threshold_minor == 5000
    assert rules.versions[1].rules == ()


def test_json_file_loads_and_errors_name_the_line(tmp_path: Path) -> None:
    doc = {"versions": [{"version": "1", "effective_from": "2025-01-01T00:00:00Z",
                         "rules": [{"id": "x", "type": "basket_threshold", "multiplier": 2}]}]}  # fmt: skip
    good = tmp_path / "rules.json"
    good.write_text(json.dumps(doc, indent=2))
    assert load_rules(good).versions[0].rules[0].params.threshold_minor == 5000
    doc["versions"][0]["rules"][0]["multiplier"] = -2  # type: ignore[index]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc, indent=2))
    text = bad.read_text().splitlines()
    line = next(i for i, row in enumerate(text, 1) if '"multiplier": -2' in row)
    with pytest.raises(ConfigError, match=rf"bad\.json:{line}: versions\[0\]\.rules\[0\]\.multiplier"):
        load_rules(bad)


@pytest.mark.parametrize("text", ["", "# nothing\n"])
def test_empty_file(text: str) -> None:
    with pytest.raises(ConfigError, match="empty"):
        parse_rules(text, "e.yaml")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.yaml: cannot read"):
        load_rules(tmp_path / "missing.yaml")


def test_rules_are_frozen() -> None:
    with pytest.raises(ValueError, match="frozen"):
        DEFAULT.minor_per_point = 1


def test_default_file_holds_the_documented_scheme() -> None:
    rules = default_rules()
    assert rules is default_rules()  # loaded once
    v = rules.version_at(T0)
    assert (v.minor_per_point, v.expiry_months, v.tier_window_months, v.campaign_window_days) == (100, 24, 12, 14)
    assert [(t.name, t.min_points) for t in v.tiers] == [("bronze", 0), ("silver", 2000), ("gold", 5000)]
    by_id = {rule.id: rule for rule in v.rules}
    assert by_id["big_basket"].params == BasketThresholdParams(threshold_minor=5000)
    assert by_id["fuel_and_shop"].params == CategoriesTogetherParams(categories=("fuel", "shop"))
    assert by_id["campaign"].multiplier == 3
    assert not any(rule.stacks for rule in v.rules)
    shipped = Path(__file__).parents[2] / "touchpoint" / "core" / "loyalty_rules.yaml"
    assert load_rules(shipped) == rules
