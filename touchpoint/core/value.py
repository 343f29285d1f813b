"""Customer value: BG/NBD and Gamma-Gamma, fitted by maximum likelihood on each customer's purchase history.

Retail and hotel relationships are non-contractual: nobody says "I am
leaving", they stop buying. The "buy till you die" models answer what a
customer is still worth and whether they are still a customer, from each
customer's (x, t_x, T) and the mean spend of their repeat purchases:

* **BG/NBD** (Fader, Hardie & Lee 2005, "Counting your customers the easy
  way"): while alive a customer buys at a Poisson rate λ ~ Gamma(r, α); after
  each purchase they drop out with probability p ~ Beta(a, b).
* **Gamma-Gamma** (Fader, Hardie & Lee 2005, "RFM and CLV: using iso-value
  curves"): a customer's spend per purchase varies around their mean ν ~
  Gamma(q, γ), each purchase's spend ~ Gamma(p, ν).

Definitions (the papers'): a customer's purchase *days* count, so same-day
purchases are one purchase (their spend summed); the first purchase day is
not a repeat. At the calibration instant (the end of a day, UTC), with days
counted whole from the first purchase day and divided by the time unit
(1 for days, 7 for weeks): **x** = repeat purchase days, **t_x** = the last
purchase day's age, **T** = the calibration day's age, **m_x** = the mean
spend of the repeat purchase days (in the currency's major unit). A refund
takes its amount off its purchase; a purchase refunded whole is none (one of
no amount still counts).

Fitting is :func:`scipy.optimize.minimize` (L-BFGS-B) over the papers'
log-likelihoods (log-parameters, so they stay positive); the special
functions are :mod:`scipy.special`'s. Everything here is a pure function over plain data.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.optimize import minimize
from scipy.special import gammaln, hyp2f1

from touchpoint.core.lifecycle import Alive
from touchpoint.core.lifecycle import spend_by_day as purchase_spend

Floats = npt.NDArray[np.float64]
"""One figure per customer."""

UNITS = {"day": 1, "week": 7}
"""Time units a model may count in: days per unit."""


@dataclass(frozen=True)
class Summary:
    """One customer's purchase history at the calibration instant, in the model's time unit."""

    x: int  # repeat purchase days
    t_x: float  # age of the last purchase day (0 without repeats)
    T: float  # age of the calibration day
    m_x: float  # mean spend of the repeat purchase days (0 without repeats)


def summarise(purchases: Mapping[str, tuple[int, int]], refunds: Mapping[str, tuple[int, int, str]],
              calibration_end: date, unit: str = "week") -> Summary | None:
    """A customer's :class:`Summary` from their view's purchases (``id -> (ms, total minor)``) and refunds
    (``id -> (ms, amount minor, transaction id)``); None when they bought nothing by ``calibration_end``.

    :raises ValueError: an unknown ``unit``.
    """
    days_per_unit = _days_per_unit(unit)
    spend_by_day = purchase_spend(purchases, refunds, calibration_end)
    if not spend_by_day:
        return None
    days = sorted(spend_by_day)
    first, repeats = days[0], days[1:]
    x = len(repeats)
    return Summary(x=x, t_x=(days[-1] - first).days / days_per_unit, T=(calibration_end - first).days / days_per_unit,
                   m_x=sum(spend_by_day[d] for d in repeats) / x / 100 if x else 0.0)


def _days_per_unit(unit: str) -> int:
    if unit not in UNITS:
        raise ValueError(f"unit: {unit!r} is not one of {', '.join(UNITS)}")
    return UNITS[unit]


def columns(summaries: Iterable[Summary]) -> tuple[Floats, Floats, Floats, Floats]:
    """(x, t_x, T, m_x) as arrays, one entry per customer."""
    rows = [(s.x, s.t_x, s.T, s.m_x) for s in summaries]
    if not rows:
        return tuple(np.zeros(0) for _ in range(4))  # type: ignore[return-value]
    x, t_x, T, m_x = (np.asarray(column, dtype=float) for column in zip(*rows, strict=True))
    return x, t_x, T, m_x


# --- BG/NBD --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BgNbd:
    """BG/NBD's parameters: purchase rate λ ~ Gamma(shape r, rate α); dropout p ~ Beta(a, b)."""

    r: float
    alpha: float
    a: float
    b: float


