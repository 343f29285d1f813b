"""Views pickled by an earlier version (a merge's hand-in on the log) read back with the slots added since."""

from __future__ import annotations

import pickle
from typing import Any

from touchpoint.core.loyalty import (
    _LOT_PICKLED,
    Invitation,
    LedgerEntry,
    Lot,
    LoyaltyRules,
    LoyaltyState,
    _restored_lot,
    default_rules,
    rescore,
)
from touchpoint.core.profile import CustomerView


class _DefaultPickle:
    """Pickles its object the way Python does for a class without ``__reduce__`` (as versions before ours did)."""

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __reduce__(self) -> tuple[Any, ...]:
        return object.__new__, (type(self.obj),), type(self.obj).__getstate__(self.obj)  # type: ignore[attr-defined]


def _as_written_before(obj: object, *slots: str) -> Any:
    """``obj`` pickled without ``slots`` (as the version before them wrote it), then read back."""
    for slot in slots:
        delattr(obj, slot)
    return pickle.loads(pickle.dumps(_DefaultPickle(obj), protocol=pickle.HIGHEST_PROTOCOL))


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


def test_a_lot_pickles_every_slot_in_its_written_order() -> None:
    assert sorted(_LOT_PICKLED) == sorted(Lot.__slots__)
    lot = _lot()
    lot.refunds["R1"] = (1_740_000_000_001, 1000, "R1:T1:reversal")
    restored = pickle.loads(pickle.dumps(lot, protocol=pickle.HIGHEST_PROTOCOL))
    assert restored == lot and restored.refunds is not lot.refunds


def test_a_lot_pickled_with_fewer_values_gets_the_later_slots_defaults() -> None:
    lot = _lot()
    restored = _restored_lot(*[getattr(lot, name) for name in _LOT_PICKLED[:-1]])  # before reversal_adjusted
    assert restored.reversal_adjusted == 0 and restored.lines == lot.lines and restored.points == 40


def test_ledger_entries_read_back_in_the_default_format_and_ours() -> None:
    entry = LedgerEntry("ev-1:T1:earn", "earn", 40, 1_740_000_000_000, "ev-1", "T1", "2025.1", "base", 1, "base")
    assert _as_written_before(entry) == entry
    assert pickle.loads(pickle.dumps(entry, protocol=pickle.HIGHEST_PROTOCOL)) == entry
