"""Customer value: the summaries, the two models' likelihoods and formulas, and the papers' own CDNOW fit."""

from __future__ import annotations

import json
import math
from datetime import UTC, date, datetime
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.integrate import quad
from typer.testing import CliRunner

from backbone.cli import app
from bench.cdnow import CALIBRATION_END, events, sample_path
from touchpoint.core.fold import folded
from touchpoint.core.value import (
    BgNbd,
    GammaGamma,
    Summary,
    bgnbd_log_likelihood,
    expected_purchases,
    expected_purchases_new,
    expected_spend,
    fit,
    gamma_gamma_log_likelihood,
    p_alive,
    summaries_of,
    summarise,
)
from touchpoint.errors import ConfigError

END = date(2025, 3, 31)


def ms(day: str, hour: int = 12) -> int:
    return int(datetime.fromisoformat(day).replace(hour=hour, tzinfo=UTC).timestamp() * 1000)


# -- summaries -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("purchases", "refunds", "unit", "expected"), [
    # one purchase: no repeat; T counts whole days from its day to the calibration day
    ({"t1": (ms("2025-03-03"), 1000)}, {}, "day", Summary(0, 0.0, 28.0, 0.0)),
    # same-day purchases count once, their spend summed; the first day is not a repeat
    ({"t1": (ms("2025-03-03"), 1000), "t2": (ms("2025-03-10", 9), 500), "t3": (ms("2025-03-10", 18), 700)}, {},
     "day", Summary(1, 7.0, 28.0, 12.0)),
    # weeks: whole days divided by 7; a purchase after the calibration day does not count, one on it does
    ({"t1": (ms("2025-03-03"), 1000), "t2": (ms("2025-03-31", 23), 2000), "t3": (ms("2025-04-01"), 9999)}, {},
     "week", Summary(1, 4.0, 4.0, 20.0)),
    # a refund takes its amount off its purchase; one refunded whole is no purchase
    ({"t1": (ms("2025-03-03"), 1000), "t2": (ms("2025-03-10"), 3000), "t3": (ms("2025-03-17"), 800)},
     {"r1": (ms("2025-03-11"), 1000, "t2"), "r2": (ms("2025-03-18"), 800, "t3")}, "day", Summary(1, 7.0, 28.0, 20.0)),
    # a purchase of no amount is still a purchase (CDNOW has some)
    ({"t1": (ms("2025-03-03"), 0), "t2": (ms("2025-03-05"), 0)}, {}, "day", Summary(1, 2.0, 28.0, 0.0)),
    # nothing bought by the calibration day: not a customer yet
    ({"t1": (ms("2025-04-02"), 1000)}, {}, "week", None),
])
def test_a_customers_summary_counts_purchase_days(purchases: dict[str, tuple[int, int]],
                                                  refunds: dict[str, tuple[int, int, str]], unit: str,
                                                  expected: Summary | None) -> None:
    assert summarise(purchases, refunds, END, unit) == expected


def test_an_unknown_time_unit_is_refused() -> None:
    with pytest.raises(ValueError, match="month"):
        summarise({"t1": (ms("2025-03-03"), 1000)}, {}, END, "month")


# -- likelihoods, against the papers' formulas written out independently --------------------------------------------

def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def bgnbd_likelihood_by_hand(r: float, alpha: float, a: float, b: float, x: int, t_x: float, T: float) -> float:
    """BG/NBD's equation (6) as printed: two terms, each a beta ratio times a gamma-Poisson term."""
    gamma_term = math.lgamma(r + x) - math.lgamma(r) + r * math.log(alpha)
    first = math.exp(_log_beta(a, b + x) - _log_beta(a, b) + gamma_term - (r + x) * math.log(alpha + T))
    if x == 0:
        return first
    second = math.exp(_log_beta(a + 1, b + x - 1) - _log_beta(a, b) + gamma_term - (r + x) * math.log(alpha + t_x))
    return first + second


@pytest.mark.parametrize(("x", "t_x", "T"), [(0, 0.0, 4.0), (0, 0.0, 38.86), (1, 2.0, 10.0), (2, 30.43, 38.86),
                                              (7, 29.43, 38.86), (40, 50.0, 52.0)])