def bgnbd_log_likelihood(params: BgNbd, x: Floats, t_x: Floats, T: Floats) -> Floats:
    """Each customer's log-likelihood under BG/NBD (the paper's equation 6, in logs)."""
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    a1 = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
    a2 = gammaln(a + b) + gammaln(b + x) - gammaln(b) - gammaln(a + b + x)
    a3 = -(r + x) * np.log(alpha + T)
    repeat = x > 0
    # ln(a) - ln(b + x - 1) - (r + x) ln(alpha + t_x) where x > 0; -inf (no term) where x = 0
    a4 = np.full_like(x, -np.inf)
    a4[repeat] = (np.log(a) - np.log(b + x[repeat] - 1) - (r + x[repeat]) * np.log(alpha + t_x[repeat]))
    return np.asarray(a1 + a2 + np.logaddexp(a3, a4), dtype=np.float64)


def p_alive(params: BgNbd, x: Floats, t_x: Floats, T: Floats) -> Floats:
    """P(alive | x, t_x, T): 1 for a customer with no repeat purchase (BG/NBD drops out only after a purchase)."""
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    ratio = np.zeros_like(x)
    repeat = x > 0
    ratio[repeat] = a / (b + x[repeat] - 1) * np.exp(
        (r + x[repeat]) * (np.log(alpha + T[repeat]) - np.log(alpha + t_x[repeat])))
    return 1.0 / (1.0 + ratio)


def expected_purchases(params: BgNbd, horizon: float, x: Floats, t_x: Floats, T: Floats) -> Floats:
    """E[Y(horizon) | x, t_x, T]: repeat purchases expected in the next ``horizon`` units (the paper's equation 10)."""
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    later = alpha + T + horizon
    hyp = hyp2f1(r + x, b + x, a + b + x - 1, horizon / later)
    head = (a + b + x - 1) / (a - 1) * (1 - np.exp((r + x) * (np.log(alpha + T) - np.log(later))) * hyp)
    return np.asarray(head * p_alive(params, x, t_x, T), dtype=np.float64)


def expected_purchases_new(params: BgNbd, t: Floats | float) -> Floats:
    """E[X(t)]: purchases a customer makes in their first ``t`` units after the first (the paper's equation 7)."""
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    t = np.asarray(t, dtype=float)
    return (a + b - 1) / (a - 1) * (1 - (alpha / (alpha + t)) ** r * hyp2f1(r, b, a + b - 1, t / (alpha + t)))


def fit_bgnbd(x: Floats, t_x: Floats, T: Floats) -> tuple[BgNbd, float]:
    """BG/NBD's maximum-likelihood parameters and the log-likelihood they reach (summed over customers).

    :raises ValueError: no customers, or the optimiser did not converge.
    """
    if not len(x):
        raise ValueError("no customers to fit: nobody bought before the calibration end")
    # Customers with the same (x, t_x, T) have the same likelihood: whole days make them many (a million
    # customers of a year's history are a few hundred thousand rows), each counted once with its weight.
    rows, counts = np.unique(np.stack([x, t_x, T]), axis=1, return_counts=True)
    ux, ut_x, uT = rows
    weights = counts.astype(np.float64)

    def negative(log_params: Floats) -> float:
        total = float((weights * bgnbd_log_likelihood(BgNbd(*np.exp(log_params)), ux, ut_x, uT)).sum())
        return -total if np.isfinite(total) else np.inf

    found = _minimise(negative, 4)
    return BgNbd(*(float(v) for v in np.exp(found.x))), -float(found.fun)


# --- Gamma-Gamma -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GammaGamma:
    """Gamma-Gamma's parameters: spend per purchase ~ Gamma(p, ν), a customer's ν ~ Gamma(q, γ) (here ``v``)."""

    p: float
    q: float
    v: float


