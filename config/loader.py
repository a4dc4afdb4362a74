"""The one config loader: YAML → `${ENV}` substitution → pydantic → cross-checks.

Every problem is collected and reported with its path (`triggers[2].send: unknown campaign
'asthma'`), so an admin fixes the whole file in one pass.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml
from pydantic import ValidationError

from config.checks import check_attachment_sources, check_states, check_templates, check_where, read_attachments
from config.durations import parse_duration
from config.schema import Campaign, Config
from config.templating import nearest

class _Yaml12Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """YAML 1.2 booleans: only true/false. Under YAML 1.1 the trigger key `on:` would load as
    the boolean True."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
EXAMPLE_CONFIG = Path(__file__).with_name("example.yaml")


@dataclass(frozen=True)
class ConfigProblem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(Exception):
    def __init__(self, source: str, problems: list[ConfigProblem], warnings: list[ConfigProblem] | None = None):
        self.source = source
        self.problems = problems
        self.warnings = warnings or []
        super().__init__(f"{source}: " + "; ".join(str(problem) for problem in problems))


def format_path(parts: tuple[Any, ...] | list[Any]) -> str:
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _substitute(node: Any, path: list[Any], env: Mapping[str, str], problems: list[ConfigProblem]) -> Any:
    if isinstance(node, dict):
        return {key: _substitute(value, [*path, key], env, problems) for key, value in node.items()}
    if isinstance(node, list):
        return [_substitute(value, [*path, index], env, problems) for index, value in enumerate(node)]
    if isinstance(node, str) and "${" in node:
        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            problems.append(ConfigProblem(format_path(path), f"environment variable {name} is not set"))
            return ""

        return _ENV.sub(replace, node)
    return node


_PRIMITIVE_BRANCHES = {"str", "bool", "int", "float", "none", "list", "dict"}


def _model_fields_at(loc: list[Any]) -> set[str] | None:
    """The keys the schema accepts at `loc` (for "did you mean"), or None when unknown."""
    import typing

    from pydantic import BaseModel

    def models_in(annotation: Any) -> list[Any]:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return [annotation]
        found = []
        for arg in typing.get_args(annotation):
            found += models_in(arg)
        return found

    def keys(model: Any) -> dict[str, Any]:
        return {(info.alias or name): info.annotation for name, info in model.model_fields.items()}

    current: list[Any] = [Config]
    for part in loc:
        if isinstance(part, int):
            continue
        following = []
        for model in current:
            annotation = keys(model).get(part)
            if annotation is not None:
                following += models_in(annotation)
        if not following:
            return None
        current = following
    names: set[str] = set()
    for model in current:
        names |= set(keys(model))
    return names


def _pydantic_problems(error: ValidationError) -> list[ConfigProblem]:
    from config import schema

    model_names = {name for name in dir(schema) if isinstance(getattr(schema, name), type)}
    grouped: dict[str, list[tuple[str | None, ConfigProblem]]] = {}
    for item in error.errors():
        branch = None
        loc: list[Any] = []
        for part in item["loc"]:
            if isinstance(part, str) and (part.startswith(("function-", "function_")) or "[" in part):
                continue
            if isinstance(part, str) and (part in model_names or part in _PRIMITIVE_BRANCHES):
                branch = part  # a union member's name: means nothing to an admin
                continue
            loc.append(part)
        if item["type"] == "extra_forbidden":
            valid = _model_fields_at(loc[:-1]) or set()
            from config.checks import unknown_key_message

            message = unknown_key_message(str(loc[-1]), valid)
        elif item["type"] == "missing":
            message = "required key is missing"
        else:
            message = item["msg"].removeprefix("Value error, ")
            if item["type"] not in {"value_error"} and "input" in item and not isinstance(item["input"], (dict, list)):
                message += f", got {item['input']!r}"
        path = format_path(loc)
        grouped.setdefault(path.split("[")[0] if branch else path, []).append((branch, ConfigProblem(path, message)))
    problems = []
    for entries in grouped.values():
        # Of a union (`str | {path, filename}`), show the errors of the mapping branch when
        # there are some: "expected a string" says nothing about a typo inside the mapping.
        modelled = [problem for branch, problem in entries if branch and branch not in _PRIMITIVE_BRANCHES]
        problems += modelled if modelled else [problem for _branch, problem in entries]
    return problems


