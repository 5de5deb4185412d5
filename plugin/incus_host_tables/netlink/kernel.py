"""Kernel I/O over one rtnetlink socket: filtered dumps and atomic batches.

A batch is sent as many messages per system call without per-message acks:
the kernel still reports every failure with its sequence number, and one
final acknowledged no-op marks the end. Every failure is thus matched to its
change, and the changes that went through are undone in reverse order.

One kind of change cannot be undone exactly: a deleted policy rule comes
back after the rules of equal preference, not in its old place. So rule
deletions (last in every plan) are sent one by one, and only once all
before them went through: a failed apply leaves the rules as they were,
unless one of those very deletions fails.

Dumps ask the kernel to filter (strict checking: by table, protocol and
output interface), so the routes of other interfaces never reach Python.
Both directions are bulk code paths (see codec and docs/performance.md).
"""

from __future__ import annotations

import errno as errno_mod
import os
import socket
import threading
from bisect import bisect_right
from collections.abc import Collection, Iterator, Sequence
from itertools import groupby
from operator import itemgetter
from typing import NamedTuple

from ..model import (
    AF_INET,
    AF_INET6,
    KernelRoute,
    KernelRule,
    Route,
    Rule,
    describe_route,
    describe_rule,
    gc_paused,
)
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


_RTM_FLAGS = itemgetter(slice(8, 12))
_NO_FLAGS = bytes(4)


def _request_bodies(raws: list[bytes]) -> list[bytes]:
    """``_request_body`` of each; dumped routes nearly always carry no flags
    at all, and then they are sent back as they are."""
    if list(map(_RTM_FLAGS, raws)).count(_NO_FLAGS) == len(raws):
        return raws
    return list(map(_request_body, raws))


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


_KIND = itemgetter(0)
_KIND_AND_OIF = itemgetter(0, 2)
_ITEM = itemgetter(1)
_RAW = itemgetter(5)  # KernelRoute.raw


def encode_batch(
    changes: Sequence[Change], protocol: int, first_seq: int, undo: bool = False
) -> list[bytes]:
    """The complete messages, sequence number ``first_seq + i`` for the i-th
    change: ``c.message(*encode(change, protocol, undo)[:2], seq, body)``,
    byte for byte, made run by run of one kind of change. Routes, the bulk
    of any batch, are encoded by codec's templates (add) or sent back as
    dumped (delete, adopt) without a Python call per route."""
    out: list[bytes] = []
    seq = first_seq
    for (kind, oif), group in groupby(changes, key=_KIND_AND_OIF):
        run = list(map(_ITEM, group))
        if kind == "add-route":
            mtype, flags = (c.RTM_DELROUTE, _DELETE) if undo else (c.RTM_NEWROUTE, _CREATE)
            out += c.route_messages(run, oif, protocol, mtype, flags, seq)
        elif kind == "del-route":
            mtype, flags = (c.RTM_NEWROUTE, _CREATE) if undo else (c.RTM_DELROUTE, _DELETE)
            out += c.raw_messages(_request_bodies(list(map(_RAW, run))), mtype, flags, seq)
        else:  # rules and adoptions: a handful, one by one
            for i, item in enumerate(run):
                mtype, flags, body = encode(Change(kind, item, oif), protocol, undo)
                out.append(c.message(mtype, flags, seq + i, body))
        seq += len(run)
    return out


def _open_socket() -> socket.socket:
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
    return sock