def test_the_bgnbd_log_likelihood_is_the_papers_equation(x: int, t_x: float, T: float) -> None:
    params = BgNbd(0.243, 4.414, 0.793, 2.426)
    ours = bgnbd_log_likelihood(params, np.array([x], float), np.array([t_x]), np.array([T]))[0]
    assert ours == pytest.approx(math.log(bgnbd_likelihood_by_hand(0.243, 4.414, 0.793, 2.426, x, t_x, T)), rel=1e-12)


def test_a_customer_without_repeats_has_the_likelihood_of_never_buying_again() -> None:
    # x = 0: (alpha / (alpha + T)) ** r, whatever a and b are
    ours = bgnbd_log_likelihood(BgNbd(0.5, 2.0, 0.9, 3.1), np.zeros(1), np.zeros(1), np.array([4.0]))[0]
    assert ours == pytest.approx(0.5 * math.log(2.0 / 6.0), rel=1e-12)


@pytest.mark.parametrize("x", [1, 2, 5, 20])
def test_the_gamma_gamma_likelihood_is_a_density_of_the_mean_spend(x: int) -> None:
    # Integrated over every mean spend, the density of m_x given x is 1.
    params = GammaGamma(6.25, 3.74, 15.44)

    def density(m: float) -> float:
        return float(np.exp(gamma_gamma_log_likelihood(params, np.array([float(x)]), np.array([m]))[0]))

    total, _ = quad(density, 0, np.inf, limit=200)
    assert total == pytest.approx(1.0, abs=1e-6)


def test_the_expected_spend_shrinks_a_customers_mean_towards_the_populations() -> None:
    params = GammaGamma(6.25, 3.74, 15.44)
    population = params.p * params.v / (params.q - 1)
    spend = expected_spend(params, np.array([0.0, 1.0, 10.0, 1000.0]), np.array([0.0, 100.0, 100.0, 100.0]))
    assert spend[0] == pytest.approx(population)
    assert population < spend[1] < spend[2] < spend[3] < 100.0
    assert spend[3] == pytest.approx(100.0, rel=1e-2)


# -- per-customer formulas -------------------------------------------------------------------------------------------

PARAMS = BgNbd(0.243, 4.414, 0.793, 2.426)


@settings(max_examples=200, deadline=None)
@given(x=st.integers(0, 60), t_x=st.floats(0, 80), later=st.floats(0, 80), more=st.floats(0.01, 80))
def test_p_alive_is_a_probability_one_without_repeats_and_never_rises_with_age(x: int, t_x: float, later: float,
                                                                            more: float) -> None:
    t_x = 0.0 if x == 0 else t_x
    T = t_x + later
    now, older = (p_alive(PARAMS, np.array([float(x)]), np.array([t_x]), np.array([age]))[0] for age in (T, T + more))
    assert 0.0 <= older <= now <= 1.0
    if x == 0:
        assert now == older == 1.0


def test_a_new_customer_expects_what_the_unconditional_formula_gives() -> None:
    # Right after their first purchase (x = 0, T = 0), equation (10) is equation (7).
    for horizon in (1.0, 13.0, 39.0, 78.0):
        conditional = expected_purchases(PARAMS, horizon, np.zeros(1), np.zeros(1), np.zeros(1))[0]
        assert conditional == pytest.approx(float(expected_purchases_new(PARAMS, horizon)), rel=1e-9)


def test_a_frequent_recent_buyer_expects_more_than_a_lapsed_one() -> None:
    x, t_x, T = np.array([10.0, 10.0, 1.0]), np.array([38.0, 10.0, 2.0]), np.array([39.0, 39.0, 39.0])
    recent, lapsed, once = expected_purchases(PARAMS, 39.0, x, t_x, T)
    assert recent > lapsed and recent > once


# -- the papers' own fit ----------------------------------------------------------------------------------------------

PUBLISHED = {"bg_nbd": {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426},
             "gamma_gamma": {"p": 6.25, "q": 3.74, "v": 15.44}}


def three_digits(value: float) -> float:
    return float(f"{value:.3g}")


