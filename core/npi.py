"""US National Provider Identifier checks (CMS: 10 digits, Luhn over `80840` + the first 9)."""

from __future__ import annotations


def npi_problem(value: object) -> str | None:
    """Why `value` is not a valid NPI, or None when it is."""
    if not isinstance(value, str):
        return "npi must be a string of 10 digits"
    if len(value) != 10 or not (value.isascii() and value.isdigit()):
        return f"npi must be 10 digits, got {value!r}"
    if luhn_check_digit("80840" + value[:9]) != int(value[9]):
        return f"npi {value} has a wrong check digit"
    return None


def is_valid_npi(value: object) -> bool:
    return npi_problem(value) is None


def luhn_check_digit(payload: str) -> int:
    total = 0
    for position, char in enumerate(reversed(payload)):
        digit = int(char)
        if position % 2 == 0:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return (10 - total % 10) % 10


def make_npi(prefix9: str) -> str:
    """Complete a 9-digit prefix into a valid NPI (demo data, tests, benchmarks)."""
    return prefix9 + str(luhn_check_digit("80840" + prefix9))
