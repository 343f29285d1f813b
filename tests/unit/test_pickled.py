"""Views pickled by an earlier version (a merge's hand-in on the log) read back with the slots added since."""

from __future__ import annotations

import pickle

from touchpoint.core.loyalty import Invitation, Lot, LoyaltyRules, LoyaltyState, default_rules, rescore
from touchpoint.core.profile import CustomerView


def _as_written_before(obj: object, *slots: str) -> object:
    """``obj`` pickled without ``slots`` (as the version before them wrote it), then read back."""
    for slot in slots:
        delattr(obj, slot)
    return pickle.loads(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def _lot() -> Lot:
    return Lot("ev-1", 1_740_000_000_000, "T1", 4000, "GBP", 40, 1, "2025.1", "base", 1_800_000_000_000,
               (("SKU", "shop", 1, 4000),))


def test_a_view_pickled_before_held_refunds_holds_none() -> None:
    view = _as_written_before(CustomerView("cus_1"), "held")
    assert isinstance(view, CustomerView) and view.held == {} and view.customer_id == "cus_1"


def test_a_lot_pickled_before_rescoring_keeps_no_basket_and_is_never_scored_again() -> None:
    lot = _as_written_before(_lot(), "lines", "reversal_adjusted")
    assert isinstance(lot, Lot) and lot.lines is None and lot.reversal_adjusted == 0 and lot.points == 40
    state = LoyaltyState()
    state.lots["T1"] = lot
    state.invitations["CMP-1"] = (Invitation("CMP-1", "inv", 1_739_000_000_000, multiplier=3),)
    rules: LoyaltyRules = default_rules()
    assert rescore(state, rules, "inv", "late") == [] and lot.points == 40  # no basket: its earn stands


def test_loyalty_pickled_with_one_invitation_per_campaign_reads_as_a_history() -> None:
    state = LoyaltyState()
    invitation = Invitation("CMP-1", "inv", 1_739_000_000_000, multiplier=3)
    state.invitations = {"CMP-1": invitation}  # type: ignore[dict-item]  # the format before histories
    restored = pickle.loads(pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL))
    assert restored.invitations == {"CMP-1": (invitation,)}


def test_a_view_pickled_now_reads_back_equal() -> None:
    view = CustomerView("cus_2")
    view.loyalty.lots["T1"] = _lot()
    restored = pickle.loads(pickle.dumps(view, protocol=pickle.HIGHEST_PROTOCOL))
    assert restored.held == {} and restored.loyalty == view.loyalty
