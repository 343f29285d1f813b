"""Identifier normalisation: canonical forms, keyed hashes, reasons for invalid values."""

from __future__ import annotations

import pytest

from touchpoint.core import pseudonym
from touchpoint.core.normalise import Identifier, InvalidIdentifier, identifier_key, normalise

SECRET = b"test-secret"
DATA_KEY = bytes(range(32))


@pytest.mark.parametrize(
    ("kind", "given", "display"),
    [
        ("phone", "+447700900123", "+447700900123"),
        ("phone", "07700 900123", "+447700900123"),
        ("phone", " (020) 7946-0005 ", "+442079460005"),
        ("phone", "+1 212 555 0100", "+12125550100"),
        ("email", "Ann.Smith@Example.COM", "ann.smith@example.com"),
        ("email", "  bob@example.org \n", "bob@example.org"),
        ("email", "STRASSE@EXAMPLE.DE", "strasse@example.de"),
        ("card", "4111 1111 1111 1111", "…1111"),
        ("card", "4000-0012-3456-7899", "…7899"),
        ("card", "424242424242", "…4242"),
        ("customer_no", " C00012345 ", "C00012345"),
        ("cookie", "ck-abc", "ck-abc"),
        ("device", "\tdev-1\t", "dev-1"),
    ],
)
def test_valid_identifiers_normalise(kind: str, given: str, display: str) -> None:
    ident = normalise(kind, given, secret=SECRET)
    keyed = display if kind != "card" else _digits(given)
    assert ident == Identifier(kind, identifier_key(kind, keyed, SECRET), display)
    assert ident.key.startswith(f"{kind}:") and len(ident.key) == len(kind) + 1 + 32


def _digits(value: str) -> str:
    return "".join(ch for ch in value if ch.isdigit())


@pytest.mark.parametrize(
    ("kind", "given", "reason"),
    [
        ("phone", "not a phone", "not a phone number"),
        ("phone", "123", "not a possible phone number"),
        ("phone", "+44 7", "not a p"),
        ("email", "jo.bloggs.example.com", "exactly one @"),
        ("email", "jo@@example.com", "exactly one @"),
        ("email", "@example.net", "exactly one @"),
        ("email", "jo bloggs@example.com", "white space"),
        ("email", "jo@example", "needs a dot"),
        ("email", "jo@example..com", "no empty label"),
        ("card", "4111 1111 1111 1112", "Luhn"),
        ("card", "4111-1111-111", "12 to 19 digits, not 11"),
        ("card", "41111111111111111111", "12 to 19 digits, not 20"),
        ("card", "4111 1111 1111 111x", "only digits"),
        ("customer_no", "   ", "must not be empty"),
        ("cookie", "", "must not be empty"),
        ("device", " ", "must not be empty"),
        ("passport", "X1", "unknown identifier kind"),
    ],
)
def test_invalid_identifiers_are_refused_with_a_reason(kind: str, given: str, reason: str) -> None:
    with pytest.raises(InvalidIdentifier, match=reason) as info:
        normalise(kind, given, secret=SECRET)
    assert str(info.value).startswith(f"identifiers.{kind}: ")


@pytest.mark.parametrize(
    ("kind", "a", "b"),
    [
        ("phone", "07700 900123", "+447700900123"),
        ("phone", "+44 (0)7700 900123", "+447700900123"),
        ("email", "Ann.Smith@Example.com", "ann.smith@example.com"),
        ("email", "ANN.SMITH@EXAMPLE.COM ", " ann.smith@example.com"),
        ("card", "4111 1111 1111 1111", "4111111111111111"),
    ],
)
def test_equal_people_get_equal_keys(kind: str, a: str, b: str) -> None:
    assert normalise(kind, a, secret=SECRET).key == normalise(kind, b, secret=SECRET).key


def test_keys_depend_on_kind_and_secret() -> None:
    assert normalise("cookie", "x1", secret=SECRET).key[7:] != normalise("device", "x1", secret=SECRET).key[7:]
    assert normalise("cookie", "x1", secret=SECRET).key != normalise("cookie", "x1", secret=b"other").key


def test_region_reads_national_numbers() -> None:
    assert normalise("phone", "(212) 555-0100", region="US", secret=SECRET).display == "+12125550100"


@pytest.mark.parametrize("given", ["4111 1111 1111 1111", "4111111111111111", "4111-1111-1111-1111"])
def test_card_number_never_in_clear(given: str) -> None:
    ident = normalise("card", given, secret=SECRET)
    assert "4111111111111111" not in repr(ident) and "111111111111" not in repr(ident)
    assert ident.display == "…1111"


def test_card_reason_never_quotes_the_number() -> None:
    with pytest.raises(InvalidIdentifier) as info:
        normalise("card", "4111 1111 1111 1112", secret=SECRET)
    assert "1112" not in str(info.value)


def test_non_string_is_refused() -> None:
    with pytest.raises(InvalidIdentifier, match="must be a string"):
        normalise("cookie", 12, secret=SECRET)  # type: ignore[arg-type]



@pytest.mark.parametrize(("kind", "given"), [("card", "4111 1111 1111 1111"), ("email", "Ann@Example.com"),
                                            ("phone", "07700 900123"), ("customer_no", " C1 ")])
def test_a_pseudonym_reads_back_with_the_key_of_its_clear_value(kind: str, given: str) -> None:
    clear = normalise(kind, given, secret=SECRET)
    token = pseudonym.pseudonym(kind, clear.key, clear.display, DATA_KEY)
    back = normalise(kind, token, secret=b"another secret")  # the edge keyed it already
    assert back.key == clear.key
    assert back.display == (clear.display if kind == "card" else token)  # sealed: shown only to key holders
    assert pseudonym.reveal(token, DATA_KEY) == clear.display


@pytest.mark.parametrize(("kind", "token", "reason"), [
    ("email", "tp1:card:" + "a" * 32 + ":…1111", "of a card identifier, not of email"),
    ("email", "tp1:email:" + "a" * 32 + ":x", "must be sealed"),
    ("card", "tp1:card:" + "a" * 32 + ":~abc", "must be its last four"),
    ("card", "tp1:card:" + "a" * 31 + ":…1111", "not a well-formed pseudonym"),
    ("card", "tp1:card:" + "A" * 32 + ":…1111", "not a well-formed pseudonym"),
    ("card", "tp1:card:" + "a" * 32 + ":", "not a well-formed pseudonym"),
    ("card", "tp1:", "not a well-formed pseudonym"),
    ("shoe_size", "tp1:shoe_size:" + "a" * 32 + ":~abc", "unknown identifier kind"),
])
def test_malformed_pseudonyms_are_refused_with_a_reason(kind: str, token: str, reason: str) -> None:
    with pytest.raises(InvalidIdentifier, match=reason):
        normalise(kind, token, secret=SECRET)