def test_the_cdnow_sample_fits_to_the_papers_estimates_through_the_command(tmp_path: Any) -> None:
    # The 2,357 customers of the CDNOW 1/10 sample, folded as purchase events; the 39-week calibration period.
    path = tmp_path / "cdnow.jsonl"
    path.write_text("".join(json.dumps(event) + "\n" for event in events()))
    result = CliRunner().invoke(app, ["value", "fit", str(path), "--calibration-end", "1997-09-30", "--unit", "week",
                                      "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert (doc["customers"], doc["repeat_customers"]) == (2357, 946)
    for model, published in PUBLISHED.items():
        for name, value in published.items():
            assert three_digits(doc[model][name]) == three_digits(value), (model, name, doc[model][name])
            # and within the published figure's rounding (half a unit of its last digit)
            half_unit = 0.5 * 10 ** -len(repr(value).partition(".")[2])
            assert abs(doc[model][name] - value) <= half_unit, (model, name, doc[model][name])
    assert doc["log_likelihood"]["bg_nbd"] == pytest.approx(-9582.4, abs=0.05)  # the paper's figure


def test_the_fit_is_the_same_through_the_fold_and_from_the_file_directly() -> None:
    # The fold's views (one customer per customer number) give the summaries the raw file gives.
    view_summaries = summaries_of(folded([json.dumps(e) for e in events()], secret=b"k" * 32).views, CALIBRATION_END)
    by_customer: dict[str, dict[str, tuple[int, int]]] = {}
    for n, line in enumerate(sample_path().read_text(encoding="ascii").splitlines()):
        _, customer, day, _, dollars = line.split()
        at = datetime.strptime(day, "%Y%m%d").replace(hour=12, tzinfo=UTC)
        by_customer.setdefault(customer, {})[str(n)] = (int(at.timestamp() * 1000), round(float(dollars) * 100))
    direct = [summarise(p, {}, CALIBRATION_END) for p in by_customer.values()]
    assert sorted(view_summaries.values(), key=repr) == sorted((s for s in direct if s), key=repr)
    fitted = fit(view_summaries.values(), CALIBRATION_END)
    assert three_digits(fitted.bgnbd.alpha) == 4.41


# -- the value model: versioned data, scored in the fold ---------------------------------------------------------------

def cdnow_model(**changes: Any) -> Any:
    from touchpoint.core.value import ValueModel

    fitted = fit(summaries_of(folded([json.dumps(e) for e in events()], secret=b"k" * 32).views, CALIBRATION_END)
                 .values(), CALIBRATION_END)
    return ValueModel(fitted, **{"margin": 0.3, "annual_discount": 0.1, "horizon_months": 12, "expected_days": 90,
                                 **changes})


def test_a_value_model_round_trips_and_its_version_names_its_content() -> None:
    from touchpoint.core.value import ValueModel

    model = cdnow_model()
    assert ValueModel.from_json(json.loads(json.dumps(model.to_json()))) == model
    assert model.version.startswith("vm-") and cdnow_model(margin=0.25).version != model.version
    edited = {**model.to_json(), "margin": 0.5}
    with pytest.raises(ValueError, match="does not match its content"):
        ValueModel.from_json(edited)
    for bad, why in (({"margin": 1.5}, "margin"), ({"gamma_gamma": {"p": 6.25, "q": 0.5, "v": 15.44}}, "q above 1"),
                     ({"unit": "month"}, "unit"), ({"bg_nbd": {"r": 0.2}}, "not a value model")):
        doc = {k: v for k, v in {**model.to_json(), **bad}.items() if k != "version"}
        with pytest.raises(ValueError, match=why):
            ValueModel.from_json(doc)


def test_a_score_is_the_models_formulas_for_one_customer() -> None:
    from touchpoint.core.value import clv, score

    model = cdnow_model()
    bg, gg = model.fitted.bgnbd, model.fitted.gamma_gamma
    one = Summary(x=3, t_x=30.0, T=38.0, m_x=25.0)
    got = score(model, one)
    x, t_x, T, m_x = (np.array([v], float) for v in (3, 30.0, 38.0, 25.0))
    assert got == {"model_version": model.version, "p_alive": round(float(p_alive(bg, x, t_x, T)[0]), 4),
                   "expected_purchases": round(float(expected_purchases(bg, 90 / 7, x, t_x, T)[0]), 3),
                   "expected_spend": round(float(expected_spend(gg, x, m_x)[0]), 2),
                   "clv": round(float(clv(bg, gg, x, t_x, T, m_x, margin=0.3, annual_discount=0.1,
                                          horizon_months=12)[0]), 2)}
    assert 0 < got["clv"] < 0.3 * got["expected_spend"] * 12  # fewer than a purchase a month is expected
    assert score(model, None) == {"model_version": model.version, "p_alive": None, "expected_purchases": None,
                                  "expected_spend": None, "clv": None}


def fitted_history(tmp_path: Any, customers: int, seed: int) -> tuple[Any, Any, dict[str, Any]]:
    """A generated history of 200 days, and its value model written by ``touchpoint value fit --out``: (history
    file, model file, the fit's JSON)."""
    from touchpoint.generate import generate

    history = tmp_path / "history.jsonl"
    history.write_text("".join(json.dumps(e) + "\n" for e in generate(customers=customers, days=200, seed=seed)
                               if e["event_id"].startswith("ev-")))
    model_file = tmp_path / "model.json"
    fitted = CliRunner().invoke(app, ["value", "fit", str(history), "--calibration-end", "2025-06-30", "--out",
                                      str(model_file), "--json"])
    assert fitted.exit_code == 0, fitted.output
    return history, model_file, json.loads(fitted.output)


def test_a_fold_with_a_value_model_gives_every_customer_its_value(tmp_path: Any) -> None:
    history, model_file, fitted = fitted_history(tmp_path, customers=300, seed=5)
    runner = CliRunner()
    version = fitted["model_version"]
    assert json.loads(model_file.read_text())["version"] == version
    result = runner.invoke(app, ["fold", str(history), "--value-model", str(model_file), "--jobs", "1"])
    assert result.exit_code == 0, result.output
    customers = json.loads(result.output)["customers"]
    assert customers and all(c["value"]["model_version"] == version for c in customers)
    buyers = [c["value"] for c in customers if c["value"]["p_alive"] is not None]
    assert buyers and all(0 <= v["p_alive"] <= 1 and v["clv"] >= 0 and v["expected_spend"] > 0 for v in buyers)
    assert len({v["clv"] for v in buyers}) > len(buyers) // 2, "customers differ in value"
    # The stages take P(alive) in: some customers are at risk or lost by it, with its evidence.
    assert any(t["why"].startswith("P(alive)") and "(x " in t["why"]
               for c in customers for t in c["lifecycle"]["transitions"])
    # Potential value is the model's CLV (200.00 by default), current value the spend's.
    for c in customers:
        if c["value"]["clv"] is not None:
            current, potential = c["rfm"]["monetary_minor"] >= 100_000, c["value"]["clv"] >= 200
            assert c["value_segment"] == {(True, True): "platinum", (True, False): "gold", (False, True): "iron",
                                          (False, False): "lead"}[(current, potential)]
    assert {c["value_segment"] for c in customers if c["value"]["clv"] is not None} >= {"lead", "iron"}
    # The parallel fold renders its parts the same way: the same document, values included.
    parallel = runner.invoke(app, ["fold", str(history), "--value-model", str(model_file), "--jobs", "2"])
    assert parallel.exit_code == 0, parallel.output
    assert parallel.output == result.output


def test_a_fold_refuses_a_value_model_that_is_not_one(tmp_path: Any) -> None:
    bad = tmp_path / "model.json"
    bad.write_text('{"version": "vm-0"}')
    history = tmp_path / "history.jsonl"
    history.write_text("")
    result = CliRunner().invoke(app, ["fold", str(history), "--value-model", str(bad)])
    assert isinstance(result.exception, ConfigError) and "not a value model" in str(result.exception)


def test_the_fit_recovers_the_parameters_of_the_process_that_made_the_data() -> None:
    # 50,000 customers drawn from known processes (bench.value.drawn): the estimates land near the truth.
    from bench.value import drawn

    truth_bg, truth_gg = BgNbd(0.5, 6.0, 1.2, 3.5), GammaGamma(5.0, 4.0, 20.0)
    fitted = fit(drawn(50_000, truth_bg, truth_gg, seed=3), CALIBRATION_END)
    for got, want in ((fitted.bgnbd.r, 0.5), (fitted.bgnbd.alpha, 6.0), (fitted.bgnbd.a, 1.2), (fitted.bgnbd.b, 3.5),
                      (fitted.gamma_gamma.p, 5.0), (fitted.gamma_gamma.q, 4.0), (fitted.gamma_gamma.v, 20.0)):
        assert got == pytest.approx(want, rel=0.15)


def test_a_report_groups_value_by_segment_and_stage() -> None:
    from touchpoint.core.value import report

    def customer(segment: str, stage: str | None, clv: float | None, p: float | None) -> dict[str, Any]:
        return {"value_segment": segment, "lifecycle": {"stage": stage},
                "value": {"model_version": "vm-1", "clv": clv, "p_alive": p, "expected_purchases": None,
                          "expected_spend": None}}

    found = report([customer("gold", "active", 100.0, 0.9), customer("gold", "at_risk", 20.0, 0.5),
                    customer("lead", "active", 40.0, 0.8), customer("lead", None, None, None)])
    assert found["model_versions"] == ["vm-1"]
    assert found["all"]["customers"] == 4 and found["all"]["buyers"] == 3
    assert found["all"]["clv"]["total"] == 160.0 and found["all"]["clv"]["median"] == 40.0
    gold = found["by_segment"]["gold"]
    assert (gold["customers"], gold["clv"]["mean"], gold["p_alive"]["mean"]) == (2, 60.0, 0.7)
    assert found["by_stage"]["none"] == {"customers": 1, "buyers": 0}
    assert found["by_stage"]["active"]["clv"] == {"total": 140.0, "mean": 70.0, "p25": 55.0, "median": 70.0,
                                                  "p75": 85.0}


def test_the_report_command_prints_the_groups(tmp_path: Any) -> None:
    history, model_file, _ = fitted_history(tmp_path, customers=200, seed=8)
    runner = CliRunner()
    result = runner.invoke(app, ["value", "report", str(history), "--value-model", str(model_file), "--json"])
    assert result.exit_code == 0, result.output
    found = json.loads(result.output)
    assert found["model_versions"] == [json.loads(model_file.read_text())["version"]]
    assert sum(g["customers"] for g in found["by_stage"].values()) == found["all"]["customers"] > 0
    assert sum(g["buyers"] for g in found["by_segment"].values()) == found["all"]["buyers"] > 0


@pytest.mark.parametrize(("monetary", "clv", "segment"), [
    (150_000, 250.0, "platinum"), (150_000, 150.0, "gold"), (50_000, 200.0, "iron"), (50_000, 199.99, "lead"),
    (50_000, None, "lead"),  # no CLV: the frequency-and-recency rule (one purchase is not frequent)
])
def test_with_a_clv_potential_value_is_the_clvs(monetary: int, clv: float | None, segment: str) -> None:
    from touchpoint.core.profile import SegmentConfig, segment_of

    assert segment_of(5, 1, monetary, SegmentConfig(), clv=clv) == segment


def test_history_from_before_the_loyalty_programme_folds_with_no_tier_and_its_value(tmp_path: Any) -> None:
    # CDNOW's 1997 is before the first loyalty rules version: the cards have no tier (nothing was scored then),
    # and the fold gives every customer its value as of the calibration end.
    history = tmp_path / "cdnow.jsonl"
    history.write_text("".join(json.dumps(event) + "\n" for event in events()))
    model_file = tmp_path / "model.json"
    model_file.write_text(json.dumps(cdnow_model().to_json()))
    result = CliRunner().invoke(app, ["fold", str(history), "--value-model", str(model_file), "--as-of",
                                      "1997-09-30T23:59:59Z", "--jobs", "1"])
    assert result.exit_code == 0, result.output
    customers = json.loads(result.output)["customers"]
    assert len(customers) == 2357
    assert {c["loyalty"]["tier"] for c in customers} == {None}
    values = [c["value"] for c in customers]
    assert all(v["p_alive"] is not None and 0 <= v["p_alive"] <= 1 for v in values)
    # BG/NBD gives P(alive) 1 to a customer without repeats, less to one who bought again and then stopped.
    alive = [v["p_alive"] for v in values]
    assert max(alive) == 1.0 and min(alive) < 0.5
