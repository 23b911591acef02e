"""Which ``Host`` header values a server answers (DNS-rebinding defence), with no web framework.

A page on ``attacker.example`` whose DNS name is re-pointed at 127.0.0.1 makes the victim's browser
talk to a loopback server *same-origin* — but the browser still sends ``Host: attacker.example``.
Answering only the bound address, the loopback names and configured names closes that door.

Kept free of FastAPI/Starlette (stdlib only) so the standalone dashboard, a Flask app that may run
on a host without the server extra, applies the very same rules (``dashboard.auth.guard``).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "ip6-localhost"})
WILDCARD_BINDS = frozenset({"0.0.0.0", "::", ""})
REFUSAL = ("invalid Host header: this server answers only its own address, localhost "
           "and the names in OPTISCOPE_ALLOWED_HOSTS")


def host_name(header: str) -> str:
    """The name part of a ``Host`` header: lower-case, port and IPv6 brackets removed."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    if value.count(":") == 1:
        return value.split(":", 1)[0]
    return value  # a bare name, or a bare IPv6 literal without brackets


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class HostPolicy:
    """Which ``Host`` names one server bound to ``bind`` answers (``extra_hosts``: "*" = any)."""

    def __init__(self, bind: str, extra_hosts: Iterable[str] = ()) -> None:
        extra = {h.strip().lower() for h in extra_hosts if h.strip()}
        bind = bind.strip("[]").lower()
        self.any_host = "*" in extra
        self.wildcard = bind in WILDCARD_BINDS
        names = set(LOOPBACK_HOSTS) | {host_name(h) for h in extra} | {bind}
        if self.wildcard:  # bound everywhere: the machine's own names are its addresses too
            hostname = socket.gethostname().lower()
            names |= {hostname, hostname.split(".")[0]}
        self.names = frozenset(n for n in names if n)

    def allows(self, header: str | None) -> bool:
        """Whether a request carrying this ``Host`` header is for us."""
        if self.any_host:
            return True
        if not header:
            return False
        name = host_name(header)
        if name in self.names:
            return True
        # Bound to a wildcard address, any IP literal is one of ours (or routed to us): rebinding
        # needs a DNS *name*, so an IP literal cannot be an attacker's origin.
        return self.wildcard and _is_ip(name)
