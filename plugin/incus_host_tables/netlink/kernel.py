"""Kernel I/O over one rtnetlink socket: filtered dumps and atomic batches.

A batch is sent as many messages per system call without per-message acks:
the kernel still reports every failure with its sequence number, and one
final acknowledged no-op marks the end. Every failure is thus matched to its
change, and the changes that went through are undone in reverse order.
"""

from __future__ import annotations

import errno as errno_mod
import os
import socket
from collections.abc import Iterator, Sequence
from typing import NamedTuple

from ..model import KernelRoute, KernelRule, Route, Rule, describe_route, describe_rule
from . import codec as c

SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
NETLINK_GET_STRICT_CHK = 12
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33

BUFFER_BYTES = 8 << 20
RECV_BYTES = 1 << 20
# Messages per system call: bounds how many failure reports can queue up
# before they are read, so none is ever dropped for lack of buffer.
CHUNK_MESSAGES = 2048

# rtm_flags a dump reports but a request must not carry (linkdown, dead...):
# keep only "onlink".
_RTNH_F_ONLINK = 0x4


class NetlinkError(OSError):
    """The kernel refused a request."""


class ApplyError(Exception):
    """A batch failed and was rolled back (``rolled_back``) or, rarely, could
    not be completely undone (``undo_failures`` lists what remains)."""

    def __init__(
        self, change: str, err: int, text: str, undo_failures: list[str] | None = None
    ) -> None:
        self.change = change
        self.errno = err
        self.kernel_message = text
        self.undo_failures = undo_failures or []
        reason = os.strerror(err) + (f" ({text})" if text else "")
        msg = f"{change}: {reason}"
        if self.undo_failures:
            msg += "; could NOT undo: " + "; ".join(self.undo_failures)
        else:
            msg += "; every change of this apply was undone"
        super().__init__(msg)

    @property
    def rolled_back(self) -> bool:
        return not self.undo_failures


class Change(NamedTuple):
    """One step of a batch. ``kind`` names how ``item`` is done and undone."""

    kind: str  # add-route | adopt-route | del-route | add-rule | del-rule
    item: Route | KernelRoute | Rule | KernelRule
    oif: int = 0

    def describe(self, ifname: str | None = None) -> str:
        item = self.item
        if isinstance(item, KernelRoute):
            return f"{self.kind} {describe_route(item.route, ifname)}"
        if isinstance(item, Route):
            return f"{self.kind} {describe_route(item, ifname)}"
        if isinstance(item, KernelRule):
            return f"{self.kind} {describe_rule(item.rule)}"
        return f"{self.kind} {describe_rule(item)}"


def _request_body(raw: bytes) -> bytes:
    """A dumped rtmsg made fit to send back as a request."""
    flags = int.from_bytes(raw[8:12], "little") & _RTNH_F_ONLINK
    return raw[:8] + flags.to_bytes(4, "little") + raw[12:]


_CREATE = c.NLM_F_REQUEST | c.NLM_F_CREATE | c.NLM_F_EXCL
_REPLACE = c.NLM_F_REQUEST | c.NLM_F_CREATE | c.NLM_F_REPLACE
_DELETE = c.NLM_F_REQUEST


def encode(change: Change, protocol: int, undo: bool = False) -> tuple[int, int, bytes]:
    """(message type, flags, body) that does -- or undoes -- ``change``."""
    kind, item, oif = change
    if kind == "add-route":
        assert isinstance(item, Route)
        body = c.route_body(item, oif, protocol)
        return (c.RTM_DELROUTE, _DELETE, body) if undo else (c.RTM_NEWROUTE, _CREATE, body)
    if kind == "del-route":
        assert isinstance(item, KernelRoute)
        body = _request_body(item.raw)
        return (c.RTM_NEWROUTE, _CREATE, body) if undo else (c.RTM_DELROUTE, _DELETE, body)
    if kind == "adopt-route":
        assert isinstance(item, KernelRoute)
        body = _request_body(item.raw)
        return c.RTM_NEWROUTE, _REPLACE, body if undo else c.with_protocol(body, protocol)
    if kind == "add-rule":
        assert isinstance(item, Rule)
        body = c.rule_body(item, protocol)
        return (c.RTM_DELRULE, _DELETE, body) if undo else (c.RTM_NEWRULE, _CREATE, body)
    if kind == "del-rule":
        assert isinstance(item, KernelRule)
        return (c.RTM_NEWRULE, _CREATE, item.raw) if undo else (c.RTM_DELRULE, _DELETE, item.raw)
    raise ValueError(f"unknown change kind {kind!r}")


