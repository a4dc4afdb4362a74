"""The checks `config check` runs on the raw YAML tree, next to the schema, so that every
mistake of every kind is reported in one run: unknown `where` keys per event kind, templates
rendered strictly against sample data, US state codes, attachment files and their sizes."""

from __future__ import annotations

import fnmatch
import hashlib
import mimetypes
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from jinja2 import TemplateError

from config.durations import format_size, parse_size
from config.templating import SAMPLE_HCP, check_render, nearest, sample

Report = Callable[[str, str], None]
"""report(path, message)"""

_CRM_KEYS = {
    "form_submission": {"form_id", "object", "field", "equals", "in"},
    "page_view": {"url", "object"},
    "record_change": {"object", "field", "equals", "changed_to", "in"},
    "created": {"object", "field", "equals", "in"},
}
WHERE_KEYS: dict[tuple[str, str], set[str]] = {
    **{("hubspot", on): keys for on, keys in _CRM_KEYS.items()},
    **{("salesforce", on): keys for on, keys in _CRM_KEYS.items()},
    ("email", "opened"): {"campaign"},
    ("email", "clicked"): {"campaign", "link"},
    ("email", "no_engagement"): {"campaign", "after"},
}
"""The `where` keys each (from, on) understands; any other key is a typo that would widen the rule."""

US_STATES = frozenset(
    "AL AK AZ AR CA CO CT DE DC FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH NJ NM NY NC ND "
    "OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY PR GU VI AS MP AA AE AP".split()
)


def unknown_key_message(key: str, valid: Any, *, context: str = "") -> str:
    guess = nearest(str(key), valid)
    where = f" for {context}" if context else ""
    if guess:
        return f"unknown key{where}; did you mean `{guess}`?"
    if context:
        return f"unknown key{where}; expected one of: {', '.join(sorted(valid))}"
    return "unknown key"


def check_where(index: int, rule: dict[str, Any], report: Report) -> None:
    where = rule.get("where")
    source, on = rule.get("from"), rule.get("on")
    if not isinstance(where, dict) or (source, on) not in WHERE_KEYS:
        return
    valid = WHERE_KEYS[(source, on)]
    unknown = [key for key in where if key not in valid]
    for key in unknown:
        report(f"triggers[{index}].where.{key}", unknown_key_message(key, valid, context=f"{source} {on}"))
    if unknown:
        return
    for key in ("equals", "changed_to", "in"):
        if key in where and key in valid and "field" not in where:
            report(f"triggers[{index}].where.{key}", "needs `field` (which field to compare)")
    if "in" in where and not isinstance(where["in"], list):
        report(f"triggers[{index}].where.in", f"expected a list of values, got {where['in']!r}")
    if source == "email" and "campaign" not in where and on == "no_engagement":
        report(f"triggers[{index}].where", "no_engagement needs `campaign` and `after`")


# --- sample data -------------------------------------------------------------------------


def inferred_data(rule: dict[str, Any]) -> dict[str, Any]:
    """What a trigger made by this rule carries in `data` (see connectors.inbound and
    core.engagement), with sample values."""
    source, on = rule.get("from"), rule.get("on")
    where = rule.get("where") if isinstance(rule.get("where"), dict) else {}
    data: dict[str, Any] = {}
    if source in ("hubspot", "salesforce"):
        data = {"event": on, "object_id": "0031x00000SAMPLE"}
        if on == "form_submission":
            data["form_id"] = str(where.get("form_id", "form-sample"))
        if on == "page_view":
            data["url"] = str(where.get("url", "https://pharma.example/page")).replace("*", "sample")
        if isinstance(where.get("field"), str):
            value = where.get("equals", where.get("changed_to"))
            if value is None and isinstance(where.get("in"), list) and where["in"]:
                value = where["in"][0]
            data[where["field"]] = value if value is not None else "sample"
    elif source == "email":
        data = {"after": on, "campaign": str(where.get("campaign", "campaign")), "message_id": "msg_sample"}
        if on == "clicked":
            data["link"] = str(where.get("link", "https://pharma.example/")).replace("*", "sample")
    rule_data = rule.get("data")
    if isinstance(rule_data, dict):
        data.update(rule_data)
    return data


