"""Matching events against the config's `triggers` rules. CRM-neutral: connectors have
already turned vendor payloads into `InboundEvent`s."""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any

from config import Config, TriggerRule
from core.activities import InboundEvent


def _same(a: Any, b: Any) -> bool:
    return str(a).strip().lower() == str(b).strip().lower() if a is not None and b is not None else a == b


def _lookup(values: dict[str, Any], name: str) -> tuple[bool, Any]:
    for key, value in values.items():
        if key.lower() == name.lower():
            return True, value
    return False, None


def rule_matches(rule: TriggerRule, event: InboundEvent) -> bool:
    where = rule.where
    if rule.on != event.event:
        return False
    if "object" in where and not _same(where["object"], event.object_type):
        return False
    if "form_id" in where and not _same(where["form_id"], event.form_id):
        return False
    if "url" in where and not (event.url and fnmatchcase(event.url, str(where["url"]))):
        return False
    if "field" in where:
        field = str(where["field"])
        changed, new_value = _lookup(event.changed, field)
        if rule.on == "record_change" and not changed:
            return False
        if not changed:
            _, new_value = _lookup(event.fields, field)
        if "equals" in where and not _same(new_value, where["equals"]):
            return False
        if "changed_to" in where and not (changed and _same(new_value, where["changed_to"])):
            return False
        if "in" in where and not any(_same(new_value, option) for option in where["in"]):
            return False
    return True


def matching_rules(config: Config, event: InboundEvent) -> list[tuple[int, TriggerRule]]:
    return [
        (index, rule) for index, rule in enumerate(config.triggers)
        if rule.from_ == event.source and rule_matches(rule, event)
    ]