def gamma_gamma_log_likelihood(params: GammaGamma, x: Floats, m_x: Floats) -> Floats:
    """Each repeat customer's log-likelihood of their mean spend ``m_x`` over ``x`` purchases (x > 0)."""
    p, q, v = params.p, params.q, params.v
    return np.asarray(gammaln(p * x + q) - gammaln(p * x) - gammaln(q) + q * np.log(v) + (p * x - 1) * np.log(m_x)
                      + p * x * np.log(x) - (p * x + q) * np.log(v + x * m_x), dtype=np.float64)


def expected_spend(params: GammaGamma, x: Floats, m_x: Floats) -> Floats:
    """E[M | x, m_x]: a customer's expected spend per purchase (the population's mean for x = 0)."""
    p, q, v = params.p, params.q, params.v
    return p * (v + x * m_x) / (p * x + q - 1)


def fit_gamma_gamma(x: Floats, m_x: Floats) -> tuple[GammaGamma, float]:
    """Gamma-Gamma's maximum-likelihood parameters over the repeat customers (x > 0, m_x > 0), and the
    log-likelihood they reach.

    :raises ValueError: no repeat customers, or the optimiser did not converge.
    """
    repeat = (x > 0) & (m_x > 0)
    x, m_x = x[repeat], m_x[repeat]
    if not len(x):
        raise ValueError("no repeat customers to fit the spend model on")

    def negative(log_params: Floats) -> float:
        total = float(gamma_gamma_log_likelihood(GammaGamma(*np.exp(log_params)), x, m_x).sum())
        return -total if np.isfinite(total) else np.inf

    found = _minimise(negative, 3)
    return GammaGamma(*(float(v) for v in np.exp(found.x))), -float(found.fun)


def _minimise(negative: Any, n: int) -> Any:
    """L-BFGS-B from all ones (on CDNOW 130 likelihood evaluations against Nelder-Mead's 1,058, the parameters
    equal to six digits); Nelder-Mead, with a restart, when it stops short."""
    found = minimize(negative, np.zeros(n), method="L-BFGS-B", options={"ftol": 1e-14, "gtol": 1e-10})
    if found.success and np.isfinite(found.fun):
        return found
    start = np.zeros(n)
    for _ in range(2):
        found = minimize(negative, start, method="Nelder-Mead",
                         options={"xatol": 1e-10, "fatol": 1e-10, "maxiter": 20_000, "maxfev": 40_000})
        start = found.x
    if not found.success or not np.isfinite(found.fun):
        raise ValueError(f"the fit did not converge: {found.message}")
    return found


# --- value --------------------------------------------------------------------------------------------------


def clv(bgnbd: BgNbd, gamma_gamma: GammaGamma, x: Floats, t_x: Floats, T: Floats, m_x: Floats,
        *, margin: float, annual_discount: float, horizon_months: int, unit: str = "week") -> Floats:
    """Customer lifetime value: the expected margin of the next ``horizon_months``, discounted monthly.

    Each month's expected purchases (the difference of :func:`expected_purchases` at its end and start) times
    :func:`expected_spend` times ``margin``, discounted by ``(1 + annual_discount) ** (month / 12)``.
    """
    unit_days = _days_per_unit(unit)
    spend = expected_spend(gamma_gamma, x, m_x)
    month = 365.25 / 12 / unit_days  # a month in the model's unit
    total = np.zeros_like(x)
    before = np.zeros_like(x)
    for i in range(1, horizon_months + 1):
        by_now = expected_purchases(bgnbd, i * month, x, t_x, T)
        total += margin * spend * (by_now - before) / (1 + annual_discount) ** (i / 12)
        before = by_now
    return total


# --- fitting a population ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fitted:
    """Both models fitted on one population at one calibration instant: the data of a value model."""

    bgnbd: BgNbd
    gamma_gamma: GammaGamma
    bgnbd_log_likelihood: float
    gamma_gamma_log_likelihood: float
    customers: int
    repeat_customers: int
    calibration_end: date
    unit: str

    def to_json(self) -> dict[str, Any]:
        return {"bg_nbd": {"r": self.bgnbd.r, "alpha": self.bgnbd.alpha, "a": self.bgnbd.a, "b": self.bgnbd.b},
                "gamma_gamma": {"p": self.gamma_gamma.p, "q": self.gamma_gamma.q, "v": self.gamma_gamma.v},
                "customers": self.customers, "repeat_customers": self.repeat_customers,
                "log_likelihood": {"bg_nbd": self.bgnbd_log_likelihood,
                                   "gamma_gamma": self.gamma_gamma_log_likelihood},
                "calibration_end": self.calibration_end.isoformat(), "unit": self.unit}