def _raw_references(raw: dict[str, Any], problems: list[ConfigProblem]) -> None:
    """Checks between sections, on the raw tree, so they are reported together with any
    schema errors instead of only after those are fixed."""
    campaigns = raw.get("campaigns") if isinstance(raw.get("campaigns"), list) else []
    ids: list[str] = [c.get("id") for c in campaigns if isinstance(c, dict) and isinstance(c.get("id"), str)]
    seen: set[str] = set()
    for index, campaign_id in enumerate(ids):
        if campaign_id in seen:
            problems.append(ConfigProblem(f"campaigns[{index}].id", f"duplicate campaign id {campaign_id!r}"))
        seen.add(campaign_id)
    rules = raw.get("triggers") if isinstance(raw.get("triggers"), list) else []
    for index, rule in enumerate(rules):
        if not isinstance(rule, dict):
            continue
        send = rule.get("send")
        if isinstance(send, str) and send not in seen:
            guess = nearest(send, seen)
            problems.append(ConfigProblem(f"triggers[{index}].send", f"unknown campaign {send!r}" + (f"; did you mean `{guess}`?" if guess else "")))
        where = rule.get("where") if isinstance(rule.get("where"), dict) else {}
        if rule.get("from") == "email" and "campaign" in where and where["campaign"] not in seen:
            problems.append(ConfigProblem(f"triggers[{index}].where.campaign", f"unknown campaign {where['campaign']!r}"))
        if rule.get("from") == "email" and rule.get("on") == "no_engagement":
            try:
                parse_duration(where.get("after"))
            except ValueError as exc:
                problems.append(ConfigProblem(f"triggers[{index}].where.after", str(exc)))
        crm = raw.get("crm") if isinstance(raw.get("crm"), dict) else {}
        if rule.get("from") in ("hubspot", "salesforce") and not crm.get(rule["from"]):
            problems.append(ConfigProblem(f"triggers[{index}].from", f"crm.{rule['from']} is not configured"))
        check_where(index, rule, lambda path, message: problems.append(ConfigProblem(path, message)))


_GROUPS = ({"html", "template"}, {"subject", "subjects"})
"""Keys that are alternatives: a campaign that `extends` another and sets one replaces both."""


def _resolve_extends(raw: dict[str, Any], problems: list[ConfigProblem]) -> None:
    """`extends: <campaign id>`: start from a copy of that campaign, then apply this one's keys."""
    campaigns = raw.get("campaigns") if isinstance(raw.get("campaigns"), list) else []
    by_id = {c["id"]: c for c in campaigns if isinstance(c, dict) and isinstance(c.get("id"), str)}
    resolved: dict[str, dict[str, Any]] = {}

    def resolve(campaign: dict[str, Any], chain: list[str]) -> dict[str, Any]:
        parent_id = campaign.get("extends")
        if not isinstance(parent_id, str):
            return campaign
        if campaign.get("id") in resolved:
            return resolved[campaign["id"]]
        if parent_id in chain:
            raise ValueError(f"extends loops: {' → '.join([*chain, parent_id])}")
        parent = by_id.get(parent_id)
        if parent is None:
            guess = nearest(parent_id, by_id)
            raise ValueError(f"unknown campaign {parent_id!r}" + (f"; did you mean `{guess}`?" if guess else ""))
        base = dict(resolve(parent, [*chain, parent_id]))
        for group in _GROUPS:
            if group & set(campaign):
                for key in group:
                    base.pop(key, None)
        base.pop("name", None)
        if "subjects" not in base and "ab" not in campaign:
            base.pop("ab", None)  # an A/B test goes with the subjects it tested
        merged = {**base, **campaign}
        resolved[str(campaign.get("id"))] = merged
        return merged

    for index, campaign in enumerate(campaigns):
        if isinstance(campaign, dict) and "extends" in campaign:
            try:
                campaigns[index] = resolve(campaign, [str(campaign.get("id"))])
            except ValueError as exc:
                problems.append(ConfigProblem(f"campaigns[{index}].extends", str(exc)))


def _read_templates(raw: dict[str, Any], base: Path, problems: list[ConfigProblem]) -> None:
    """Read each campaign's `template:` file into `_template_text`."""
    campaigns = raw.get("campaigns") if isinstance(raw.get("campaigns"), list) else []
    for index, campaign in enumerate(campaigns):
        if not isinstance(campaign, dict) or not isinstance(campaign.get("template"), str):
            continue
        path = (base / campaign["template"]).resolve()
        try:
            campaign["_template_text"] = path.read_text(encoding="utf-8")
        except OSError as exc:
            problems.append(ConfigProblem(f"campaigns[{index}].template", f"cannot read {path}: {exc.strerror or exc}"))