class Netlink:
    """One NETLINK_ROUTE socket in the caller's network namespace."""

    def __init__(self) -> None:
        sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE
        )
        try:
            sock.bind((0, 0))
            for opt in (NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK, NETLINK_CAP_ACK):
                sock.setsockopt(SOL_NETLINK, opt, 1)
            for force, plain in (
                (SO_SNDBUFFORCE, socket.SO_SNDBUF),
                (SO_RCVBUFFORCE, socket.SO_RCVBUF),
            ):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, force, BUFFER_BYTES)
                except PermissionError:
                    sock.setsockopt(socket.SOL_SOCKET, plain, BUFFER_BYTES)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _next_seq(self, count: int = 1) -> int:
        first = self._seq + 1
        self._seq += count
        return first

    # -- reading -----------------------------------------------------------

    def ifindex(self, ifname: str) -> int | None:
        """Index of the interface in this socket's namespace; None if absent."""
        seq = self._next_seq()
        self._sock.send(c.link_request(seq, ifname))
        while True:
            buf = self._sock.recv(RECV_BYTES)
            for kind, flags, mseq, start, end in c.iter_messages(buf):
                if mseq != seq:
                    continue
                if kind == c.NLMSG_ERROR:
                    err, text = c.decode_error(buf, start, end, flags)
                    if err in (errno_mod.ENODEV, errno_mod.ENOENT):
                        return None
                    raise NetlinkError(err, f"{os.strerror(err)} {text}".strip())
                if kind == c.RTM_NEWLINK:
                    return c.decode_link_index(buf, start)

    def _dump(self, request: bytes, seq: int) -> Iterator[tuple[bytes, int, int]]:
        """(buffer, body start, body end) of every message of one dump."""
        self._sock.send(request)
        while True:
            buf = self._sock.recv(RECV_BYTES)
            for kind, flags, mseq, start, end in c.iter_messages(buf):
                if mseq != seq:
                    continue  # a late reply to an earlier request
                if kind == c.NLMSG_DONE:
                    if flags & c.NLM_F_DUMP_INTR:
                        raise NetlinkError(errno_mod.EAGAIN, "dump interrupted by a change")
                    return
                if kind == c.NLMSG_ERROR:
                    err, text = c.decode_error(buf, start, end, flags)
                    if err == errno_mod.ENOENT:
                        return  # the filtered table does not exist: nothing in it
                    raise NetlinkError(err, f"{os.strerror(err)} {text}".strip())
                yield buf, start, end

    def routes(
        self, family: int, *, oif: int | None = None, table: int = 0, protocol: int = 0
    ) -> list[KernelRoute]:
        """Routes of ``family`` the kernel filtered by interface, table and
        protocol (0: any). Retried when a concurrent change interrupts it."""
        for attempt in range(5):
            seq = self._next_seq()
            req = c.dump_request(
                c.RTM_GETROUTE, seq, family, table=table, protocol=protocol, oif=oif
            )
            try:
                decode = c.decode_route
                return [decode(buf, s, e) for buf, s, e in self._dump(req, seq)]
            except NetlinkError as err:
                if err.errno != errno_mod.EAGAIN or attempt == 4:
                    raise
        raise AssertionError("unreachable")

    def rules(self, family: int, *, protocol: int = 0) -> list[KernelRule]:
        """Policy rules of ``family``; only those of ``protocol`` when given."""
        for attempt in range(5):
            seq = self._next_seq()
            req = c.dump_request(c.RTM_GETRULE, seq, family)
            try:
                found = [c.decode_rule(buf, s, e) for buf, s, e in self._dump(req, seq)]
            except NetlinkError as err:
                if err.errno != errno_mod.EAGAIN or attempt == 4:
                    raise
                continue
            return [r for r in found if not protocol or r.protocol == protocol]
        raise AssertionError("unreachable")

    # -- writing -----------------------------------------------------------

    def _send_batch(
        self, messages: Sequence[tuple[int, int, bytes]]
    ) -> tuple[dict[int, tuple[int, str]], int]:
        """Send messages (seq = first + index); return failures by index and
        how many were sent. Stops sending after the chunk where one failed."""
        failures: dict[int, tuple[int, str]] = {}
        first = self._next_seq(len(messages) + 1)
        sent = 0
        pack = c.message
        while sent < len(messages) and not failures:
            chunk = messages[sent : sent + CHUNK_MESSAGES]
            data = b"".join(
                pack(kind, flags, first + sent + i, body)
                for i, (kind, flags, body) in enumerate(chunk)
            )
            self._sock.send(data)
            sent += len(chunk)
            # rtnetlink handles requests synchronously inside send(): every
            # report for this chunk is already queued.
            self._collect(first, failures, until=None)
        end_seq = self._next_seq()
        self._sock.send(c.message(c.NLMSG_NOOP, c.NLM_F_REQUEST | c.NLM_F_ACK, end_seq, b""))
        self._collect(first, failures, until=end_seq)
        return failures, sent

    def _collect(self, first: int, failures: dict[int, tuple[int, str]], until: int | None) -> None:
        while True:
            try:
                buf = self._sock.recv(RECV_BYTES, 0 if until is not None else socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            for kind, flags, seq, start, end in c.iter_messages(buf):
                if kind != c.NLMSG_ERROR:
                    continue
                if seq == until:
                    return
                err, text = c.decode_error(buf, start, end, flags)
                if err and seq >= first:
                    failures[seq - first] = (err, text)

    def apply(self, changes: Sequence[Change], protocol: int, ifname: str | None = None) -> None:
        """Make every change, or none: on a failure, undo the ones made (in
        reverse order) and raise ApplyError naming the failed change."""
        if not changes:
            return
        messages = [encode(ch, protocol) for ch in changes]
        failures, sent = self._send_batch(messages)
        if not failures:
            return
        first_bad = min(failures)
        err, text = failures[first_bad]
        done = [i for i in range(sent) if i not in failures]
        undo = [encode(changes[i], protocol, undo=True) for i in reversed(done)]
        undo_failures: list[str] = []
        if undo:
            undo_errors, _ = self._send_batch_all(undo)
            for j, (uerr, utext) in sorted(undo_errors.items()):
                change = changes[list(reversed(done))[j]]
                undo_failures.append(
                    f"{change.describe(ifname)}: {os.strerror(uerr)} {utext}".strip()
                )
        raise ApplyError(changes[first_bad].describe(ifname), err, text, undo_failures)

    def _send_batch_all(
        self, messages: Sequence[tuple[int, int, bytes]]
    ) -> tuple[dict[int, tuple[int, str]], int]:
        """Like _send_batch, but keeps going after failures (for undo)."""
        failures: dict[int, tuple[int, str]] = {}
        sent = 0
        while sent < len(messages):
            part, n = self._send_batch(messages[sent:])
            failures.update({sent + i: v for i, v in part.items()})
            sent += n
        return failures, sent
