"""Customer value against the papers' data, and the fit's cost at a million customers.

1. **CDNOW** (the 1/10 sample, :mod:`bench.cdnow`): the purchase events
   folded, both models fitted on the 39-week calibration period, the
   parameters printed beside the published ones; then the 39-week holdout:
   repeat purchases predicted per customer (BG/NBD's conditional
   expectation) against the actual ones, summed over the sample and as the
   mean absolute error per customer, and the papers' tracking figure
   (cumulative repeat purchases week by week, predicted from each customer's
   first purchase, against actual).
2. **A million customers**: summaries drawn from the CDNOW fit's own
   processes (rates, dropouts, spends), then both models fitted on them:
   wall time and CPU of the fit alone (the fold that makes summaries from a
   log is measured by ``bench.fold``).

    python -m bench.value
    python -m bench.value --customers 1000000 --json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np

from bench.cdnow import CALIBRATION_END, HOLDOUT_END, events
from bench.machine import machine_line
from touchpoint.core.fold import folded
from touchpoint.core.value import (
    BgNbd,
    GammaGamma,
    Summary,
    columns,
    expected_purchases,
    expected_purchases_new,
    fit,
    summaries_of,
)

PUBLISHED = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426, "p": 6.25, "q": 3.74, "v": 15.44}
START = date(1997, 1, 1)


def _days(ms: int) -> date:
    return datetime.fromtimestamp(ms / 1000, UTC).date()


def cdnow(say: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    began = time.perf_counter()
    folder = folded([json.dumps(e) for e in events()], secret=b"bench-value-key-" * 2)
    summaries = summaries_of(folder.views, CALIBRATION_END)
    fitted = fit(summaries.values(), CALIBRATION_END)
    out["cdnow_fold_and_fit_s"] = time.perf_counter() - began
    ours = {"r": fitted.bgnbd.r, "alpha": fitted.bgnbd.alpha, "a": fitted.bgnbd.a, "b": fitted.bgnbd.b,
            "p": fitted.gamma_gamma.p, "q": fitted.gamma_gamma.q, "v": fitted.gamma_gamma.v}
    out["fitted"], out["published"] = ours, PUBLISHED
    say(f"CDNOW 1/10 sample: {fitted.customers:,} customers, {fitted.repeat_customers} with repeat purchases by "
        f"{CALIBRATION_END}; folded and fitted in {out['cdnow_fold_and_fit_s']:.2f}s")
    say("  " + ", ".join(f"{name} {value:.4g} (published {PUBLISHED[name]})" for name, value in ours.items()))
    say(f"  log-likelihood: BG/NBD {fitted.bgnbd_log_likelihood:,.1f}, Gamma-Gamma "
        f"{fitted.gamma_gamma_log_likelihood:,.1f}")

    # Holdout: each customer's repeat purchase days after the calibration period, against BG/NBD's expectation.
    ids = list(summaries)
    x, t_x, T, _ = columns(summaries[c] for c in ids)
    holdout_weeks = (HOLDOUT_END - CALIBRATION_END).days / 7
    predicted = expected_purchases(fitted.bgnbd, holdout_weeks, x, t_x, T)
    actual = np.array([len({_days(ms) for ms, _ in folder.views[c].purchases.values()
                            if CALIBRATION_END < _days(ms) <= HOLDOUT_END}) for c in ids], dtype=float)
    out["holdout_predicted"], out["holdout_actual"] = float(predicted.sum()), float(actual.sum())
    out["holdout_mae_per_customer"] = float(np.abs(predicted - actual).mean())
    say(f"  holdout ({CALIBRATION_END + timedelta(days=1)} to {HOLDOUT_END}, {holdout_weeks:.0f} weeks): repeat "
        f"purchases predicted {predicted.sum():,.0f}, actual {actual.sum():,.0f} "
        f"({predicted.sum() / actual.sum() - 1:+.1%}); mean absolute error per customer "
        f"{out['holdout_mae_per_customer']:.3f} (actual mean {actual.mean():.3f})")

    # Tracking: cumulative repeat purchases by week since 1997-01-01, each customer from their first purchase day.
    firsts, repeat_days = [], []
    for c in ids:
        days = sorted({_days(ms) for ms, _ in folder.views[c].purchases.values()})
        firsts.append((days[0] - START).days / 7)
        repeat_days += [(d - START).days / 7 for d in days[1:]]
    first = np.array(firsts)
    repeat = np.array(repeat_days)
    tracking = []
    for week in (13, 26, 39, 52, 65, 78):
        since = np.clip(week - first, 0, None)
        tracking.append((week, float(expected_purchases_new(fitted.bgnbd, since).sum()), int((repeat < week).sum())))
    out["tracking"] = tracking
    say("  cumulative repeat purchases by week (predicted / actual): " + ", ".join(
        f"week {week}: {p:,.0f} / {a:,}" for week, p, a in tracking))
    return out


def drawn(n: int, bgnbd: BgNbd, gamma_gamma: GammaGamma, seed: int) -> list[Summary]:
    """``n`` customers' summaries from the two models' processes, in weeks of whole days as the fold gives them,
    with ages from a week to a year."""
    rng = np.random.default_rng(seed)
    rate = rng.gamma(bgnbd.r, 1 / bgnbd.alpha, n)
    dropout = rng.beta(bgnbd.a, bgnbd.b, n)
    age = rng.integers(7, 366, n) / 7
    x, last, now = np.zeros(n), np.zeros(n), np.zeros(n)
    going = np.ones(n, dtype=bool)
    while going.any():
        now[going] += rng.exponential(1 / np.maximum(rate[going], 1e-12))
        bought = going & (now <= age)
        x[bought] += 1
        last[bought] = np.floor(now[bought] * 7) / 7  # the purchase's day
        going = bought & (rng.random(n) >= dropout)
    mean_spend = rng.gamma(gamma_gamma.q, 1 / gamma_gamma.v, n)  # each customer's nu
    m_x = np.where(x > 0, rng.gamma(gamma_gamma.p * np.maximum(x, 1), 1 / (mean_spend * np.maximum(x, 1))), 0.0)
    return [Summary(int(a), float(b), float(c), float(d)) for a, b, c, d in zip(x, last, age, m_x, strict=True)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.value", description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000, help="customers drawn for the fit's cost")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args(argv)
    say = (lambda *_: None) if args.json else (lambda line: print(line, flush=True))
    say(machine_line())
    out = cdnow(say)
    fitted_bg = BgNbd(*(out["fitted"][k] for k in ("r", "alpha", "a", "b")))
    fitted_gg = GammaGamma(*(out["fitted"][k] for k in ("p", "q", "v")))
    began = time.perf_counter()
    population = drawn(args.customers, fitted_bg, fitted_gg, seed=22)
    say(f"{args.customers:,} customers drawn from the CDNOW fit's processes in {time.perf_counter() - began:.1f}s")
    wall, cpu = time.perf_counter(), time.process_time()
    fitted = fit(population, CALIBRATION_END)
    out["fit_wall_s"], out["fit_cpu_s"] = time.perf_counter() - wall, time.process_time() - cpu
    out["customers"] = args.customers
    say(f"fit of {args.customers:,} customers ({fitted.repeat_customers:,} repeat): {out['fit_wall_s']:.1f}s wall, "
        f"{out['fit_cpu_s']:.1f}s CPU; r {fitted.bgnbd.r:.3f}, alpha {fitted.bgnbd.alpha:.3f}, a {fitted.bgnbd.a:.3f}, "
        f"b {fitted.bgnbd.b:.3f}, p {fitted.gamma_gamma.p:.3f}, q {fitted.gamma_gamma.q:.3f}, "
        f"v {fitted.gamma_gamma.v:.3f} (drawn from the CDNOW fit); load {os.getloadavg()[0]:.2f}")
    if args.json:
        print(json.dumps(out, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