def _raw_campaign_checks(
    raw: dict[str, Any], base: Path, problems: list[ConfigProblem], warnings: list[ConfigProblem]
) -> dict[int, list[Any]]:
    """Templates, states and attachments of every campaign; returns the attachments read."""
    report = lambda path, message: problems.append(ConfigProblem(path, message))  # noqa: E731
    warn = lambda path, message: warnings.append(ConfigProblem(path, message))  # noqa: E731
    campaigns = raw.get("campaigns") if isinstance(raw.get("campaigns"), list) else []
    rules = raw.get("triggers") if isinstance(raw.get("triggers"), list) else []
    limits = raw.get("limits") if isinstance(raw.get("limits"), dict) else {}
    by_campaign: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for index, rule in enumerate(rules):
        if isinstance(rule, dict) and isinstance(rule.get("send"), str):
            by_campaign.setdefault(rule["send"], []).append((index, rule))
    files: dict[int, list[Any]] = {}
    for index, campaign in enumerate(campaigns):
        if not isinstance(campaign, dict):
            continue
        check_templates(index, campaign, by_campaign.get(str(campaign.get("id")), []), report)
        check_states(index, campaign, warn)
        check_attachment_sources(index, campaign, report, warn)
        files[index] = read_attachments(index, campaign, base, limits, report)
    public_url = raw.get("public_url")
    if isinstance(public_url, str) and public_url.startswith("http://") and not _loopback(public_url):
        # A loopback URL is a developer's machine (`trigger-email dev`), not production.
        warn("public_url", "not https: one-click unsubscribe (RFC 8058) needs https in production")
    return files


def _loopback(url: str) -> bool:
    from urllib.parse import urlsplit

    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return False
    return host in ("localhost", "::1") or host.startswith("127.")


def _resolve_files(config: Config, base: Path, problems: list[ConfigProblem]) -> None:
    """Key files named in the config are relative to it, like templates."""
    dkim = config.sender.dkim
    if dkim is not None:
        path = (base / dkim.private_key_file).resolve()
        if not path.is_file():
            problems.append(ConfigProblem("sender.dkim.private_key_file", f"cannot read {path}"))
        dkim.private_key_file = str(path)
    salesforce = config.crm.salesforce
    if salesforce is not None and salesforce.private_key_file:
        salesforce.private_key_file = str((base / salesforce.private_key_file).resolve())


def campaign_version(campaign: Campaign) -> str:
    """A short hash of everything that shapes the campaign's emails (not its initial pause)."""
    settings = campaign.model_dump(mode="json", by_alias=True, exclude={"paused", "name"})
    settings["_files"] = [file.digest for file in campaign.files]
    encoded = json.dumps(settings, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(encoded).hexdigest()[:12]


def parse_config(text: str, *, base: Path, source: str = "<config>", env: Mapping[str, str] | None = None) -> Config:
    env = os.environ if env is None else env
    try:
        raw = yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else ""
        raise ConfigError(source, [ConfigProblem(where, f"not valid YAML: {getattr(exc, 'problem', exc)}")]) from None
    if not isinstance(raw, dict):
        raise ConfigError(source, [ConfigProblem("", "expected a mapping at the top level")])
    problems: list[ConfigProblem] = []
    warnings: list[ConfigProblem] = []
    raw = _substitute(raw, [], env, problems)
    _resolve_extends(raw, problems)
    _raw_references(raw, problems)
    _read_templates(raw, base, problems)
    files = _raw_campaign_checks(raw, base, problems, warnings)
    texts = {
        index: campaign.pop("_template_text")
        for index, campaign in enumerate(raw.get("campaigns") or [])
        if isinstance(campaign, dict) and "_template_text" in campaign
    }
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(source, problems + _pydantic_problems(exc), warnings) from None
    for index, campaign in enumerate(config.campaigns):
        if campaign.template is not None and index in texts:
            campaign.html = texts[index]
        campaign._files = files.get(index, [])
    if config.crm.writeback and getattr(config.crm, config.crm.writeback, None) is None:
        problems.append(ConfigProblem("crm.writeback", f"crm.{config.crm.writeback} is not configured"))
    _resolve_files(config, base, problems)
    if problems:
        raise ConfigError(source, problems, warnings)
    for campaign in config.campaigns:
        campaign._version = campaign_version(campaign)
    config._warnings = warnings
    config._text_hash = hashlib.sha256(text.encode()).hexdigest()
    return config


def load_config(path: str | os.PathLike[str] | None = None, *, env: Mapping[str, str] | None = None) -> Config:
    """Load the config at `path`, `$TRIGGER_EMAIL_CONFIG`, or the shipped example."""
    env = os.environ if env is None else env
    chosen = Path(path or env.get("TRIGGER_EMAIL_CONFIG") or EXAMPLE_CONFIG)
    try:
        text = chosen.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(chosen), [ConfigProblem("", f"cannot read the file: {exc.strerror or exc}")]) from None
    return parse_config(text, base=chosen.resolve().parent, source=str(chosen), env=env)
