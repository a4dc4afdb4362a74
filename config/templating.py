"""The one Jinja2 sandbox used for campaign subjects and bodies.

Templates are written by marketing-ops admins, not developers, so they run in Jinja2's
sandbox: no attribute access to Python internals, no file system.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, Template, UndefinedError
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


class SampleDict(dict):  # type: ignore[type-arg]
    """A sample context value that knows its own path (`hcp`, `data.content`), so an unknown
    key is reported as `hcp.lastname` with the nearest known key."""

    path: str = ""


def sample(value: Any, path: str) -> Any:
    if isinstance(value, dict):
        wrapped = SampleDict({key: sample(item, f"{path}.{key}") for key, item in value.items()})
        wrapped.path = path
        return wrapped
    if isinstance(value, list):
        return [sample(item, f"{path}[{index}]") for index, item in enumerate(value)]
    return value


def nearest(name: str, options: Any) -> str | None:
    import difflib

    choices = [str(option) for option in options]
    lowered = {choice.lower(): choice for choice in choices}
    match = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.75)
    if match:
        return lowered[match[0]]
    starting = [choice for choice in choices if choice.lower().startswith(name.lower())]
    if len(starting) == 1 and len(name) >= 3:
        return starting[0]
    squashed = {choice.lower().replace("_", "").replace("-", ""): choice for choice in choices}
    return squashed.get(name.lower().replace("_", "").replace("-", ""))


class _StrictSampleUndefined(StrictUndefined):
    @property
    def _undefined_message(self) -> str:  # type: ignore[override]
        owner = self._undefined_obj
        name = self._undefined_name
        if isinstance(owner, SampleDict) and isinstance(name, str):
            guess = nearest(name, owner.keys())
            hint = f"; did you mean `{owner.path}.{guess}`?" if guess else (
                f"; known: {', '.join(sorted(owner.keys()))}" if owner.keys() else f"; {owner.path} is empty"
            )
            return f"{owner.path}.{name} is undefined{hint}"
        return super()._undefined_message


@lru_cache(maxsize=2)
def strict_environment(html: bool) -> ImmutableSandboxedEnvironment:
    """For `config check`: an unknown variable is an error, not an empty string."""
    return ImmutableSandboxedEnvironment(autoescape=html, keep_trailing_newline=True, undefined=_StrictSampleUndefined)


@lru_cache(maxsize=1024)
def _strict_template(source: str, html: bool) -> Template:
    return strict_environment(html).from_string(source)


def check_render(source: str, *, html: bool, **context: Any) -> str:
    """Compile (once per source) and render `source` strictly against sample values;
    raises TemplateError."""
    names = set(context)
    try:
        return _strict_template(source, html).render(**context)
    except UndefinedError as exc:
        text = str(exc)
        match = re.fullmatch(r"'([A-Za-z_][A-Za-z0-9_]*)' is undefined", text)
        if match:
            guess = nearest(match.group(1), names)
            hint = f"; did you mean `{guess}`?" if guess else f"; templates see {', '.join(sorted(names))}"
            raise UndefinedError(f"{match.group(1)} is undefined{hint}") from None
        raise