class Netlink:
    """NETLINK_ROUTE sockets in the caller's network namespace: the main one,
    and a second one for the IPv6 half of ``link_routes`` (opened now, so
    that it belongs to the same namespace)."""

    def __init__(self) -> None:
        self._sock = _open_socket()
        try:
            self._sock6 = _open_socket()
        except BaseException:
            self._sock.close()
            raise
        self._seq = 0
        self._seq_lock = threading.Lock()

    def close(self) -> None:
        self._sock.close()
        self._sock6.close()

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _next_seq(self, count: int = 1) -> int:
        with self._seq_lock:
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
        self,
        family: int,
        *,
        oif: int | None = None,
        table: int = 0,
        protocol: int = 0,
        exclude_oif: int | None = None,
    ) -> list[KernelRoute]:
        """Routes of ``family`` the kernel filtered by interface, table and
        protocol (0: any); those on ``exclude_oif`` are dropped while
        decoding (the kernel cannot filter that way). Retried when a
        concurrent change interrupts the dump."""
        return self._routes(self._sock, family, oif, table, protocol, exclude_oif)

    def link_routes(self, oif: int) -> list[KernelRoute]:
        """Every route on interface ``oif``, in every table: IPv4, then IPv6.

        The kernel filters them, but to do so it walks every route of the
        family (0.1-0.15 us each: 20-30 ms among 200,000). The two walks are
        independent, so the IPv6 one runs at the same time, on the second
        socket, from a helper thread: the walk happens inside its system
        calls, which release the GIL."""
        ipv6: list[list[KernelRoute]] = []
        failed: list[BaseException] = []

        def dump_ipv6() -> None:
            try:
                ipv6.append(self._routes(self._sock6, AF_INET6, oif, 0, 0, None))
            except BaseException as err:  # handed to the caller below
                failed.append(err)

        with gc_paused():  # paused for both threads; resumed after the join
            helper = threading.Thread(target=dump_ipv6, name="ipv6-route-dump", daemon=True)
            helper.start()
            try:
                ipv4 = self._routes(self._sock, AF_INET, oif, 0, 0, None)
            finally:
                helper.join()
        if failed:
            raise failed[0]
        return ipv4 + ipv6[0]

    def _routes(
        self,
        sock: socket.socket,
        family: int,
        oif: int | None,
        table: int,
        protocol: int,
        exclude_oif: int | None,
    ) -> list[KernelRoute]:
        for attempt in range(5):
            seq = self._next_seq()
            req = c.dump_request(
                c.RTM_GETROUTE, seq, family, table=table, protocol=protocol, oif=oif
            )
            try:
                return self._dump_routes(sock, req, seq, exclude_oif)
            except NetlinkError as err:
                if err.errno != errno_mod.EAGAIN or attempt == 4:
                    raise
        raise AssertionError("unreachable")

    def _dump_routes(
        self, sock: socket.socket, request: bytes, seq: int, exclude_oif: int | None
    ) -> list[KernelRoute]:
        """One route dump, decoded in bulk; ends as ``_dump`` does."""
        found: list[KernelRoute] = []
        layouts: dict[int, c._RouteLayout | None] = {}
        sock.send(request)
        with gc_paused():
            while True:
                buf = sock.recv(RECV_BYTES)
                end = c.decode_route_dump(buf, seq, found, layouts, exclude_oif)
                if end is None:
                    continue
                kind, flags, start, stop = end
                if kind == c.NLMSG_DONE:
                    if flags & c.NLM_F_DUMP_INTR:
                        raise NetlinkError(errno_mod.EAGAIN, "dump interrupted by a change")
                    return found
                err, text = c.decode_error(buf, start, stop, flags)
                if err == errno_mod.ENOENT:
                    return []  # the filtered table does not exist: nothing in it
                raise NetlinkError(err, f"{os.strerror(err)} {text}".strip())

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
        self, messages: Sequence[bytes], first: int, alone: Collection[int] = ()
    ) -> tuple[dict[int, tuple[int, str]], int]:
        """Send complete messages (the i-th with sequence number first + i);
        return failures by index and how many were sent. Stops sending after
        the chunk where one failed. The messages whose indexes are in
        ``alone`` each go in a send of their own."""
        failures: dict[int, tuple[int, str]] = {}
        bounds = sorted(alone)
        sent = 0
        while sent < len(messages) and not failures:
            if sent in alone:
                stop = sent + 1
            else:
                later = bisect_right(bounds, sent)
                stop = min(
                    sent + CHUNK_MESSAGES,
                    bounds[later] if later < len(bounds) else len(messages),
                )
            chunk = messages[sent:stop]
            self._sock.send(b"".join(chunk))
            sent = stop
            # rtnetlink handles requests synchronously inside send(): every
            # report for this chunk is already queued.
            self._collect(first, len(messages), failures, until=None)
        end_seq = self._next_seq()
        self._sock.send(c.message(c.NLMSG_NOOP, c.NLM_F_REQUEST | c.NLM_F_ACK, end_seq, b""))
        self._collect(first, len(messages), failures, until=end_seq)
        return failures, sent

    def _collect(
        self, first: int, count: int, failures: dict[int, tuple[int, str]], until: int | None
    ) -> None:
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
                if err and first <= seq < first + count:
                    failures[seq - first] = (err, text)

    def apply(self, changes: Sequence[Change], protocol: int, ifname: str | None = None) -> None:
        """Make every change, or none: on a failure, undo the ones made (in
        reverse order) and raise ApplyError naming the failed change."""
        if not changes:
            return
        with gc_paused():
            first = self._next_seq(len(changes))
            messages = encode_batch(changes, protocol, first)
            # Rule deletions: see the module docstring.
            alone = {i for i, kind in enumerate(map(_KIND, changes)) if kind == "del-rule"}
            failures, sent = self._send_batch(messages, first, alone)
        if not failures:
            return
        first_bad = min(failures)
        err, text = failures[first_bad]
        done = [changes[i] for i in reversed(range(sent)) if i not in failures]
        undo_failures: list[str] = []
        if done:
            first = self._next_seq(len(done))
            undo_errors = self._send_batch_all(
                encode_batch(done, protocol, first, undo=True), first
            )
            for j, (uerr, utext) in sorted(undo_errors.items()):
                undo_failures.append(
                    f"{done[j].describe(ifname)}: {os.strerror(uerr)} {utext}".strip()
                )
        raise ApplyError(changes[first_bad].describe(ifname), err, text, undo_failures)

    def _send_batch_all(self, messages: Sequence[bytes], first: int) -> dict[int, tuple[int, str]]:
        """Like _send_batch, but keeps going after failures (for undo)."""
        failures: dict[int, tuple[int, str]] = {}
        sent = 0
        while sent < len(messages):
            part, n = self._send_batch(messages[sent:], first + sent)
            failures.update({sent + i: v for i, v in part.items()})
            sent += n
        return failures
