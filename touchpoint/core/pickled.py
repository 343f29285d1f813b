"""Pickled state from an earlier version: the slots a class gained since get their defaults.

The stages' state tables carry a format version and are rebuilt from the log when it changes, but the
log itself holds pickled views too (a merge's hand-in on ``resolved``), written by whichever version
ran then. A slotted class that gains a slot restores such a value with :func:`restore_slots`, giving
the new slot the value an empty instance would have, instead of leaving it unset (an AttributeError
at the first use, in a worker replaying its log).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any


def restore_slots(obj: object, state: Any, defaults: Mapping[str, Callable[[], Any]]) -> None:
    """``obj.__setstate__``'s work: set the pickled slots, then ``defaults`` for those the pickle lacks.

    :param state: what pickle passes to ``__setstate__`` for a slotted object: ``(dict or None, slots)``.
    :param defaults: slot -> a factory of its value in an empty instance.
    """
    dict_state, slot_state = state if isinstance(state, tuple) else (state, None)
    for values in (dict_state, slot_state):
        for name, value in (values or {}).items():
            object.__setattr__(obj, name, value)
    for name, make in defaults.items():
        if not hasattr(obj, name):
            object.__setattr__(obj, name, make())
