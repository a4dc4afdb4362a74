"""A generated demo directory: HCPs with valid NPIs, real specialty names and US states."""

from __future__ import annotations

import csv
import random
from pathlib import Path

from core.npi import make_npi

SPECIALTIES = [
    "Pulmonary Disease", "Allergy & Immunology", "Internal Medicine", "Family Medicine", "Pediatrics",
    "Cardiovascular Disease", "Endocrinology, Diabetes & Metabolism", "Dermatology", "Neurology",
    "Medical Oncology", "Rheumatology", "Gastroenterology", "Nephrology", "Psychiatry", "Obstetrics & Gynecology",
]
STATES = [
    "AL", "AK", "AZ", "AR", "CA", "CO", "CT", "DE", "FL", "GA", "HI", "ID", "IL", "IN", "IA", "KS", "KY", "LA", "ME",
    "MD", "MA", "MI", "MN", "MS", "MO", "MT", "NE", "NV", "NH", "NJ", "NM", "NY", "NC", "ND", "OH", "OK", "OR", "PA",
    "RI", "SC", "SD", "TN", "TX", "UT", "VT", "VA", "WA", "WV", "WI", "WY",
]
FIRST = ["James", "Mary", "Robert", "Patricia", "John", "Jennifer", "Michael", "Linda", "David", "Elizabeth", "William",
         "Barbara", "Richard", "Susan", "Joseph", "Jessica", "Thomas", "Sarah", "Priya", "Wei", "Aisha", "Carlos", "Mei", "Omar"]
LAST = ["Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez", "Martinez", "Hernandez",
        "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor", "Moore", "Patel", "Nguyen", "Chen", "Kim", "Okafor", "Haddad"]
CREDENTIALS = ["MD", "MD", "MD", "DO", "NP", "PA-C"]
DOMAINS = ["clinic.example", "health.example", "hospital.example", "practice.example"]

DEMO_NPI = "1234567893"
"""Dr. Jane Doe, Pulmonary Disease, NJ: in the example asthma campaign's audience."""

HEADER = ["npi", "first_name", "last_name", "credential", "specialty", "state", "email"]


def demo_rows(count: int, *, seed: int = 7, start: int = 100000000):
    """Rows of a demo directory; the first is always Dr. Jane Doe with two addresses."""
    yield [DEMO_NPI, "Jane", "Doe", "MD", "Pulmonary Disease", "NJ", "jane.doe@clinic.example"]
    yield [DEMO_NPI, "Jane", "Doe", "MD", "Pulmonary Disease", "NJ", "jdoe@health.example"]
    rng = random.Random(seed)
    for index in range(1, count):
        npi = make_npi(str(start + index * 7919 % 899999999).zfill(9)[:9])
        first, last = rng.choice(FIRST), rng.choice(LAST)
        domain = rng.choice(DOMAINS)
        yield [npi, first, last, rng.choice(CREDENTIALS), rng.choice(SPECIALTIES), rng.choice(STATES),
               f"{first.lower()}.{last.lower()}.{index}@{domain}"]


def write_demo_csv(path: Path, count: int = 1000, *, seed: int = 7) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        writer.writerows(demo_rows(count, seed=seed))
    return path