def summaries_of(views: Mapping[str, Any], calibration_end: date, unit: str = "week") -> dict[str, Summary]:
    """Each customer's :class:`Summary` from their folded view (``purchases``, ``refunds``); customers who bought
    nothing by ``calibration_end`` are left out."""
    found = {}
    for customer_id, view in views.items():
        summary = summarise(view.purchases, view.refunds, calibration_end, unit)
        if summary is not None:
            found[customer_id] = summary
    return found


def fit(summaries: Iterable[Summary], calibration_end: date, unit: str = "week") -> Fitted:
    """Fit BG/NBD on every customer and Gamma-Gamma on the repeat customers with a positive mean spend.

    :raises ValueError: no customers, no repeat customers, or a fit that did not converge.
    """
    x, t_x, T, m_x = columns(summaries)
    bgnbd, bgnbd_ll = fit_bgnbd(x, t_x, T)
    gamma_gamma, gamma_gamma_ll = fit_gamma_gamma(x, m_x)
    return Fitted(bgnbd, gamma_gamma, bgnbd_ll, gamma_gamma_ll, customers=len(x), repeat_customers=int((x > 0).sum()),
                  calibration_end=calibration_end, unit=unit)


# --- the value model: versioned data the fold and the stream score customers with ------------------------------


@dataclass(frozen=True)
class ValueModel:
    """Fitted parameters and how value is counted: the data a customer's ``value`` is scored with.

    ``version`` is a digest of everything else, so two folds that print one version scored with the same model.
    """

    fitted: Fitted
    margin: float  # the share of spend that is margin
    annual_discount: float  # the yearly discount rate of CLV's months
    horizon_months: int  # CLV's horizon
    expected_days: int  # the horizon of expected_purchases, in days

    @property
    def version(self) -> str:
        body = json.dumps(self._body(), sort_keys=True, separators=(",", ":")).encode()
        return "vm-" + hashlib.sha256(body).hexdigest()[:12]

    def _body(self) -> dict[str, Any]:
        return {**self.fitted.to_json(), "margin": self.margin, "annual_discount": self.annual_discount,
                "horizon_months": self.horizon_months, "expected_days": self.expected_days}

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, **self._body()}

    def alive(self) -> Alive:
        """P(alive) for the life-cycle stages."""
        bg = self.fitted.bgnbd
        return Alive(bg.r, bg.alpha, bg.a, bg.b, UNITS[self.fitted.unit])

    @classmethod
    def from_json(cls, doc: Any, source: str = "value model") -> ValueModel:
        """A model from :meth:`to_json`'s form.

        :raises ValueError: a field is missing or out of range, or the version does not match the content.
        """
        try:
            bg, gg = doc["bg_nbd"], doc["gamma_gamma"]
            fitted = Fitted(BgNbd(*(float(bg[k]) for k in ("r", "alpha", "a", "b"))),
                            GammaGamma(*(float(gg[k]) for k in ("p", "q", "v"))),
                            float(doc["log_likelihood"]["bg_nbd"]), float(doc["log_likelihood"]["gamma_gamma"]),
                            int(doc["customers"]), int(doc["repeat_customers"]),
                            date.fromisoformat(doc["calibration_end"]), str(doc["unit"]))
            model = cls(fitted, float(doc["margin"]), float(doc["annual_discount"]), int(doc["horizon_months"]),
                        int(doc["expected_days"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{source}: not a value model ({type(exc).__name__}: {exc})") from exc
        problems = [name for name, value in (*vars(fitted.bgnbd).items(), *vars(fitted.gamma_gamma).items())
                    if not value > 0]
        if fitted.gamma_gamma.q <= 1:
            problems.append("q above 1 (a new customer's expected spend is finite)")
        if fitted.unit not in UNITS:
            problems.append(f"unit one of {', '.join(UNITS)}")
        if not 0 <= model.margin <= 1 or model.annual_discount < 0 or model.horizon_months < 1 \
                or model.expected_days < 1:
            problems.append("margin in [0, 1], annual_discount >= 0, horizon_months and expected_days >= 1")
        if problems:
            raise ValueError(f"{source}: out of range: {', '.join(problems)}")
        if "version" in doc and doc["version"] != model.version:
            raise ValueError(f"{source}: version {doc['version']} does not match its content ({model.version}): "
                             "edited by hand? fit it again")
        return model

    @classmethod
    def load(cls, path: str | Path) -> ValueModel:
        """Read a model file written by ``touchpoint value fit --out``.

        :raises ValueError: the file cannot be read, is not JSON, or is not a valid model.
        """
        try:
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: cannot read the value model: {exc}") from exc
        return cls.from_json(doc, str(path))


def score(model: ValueModel, summary: Summary | None) -> dict[str, Any]:
    """A customer's ``value`` under ``model``: P(alive), repeat purchases expected in the next ``expected_days``,
    expected spend per purchase, CLV (figures rounded for display; None for someone who bought nothing yet)."""
    if summary is None:
        return {"model_version": model.version, "p_alive": None, "expected_purchases": None, "expected_spend": None,
                "clv": None}
    fitted = model.fitted
    x, t_x, T, m_x = (np.array([v], dtype=np.float64) for v in (summary.x, summary.t_x, summary.T, summary.m_x))
    horizon = model.expected_days / UNITS[fitted.unit]
    value = clv(fitted.bgnbd, fitted.gamma_gamma, x, t_x, T, m_x, margin=model.margin,
                annual_discount=model.annual_discount, horizon_months=model.horizon_months, unit=fitted.unit)
    return {"model_version": model.version,
            "p_alive": round(float(p_alive(fitted.bgnbd, x, t_x, T)[0]), 4),
            "expected_purchases": round(float(expected_purchases(fitted.bgnbd, horizon, x, t_x, T)[0]), 3),
            "expected_spend": round(float(expected_spend(fitted.gamma_gamma, x, m_x)[0]), 2),
            "clv": round(float(value[0]), 2)}


def report(customers: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """CLV and P(alive) by value segment and by life-cycle stage, from customers as the fold prints them with a value
    model (``value_segment``, ``lifecycle.stage``, ``value``): per group the customers, those with a purchase, and
    the total, mean and quartiles of CLV and of P(alive) over the latter (stage ``none``: no purchase yet)."""

    def figures(values: list[Mapping[str, Any]], count: int) -> dict[str, Any]:
        clvs = np.array([v["clv"] for v in values], dtype=np.float64)
        alive = np.array([v["p_alive"] for v in values], dtype=np.float64)
        found: dict[str, Any] = {"customers": count, "buyers": len(values)}
        if len(values):
            found["clv"] = {"total": round(float(clvs.sum()), 2), "mean": round(float(clvs.mean()), 2),
                            **{q: round(float(np.quantile(clvs, p)), 2) for q, p in _QUARTILES}}
            found["p_alive"] = {"mean": round(float(alive.mean()), 4),
                                **{q: round(float(np.quantile(alive, p)), 4) for q, p in _QUARTILES}}
        return found

    groups: dict[str, dict[str, tuple[list[Mapping[str, Any]], list[int]]]] = {"segment": {}, "stage": {}}
    everyone: tuple[list[Mapping[str, Any]], list[int]] = ([], [0])
    versions = set()
    for customer in customers:
        value = customer["value"]
        versions.add(value["model_version"])
        keys = {"segment": str(customer.get("value_segment")), "stage": customer["lifecycle"]["stage"] or "none"}
        for by, key in keys.items():
            values, count = groups[by].setdefault(key, ([], [0]))
            count[0] += 1
            if value["clv"] is not None:
                values.append(value)
        everyone[1][0] += 1
        if value["clv"] is not None:
            everyone[0].append(value)
    return {"model_versions": sorted(versions), "all": figures(everyone[0], everyone[1][0]),
            **{f"by_{by}": {key: figures(values, count[0]) for key, (values, count) in sorted(found.items())}
               for by, found in groups.items()}}


_QUARTILES = (("p25", 0.25), ("median", 0.5), ("p75", 0.75))
