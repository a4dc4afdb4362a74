"""NPI check digits (CMS: Luhn over the prefix 80840 and the first nine digits)."""

import pytest

from core.npi import is_valid_npi, make_npi, npi_problem


@pytest.mark.parametrize("npi", ["1234567893", "1457301236", "1679576722"])
def test_valid_npis(npi: str) -> None:
    assert is_valid_npi(npi)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("1234567890", "wrong check digit"),
        ("123456789", "10 digits"),
        ("12345678931", "10 digits"),
        ("12345678a3", "10 digits"),
        (1234567893, "string"),
    ],
)
def test_invalid_npis_say_why(value: object, problem: str) -> None:
    assert problem in (npi_problem(value) or "")


def test_make_npi_completes_a_prefix() -> None:
    assert make_npi("123456789") == "1234567893"
