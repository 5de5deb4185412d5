"""rtnetlink notifications: what changed in the kernel's routes, rules and
links, and who changed it.

A notification's header carries the netlink port of the socket whose
request made the change (0: the kernel itself, e.g. a link going down).
The daemon knows its own sockets' ports, so it can tell its own changes
from everyone else's without guessing.

When the socket's receive buffer overflows the kernel drops notifications
and the next read fails with ENOBUFS: ``Overflow`` says so, and the reader
must then re-read the whole state (nothing else tells what was lost).
"""

from __future__ import annotations

import errno
import select
import socket
from dataclasses import dataclass
from enum import Enum

from ..model import KernelRoute, KernelRule
from . import codec as c

SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
SO_RCVBUFFORCE = 33
BUFFER_BYTES = 8 << 20
RECV_BYTES = 1 << 20

GROUPS = (
    c.RTNLGRP_LINK,
    c.RTNLGRP_IPV4_ROUTE,
    c.RTNLGRP_IPV6_ROUTE,
    c.RTNLGRP_IPV4_RULE,
    c.RTNLGRP_IPV6_RULE,
)


class NotificationKind(Enum):
    ROUTE_ADDED = "route-added"
    ROUTE_DELETED = "route-deleted"
    RULE_ADDED = "rule-added"
    RULE_DELETED = "rule-deleted"
    LINK_CHANGED = "link-changed"
    LINK_DELETED = "link-deleted"


@dataclass(frozen=True)
class Link:
    index: int
    flags: int
    name: str

    @property
    def up(self) -> bool:
        """Administratively up: routes on it can be added (a missing
        carrier only marks them linkdown)."""
        return bool(self.flags & c.IFF_UP)


@dataclass(frozen=True)
class Notification:
    kind: NotificationKind
    sender: int  # netlink port of the change's requester; 0 = the kernel
    route: KernelRoute | None = None
    rule: KernelRule | None = None
    link: Link | None = None


_KINDS = {
    c.RTM_NEWROUTE: NotificationKind.ROUTE_ADDED,
    c.RTM_DELROUTE: NotificationKind.ROUTE_DELETED,
    c.RTM_NEWRULE: NotificationKind.RULE_ADDED,
    c.RTM_DELRULE: NotificationKind.RULE_DELETED,
    c.RTM_NEWLINK: NotificationKind.LINK_CHANGED,
    c.RTM_DELLINK: NotificationKind.LINK_DELETED,
}


def decode_notifications(buf: bytes) -> list[Notification]:
    """Every route, rule and link notification in one receive buffer."""
    out: list[Notification] = []
    offset = 0
    while offset + c.HDR <= len(buf):
        length, mtype, _flags, _seq, sender = c.NLMSGHDR.unpack_from(buf, offset)
        if length < c.HDR:
            raise ValueError(f"malformed netlink message length {length}")
        start, end = offset + c.HDR, offset + length
        kind = _KINDS.get(mtype)
        if kind is not None:
            if mtype in (c.RTM_NEWROUTE, c.RTM_DELROUTE):
                out.append(Notification(kind, sender, route=c.decode_route(buf, start, end)))
            elif mtype in (c.RTM_NEWRULE, c.RTM_DELRULE):
                out.append(Notification(kind, sender, rule=c.decode_rule(buf, start, end)))
            else:
                out.append(Notification(kind, sender, link=Link(*c.decode_link(buf, start, end))))
        offset += (length + 3) & ~3
    return out


class Overflow(Exception):
    """The kernel dropped notifications (ENOBUFS): re-read everything."""


class Monitor:
    """A socket subscribed to route, rule and link notifications (IPv4 and
    IPv6), in the namespace of the thread that opens it."""

    def __init__(self, buffer_bytes: int = BUFFER_BYTES) -> None:
        self._sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE
        )
        try:
            self._sock.bind((0, 0))
            for group in GROUPS:
                self._sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
            try:
                self._sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, buffer_bytes)
            except PermissionError:
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer_bytes)
        except BaseException:
            self._sock.close()
            raise

    def fileno(self) -> int:
        return self._sock.fileno()

    def read(self, timeout: float | None = None) -> list[Notification]:
        """The notifications of one receive buffer ([] after ``timeout``)."""
        if timeout is not None:
            ready, _, _ = select.select([self._sock], [], [], timeout)
            if not ready:
                return []
        try:
            buf = self._sock.recv(RECV_BYTES)
        except OSError as err:
            if err.errno == errno.ENOBUFS:
                raise Overflow from err
            raise
        return decode_notifications(buf)

    def close(self) -> None:
        self._sock.close()
