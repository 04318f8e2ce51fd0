# -*- test-case-name: lbproxy.test.test_reload -*-
"""
Reloading a running lbproxy: SIGHUP re-reads the config file (with the
same command line, whose flags still win) and the TLS certificates; the
admin API's C{POST /config} applies a configuration it was sent. Either
way the new configuration is checked whole first: if anything is wrong,
one line says why and the running configuration keeps serving.

Also here: the running configuration written back as a config file
(L{Reloader.describe}), for C{GET /config}.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import tomli_w
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python import usage

from lbproxy.admin.api import ConfigRejected
from lbproxy.cli.configfile import (
    NOT_IN_FILE,
    POOL_OPTIONS,
    ConfigFileError,
    parseConfigText,
    routeAsText,
)
from lbproxy.service import LoadBalancerService, ReloadError

APPLIED_BY_RELOAD = POOL_OPTIONS | {
    "config",
    "listen",
    "allow-host",
    "trusted-proxy",
    "request-id",
    "request-id-header",
    "send-timeout",
    "tunnel-idle-timeout",
    "drain-timeout",
}
"""
The options a reload applies; a change to any other (edge limits, TLS
settings, the access log, workers...) waits for a restart.
"""


class Reloader:
    """
    Applies new configurations to a running L{LoadBalancerService}; the
    admin API's L{lbproxy.admin.api.ConfigHooks}.
    """

    _log = Logger()

    def __init__(
        self,
        options: Any,
        service: LoadBalancerService,
        makeOptions: Callable[[], Any],
    ) -> None:
        """
        @param options: The L{lbproxy.cli.options.Options} the service was
            started with.
        @param makeOptions: Makes fresh options (the same class) to parse
            a new configuration with.
        """
        self._options = options
        self._service = service
        self._makeOptions = makeOptions

    @property
    def options(self) -> Any:
        """
        The options of the configuration running now.
        """
        return self._options

    def reload(self) -> bool:
        """
        SIGHUP: reload the TLS certificates and, when lbproxy runs from a
        config file, the file.

        @return: Whether everything reloaded.
        """
        certificates = self._service.reloadCertificates()
        if self._options["config"] is None:
            return certificates
        try:
            new = self._parse()
        except usage.UsageError as e:
            self._rejected(str(e))
            return False
        try:
            self._apply(new)
        except ConfigRejected as e:
            self._rejected(str(e))
            return False
        self._log.info("configuration reloaded from {path}", path=self._options["config"])
        return certificates

    def apply(self, text: str, format: str) -> Deferred[None]:
        """
        Check and apply a configuration sent to the admin API, in C{format}
        C{toml} or C{json}, as a config file with the same command line.

        @return: Fires when applied; fails with L{ConfigRejected} (and
            nothing changes) if it is invalid or cannot be applied.
        """
        try:
            source = parseConfigText(text, "posted configuration", format)
            new = self._parse(source)
            self._apply(new)
        except (ConfigFileError, usage.UsageError) as e:
            self._rejected(str(e))
            return fail(ConfigRejected(str(e)))
        except ConfigRejected as e:
            self._rejected(str(e))
            return fail(e)
        self._log.info("configuration applied from the admin API")
        return succeed(None)

    def _rejected(self, why: str) -> None:
        self._log.error(
            "configuration reload rejected, the running configuration is kept: {why}", why=why
        )

    def _parse(self, source: Any = None) -> Any:
        options = self._makeOptions()
        options.parseArguments(self._options.arguments, source)
        return options

    def _apply(self, new: Any) -> None:
        config = new.config
        assert config is not None
        try:
            self._service.applyConfig(config)
        except ReloadError as e:
            raise ConfigRejected(str(e)) from None
        waiting = sorted(
            name
            for name in set(new.synonyms.values()) - APPLIED_BY_RELOAD - NOT_IN_FILE
            if new[name] != self._options[name]
        )
        if waiting:
            self._log.warn(
                "changed options that take effect at the next restart: {names}",
                names=", ".join(waiting),
            )
        self._options = new

    def describe(self) -> dict[str, Any]:
        """
        The running configuration as a config file's contents: the options
        that differ from their defaults, every pool with its backends as
        they are now (weights and draining included; backends being
        removed left out; its C{dns:} and C{srv:} items, not the addresses
        they give), and the routes.
        """
        options = self._options
        defaults = self._makeOptions()
        text: dict[str, Any] = {}
        for name in sorted(set(options.synonyms.values()) - POOL_OPTIONS - NOT_IN_FILE):
            value = options[name]
            if name == "listen":
                config = options.config
                assert config is not None
                text[name] = [spec.description for spec in config.listens]
            elif value != defaults[name] and value is not None:
                text[name] = _asTOML(value)
        balancer = self._service.balancer
        pools: dict[str, Any] = {}
        for pool in balancer.pools.values():
            table = {
                key: _asTOML(value)
                for key, value in pool.config.options.items()
                if key != "backends" and value != defaults[key] and value is not None
            }
            # Backends from DNS are written as their source, not as the
            # addresses it gives now.
            discovered = {id(b) for b in balancer.discovered(pool.name)}
            live = [
                b
                for b in pool.backends.backends
                if not balancer.removing(b) and id(b) not in discovered
            ]
            table["backends"] = [
                (b.url if b.scheme != "http" else b.authority)
                + (f"={b.weight}" if b.weight != 1 else "")
                for b in live
            ] + [str(source) for source in pool.config.sources]
            draining = [b.authority for b in live if b.draining]
            if draining:
                table["draining"] = draining
            pools[pool.name] = table
        text["pools"] = pools
        routes = balancer.config.routes
        if options.layout is not None and options.layout.routes is not None:
            text["routes"] = [routeAsText(rule) for rule in routes.rules]
            if routes.noRouteStatus != 404:
                text["no-route-status"] = routes.noRouteStatus
        return text

    def describeTOML(self) -> str:
        """
        L{describe} as TOML.
        """
        return (
            "# The running configuration of lbproxy, as a config file (--config).\n"
            + tomli_w.dumps(self.describe())
        )


def _asTOML(value: Any) -> Any:
    """
    An option value as a config file would best state it: numbers as
    numbers, flags as true or false, lists of text.
    """
    if isinstance(value, list):
        return [str(item) for item in value]
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return bool(value) if value in (0, 1) else value
    if isinstance(value, str):
        if re.fullmatch(r"-?\d+", value):
            return int(value)
        if re.fullmatch(r"-?\d+\.\d*", value):
            return float(value)
    return value


__all__ = ["APPLIED_BY_RELOAD", "Reloader"]
