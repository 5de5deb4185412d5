"""An in-memory rtnetlink kernel with injectable faults, for unit tests.

``FakeNetlink`` is the real ``Netlink`` class with its two sockets replaced
by ``FakeSocket``s: every byte the engine sends goes through the real codec
and the real batching, acknowledgement and rollback code of kernel.py, and
``FakeKernel`` answers the messages as the kernel does:

- interfaces by name and index (RTM_GETLINK; ENODEV when absent);
- routes keyed like the kernel's FIB (family, table, prefix, metric), stored
  as the rtmsg the request carried (so a dump returns what the codec's own
  encoder made, the ``raw`` a real dump would give back); NLM_F_EXCL on a
  duplicate gives EEXIST, a delete that matches nothing ESRCH, a route on a
  missing interface ENODEV, and removing an interface removes its routes;
- policy rules in priority order (a delete that matches nothing: ENOENT);
- dumps filtered by family, table, protocol and output interface (strict
  checking), ended by NLMSG_DONE, with NLM_F_DUMP_INTR when a fault says so.

A ``Fault`` makes the n-th matching operation fail with an errno (the
change is not made), interrupt a dump, or run a hook first (an interface
vanishing between the engine's read and its apply).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from incus_host_tables.model import KernelRoute, KernelRule, Route, Rule
from incus_host_tables.netlink import codec as c
from incus_host_tables.netlink.kernel import Netlink

_ERR = struct.Struct("=i")


class Op(StrEnum):
    """What a fault matches: the kind of request the kernel handles."""

    GET_LINK = "get-link"
    DUMP_ROUTES = "dump-routes"
    DUMP_RULES = "dump-rules"
    ADD_ROUTE = "add-route"  # RTM_NEWROUTE with NLM_F_EXCL
    REPLACE_ROUTE = "replace-route"  # RTM_NEWROUTE with NLM_F_REPLACE (adoption)
    DEL_ROUTE = "del-route"
    ADD_RULE = "add-rule"
    DEL_RULE = "del-rule"
    # A recv on a socket whose receive buffer overflowed: the queued
    # replies are lost and recv fails with the fault's errno (ENOBUFS).
    RECV = "recv"


WRITES = frozenset({Op.ADD_ROUTE, Op.REPLACE_ROUTE, Op.DEL_ROUTE, Op.ADD_RULE, Op.DEL_RULE})

# The operation's decoded item (a KernelRoute, KernelRule, or None).
Item = KernelRoute | KernelRule | None


@dataclass
class Fault:
    """The ``nth`` (1-based) operation of kind ``op`` that ``match``es fails
    with ``errno`` (0: it does not fail), ``times`` times in a row; a dump
    fault with ``dump_intr`` instead ends the dump with NLM_F_DUMP_INTR.
    ``before`` runs on the kernel first (then the operation proceeds).
    ``after_writes``: only once the kernel has handled that many changes."""

    op: Op
    errno: int = 0
    nth: int = 1
    times: int = 1
    match: Callable[[Item], bool] = lambda item: True
    dump_intr: bool = False
    before: Callable[[FakeKernel], None] | None = None
    after_writes: int = 0
    seen: int = 0
    fired: int = 0

    def hit(self, op: Op, item: Item) -> bool:
        if op != self.op or self.fired >= self.times or not self.match(item):
            return False
        self.seen += 1
        if self.seen < self.nth:
            return False
        self.fired += 1
        return True


def _route_key(kr: KernelRoute) -> tuple[int, int, bytes, int, int]:
    r = kr.route
    return (r.family, r.table, r.dst, r.prefixlen, r.priority)


def _route_matches(stored: KernelRoute, request: KernelRoute) -> bool:
    """Does a delete request name this stored route (the kernel's matching:
    unset fields in the request match anything)?"""
    if _route_key(stored) != _route_key(request):
        return False
    if request.protocol and stored.protocol != request.protocol:
        return False
    if request.type and stored.type != request.type:
        return False
    if request.oif and stored.oif != request.oif:
        return False
    gw = request.route.gateway
    return gw is None or stored.route.gateway == gw


@dataclass
class FakeKernel:
    """The state: interfaces, routes (by FIB key), rules (in kernel order)."""

    links: dict[str, int] = field(default_factory=dict)
    routes: dict[tuple[int, int, bytes, int, int], KernelRoute] = field(default_factory=dict)
    rules: list[KernelRule] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    next_index: int = 2
    lock: threading.RLock = field(default_factory=threading.RLock)
    writes: int = 0

    # -- the test's own hands (no faults apply) -----------------------------

    def add_link(self, name: str, index: int | None = None) -> int:
        if index is None:
            index = self.next_index
        self.next_index = max(self.next_index, index + 1)
        self.links[name] = index
        return index

    def del_link(self, name: str) -> None:
        """The interface goes, and every route on it with it."""
        index = self.links.pop(name)
        for key in [k for k, kr in self.routes.items() if kr.oif == index]:
            del self.routes[key]

    def seed_route(self, route: Route, oif: int, protocol: int) -> KernelRoute:
        body = c.route_body(route, oif, protocol)
        kr = c.decode_route(body, 0, len(body))
        assert _route_key(kr) not in self.routes
        self.routes[_route_key(kr)] = kr
        return kr

    def seed_rule(self, rule: Rule, protocol: int) -> KernelRule:
        body = c.rule_body(rule, protocol)
        kr = c.decode_rule(body, 0, len(body))
        self._insert_rule(kr)
        return kr

    def state(self) -> tuple[frozenset[tuple[object, ...]], tuple[tuple[object, ...], ...]]:
        """What a comparison looks at: routes with every field that matters,
        rules in order (interface indexes named, so that two kernels whose
        interfaces got other indexes compare equal)."""
        names = {index: name for name, index in self.links.items()}
        routes = frozenset(
            (kr.route, names.get(kr.oif, kr.oif), kr.protocol, kr.scope, kr.type)
            for kr in self.routes.values()
        )
        rules = tuple((kr.rule, kr.protocol) for kr in self.rules)
        return routes, rules

    # -- request handling ----------------------------------------------------

    def _fault(self, op: Op, item: Item) -> Fault | None:
        for fault in self.faults:
            if self.writes >= fault.after_writes and fault.hit(op, item):
                if fault.before is not None:
                    fault.before(self)
                return fault
        return None

    def _insert_rule(self, kr: KernelRule) -> None:
        at = len(self.rules)
        for i, other in enumerate(self.rules):
            if other.rule.priority > kr.rule.priority:
                at = i
                break
        self.rules.insert(at, kr)

    def handle(self, kind: int, flags: int, seq: int, body: bytes) -> list[bytes]:
        """The replies to one request (before any acknowledgement)."""
        with self.lock:
            if kind == c.RTM_GETLINK:
                return self._get_link(seq, body)
            if kind == c.RTM_GETROUTE and flags & c.NLM_F_DUMP == c.NLM_F_DUMP:
                return self._dump_routes(seq, body)
            if kind == c.RTM_GETRULE and flags & c.NLM_F_DUMP == c.NLM_F_DUMP:
                return self._dump_rules(seq, body)
            if kind == c.RTM_GETROUTE:
                # No route lookups here: the facts reader falls back to
                # table-scoped dumps, as it does on an unclear answer.
                return [_error(seq, kind, flags, errno.EOPNOTSUPP)]
            if kind in (c.RTM_NEWROUTE, c.RTM_DELROUTE, c.RTM_NEWRULE, c.RTM_DELRULE):
                self.writes += 1
                err = self._write(kind, flags, body)
                return [] if not err else [_error(seq, kind, flags, err)]
            if kind == c.NLMSG_NOOP:
                return []
            raise AssertionError(f"the fake kernel does not know message type {kind}")

    def _get_link(self, seq: int, body: bytes) -> list[bytes]:
        name = body[c.IFINFOMSG.size + 4 :].split(b"\0", 1)[0].decode()
        fault = self._fault(Op.GET_LINK, None)
        if fault is not None and fault.errno:
            return [_error(seq, c.RTM_GETLINK, 0, fault.errno)]
        index = self.links.get(name)
        if index is None:
            return [_error(seq, c.RTM_GETLINK, 0, errno.ENODEV)]
        reply = c.IFINFOMSG.pack(0, 1, index, 0, 0)
        return [c.message(c.RTM_NEWLINK, 0, seq, reply)]

    def _dump_done(self, seq: int, op: Op, found: list[bytes], kind: int) -> list[bytes]:
        fault = self._fault(op, None)
        if fault is not None and fault.errno:
            return [_error(seq, c.RTM_GETROUTE, c.NLM_F_DUMP, fault.errno)]
        intr = c.NLM_F_DUMP_INTR if fault is not None and fault.dump_intr else 0
        msgs = [c.message(kind, c.NLM_F_MULTI, seq, raw) for raw in found]
        done = c.message(c.NLMSG_DONE, c.NLM_F_MULTI | intr, seq, _ERR.pack(0))
        # One buffer for the dump, as the kernel fills a recv with many.
        return [b"".join(msgs) + done]

    def _dump_routes(self, seq: int, body: bytes) -> list[bytes]:
        query = c.decode_route(body, 0, len(body))
        family, table, protocol = query.route.family, query.route.table, query.protocol
        has_oif = _has_attr(body, c.RTA_OIF)
        found = [
            kr.raw
            for kr in self.routes.values()
            if kr.route.family == family
            and (not table or kr.route.table == table)
            and (not protocol or kr.protocol == protocol)
            and (not has_oif or kr.oif == query.oif)
        ]
        return self._dump_done(seq, Op.DUMP_ROUTES, found, c.RTM_NEWROUTE)

    def _dump_rules(self, seq: int, body: bytes) -> list[bytes]:
        family = body[0]
        found = [kr.raw for kr in self.rules if kr.rule.family == family]
        return self._dump_done(seq, Op.DUMP_RULES, found, c.RTM_NEWRULE)

    def _write(self, kind: int, flags: int, body: bytes) -> int:
        if kind in (c.RTM_NEWROUTE, c.RTM_DELROUTE):
            kr = c.decode_route(body, 0, len(body))
            # Stored as a dump shows it: no request-only rtm_flags.
            kr = kr._replace(raw=c.masked_rtm_flags(kr.raw, 0))
            if kind == c.RTM_DELROUTE:
                op = Op.DEL_ROUTE
            else:
                op = Op.REPLACE_ROUTE if flags & c.NLM_F_REPLACE else Op.ADD_ROUTE
            fault = self._fault(op, kr)
            if fault is not None and fault.errno:
                return fault.errno
            if kind == c.RTM_DELROUTE:
                for key, stored in self.routes.items():
                    if _route_matches(stored, kr):
                        del self.routes[key]
                        return 0
                return errno.ESRCH
            if kr.oif not in self.links.values():
                return errno.ENODEV
            key = _route_key(kr)
            if key in self.routes and flags & c.NLM_F_EXCL:
                return errno.EEXIST
            if key not in self.routes and not flags & c.NLM_F_CREATE:
                return errno.ENOENT
            self.routes[key] = kr
            return 0
        rule = c.decode_rule(body, 0, len(body))
        op = Op.DEL_RULE if kind == c.RTM_DELRULE else Op.ADD_RULE
        fault = self._fault(op, rule)
        if fault is not None and fault.errno:
            return fault.errno
        if kind == c.RTM_DELRULE:
            for i, kept in enumerate(self.rules):
                if kept.rule == rule.rule and (not rule.protocol or kept.protocol == rule.protocol):
                    del self.rules[i]
                    return 0
            return errno.ENOENT
        if flags & c.NLM_F_EXCL and any(
            r.rule == rule.rule and r.protocol == rule.protocol for r in self.rules
        ):
            return errno.EEXIST
        self._insert_rule(rule)
        return 0


def _has_attr(body: bytes, wanted: int) -> bool:
    pos = c.BODY
    while pos + 4 <= len(body):
        alen, atype = c.RTATTR.unpack_from(body, pos)
        if alen < 4:
            break
        if atype == wanted:
            return True
        pos += (alen + 3) & ~3
    return False


def _error(seq: int, kind: int, flags: int, err: int) -> bytes:
    """NLMSG_ERROR as the kernel sends it with NETLINK_CAP_ACK: the error,
    then only the request's header."""
    orig = c.NLMSGHDR.pack(c.HDR + c.BODY, kind, flags, seq, 0)
    return c.message(c.NLMSG_ERROR, c.NLM_F_CAPPED, seq, _ERR.pack(-err) + orig)


