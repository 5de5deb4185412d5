"""Kernel I/O over one rtnetlink socket: filtered dumps and atomic batches.

A batch is sent as many messages per system call without per-message acks:
the kernel still reports every failure with its sequence number, and one
final acknowledged no-op marks the end. Every failure is thus matched to its
change, and the changes that went through are undone in reverse order.

Deletions come last in every plan, and are sent only once everything
before them went through: a refused add or adoption never takes a route or
a rule away, not even for a moment. And one kind of change cannot be
undone exactly: a deleted policy rule comes back after the rules of equal
preference, not in its old place. So rule deletions are sent one by one: a
failed apply leaves the rules as they were, unless one of those very
deletions fails.

Reports can be lost: when the socket's receive buffer overflows, the kernel
drops them and the next read fails with ENOBUFS. Then nothing more is sent,
the changes that took effect are read back from the kernel (readback.py)
and undone: the apply fails closed, leaving the host as it was.

Dumps ask the kernel to filter (strict checking: by table, protocol and
output interface), so the routes of other interfaces never reach Python.
Both directions are bulk code paths (see codec and docs/performance.md).
"""

from __future__ import annotations

# The C module: `socket` itself adds `selectors` and ~400 enum members
# to the start-up of every `device` command.
import _socket as socket
import contextlib
import errno as errno_mod
import os
import threading
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from enum import StrEnum
from itertools import groupby
from operator import itemgetter
from typing import NamedTuple, TypeVar

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
from . import dump
from .dump import DumpedRoutes, RouteLayout

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


# What a dump decodes into: a list of routes, or the routes kept as dumped.
Out = TypeVar("Out", list[KernelRoute], DumpedRoutes)


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


class _AcksLost(Exception):
    """The receive buffer overflowed while a batch's failure reports were
    read: some may be lost. ``sent``: how many of its messages were sent."""

    def __init__(self, sent: int) -> None:
        super().__init__(sent)
        self.sent = sent


class ChangeKind(StrEnum):
    """How a change's item is done and undone (its text is what messages show)."""

    ADD_ROUTE = "add-route"
    ADOPT_ROUTE = "adopt-route"
    DEL_ROUTE = "del-route"
    ADD_RULE = "add-rule"
    DEL_RULE = "del-rule"


class Change(NamedTuple):
    """One step of a batch. ``kind`` names how ``item`` is done and undone."""

    kind: ChangeKind
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
    return c.masked_rtm_flags(raw, _RTNH_F_ONLINK)


_CREATE = c.NLM_F_REQUEST | c.NLM_F_CREATE | c.NLM_F_EXCL
_REPLACE = c.NLM_F_REQUEST | c.NLM_F_CREATE | c.NLM_F_REPLACE
_DELETE = c.NLM_F_REQUEST


def encode(change: Change, protocol: int, undo: bool = False) -> tuple[int, int, bytes]:
    """(message type, flags, body) that does -- or undoes -- ``change``."""
    kind, item, oif = change
    if kind == ChangeKind.ADD_ROUTE:
        assert isinstance(item, Route)
        body = c.route_body(item, oif, protocol)
        return (c.RTM_DELROUTE, _DELETE, body) if undo else (c.RTM_NEWROUTE, _CREATE, body)
    if kind == ChangeKind.DEL_ROUTE:
        assert isinstance(item, KernelRoute)
        body = _request_body(item.raw)
        return (c.RTM_NEWROUTE, _CREATE, body) if undo else (c.RTM_DELROUTE, _DELETE, body)
    if kind == ChangeKind.ADOPT_ROUTE:
        assert isinstance(item, KernelRoute)
        body = _request_body(item.raw)
        return c.RTM_NEWROUTE, _REPLACE, body if undo else c.with_protocol(body, protocol)
    if kind == ChangeKind.ADD_RULE:
        assert isinstance(item, Rule)
        body = c.rule_body(item, protocol)
        return (c.RTM_DELRULE, _DELETE, body) if undo else (c.RTM_NEWRULE, _CREATE, body)
    if kind == ChangeKind.DEL_RULE:
        assert isinstance(item, KernelRule)
        return (c.RTM_NEWRULE, _CREATE, item.raw) if undo else (c.RTM_DELRULE, _DELETE, item.raw)
    raise ValueError(f"unknown change kind {kind!r}")


