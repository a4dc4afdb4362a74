"""The one config loader: YAML → `${ENV}` substitution → pydantic → cross-checks.

Every problem is collected and reported with its path (`triggers[2].send: unknown campaign
'asthma'`), so an admin fixes the whole file in one pass.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml
from jinja2 import TemplateError
from pydantic import ValidationError

from config.durations import parse_duration
from config.schema import Config
from config.templating import SAMPLE_HCP, render

class _Yaml12Loader(yaml.SafeLoader):
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
    def __init__(self, source: str, problems: list[ConfigProblem]):
        self.source = source
        self.problems = problems
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


def _pydantic_problems(error: ValidationError) -> list[ConfigProblem]:
    problems = []
    for item in error.errors():
        loc = [part for part in item["loc"] if not (isinstance(part, str) and part.startswith(("function-", "function_")))]
        # Union branches add their type name to the path; they mean nothing to an admin.
        loc = [part for part in loc if part not in {"HubSpotConfig", "SalesforceConfig"}]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif item["type"] == "missing":
            message = "required key is missing"
        else:
            message = item["msg"].removeprefix("Value error, ")
            if item["type"] not in {"value_error"} and "input" in item and not isinstance(item["input"], (dict, list)):
                message += f", got {item['input']!r}"
        problems.append(ConfigProblem(format_path(loc), message))
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
            problems.append(ConfigProblem(f"triggers[{index}].send", f"unknown campaign {send!r}"))
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


def _read_templates(raw: dict[str, Any], base: Path, problems: list[ConfigProblem]) -> None:
    """Replace each campaign's `template:` path by the file's text (`html_source`)."""
    campaigns = raw.get("campaigns") if isinstance(raw.get("campaigns"), list) else []
    for index, campaign in enumerate(campaigns):
        if not isinstance(campaign, dict) or not isinstance(campaign.get("template"), str):
            continue
        path = (base / campaign["template"]).resolve()
        try:
            campaign["_template_text"] = path.read_text(encoding="utf-8")
        except OSError as exc:
            problems.append(ConfigProblem(f"campaigns[{index}].template", f"cannot read {path}: {exc.strerror or exc}"))


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


def _cross_check(config: Config, texts: dict[int, str], problems: list[ConfigProblem]) -> None:
    for index, campaign in enumerate(config.campaigns):
        if campaign.template is not None:
            if index not in texts:
                continue
            campaign.html = texts[index]
        _check_renders(config, index, problems)
    if config.crm.writeback and getattr(config.crm, config.crm.writeback, None) is None:
        problems.append(ConfigProblem("crm.writeback", f"crm.{config.crm.writeback} is not configured"))


def _check_renders(config: Config, index: int, problems: list[ConfigProblem]) -> None:
    """Render every campaign once with a sample HCP, so a broken template fails `config check`
    instead of a send."""
    campaign = config.campaigns[index]
    context = {"hcp": SAMPLE_HCP, "data": {}, "campaign": campaign.model_dump(by_alias=True)}
    field = "template" if campaign.template else "html"
    try:
        subject = render(campaign.subject, html=False, **context)
    except TemplateError as exc:
        problems.append(ConfigProblem(f"campaigns[{index}].subject", f"template error: {exc}"))
        return
    try:
        render(campaign.body, html=True, subject=subject, **context)
    except TemplateError as exc:
        problems.append(ConfigProblem(f"campaigns[{index}].{field}", f"template error: {exc}"))
    if campaign.resend and campaign.resend.subject:
        try:
            render(campaign.resend.subject, html=False, subject=subject, **context)
        except TemplateError as exc:
            problems.append(ConfigProblem(f"campaigns[{index}].resend.subject", f"template error: {exc}"))


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
    raw = _substitute(raw, [], env, problems)
    _raw_references(raw, problems)
    _read_templates(raw, base, problems)
    texts = {
        index: campaign.pop("_template_text")
        for index, campaign in enumerate(raw.get("campaigns") or [])
        if isinstance(campaign, dict) and "_template_text" in campaign
    }
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(source, problems + _pydantic_problems(exc)) from None
    _cross_check(config, texts, problems)
    _resolve_files(config, base, problems)
    if problems:
        raise ConfigError(source, problems)
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
