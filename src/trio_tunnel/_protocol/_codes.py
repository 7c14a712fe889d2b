"""Typed outcomes: why a stream was reset, carried on the wire in the RESET frame's ``arg``.

Logs and metric labels come from these codes, never from reason text: rewording a message
can no longer turn a metric into ``other``.
"""

from __future__ import annotations

import enum


class ResetCode(enum.IntEnum):
    """Why a stream was reset. The value travels in a RESET frame; unknown values read as
    :attr:`UNSPECIFIED` (protocol version 1 peers always sent 1)."""

    UNSPECIFIED = 1  # no reason given
    REFUSED = 2  # the peer would not carry it (session closing, stale epoch, not active)
    UNKNOWN_TUNNEL = 3  # no connect entry for that tunnel name
    CONNECT_FAILED = 4  # the far service refused or was unreachable
    CONNECT_TIMEOUT = 5  # the far service did not answer in connect_timeout_secs
    FAILOVER = 6  # the client was demoted: its streams are reset
    PROTOCOL_ERROR = 7  # the stream broke the protocol (sequence beyond the reorder bound)
    SHUTDOWN = 8  # the process is stopping
    TCP_ERROR = 9  # the local TCP connection failed or was reset
    LIMIT = 10  # too many streams (max_streams_per_session)
    INTERNAL = 11  # a bug on the resetting side
    SESSION_LOST = 12  # the WebSocket carrying it ended (never sent: the session is gone)
    IDLE = 13  # no data either way for idle_timeout_secs
    CANCELLED = 14  # the local application closed it before both directions ended

    @classmethod
    def from_wire(cls, value: int) -> ResetCode:
        return _BY_VALUE.get(value, cls.UNSPECIFIED)

    @property
    def label(self) -> str:
        """The metric label and short log word: ``unknown_tunnel``, ``failover``, ..."""
        return self.name.lower()


_BY_VALUE = {member.value: member for member in ResetCode}


class CloseCode(enum.IntEnum):
    """WebSocket close codes the tunnel answers a broken peer with (RFC 6455, 7.4.1)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