class ChangeRun(NamedTuple):
    """Consecutive changes of one kind: ``Change(kind, item, oif)`` for each
    of ``items``. A plan is a handful of runs of up to thousands of items;
    batches are encoded and sent run by run, without a Change per item."""

    kind: ChangeKind
    items: Sequence[Route | KernelRoute | Rule | KernelRule]
    oif: int = 0


_KIND_AND_OIF = itemgetter(0, 2)
_ITEM = itemgetter(1)
_RAW = itemgetter(5)  # KernelRoute.raw


def runs_of(changes: Iterable[Change]) -> list[ChangeRun]:
    return [
        ChangeRun(kind, list(map(_ITEM, group)), oif)
        for (kind, oif), group in groupby(changes, key=_KIND_AND_OIF)
    ]


def changes_of(runs: Iterable[ChangeRun]) -> list[Change]:
    return [Change(run.kind, item, run.oif) for run in runs for item in run.items]


def encode_batch(
    changes: Sequence[Change], protocol: int, first_seq: int, undo: bool = False
) -> c.Batch:
    """The messages that make (or, with ``undo``, undo) ``changes``, the i-th
    with sequence number ``first_seq + i``: ``c.message(type, flags, seq,
    body)`` of ``encode(change, protocol, undo)``, byte for byte."""
    return encode_runs(runs_of(changes), protocol, first_seq, undo)


def encode_runs(
    runs: Iterable[ChangeRun], protocol: int, first_seq: int, undo: bool = False
) -> c.Batch:
    """``encode_batch`` of the changes of ``runs``, made run by run. Routes,
    the bulk of any batch, are encoded by codec's column-wise builders;
    rules and adoptions, a handful, one by one."""
    batch = c.Batch(first_seq)
    for kind, items, oif in runs:
        if kind == ChangeKind.ADD_ROUTE:
            mtype, flags = (c.RTM_DELROUTE, _DELETE) if undo else (c.RTM_NEWROUTE, _CREATE)
            batch.add_routes(items, oif, protocol, mtype, flags)  # type: ignore[arg-type]
        elif kind == ChangeKind.DEL_ROUTE:
            mtype, flags = (c.RTM_NEWROUTE, _CREATE) if undo else (c.RTM_DELROUTE, _DELETE)
            # Each sent back as a request: see _request_body.
            if isinstance(items, DumpedRoutes):
                items.add_requests(batch, mtype, flags, _RTNH_F_ONLINK)
            else:
                batch.add_bodies(map(_RAW, items), mtype, flags, rtm_flags_mask=_RTNH_F_ONLINK)
        else:
            for item in items:
                batch.add(*encode(Change(kind, item, oif), protocol, undo))
    return batch


def _breaks(runs: Sequence[ChangeRun]) -> set[int]:
    """Where a new send must start (see the module docstring): at the first
    deletion, and around every rule deletion."""
    breaks: set[int] = set()
    start = 0
    for kind, items, _oif in runs:
        if kind in (ChangeKind.DEL_ROUTE, ChangeKind.DEL_RULE) and items and not breaks:
            breaks.add(start)
        if kind == ChangeKind.DEL_RULE:
            breaks.update(range(start, start + len(items) + 1))
        start += len(items)
    return breaks


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


class RouteQuery(NamedTuple):
    """The filters of one route dump (see ``Netlink.routes``)."""

    family: int
    oif: int | None = None
    table: int = 0
    protocol: int = 0
    exclude_oif: int | None = None