def data_samples(campaign: dict[str, Any], rules: list[tuple[int, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """(where the sample comes from, data) pairs to render a campaign's templates with."""
    example = campaign.get("data_example") if isinstance(campaign.get("data_example"), dict) else None
    samples: list[tuple[str, dict[str, Any]]] = []
    for index, rule in rules:
        data = inferred_data(rule)
        if example:
            data = {**data, **example, **(rule.get("data") if isinstance(rule.get("data"), dict) else {})}
        samples.append((f"triggers[{index}] ({rule.get('from')} {rule.get('on')})", data))
    if example is not None or not samples:
        samples.append(("data_example" if example is not None else "no data", example or {}))
    return samples


def check_templates(index: int, campaign: dict[str, Any], rules: list[tuple[int, dict[str, Any]]], report: Report) -> None:
    """Compile every template of a campaign and render it with the sample HCP and each data
    sample; unknown variables are errors. One message per field and problem."""
    seen: set[tuple[str, str]] = set()
    subjects: list[tuple[str, str]] = []
    if isinstance(campaign.get("subject"), str):
        subjects.append(("subject", campaign["subject"]))
    variants = campaign.get("subjects") if isinstance(campaign.get("subjects"), list) else []
    for position, variant in enumerate(variants):
        if isinstance(variant, dict) and isinstance(variant.get("text"), str):
            subjects.append((f"subjects[{position}].text", variant["text"]))
    body_field = "template" if isinstance(campaign.get("template"), str) else "html"
    body = campaign.get("_template_text") if body_field == "template" else campaign.get("html")
    resend = campaign.get("resend") if isinstance(campaign.get("resend"), dict) else {}
    resend_subject = resend.get("subject") if isinstance(resend.get("subject"), str) else None
    shown = {key: value for key, value in campaign.items() if not key.startswith("_")}

    def attempt(field: str, source: str, origin: str, html: bool, **context: Any) -> str | None:
        try:
            return check_render(source, html=html, **context)
        except TemplateError as exc:
            detail = getattr(exc, "message", None) or str(exc)
            lineno = getattr(exc, "lineno", None)
            if lineno and html and "\n" in source:
                detail = f"line {lineno}: {detail}"
            key = (field, detail)
            if key not in seen:
                seen.add(key)
                suffix = f" (data from {origin})" if "data." in detail or detail.startswith("data ") else ""
                report(f"campaigns[{index}].{field}", f"template error: {detail}{suffix}")
            return None

    for origin, data in data_samples(campaign, rules):
        context = {"hcp": sample(dict(SAMPLE_HCP), "hcp"), "data": sample(data, "data"), "campaign": sample(shown, "campaign")}
        rendered = "Sample subject"
        for field, text in subjects:
            result = attempt(field, text, origin, False, **context)
            if result is not None and field == "subject":
                rendered = result
        if isinstance(body, str):
            attempt(body_field, body, origin, True, subject=rendered, **context)
        if resend_subject:
            attempt("resend.subject", resend_subject, origin, False, subject=rendered, **context)


# --- attachments -------------------------------------------------------------------------


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    data: bytes

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def guess_type(filename: str) -> str:
    return mimetypes.guess_type(filename)[0] or "application/octet-stream"


def read_attachments(
    index: int, campaign: dict[str, Any], base: Path, limits: dict[str, Any], report: Report
) -> list[Attachment]:
    items = campaign.get("attachments")
    if not isinstance(items, list):
        return []
    try:
        one_max = parse_size(limits.get("attachment_max_size", "10MB"))
        total_max = parse_size(limits.get("attachments_max_total", "20MB"))
    except ValueError:
        return []  # reported by the schema
    found: list[Attachment] = []
    for position, item in enumerate(items):
        spec = {"path": item} if isinstance(item, str) else item
        if not isinstance(spec, dict) or not isinstance(spec.get("path"), str):
            continue  # reported by the schema
        path = (base / spec["path"]).resolve()
        where = f"campaigns[{index}].attachments[{position}]"
        try:
            size = path.stat().st_size
            if not path.is_file():
                raise IsADirectoryError(21, "not a file")
        except OSError as exc:
            report(where, f"cannot read {path}: {exc.strerror or exc}")
            continue
        if size > one_max:
            report(where, f"{path.name} is {format_size(size)}, over limits.attachment_max_size ({format_size(one_max)})")
            continue
        filename = spec.get("filename") or path.name
        found.append(Attachment(str(filename), str(spec.get("content_type") or guess_type(str(filename))), path.read_bytes()))
    total = sum(len(item.data) for item in found)
    if total > total_max:
        report(f"campaigns[{index}].attachments", f"{format_size(total)} in all, over limits.attachments_max_total ({format_size(total_max)})")
    return found


def check_attachment_sources(index: int, campaign: dict[str, Any], report: Report, warn: Report) -> None:
    patterns = campaign.get("attachments_from")
    if not isinstance(patterns, list):
        return
    for position, pattern in enumerate(patterns):
        where = f"campaigns[{index}].attachments_from[{position}]"
        if not isinstance(pattern, str) or not pattern.startswith(("https://", "http://")):
            report(where, f"expected a URL pattern like https://docs.pharma.example/*, got {pattern!r}")
        elif pattern.startswith("http://"):
            warn(where, "not https: attachments would be fetched unencrypted")
        elif pattern.split("://", 1)[1].startswith("*"):
            report(where, "the host must be spelled out, not a wildcard")


def url_allowed(url: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(url, pattern) for pattern in patterns)


def check_states(index: int, campaign: dict[str, Any], warn: Report) -> None:
    audience = campaign.get("audience") if isinstance(campaign.get("audience"), dict) else {}
    states = audience.get("states")
    if not isinstance(states, list):
        return
    for position, state in enumerate(states):
        if isinstance(state, str) and state.upper() not in US_STATES:
            guess = nearest(state.upper(), sorted(US_STATES)) if len(state) == 2 else None
            hint = f"; did you mean `{guess}`?" if guess else ""
            warn(f"campaigns[{index}].audience.states[{position}]", f"{state!r} is not a US state or territory code{hint}")
