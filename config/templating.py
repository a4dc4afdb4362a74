"""The one Jinja2 sandbox used for campaign subjects and bodies.

Templates are written by marketing-ops admins, not developers, so they run in Jinja2's
sandbox: no attribute access to Python internals, no file system.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from jinja2 import Template
from jinja2.sandbox import ImmutableSandboxedEnvironment

SAMPLE_HCP: dict[str, Any] = {
    "npi": "1234567893",
    "first_name": "Jane",
    "last_name": "Doe",
    "credential": "MD",
    "specialty": "Pulmonary Disease",
    "state": "NJ",
    "email": "jane.doe@clinic.example",
}


@lru_cache(maxsize=2)
def environment(html: bool) -> ImmutableSandboxedEnvironment:
    """HTML bodies autoescape what they interpolate; subjects are plain text."""
    return ImmutableSandboxedEnvironment(autoescape=html, keep_trailing_newline=True)


@lru_cache(maxsize=512)
def compile_template(source: str, html: bool) -> Template:
    return environment(html).from_string(source)


def render(source: str, *, html: bool, **context: Any) -> str:
    return compile_template(source, html).render(**context)
