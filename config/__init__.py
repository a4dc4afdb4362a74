"""The YAML schema, its loader and the settings read from the environment."""

from config.durations import Duration, format_duration, parse_duration
from config.loader import EXAMPLE_CONFIG, ConfigError, ConfigProblem, load_config, parse_config
from config.schema import Campaign, Config, TriggerRule
from config.settings import Settings

__all__ = [
    "EXAMPLE_CONFIG",
    "Campaign",
    "Config",
    "ConfigError",
    "ConfigProblem",
    "Duration",
    "Settings",
    "TriggerRule",
    "format_duration",
    "load_config",
    "parse_config",
    "parse_duration",
]
