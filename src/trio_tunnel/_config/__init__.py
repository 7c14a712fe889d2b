"""Configuration: the schema, pure parsing and validation, and a separate load step.

- ``_schema``: the frozen attrs classes and the rules across their fields (pure);
- ``_checks``: the field checks and error formatting they share with ``import-json`` (pure);
- ``_convert``: the cattrs converter and ``parse_config(data, source)`` (pure);
- ``_load``: ``load_config(path)`` (read TOML, then parse) and ``load_environment(config)``,
  which reads the token, loads TLS material, resolves names and checks the log file;
- ``_describe``: ``describe_config``, what ``trio-tunnel check`` prints;
- ``_together``: the checks across a server's and its clients' files.
"""

from ._checks import FrozenLevels as FrozenLevels
from ._convert import parse_config as parse_config
from ._describe import describe_config as describe_config
from ._load import Environment as Environment
from ._load import load_config as load_config
from ._load import load_environment as load_environment
from ._load import read_token as read_token
from ._schema import ClientCredentials as ClientCredentials
from ._schema import Config as Config
from ._schema import Connect as Connect
from ._schema import FailoverSettings as FailoverSettings
from ._schema import Listen as Listen
from ._schema import LoggingSettings as LoggingSettings
from ._schema import MetricsSettings as MetricsSettings
from ._schema import ShutdownSettings as ShutdownSettings
from ._schema import StreamSettings as StreamSettings
from ._schema import WebSocketSettings as WebSocketSettings
from ._together import Member as Member
from ._together import check_together as check_together

__all__ = [
    "ClientCredentials",
    "Config",
    "Connect",
    "Environment",
    "FailoverSettings",
    "FrozenLevels",
    "Listen",
    "LoggingSettings",
    "Member",
    "MetricsSettings",
    "ShutdownSettings",
    "StreamSettings",
    "WebSocketSettings",
    "check_together",
    "describe_config",
    "load_config",
    "load_environment",
    "parse_config",
    "read_token",
]
