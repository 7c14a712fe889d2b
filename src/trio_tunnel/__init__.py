"""trio-tunnel: high-availability TCP-over-WebSocket tunnels on Trio.

The public API::

    config = trio_tunnel.load_config("server.toml")  # pure: reads only the TOML file
    environment = trio_tunnel.load_environment(config)  # optional: TLS files, token, names
    async with trio_tunnel.open_server(config) as server:
        ...
    async with trio_tunnel.open_client(client_config) as client:
        ...
"""

from ._client import Client as Client
from ._client import open_client as open_client
from ._client import serve_client as serve_client
from ._config import ClientCredentials as ClientCredentials
from ._config import Config as Config
from ._config import Connect as Connect
from ._config import Environment as Environment
from ._config import FailoverSettings as FailoverSettings
from ._config import Listen as Listen
from ._config import LoggingSettings as LoggingSettings
from ._config import MetricsSettings as MetricsSettings
from ._config import ShutdownSettings as ShutdownSettings
from ._config import StreamSettings as StreamSettings
from ._config import WebSocketSettings as WebSocketSettings
from ._config import describe_config as describe_config
from ._config import load_config as load_config
from ._config import load_environment as load_environment
from ._config import parse_config as parse_config
from ._drain import DrainResult as DrainResult
from ._errors import ConfigError as ConfigError
from ._errors import ConfigLoadError as ConfigLoadError
from ._errors import HandshakeError as HandshakeError
from ._errors import LocalProtocolError as LocalProtocolError
from ._errors import ProtocolError as ProtocolError
from ._errors import RemoteProtocolError as RemoteProtocolError
from ._errors import StreamReset as StreamReset
from ._errors import TunnelError as TunnelError
from ._errors import WebSocketClosed as WebSocketClosed
from ._metrics_http import serve_metrics as serve_metrics
from ._protocol import ResetCode as ResetCode
from ._server import ClientInfo as ClientInfo
from ._server import Server as Server
from ._server import ServerState as ServerState
from ._server import open_server as open_server
from ._server import serve_server as serve_server
from ._stream import AppStream as AppStream

__version__ = "0.1.0"
