"""Route dumps in bulk: decoded column by column, or kept as the kernel's
messages (``DumpedRoutes``) until a route object is really needed.

A dump is a stream of messages of a handful of shapes: an interface's IPv4
host routes, for instance, are all 52 bytes with RTA_TABLE, RTA_DST and
RTA_OIF in that order. ``codec.decode_route`` walks the attributes of every
message in Python (a few microseconds each). Here the first message of each
length is walked once to learn its shape (RouteLayout). The run of
messages that follows, back to back in the receive buffer, is then a table
with one row per message: a field at offset o of every message is the
strided slice ``view[o::length]`` of the buffer, copied out in C. Every
message is checked: its length, type and flags, sequence number, family and
every attribute header must be those of the shape (one bytes comparison per
field for the whole run), or the run ends before it and that message takes
the slow way. The KernelRoutes are zipped from the columns, in C too. So
the result is exactly ``decode_route``'s, for a fraction of the time.

Or not made at all: a ``DumpedRoutes`` keeps each checked run as it came
(a view of the receive buffer) and answers for the whole run from its
columns -- which protocols, which tables -- and sends its messages back as
deletions with only their headers rewritten (``codec.Batch.add_messages``).
A cleanup, which deletes every route of the plugin's it reads, so never
builds an object per route. See docs/performance.md.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Iterable, Iterator
from itertools import compress, repeat
from operator import itemgetter, ne
from typing import NamedTuple, overload

from ..model import AF_INET, KernelRoute, Route, RouteColumns
from . import codec as c
from .codec import (
    BODY,
    HDR,
    NLMSG_DONE,
    NLMSG_ERROR,
    RTA_DST,
    RTA_GATEWAY,
    RTA_OIF,
    RTA_PRIORITY,
    RTA_TABLE,
    RTM_NEWROUTE,
    U32,
    decode_route,
)

_unpack_hdr = c.NLMSGHDR.unpack_from
_unpack_rtattr = c.RTATTR.unpack_from

# The attributes a route's fields come from: (size or None for "any", name).
_LAYOUT_ATTRS = {
    RTA_TABLE: (4, "table_attr"),
    RTA_OIF: (4, "oif"),
    RTA_PRIORITY: (4, "priority"),
    RTA_DST: (None, "dst"),
    RTA_GATEWAY: (None, "gateway"),
}
_FIRST_RUN = 64  # messages tried at first; each full run tries 8x as many next
_RAW = itemgetter(0)
_new_tuple = tuple.__new__  # what a NamedTuple's __new__ ends in, called from C


class RouteLayout:
    """Where the fields of every route message of one shape lie.

    ``checks``: (offset, bytes) that every message of the shape has;
    ``fields``: name -> (offset, size) of the values (offsets count from the
    start of the message, its header included)."""

    __slots__ = ("checks", "family", "fields", "length", "raw", "steady")

    def __init__(
        self,
        length: int,
        family: int,
        checks: list[tuple[int, bytes]],
        fields: dict[str, tuple[int, int]],
    ) -> None:
        self.length = length
        self.family = family
        self.checks = checks
        self.fields = fields
        self.raw = struct.Struct(f"{HDR}x{length - HDR}s")  # the body, as KernelRoute.raw
        # Did the last stretch end only where the buffer did? Then the next
        # buffer is most likely all of this shape too: try it in one run.
        self.steady = False

    @classmethod
    def learn(cls, buf: bytes, start: int, length: int, seq: int) -> RouteLayout | None:
        """The shape of the message at ``start``; None when it is one the
        fast path does not take (then every message of it is decoded singly)."""
        if length % 4 or length < HDR + BODY:
            return None
        family = buf[start + HDR]
        msg = bytes(buf[start : start + length])
        checks = [  # 4-byte words or single bytes: see _column
            (0, msg[0:4]),  # nlmsg_len
            (4, msg[4:8]),  # nlmsg_type, nlmsg_flags
            (8, _U32.pack(seq)),  # nlmsg_seq
            (16, msg[16:17]),  # rtm_family
        ]
        fields = {
            "dst_len": (17, 1),
            "table": (20, 1),
            "protocol": (21, 1),
            "scope": (22, 1),
            "type": (23, 1),
        }
        pos = HDR + BODY
        while pos < length:
            if pos + 4 > length:
                return None
            alen, atype = _unpack_rtattr(msg, pos)
            if alen < 4 or pos + alen > length:
                return None
            checks.append((pos, msg[pos : pos + 4]))  # the attribute header
            size, name = _LAYOUT_ATTRS.get(atype, (0, None))
            if name is not None:
                if size is not None and alen - 4 != size:
                    return None  # decode_route would read past it
                if alen == 4:
                    return None  # decode_route treats an empty address specially
                fields[name] = (pos + 4, alen - 4)  # a later one wins, as in decode_route
            pos += (alen + 3) & ~3
        if pos != length:
            return None
        return cls(length, family, checks, fields)

    def decode(
        self,
        view: memoryview,
        start: int,
        count: int,
        out: _Out,
        skip_oif: int | None,
    ) -> int:
        """Decode the longest run of this shape among the ``count`` messages
        from ``start`` into ``out``; return its length. Runs are tried in
        growing sizes (unless the shape has been steady), so a stream that
        keeps changing shape costs a constant factor, never quadratic time."""
        done, length = 0, self.length
        size = count if self.steady else _FIRST_RUN
        while done < count:
            want = min(size, count - done)
            part = view[start + done * length : start + (done + want) * length]
            got = self._decode_run(part, want, out, skip_oif)
            done += got
            if got < want:
                break
            size *= 8
        self.steady = done == count
        return done

    def _column(self, part: memoryview, offset: int, size: int) -> bytes:
        """Field (offset, size) of every message in ``part``, back to back."""
        if size == 1:
            return part[offset :: self.length].tobytes()
        if size == 4 and offset % 4 == 0:
            return part.cast("I")[offset // 4 :: self.length // 4].tobytes()
        return b"".join(part[i : i + size] for i in range(offset, len(part), self.length))

    def _good_prefix(self, part: memoryview, count: int) -> int:
        """How many messages from the first are of this shape."""
        good = count
        for offset, expected in self.checks:
            column = self._column(part, offset, len(expected))
            if column != expected * count:
                good = min(good, _first_difference(column, expected, count))
        return good

    def _decode_run(self, part: memoryview, count: int, out: _Out, skip_oif: int | None) -> int:
        good = self._good_prefix(part, count)
        if not good:
            return 0
        if good < count:
            part = part[: good * self.length]
        if isinstance(out, DumpedRoutes):
            self._keep_run(part, good, out, skip_oif)
        else:
            self.build(part, good, out, skip_oif)
        return good

    def _keep_run(
        self, part: memoryview, count: int, out: DumpedRoutes, skip_oif: int | None
    ) -> None:
        """A checked run, kept as it is; made into routes only when it mixes
        routes on ``skip_oif`` with others."""
        if skip_oif is not None:
            skipped = self.oifs(part).count(skip_oif)
            if skipped == count:
                return
            if skipped:
                made: list[KernelRoute] = []
                self.build(part, count, made, skip_oif)
                out.extend(made)
                return
        out.add_block(self, part, count)

    def build(
        self, part: memoryview, count: int, out: list[KernelRoute], skip_oif: int | None = None
    ) -> None:
        """The routes of the ``count`` messages in ``part``, all of this
        shape (checked already), into ``out``; none on ``skip_oif``."""
        fields = self.fields
        oifs: Iterable[int]
        if "oif" in fields:
            oif_column = self._column(part, *fields["oif"])
            if skip_oif is not None and oif_column == _U32.pack(skip_oif) * count:
                return  # every one on the interface to skip: nothing to make
            oifs = _u32s(oif_column)
        elif skip_oif == 0:
            return  # no RTA_OIF: decode_route says 0
        else:
            oifs, skip_oif = repeat(0), None
        raws = list(map(_RAW, self.raw.iter_unpack(part)))

        def values(name: str, default: object) -> Iterable[object]:
            if name not in fields:
                return repeat(default)
            offset, size = fields[name]
            if name in ("dst", "gateway"):  # bytes: sliced out of each raw body
                return map(itemgetter(slice(offset - HDR, offset - HDR + size)), raws)
            column = self._column(part, offset, size)
            return column if size == 1 else _u32s(column)  # bytes iterate as ints

        zero = bytes(4 if self.family == AF_INET else 16)
        routes = map(
            _new_tuple,
            repeat(Route),
            zip(
                repeat(self.family),
                values("table_attr", None) if "table_attr" in fields else values("table", 0),
                values("dst", zero),
                values("dst_len", 0),
                values("gateway", None),
                values("priority", 0),
                strict=False,
            ),
        )
        kernel_routes = map(
            _new_tuple,
            repeat(KernelRoute),
            zip(
                routes,
                oifs,
                values("protocol", 0),
                values("scope", 0),
                values("type", 0),
                raws,
                strict=False,
            ),
        )
        if skip_oif is None:
            out.extend(kernel_routes)
        else:
            out.extend(compress(kernel_routes, map(ne, oifs, repeat(skip_oif))))

    # The columns of a checked run, for DumpedRoutes.

    def protocols(self, part: memoryview) -> bytes:
        return self._column(part, *self.fields["protocol"])

    def oifs(self, part: memoryview) -> list[int]:
        if "oif" in self.fields:
            return _u32s(self._column(part, *self.fields["oif"]))
        return [0] * (len(part) // self.length)  # no RTA_OIF: decode_route says 0

    def tables(self, part: memoryview) -> list[int]:
        if "table_attr" in self.fields:  # RTA_TABLE (a 32-bit ID) wins over rtm_table
            return _u32s(self._column(part, *self.fields["table_attr"]))
        return list(self._column(part, *self.fields["table"]))


_U32 = U32


def _u32s(column: bytes) -> list[int]:
    return memoryview(column).cast("I").tolist()


def _first_difference(column: bytes, expected: bytes, count: int) -> int:
    """Index of the first of ``count`` fields in ``column`` that is not
    ``expected`` (binary search over prefixes, each compared in C)."""
    size = len(expected)
    lo, hi = 0, count  # the first `lo` fields match; a mismatch is before `hi`
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if column[: mid * size] == expected * mid:
            lo = mid
        else:
            hi = mid - 1
    return lo


def decode_route_dump(
    buf: bytes,
    seq: int,
    out: _Out,
    layouts: dict[int, RouteLayout | None],
    skip_oif: int | None = None,
) -> tuple[int, int, int, int] | None:
    """Decode the route messages of dump ``seq`` in one receive buffer into
    ``out``, in order (those on interface ``skip_oif`` left out); messages of
    other requests are skipped. A ``DumpedRoutes`` ``out`` keeps the runs
    as they are (a view of ``buf``, which must not change).

    Returns (type, flags, body start, body end) of the NLMSG_DONE or
    NLMSG_ERROR that ends the dump, or None when the dump goes on in the next
    buffer. ``layouts`` carries the learnt shapes from buffer to buffer of
    one dump (start each dump with an empty dict: they check its sequence
    number)."""
    view = memoryview(buf)
    offset, end = 0, len(buf)
    while offset + HDR <= end:
        length, kind, flags, mseq, _pid = _unpack_hdr(buf, offset)
        if length < HDR:
            raise ValueError(f"malformed netlink message length {length}")
        if mseq == seq:
            if kind in (NLMSG_DONE, NLMSG_ERROR):
                return kind, flags, offset + HDR, offset + length
            if kind == RTM_NEWROUTE:
                if length in layouts:
                    layout = layouts[length]
                else:
                    layout = layouts[length] = RouteLayout.learn(buf, offset, length, seq)
                if layout is not None:
                    # length is a multiple of 4 here: the messages lie back to back
                    count = (end - offset) // length
                    taken = layout.decode(view, offset, count, out, skip_oif)
                    if taken:
                        offset += taken * length
                        continue
            kr = decode_route(buf, offset + HDR, offset + length)
            if skip_oif is None or kr.oif != skip_oif:
                out.append(kr)
        offset += (length + 3) & ~3
    return None


class _Block(NamedTuple):
    """``rows`` checked messages of ``layout``, back to back."""

    layout: RouteLayout
    view: memoryview
    rows: int


_RAW_BODY = itemgetter(5)  # KernelRoute.raw


class DumpedRoutes(RouteColumns):
    """Kernel routes as dumped: runs of one shape kept as the messages the
    kernel sent (views of the receive buffers, which are immutable bytes),
    the odd message decoded. A ``Sequence[KernelRoute]`` equal to the
    routes a decoding gives, in the same order; they are made once, the
    first time one is asked for."""

    __slots__ = ("_count", "_made", "_pairs", "_parts", "_protocols")

    def __init__(self, routes: Iterable[KernelRoute] = ()) -> None:
        self._parts: list[_Block | list[KernelRoute]] = []
        self._count = 0
        self._made: list[KernelRoute] | None = None
        # The columns a cleanup asks for more than once (planner, record).
        self._protocols: bytes | None = None
        self._pairs: frozenset[tuple[int, int]] | None = None
        self.extend(routes)

    def _changed(self) -> None:
        self._made = self._protocols = self._pairs = None

    # -- building ---------------------------------------------------------

    def add_block(self, layout: RouteLayout, view: memoryview, count: int) -> None:
        self._parts.append(_Block(layout, view, count))
        self._count += count
        self._changed()

    def extend(self, routes: Iterable[KernelRoute]) -> None:
        if isinstance(routes, DumpedRoutes):
            self._parts += [p if isinstance(p, _Block) else list(p) for p in routes._parts]
            self._count += routes._count
        else:
            if not self._parts or isinstance(self._parts[-1], _Block):
                self._parts.append([])
            single = self._parts[-1]
            assert isinstance(single, list)
            before = len(single)
            single.extend(routes)
            self._count += len(single) - before
        self._changed()

    def append(self, route: KernelRoute) -> None:
        self.extend((route,))

    # -- a sequence of KernelRoute -----------------------------------------

    def _routes(self) -> list[KernelRoute]:
        if self._made is None:
            made: list[KernelRoute] = []
            for part in self._parts:
                if isinstance(part, _Block):
                    part.layout.build(part.view, part.rows, made)
                else:
                    made += part
            self._made = made
        return self._made

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[KernelRoute]:
        return iter(self._routes())

    @overload
    def __getitem__(self, index: int) -> KernelRoute: ...
    @overload
    def __getitem__(self, index: slice) -> list[KernelRoute]: ...
    def __getitem__(self, index: int | slice) -> KernelRoute | list[KernelRoute]:
        return self._routes()[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (list, RouteColumns)):
            return self._routes() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"DumpedRoutes({self._routes()!r})"

    # -- columns (RouteColumns) --------------------------------------------

    def protocols(self) -> bytes:
        if self._protocols is None:
            self._protocols = b"".join(
                p.layout.protocols(p.view)
                if isinstance(p, _Block)
                else bytes(kr.protocol for kr in p)
                for p in self._parts
            )
        return self._protocols

    def _tables(self, part: _Block | list[KernelRoute]) -> Iterable[int]:
        if isinstance(part, _Block):
            return part.layout.tables(part.view)
        return (kr.route.table for kr in part)

    def family_tables(self) -> set[tuple[int, int]]:
        if self._pairs is None:
            pairs: set[tuple[int, int]] = set()
            for part in self._parts:
                if isinstance(part, _Block):
                    family = part.layout.family
                    pairs.update((family, table) for table in set(self._tables(part)))
                else:
                    pairs.update((kr.route.family, kr.route.table) for kr in part)
            self._pairs = frozenset(pairs)
        return set(self._pairs)

    def table_counts(self) -> dict[int, int]:
        counts: Counter[int] = Counter()
        for part in self._parts:
            counts.update(self._tables(part))
        return dict(counts)

    def has_gateway(self) -> bool:
        return any(
            "gateway" in p.layout.fields
            if isinstance(p, _Block)
            else any(kr.route.gateway is not None for kr in p)
            for p in self._parts
        )

    def of_table(self, table: int) -> list[KernelRoute]:
        found: list[KernelRoute] = []
        for part in self._parts:
            if isinstance(part, _Block):
                if table not in self._tables(part):
                    continue
                made: list[KernelRoute] = []
                part.layout.build(part.view, part.rows, made)
                found += (kr for kr in made if kr.route.table == table)
            else:
                found += (kr for kr in part if kr.route.table == table)
        return found

    def split_oif(self, oif: int) -> tuple[DumpedRoutes, DumpedRoutes]:
        """(those on interface ``oif``, the others), each in order; a run
        is made into routes only when it holds both."""
        on, off = DumpedRoutes(), DumpedRoutes()
        for part in self._parts:
            if isinstance(part, _Block):
                here = part.layout.oifs(part.view).count(oif)
                if here == part.rows or not here:
                    (on if here else off).add_block(part.layout, part.view, part.rows)
                    continue
                made: list[KernelRoute] = []
                part.layout.build(part.view, part.rows, made)
                routes: Iterable[KernelRoute] = made
            else:
                routes = part
            on.extend([kr for kr in routes if kr.oif == oif])
            off.extend([kr for kr in routes if kr.oif != oif])
        return on, off

    # -- sent back ---------------------------------------------------------

    def add_requests(
        self, batch: c.Batch, kind: int, flags: int, rtm_flags_mask: int | None
    ) -> None:
        """Each route's message into ``batch`` as a ``kind`` request: what
        ``batch.add_bodies`` makes of the routes' ``raw`` bodies, byte for
        byte, the runs laid in as they came."""
        for part in self._parts:
            if isinstance(part, _Block):
                batch.add_messages(part.view, part.layout.length, kind, flags, rtm_flags_mask)
            else:
                batch.add_bodies(map(_RAW_BODY, part), kind, flags, rtm_flags_mask)


_Out = list[KernelRoute] | DumpedRoutes