class FakeSocket:
    """A netlink socket onto ``FakeKernel``: requests are handled inside
    ``send`` (as rtnetlink does), replies queue until ``recv``."""

    def __init__(self, kernel: FakeKernel) -> None:
        self.kernel = kernel
        self.queue: list[bytes] = []

    def send(self, data: bytes) -> int:
        for kind, flags, seq, start, end in c.iter_messages(data):
            body = bytes(data[start:end])
            replies = self.kernel.handle(kind, flags, seq, body)
            self.queue.extend(replies)
            if flags & c.NLM_F_ACK and not replies:
                self.queue.append(_ack(seq, kind, flags))
        return len(data)

    def recv(self, size: int, flags: int = 0) -> bytes:
        with self.kernel.lock:
            fault = self.kernel._fault(Op.RECV, None) if self.queue else None
        if fault is not None and fault.errno:
            self.queue.clear()
            raise OSError(fault.errno, os.strerror(fault.errno))
        if not self.queue:
            if flags & socket.MSG_DONTWAIT:
                raise BlockingIOError(errno.EAGAIN, "no reply queued")
            raise AssertionError("a blocking recv with no reply queued would hang")
        return self.queue.pop(0)

    def close(self) -> None:
        pass


def _ack(seq: int, kind: int, flags: int) -> bytes:
    orig = c.NLMSGHDR.pack(c.HDR, kind, flags, seq, 0)
    return c.message(c.NLMSG_ERROR, c.NLM_F_CAPPED, seq, _ERR.pack(0) + orig)


class FakeNetlink(Netlink):
    """The real Netlink, talking to ``kernel`` instead of the real one."""

    def __init__(self, kernel: FakeKernel) -> None:  # no super(): no real socket
        self.kernel = kernel
        self._sock = FakeSocket(kernel)  # type: ignore[assignment]
        self._sock2 = FakeSocket(kernel)  # type: ignore[assignment]
        self._fib = None  # no NETLINK_FIB_LOOKUP: main is dumped
        self._seq = 0
        self._seq_lock = threading.Lock()
