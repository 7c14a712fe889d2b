"""What a re-read config (SIGHUP) may change in a running process, and what it may not."""

from __future__ import annotations

import logging
import os

import attrs
import trio

from ._config import Config, Environment, load_config, load_environment

log = logging.getLogger("trio_tunnel.reload")

# Tables a running process applies at once; any other change needs a restart.
_LIVE = ("listen", "connect", "logging")  # logging: applied by the command (_cli)
_LIVE_ON_SERVER = ("failover",)


def reload_tunnels(running: Config, new: Config, who: str) -> Config:
    """The config to run with: ``running`` with the live-applicable parts of ``new``.

    Logs what changes and, once per key, what cannot be applied without a restart.
    """
    live = _LIVE + (_LIVE_ON_SERVER if running.is_server else ())
    for field in attrs.fields(Config):
        if field.name in live:
            continue
        if getattr(running, field.name) != getattr(new, field.name):
            log.warning(
                "%s: reload: %s changed but cannot be applied to a running process; kept the "
                "running value (restart to apply)",
                who,
                field.name,
            )
    old_listen = {entry.tunnel: entry for entry in running.listen}
    new_listen = {entry.tunnel: entry for entry in new.listen}
    old_connect = {entry.tunnel: entry for entry in running.connect}
    new_connect = {entry.tunnel: entry for entry in new.connect}
    for kind, old, fresh in (
        ("listen", old_listen, new_listen),
        ("connect", old_connect, new_connect),
    ):
        added = sorted(set(fresh) - set(old))
        removed = sorted(set(old) - set(fresh))
        changed = sorted(t for t in set(old) & set(fresh) if old[t] != fresh[t])
        if added or removed or changed:
            log.info(
                "%s: reload: %s tunnels added %s, removed %s, changed %s",
                who,
                kind,
                added or "none",
                removed or "none",
                changed or "none",
            )
    if running.is_server:
        return attrs.evolve(running, listen=new.listen, connect=new.connect, failover=new.failover)
    return attrs.evolve(running, listen=new.listen, connect=new.connect)


async def reread(path: str | os.PathLike[str]) -> tuple[Config, Environment]:
    """Both config steps for a reload, in a worker thread: reading the file, the TLS files and
    the token, and resolving names must not hold up the event loop (pings are due meanwhile).

    Raises ConfigError (or ConfigLoadError) as the steps do.
    """

    def both() -> tuple[Config, Environment]:
        config = load_config(path)
        return config, load_environment(config, os.fspath(path))

    # It only reads, so a cancel (SIGTERM during a slow DNS answer) need not wait for it.
    return await trio.to_thread.run_sync(both, abandon_on_cancel=True)