class Netlink:
    """NETLINK_ROUTE sockets in the caller's network namespace: the main one,
    and a second one for ``routes_many`` (opened now, so that it belongs to
    the same namespace)."""

    def __init__(self) -> None:
        self._sock = _open_socket()
        try:
            self._sock2 = _open_socket()
        except BaseException:
            self._sock.close()
            raise
        # IPv4 lookups in one table (facts.py probes main with it); opened
        # now for the namespace, as the others. A kernel without it: None.
        self._fib: socket.socket | None = None
        try:
            self._fib = socket.socket(
                socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, c.NETLINK_FIB_LOOKUP
            )
            self._fib.bind((0, 0))
            self._fib.settimeout(1.0)  # an answer never comes: taken as no lookup
        except OSError:
            if self._fib is not None:
                self._fib.close()
            self._fib = None
        self._seq = 0
        self._seq_lock = threading.Lock()

    def close(self) -> None:
        self._sock.close()
        self._sock2.close()
        if self._fib is not None:
            self._fib.close()

    def ports(self) -> tuple[int, int]:
        """The netlink ports of this object's sockets: the kernel's
        notifications of the changes made through them carry these."""
        return self._sock.getsockname()[0], self._sock2.getsockname()[0]

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _next_seq(self, count: int = 1) -> int:
        """The first of ``count`` fresh sequence numbers (32-bit, kept far
        from wrapping: a long-lived daemon sends many)."""
        with self._seq_lock:
            if self._seq + count >= 1 << 31:
                self._seq = 0
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
        return self._routes(self._sock, family, oif, table, protocol, exclude_oif, out=list)

    def link_routes(self, oif: int) -> list[KernelRoute]:
        """Every route on interface ``oif``, in every table: IPv4, then IPv6."""
        ipv4, ipv6 = self.routes_many([RouteQuery(AF_INET, oif=oif), RouteQuery(AF_INET6, oif=oif)])
        return ipv4 + ipv6

    def routes_many(self, queries: Sequence[RouteQuery]) -> list[list[KernelRoute]]:
        """``[self.routes(*query) for query in queries]``, two at a time.

        A dump costs the kernel a walk over every route of the family, even
        those its filters drop (0.07-0.15 us each: 15-30 ms among 200,000),
        and costs Python the decoding of what it returns. The walk happens
        inside system calls, which release the GIL: so a helper thread works
        through the queries on the second socket while this thread does on
        the first, and one's walk overlaps the other's walk or decoding."""
        return self._many(queries, list)

    def dumps_many(self, queries: Sequence[RouteQuery]) -> list[DumpedRoutes]:
        """``routes_many``, the routes kept as dumped (dump.DumpedRoutes):
        made into objects only if they are iterated."""
        return self._many(queries, DumpedRoutes)

    def _many(self, queries: Sequence[RouteQuery], new: Callable[[], Out]) -> list[Out]:
        results: list[Out] = [new() for _ in queries]
        todo = deque(range(len(queries)))
        failed: list[BaseException] = []

        def work(sock: socket.socket) -> None:
            while todo and not failed:
                try:
                    i = todo.popleft()  # atomic: the two threads share it
                except IndexError:
                    return
                results[i] = self._routes(sock, *queries[i], out=new)

        def helper_work() -> None:
            try:
                work(self._sock2)
            except BaseException as err:  # handed to the caller below
                failed.append(err)

        with gc_paused():  # paused for both threads; resumed after the join
            helper = None
            if len(queries) > 1:
                helper = threading.Thread(target=helper_work, name="route-dump", daemon=True)
                helper.start()
            try:
                work(self._sock)
            except BaseException as err:
                failed.append(err)
            finally:
                if helper is not None:
                    helper.join()
        if failed:
            raise failed[0]
        return results

    def _routes(
        self,
        sock: socket.socket,
        family: int,
        oif: int | None,
        table: int,
        protocol: int,
        exclude_oif: int | None,
        *,
        out: Callable[[], Out],
    ) -> Out:
        for attempt in range(5):
            seq = self._next_seq()
            req = c.dump_request(
                c.RTM_GETROUTE, seq, family, table=table, protocol=protocol, oif=oif
            )
            try:
                return self._dump_routes(sock, req, seq, exclude_oif, out())
            except NetlinkError as err:
                if err.errno != errno_mod.EAGAIN or attempt == 4:
                    raise
        raise AssertionError("unreachable")

    def _dump_routes(
        self, sock: socket.socket, request: bytes, seq: int, exclude_oif: int | None, found: Out
    ) -> Out:
        """One route dump into ``found``, decoded in bulk (or kept as
        dumped); ends as ``_dump`` does."""
        layouts: dict[int, RouteLayout | None] = {}
        sock.send(request)
        with gc_paused():
            while True:
                buf = sock.recv(RECV_BYTES)
                end = dump.decode_route_dump(buf, seq, found, layouts, exclude_oif)
                if end is None:
                    continue
                kind, flags, start, stop = end
                if kind == c.NLMSG_DONE:
                    if flags & c.NLM_F_DUMP_INTR:
                        raise NetlinkError(errno_mod.EAGAIN, "dump interrupted by a change")
                    return found
                err, text = c.decode_error(buf, start, stop, flags)
                if err == errno_mod.ENOENT:
                    return found  # the filtered table does not exist: nothing in it (nor before)
                raise NetlinkError(err, f"{os.strerror(err)} {text}".strip())

    def fib_lookup(self, table: int, dsts: Sequence[bytes]) -> list[int | None] | None:
        """For each IPv4 address, the prefix length of the longest match in
        ``table`` (an ID up to 255), looked up there alone (no policy
        rules); -1: no route of the table matches; None: the lookup failed
        otherwise (an unreachable route, ...). None for the whole when the
        kernel offers no such lookup. One request per system call: the
        kernel answers only the first message of each."""
        sock = self._fib
        if sock is None or not 0 < table < 256:
            return None
        out: list[int | None] = []
        try:
            for dst in dsts:
                seq = self._next_seq()
                sock.send(c.fib_lookup_request(seq, table, dst))
                while True:
                    buf = sock.recv(RECV_BYTES)
                    length, _kind, _flags, mseq, _pid = c.NLMSGHDR.unpack_from(buf, 0)
                    if mseq == seq and length >= c.HDR + c.FIB_RESULT_NL.size:
                        break
                err, prefixlen = c.decode_fib_lookup(buf, c.HDR)
                out.append(prefixlen if not err else (-1 if err == errno_mod.EAGAIN else None))
        except TimeoutError:
            return None
        return out

    def probe(
        self, family: int, dsts: Sequence[bytes], iif: int | None = None
    ) -> list[KernelRoute | int]:
        """For each address, the FIB entry a lookup matches (a route get
        with RTM_F_FIB_MATCH, see codec.probe_request), or the errno the
        kernel answered. All requests go in one system call."""
        if not dsts:
            return []
        first = self._next_seq(len(dsts))
        self._sock.send(
            b"".join(c.probe_request(first + i, family, dst, iif) for i, dst in enumerate(dsts))
        )
        answers: dict[int, KernelRoute | int] = {}
        while len(answers) < len(dsts):
            buf = self._sock.recv(RECV_BYTES)
            for kind, flags, seq, start, end in c.iter_messages(buf):
                i = seq - first
                if not 0 <= i < len(dsts):
                    continue  # a late reply to an earlier request
                if kind == c.NLMSG_ERROR:
                    answers[i] = c.decode_error(buf, start, end, flags)[0]
                elif kind == c.RTM_NEWROUTE:
                    body = c.without_attribute(bytes(buf[start:end]), c.RTA_IIF)
                    answers[i] = c.decode_route(body, 0, len(body))
        return [answers[i] for i in range(len(dsts))]

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
        self, batch: c.Batch, breaks: Collection[int] = (), start: int = 0
    ) -> tuple[dict[int, tuple[int, str]], int]:
        """Send the messages of ``batch`` from index ``start`` on; return
        failures by index and the index after the last message sent. Stops
        sending after the chunk where one failed. A chunk never goes past an
        index in ``breaks``: a new one starts there."""
        failures: dict[int, tuple[int, str]] = {}
        first, count = batch.first_seq, len(batch)
        bounds = sorted(breaks)
        sent = start
        try:
            while sent < count and not failures:
                later = bisect_right(bounds, sent)
                stop = min(sent + CHUNK_MESSAGES, bounds[later] if later < len(bounds) else count)
                self._sock.send(batch.data(sent, stop))
                sent = stop
                # rtnetlink handles requests synchronously inside send(): every
                # report for this chunk is already queued.
                self._collect(first, count, failures, until=None)
            end_seq = self._next_seq()
            self._sock.send(c.message(c.NLMSG_NOOP, c.NLM_F_REQUEST | c.NLM_F_ACK, end_seq, b""))
            self._collect(first, count, failures, until=end_seq)
        except OSError as err:
            if err.errno != errno_mod.ENOBUFS:
                raise
            # Nothing more is sent: what went through is read back instead.
            self._drain()
            raise _AcksLost(sent) from err
        return failures, sent

    def _drain(self, attempts: int = 5) -> None:
        """After an overflow: drop every queued reply, then send a no-op and
        read up to its acknowledgement, so that no stale reply is left for
        the next request (an empty buffer cannot drop that one)."""
        for _ in range(attempts):
            try:
                while True:
                    self._sock.recv(RECV_BYTES, socket.MSG_DONTWAIT)
            except BlockingIOError:
                pass
            except OSError as err:
                if err.errno != errno_mod.ENOBUFS:
                    raise
                continue  # more was dropped meanwhile: drain again
            seq = self._next_seq()
            self._sock.send(c.message(c.NLMSG_NOOP, c.NLM_F_REQUEST | c.NLM_F_ACK, seq, b""))
            try:
                while True:
                    buf = self._sock.recv(RECV_BYTES)
                    if any(
                        kind == c.NLMSG_ERROR and mseq == seq
                        for kind, _f, mseq, _s, _e in c.iter_messages(buf)
                    ):
                        return
            except OSError as err:
                if err.errno != errno_mod.ENOBUFS:
                    raise
        raise NetlinkError(errno_mod.ENOBUFS, "the netlink socket keeps overflowing")

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
        self.apply_runs(runs_of(changes), protocol, ifname)

    def apply_runs(
        self, runs: Sequence[ChangeRun], protocol: int, ifname: str | None = None
    ) -> None:
        """``apply`` of the changes of ``runs``."""
        runs = [run for run in runs if run.items]
        count = sum(len(run.items) for run in runs)
        if not count:
            return
        with gc_paused():
            batch = encode_runs(runs, protocol, self._next_seq(count))
            try:
                failures, sent = self._send_batch(batch, _breaks(runs))
            except _AcksLost as lost:
                left = self._undo_by_reading(changes_of(runs)[: lost.sent], protocol, ifname)
                raise ApplyError(
                    f"apply of {count} changes" + (f" on {ifname}" if ifname else ""),
                    errno_mod.ENOBUFS,
                    "the kernel's reports were lost; what took effect was read back",
                    left,
                ) from None
        if not failures:
            return
        changes = changes_of(runs)
        first_bad = min(failures)
        err, text = failures[first_bad]
        done = [changes[i] for i in reversed(range(sent)) if i not in failures]
        undo_failures: list[str] = []
        if done:
            undo = encode_batch(done, protocol, self._next_seq(len(done)), undo=True)
            try:
                undo_errors = self._send_batch_all(undo)
            except _AcksLost:  # the undo's own reports: read back what is left
                undo_failures = self._undo_by_reading(done[::-1], protocol, ifname)
                undo_errors = {}
            for j, (uerr, utext) in sorted(undo_errors.items()):
                undo_failures.append(
                    f"{done[j].describe(ifname)}: {os.strerror(uerr)} {utext}".strip()
                )
        raise ApplyError(changes[first_bad].describe(ifname), err, text, undo_failures)

    def _undo_by_reading(
        self, changes: list[Change], protocol: int, ifname: str | None, attempts: int = 3
    ) -> list[str]:
        """The reports of ``changes`` (in batch order) were lost: read back
        which of them took effect and undo exactly those, in reverse order,
        with bounded retries, each from a fresh read. Returns what could
        not be undone (empty: the host is as it was before them)."""
        from .readback import in_effect  # a rare path: kept off the import

        def read_routes(family: int, table: int) -> list[KernelRoute]:
            return self.routes(family, table=table)

        done = in_effect(changes, protocol, read_routes, self.rules)
        for _ in range(attempts):
            if not done:
                break
            undo = encode_batch(done[::-1], protocol, self._next_seq(len(done)), undo=True)
            with contextlib.suppress(_AcksLost):
                self._send_batch_all(undo)
            done = in_effect(changes, protocol, read_routes, self.rules)
        return [f"{change.describe(ifname)}: still in effect" for change in done]

    def _send_batch_all(self, batch: c.Batch) -> dict[int, tuple[int, str]]:
        """Like _send_batch, but keeps going after failures (for undo)."""
        failures: dict[int, tuple[int, str]] = {}
        sent = 0
        while sent < len(batch):
            part, sent = self._send_batch(batch, start=sent)
            failures.update(part)
        return failures
