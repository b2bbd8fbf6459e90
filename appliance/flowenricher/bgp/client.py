"""A small typed client for GoBGP's gRPC API (``apipb``, GoBGP 3.x): the best-path watch
and table listing that feed the RIB mirror, and adding/deleting our own paths (blackhole
announcements).

Two ways to read the whole table, because of a limit of gobgpd:

* ``WatchEvent`` with a BEST table filter and ``init=True`` sends the whole table of best
  paths as *one* message (a 200k-prefix table in about 2 s here) and then streams every
  change on the same call, so there is no gap between the dump and the changes.  But
  gobgpd caps a message at 256 MiB (``MaxSendMsgSize`` in cmd/gobgpd/main.go, not
  configurable), about 650k paths at ~400 bytes each: a full table (1.2M prefixes)
  fails with RESOURCE_EXHAUSTED;
* ``ListPath`` sends one message per prefix: any size, little memory on our side, but
  slower from Python (tens of µs of gRPC work per message); gobgpd builds a whole
  answer in memory before sending it (:meth:`list_best_routes`).  To lose no change
  while listing, the watch is opened first *without* the init dump and with peer events:
  gobgpd registers the best-path watcher and queues its peer "end of init" event in one
  step, so once that event has arrived, every change after the listing's snapshot is
  on the stream (:meth:`WatchStream.wait_registered`).  Replaying changes that the
  listing already saw is harmless: each change carries the prefix's whole state.

gobgpd sends the init dump only once BGP is started (``GetBgp`` reports an AS); before
that a watch would silently skip it, so :meth:`GoBgpClient.watch_best_paths` refuses to
start until then.  GoBGP's default is one best path per prefix (no
``use-multiple-paths``), which is what a change batch is read as: the last path given
for a prefix is its state.

The watch's attributes arrive ``Any``-packed.  The listing asks for them as BGP's own
wire bytes (``enable_only_binary``): gobgpd then skips building an ``Any`` per attribute
and prefix, which cut the growth of its heap during a full listing (peak 1.12-1.37x its
steady RSS over five runs, against 2.2x with ``Any``s: docs/performance.md), and the bytes
are decoded here (:class:`PathDecoder`, RFC 4271 and RFC 4760 layouts).  Either way, identical
attribute values are decoded once (bounded caches), since in a full table most prefixes
share their AS path, communities and next hop with many others.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from typing import Any, NamedTuple, cast

import grpc
import grpc.experimental
from google.protobuf import any_pb2

from ..common.bgp_values import U32, BgpValueError, next_hop_for, parse_community, parse_prefix
from ..errors import FlowEnricherError
from .route import V4, V4_MAPPED, V6, RouteAttributes, RouteParts, address_bytes, flatten_as_path
from .stubs import attribute_pb2 as attrs_pb
from .stubs import gobgp_pb2 as api
from .stubs import gobgp_pb2_grpc as api_grpc

_MAX_MESSAGE = 2**31 - 1  # gRPC's own limit: an init dump is up to gobgpd's 256 MiB
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_receive_message_length", _MAX_MESSAGE),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    # GoBGP (grpc-go) refuses client pings more often than every 5 minutes.
    ("grpc.keepalive_time_ms", 300_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    # Reconnect soon after GoBGP restarts: the default backoff grows to 2 minutes.
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.min_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 5_000),
)

SINGLE_THREADED_UNARY_STREAM: str = grpc.experimental.ChannelOptions.SingleThreadedUnaryStream
"""gRPC's channel option for reading a server stream on the caller's thread (experimental
in grpcio's API since 1.28, still so named in 1.85)."""

_BEST = api.WatchEventRequest.Table.Filter.BEST
_FAMILIES = {
    (api.Family.AFI_IP, api.Family.SAFI_UNICAST): V4,
    (api.Family.AFI_IP6, api.Family.SAFI_UNICAST): V6,
}


TRANSIENT_CODES = frozenset({
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
    grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED, grpc.StatusCode.INTERNAL,
})
"""gRPC statuses that mean GoBGP could not be asked (down, restarting, overloaded, the
connection broke): worth retrying.  Any other status is GoBGP's answer: gobgpd returns
its refusals as plain Go errors, which gRPC reports as UNKNOWN (seen from gobgpd 3.10:
"UNKNOWN: invalid nexthop address: 192.0.2.300", "UNKNOWN: nexthop not found"), and a
stopped or unreachable gobgpd gives UNAVAILABLE."""

_NOT_STARTED = "hasn't started yet"
"""gobgpd's UNKNOWN answer before its config is applied ("bgp server hasn't started
yet"): a refusal in form, but it passes once gobgpd is up, so it counts as transient."""


class GoBgpError(FlowEnricherError):
    """A call to GoBGP failed; the message names the address, the call and gRPC's status."""

    def __init__(self, target: str, call: str, detail: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(f"GoBGP at {target}: {call}: {detail}")
        self.code = code
        self.detail = detail

    @property
    def refused(self) -> bool:
        """GoBGP answered and refused the request: asking again gets the same answer.
        False when it could not be asked (see TRANSIENT_CODES) or has not started yet."""
        return self.code is not None and self.code not in TRANSIENT_CODES and _NOT_STARTED not in self.detail


class Session(NamedTuple):
    """One BGP neighbour of GoBGP: `state` is GoBGP's session state in lower case
    ("established", "active", "idle"...), `since` when it entered it (Unix time; None when
    GoBGP has no time for it), `received` and `accepted` its prefixes over all families."""

    neighbor: str
    peer_as: int
    state: str
    since: float | None
    received: int
    accepted: int


class PathChange(NamedTuple):
    """One best path as the watch reports it: `attrs` None means the prefix is withdrawn.

    `key` is the 18-byte prefix key of :mod:`.route`.
    """

    key: bytes
    attrs: RouteAttributes | None


# BGP path attribute type codes (RFC 4271 section 5, RFC 1997, RFC 4760).
_AS_PATH, _NEXT_HOP, _LOCAL_PREF, _COMMUNITIES, _MP_REACH = 2, 3, 5, 8, 14
_EXTENDED_LENGTH = 0x10
_NO_AS_PATH: tuple[tuple[int, ...], int, int] = ((), 0, 0)
_NO_HOP = bytes(16)
_MISSING = object()


def wire_as_path(value: bytes) -> list[tuple[int, list[int]]] | None:
    """AS_PATH segments (type, numbers) from the attribute's value, or None when it does
    not parse.  The numbers are 4 bytes wide: gobgpd turns every path it receives into
    4-byte AS_PATH segments and folds AS4_PATH into them (UpdatePathAttrs4ByteAs in its
    internal/pkg/table/message.go), so that is the only form a listing holds."""
    segments: list[tuple[int, list[int]]] = []
    at = 0
    while at < len(value):
        if at + 2 > len(value):
            return None
        seg_type, count = value[at], value[at + 1]
        end = at + 2 + count * 4
        if end > len(value):
            return None
        segments.append((seg_type, list(struct.unpack_from(f">{count}I", value, at + 2))))
        at = end
    return segments


def _mp_reach_hop(value: bytes) -> bytes | None:
    """MP_REACH_NLRI's first next hop (16 bytes), or None when it has none that parses."""
    if len(value) >= 4:
        size = value[3]
        hop = value[4:4 + size]
        if len(hop) == size:
            if size in (16, 32):
                return hop[:16]
            if size == 4:
                return V4_MAPPED + hop
    return None


def _next_hop(value: bytes) -> bytes | None:
    return V4_MAPPED + value if len(value) == 4 else None


def _attribute_value(raw: bytes) -> bytes | None:
    """The value of one attribute in wire form (flags, type, 1- or 2-byte length, value),
    or None when it is shorter than its header or its stated length."""
    if len(raw) < 3:
        return None
    if raw[0] & _EXTENDED_LENGTH:
        if len(raw) < 4:
            return None
        size, start = raw[2] << 8 | raw[3], 4
    else:
        size, start = raw[2], 3
    return raw[start:] if len(raw) - start == size else None


def wire_prefix_key(family: int, nlri: bytes) -> bytes | None:
    """The 18-byte prefix key of :mod:`.route` from a prefix in BGP's wire form (length
    in bits, then the prefix's significant bytes); None when it does not fit `family`."""
    if not nlri:
        return None
    length, bits = nlri[0], 32 if family == V4 else 128
    if length > bits or len(nlri) != 1 + (length + 7) // 8:
        return None
    if family == V4:
        return b"\x04" + V4_MAPPED + nlri[1:].ljust(4, b"\0") + bytes((length,))
    return b"\x06" + nlri[1:].ljust(16, b"\0") + bytes((length,))


class PathDecoder:
    """Turns API paths into routes, decoding each distinct attribute value once.  A path
    comes ``Any``-packed (the watch) or in BGP's wire form (the listing,
    ``enable_only_binary``).  Each cache is emptied on its own when it passes
    `cache_limit` entries, so memory stays bounded whatever the table, and a kind of
    attribute that rarely repeats (communities in some tables) does not flush the AS
    paths, which repeat most.  Wire-form attributes are cached whole, header included:
    the bytes that key the cache are the bytes decoded."""

    def __init__(self, cache_limit: int = 200_000) -> None:
        self.cache_limit = cache_limit
        self.skipped = 0  # paths of other families (VPN, EVPN, flowspec...)
        self.malformed = 0  # wire-form prefixes (left out) and AS paths (read as empty) that do not parse
        self._as_paths: dict[bytes, tuple[tuple[int, ...], int, int]] = {}
        self._next_hops: dict[bytes, bytes] = {}
        self._local_prefs: dict[bytes, int] = {}
        self._communities: dict[bytes, tuple[int, ...]] = {}
        self._routes: dict[tuple[bytes, bytes, bytes, bytes], RouteAttributes] = {}
        self._wire_as_paths: dict[bytes, tuple[tuple[int, ...], int, int]] = {}
        self._wire_communities: dict[bytes, tuple[int, ...]] = {}
        self._wire_small: dict[bytes, Any] = {}  # NEXT_HOP and LOCAL_PREF attributes: a handful of values

    def changes(self, paths: Iterable[Any]) -> Iterator[PathChange]:
        """The changes for API `paths` of IPv4/IPv6 unicast (others are counted in skipped)."""
        prefix_msg = attrs_pb.IPAddressPrefix
        for path in paths:
            family = _FAMILIES.get((path.family.afi, path.family.safi))
            if family is None:
                self.skipped += 1
                continue
            if path.nlri_binary:
                key = wire_prefix_key(family, path.nlri_binary)
                if key is None:
                    self.malformed += 1
                    continue
                yield PathChange(key, None if path.is_withdraw else self.wire_route(path.pattrs_binary))
                continue
            if not path.nlri.type_url.endswith(".IPAddressPrefix"):
                self.skipped += 1
                continue
            nlri = prefix_msg.FromString(path.nlri.value)
            if family == V4:
                key = b"\x04" + V4_MAPPED + socket.inet_pton(socket.AF_INET, nlri.prefix) + bytes((nlri.prefix_len,))
            else:
                key = b"\x06" + socket.inet_pton(socket.AF_INET6, nlri.prefix) + bytes((nlri.prefix_len,))
            yield PathChange(key, None if path.is_withdraw else self.route(path.pattrs))

    def listed(self, paths: Iterable[Any], family: int) -> Iterator[tuple[bytes, RouteParts]]:
        """The prefix key and attributes of each best path among wire-form `paths` of
        `family`, as a listing gives them (withdrawals and prefixes that do not parse are
        left out, the latter counted).  The mirror's full load: one loop, no object per
        prefix beyond the key and the tuple (docs/performance.md)."""
        parts = self.wire_parts
        for path in paths:
            if not path.best or path.is_withdraw:
                continue
            key = wire_prefix_key(family, path.nlri_binary)
            if key is None:
                self.malformed += 1
                continue
            yield key, parts(path.pattrs_binary)

    def _trim(self, cache: dict[Any, Any]) -> None:
        if len(cache) >= self.cache_limit:
            cache.clear()

    def wire_route(self, pattrs: Sequence[bytes]) -> RouteAttributes:
        """The attributes of a path in BGP's wire form (one attribute per item)."""
        return RouteAttributes(*self.wire_parts(pattrs))

    def wire_parts(self, pattrs: Iterable[bytes]) -> RouteParts:
        """:meth:`wire_route` as :data:`RouteParts`.  An attribute shorter than its header
        or its stated length is left out, as if absent (as a router treats an attribute it
        cannot parse); of an attribute given twice, the last one that is not left out
        counts; MP_REACH_NLRI's next hop, when it parses, wins over NEXT_HOP's (RFC 4760
        3, RFC 2545: its first, global address); zeros when neither parses."""
        as_path: tuple[tuple[int, ...], int, int] = _NO_AS_PATH
        communities: tuple[int, ...] = ()
        local_pref = 0
        hop: bytes | None = None
        mp_hop: bytes | None = None
        small = self._wire_small
        for raw in pattrs:
            kind = raw[1] if len(raw) > 1 else 0
            if kind == _AS_PATH:
                found = self._wire_as_paths.get(raw)
                if found is None:
                    found = self._wire_as_path(raw)
                    if found is None:
                        continue
                as_path = found
            elif kind == _COMMUNITIES:
                comms = self._wire_communities.get(raw)
                if comms is None:
                    value = _attribute_value(raw)
                    if value is None:
                        continue
                    comms = struct.unpack(f">{len(value) // 4}I", value[:len(value) // 4 * 4])
                    self._trim(self._wire_communities)
                    self._wire_communities[raw] = comms
                communities = comms
            elif kind in (_LOCAL_PREF, _NEXT_HOP):
                known = small.get(raw, _MISSING)
                if known is _MISSING:
                    value = _attribute_value(raw)
                    if value is None:
                        continue
                    known = (int.from_bytes(value, "big") if len(value) == 4 else 0) if kind == _LOCAL_PREF \
                        else _next_hop(value)
                    self._trim(small)
                    small[raw] = known
                if kind == _LOCAL_PREF:
                    local_pref = known
                else:
                    hop = known
            elif kind == _MP_REACH:  # holds the prefix too: never repeats, never cached
                mp_value = _attribute_value(raw)
                if mp_value is not None:
                    mp_hop = _mp_reach_hop(mp_value)
        next_hop = mp_hop if mp_hop is not None else hop if hop is not None else _NO_HOP
        return as_path[0], as_path[1], as_path[2], next_hop, local_pref, communities

    def _wire_as_path(self, raw: bytes) -> tuple[tuple[int, ...], int, int] | None:
        """The AS path attribute `raw` flattened (cached), or None when it is to be left out
        (shorter than its header or its stated length).  Segments that do not parse count
        as malformed and read as an empty path."""
        value = _attribute_value(raw)
        if value is None:
            return None
        segments = wire_as_path(value)
        if segments is None:
            self.malformed += 1
        found = flatten_as_path(segments or ())
        self._trim(self._wire_as_paths)
        self._wire_as_paths[raw] = found
        return found

    def route(self, pattrs: Sequence[any_pb2.Any]) -> RouteAttributes:
        as_path = next_hop = local_pref = communities = b""
        hop: bytes | None = None
        for attr in pattrs:
            kind = attr.type_url
            if kind.endswith(".AsPathAttribute"):
                as_path = attr.value
            elif kind.endswith(".NextHopAttribute"):
                next_hop = attr.value
            elif kind.endswith(".MpReachNLRIAttribute"):
                # Carries the NLRI too, so its bytes are unique per prefix: decode the hop.
                hops = attrs_pb.MpReachNLRIAttribute.FromString(attr.value).next_hops
                hop = address_bytes(hops[0]) if hops else bytes(16)
            elif kind.endswith(".LocalPrefAttribute"):
                local_pref = attr.value
            elif kind.endswith(".CommunitiesAttribute"):
                communities = attr.value
        if hop is None:
            hop = self._next_hops.get(next_hop)
            if hop is None:
                hop = address_bytes(attrs_pb.NextHopAttribute.FromString(next_hop).next_hop)
                self._trim(self._next_hops)
                self._next_hops[next_hop] = hop
        key = (as_path, hop, local_pref, communities)
        route = self._routes.get(key)
        if route is None:
            path, origin, neighbor = self._as_path(as_path)
            route = RouteAttributes(path, origin, neighbor, hop, self._local_pref(local_pref),
                                    self._community_list(communities))
            self._trim(self._routes)
            self._routes[key] = route
        return route

    def _as_path(self, raw: bytes) -> tuple[tuple[int, ...], int, int]:
        found = self._as_paths.get(raw)
        if found is None:
            segments = attrs_pb.AsPathAttribute.FromString(raw).segments
            found = flatten_as_path((int(s.type), list(s.numbers)) for s in segments)
            self._trim(self._as_paths)
            self._as_paths[raw] = found
        return found

    def _local_pref(self, raw: bytes) -> int:
        found = self._local_prefs.get(raw)
        if found is None:
            self._trim(self._local_prefs)
            found = self._local_prefs[raw] = int(attrs_pb.LocalPrefAttribute.FromString(raw).local_pref)
        return found

    def _community_list(self, raw: bytes) -> tuple[int, ...]:
        found = self._communities.get(raw)
        if found is None:
            found = tuple(attrs_pb.CommunitiesAttribute.FromString(raw).communities)
            self._trim(self._communities)
            self._communities[raw] = found
        return found


class TableEvent:
    """One table message of the watch: the init dump (when asked for, the first one) or a
    batch of changes.  Iterating decodes its paths lazily and lets go of the message at
    the end, so a full-table dump is not held while the table is built from it."""

    def __init__(self, paths: Sequence[Any], init: bool) -> None:
        self._paths = paths
        self.init = init
        self.decoder = PathDecoder()

    def __len__(self) -> int:
        return len(self._paths)

    def __iter__(self) -> Iterator[PathChange]:
        yield from self.decoder.changes(self._paths)
        self._paths = ()


class WatchStream:
    """The open best-path watch: iterate for :class:`TableEvent` s (peer events are
    skipped); :meth:`cancel` from another thread ends the iteration (with GoBgpError,
    code CANCELLED)."""

    def __init__(self, target: str, call: Any, init: bool) -> None:
        self._target = target
        self._call = call
        self._dump_pending = init  # the next table message is the init dump

    def wait_registered(self) -> None:
        """Return once gobgpd has registered the watch (its peer "end of init" event,
        queued in the same step: see the module docstring)."""
        end_of_init = api.WatchEventResponse.PeerEvent.END_OF_INIT
        try:
            for response in self._call:
                if response.WhichOneof("event") == "peer" and response.peer.type == end_of_init:
                    return
        except grpc.RpcError as err:
            raise rpc_error(self._target, "WatchEvent", err) from err
        raise GoBgpError(self._target, "WatchEvent", "the server ended the stream before registering it")

    def __iter__(self) -> Iterator[TableEvent]:
        try:
            for response in self._call:
                if response.WhichOneof("event") != "table":
                    continue
                init, self._dump_pending = self._dump_pending, False
                event = TableEvent(response.table.paths, init=init)
                del response  # the consumer alone keeps a full-table message alive
                yield event
                del event
        except grpc.RpcError as err:
            raise rpc_error(self._target, "WatchEvent", err) from err
        raise GoBgpError(self._target, "WatchEvent", "the server ended the stream")

    def cancel(self) -> None:
        self._call.cancel()


class GoBgpClient:
    """GoBGP's API at `target`: ``host:port`` (``[v6]:port``) or ``unix:///path``.

    Every unary call has `timeout` seconds; failures raise :class:`GoBgpError`.
    """

    def __init__(self, target: str, timeout: float = 5.0) -> None:
        self.target = target
        self.timeout = timeout
        self._channel = grpc.insecure_channel(target, options=list(CHANNEL_OPTIONS))
        self._stub: Any = cast(Callable[[grpc.Channel], Any], api_grpc.GobgpApiStub)(self._channel)

    def __enter__(self) -> GoBgpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    @property
    def stub(self) -> Any:
        """The generated GobgpApi stub on this client's channel, for calls this wrapper
        does not cover (pass ``timeout=self.timeout``)."""
        return self._stub

    def _unary(self, name: str, request: Any) -> Any:
        method = cast(Callable[..., Any], getattr(self._stub, name))
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as err:
            raise rpc_error(self.target, name, err) from err

    def started_asn(self) -> int:
        """GoBGP's own AS; 0 while its BGP server is not started (no config applied yet)."""
        response = self._unary("GetBgp", api.GetBgpRequest())
        return int(getattr(response, "global").asn)  # a Python keyword: no attribute syntax

    def table_sizes(self) -> dict[int, int]:
        """Prefixes (destinations) in GoBGP's global table, per family (4, 6)."""
        sizes = {}
        for (afi, safi), family in _FAMILIES.items():
            request = api.GetTableRequest(table_type=api.GLOBAL, family=api.Family(afi=afi, safi=safi))
            sizes[family] = int(self._unary("GetTable", request).num_destination)
        return sizes

    def sessions(self) -> list[Session]:
        """Every BGP neighbour configured in GoBGP with its session state (ListPeer)."""
        try:
            peers = [response.peer for response in self._stub.ListPeer(api.ListPeerRequest(), timeout=self.timeout)]
        except grpc.RpcError as err:
            raise rpc_error(self.target, "ListPeer", err) from err
        out = []
        for peer in peers:
            state = peer.state
            name = api.PeerState.SessionState.Name(state.session_state)
            timers = peer.timers.state
            since = timers.uptime if state.session_state == api.PeerState.ESTABLISHED else timers.downtime
            received = accepted = 0
            for afi_safi in peer.afi_safis:
                received += afi_safi.state.received
                accepted += afi_safi.state.accepted
            out.append(Session(state.neighbor_address, state.peer_asn, name.lower(),
                               float(since.seconds) if since.seconds else None, received, accepted))
        return out

    def watch_best_paths(self, init: bool = True) -> WatchStream:
        """Open the best-path watch (see the module docstring).  With `init`, its first
        table event is the whole table, the next ones changes; without, only changes
        (call :meth:`WatchStream.wait_registered` before listing the table).  Raises
        GoBgpError if GoBGP is unreachable or its BGP server is not started, since then
        the dump would be missing."""
        if not self.started_asn():
            raise GoBgpError(self.target, "WatchEvent", "GoBGP's BGP server is not started yet (no global AS)")
        request = api.WatchEventRequest(
            peer=api.WatchEventRequest.Peer(),
            table=api.WatchEventRequest.Table(filters=[api.WatchEventRequest.Table.Filter(type=_BEST, init=init)]))
        return WatchStream(self.target, self._stub.WatchEvent(request), init)

    def list_best_routes(self, families: Sequence[int] = (V4, V6), decoder: PathDecoder | None = None
                         ) -> Generator[tuple[bytes, RouteParts], None, None]:
        """The prefix key and attributes of the best path of every prefix of `families`
        (4, 6), streamed (ListPath), in BGP's wire form (``enable_only_binary``: see the
        module docstring), decoded by :meth:`PathDecoder.listed`.

        One call per family, all asked for at once: gobgpd builds each answer whole
        before its first message, so the IPv6 answer is built while the IPv4 one is
        read instead of after it (about 2 s of a full table, when read one after the
        other); HTTP/2 flow control holds its messages until they are read.
        Tried and dropped: asking for one /8 at a time (LONGER and SHORTER lookups) to
        bound gobgpd's memory.  Each lookup costs gobgpd about as much as a whole listing
        (it copies the table into a new tree first, GetLongerPrefixDestinations): on the
        full table, three pieces took three minutes (measured here).
        """
        decoder = decoder or PathDecoder()
        # A channel of its own, with gRPC's single-threaded unary-stream mode: the
        # reading thread drives the call itself instead of taking each message from
        # gRPC's polling thread through a lock, which measured 2-3x faster over a listing
        # of one message per prefix (docs/performance.md).  The watch keeps the shared
        # channel: it is cancelled from another thread, which this mode is not meant for.
        channel = grpc.insecure_channel(self.target, options=[*CHANNEL_OPTIONS, (SINGLE_THREADED_UNARY_STREAM, 1)])
        stub = cast(Callable[[grpc.Channel], Any], api_grpc.GobgpApiStub)(channel)
        calls = []
        listed = decoder.listed
        try:
            for family in families:
                afi = api.Family.AFI_IP if family == V4 else api.Family.AFI_IP6
                calls.append((family, stub.ListPath(api.ListPathRequest(
                    table_type=api.GLOBAL, family=api.Family(afi=afi, safi=api.Family.SAFI_UNICAST),
                    enable_only_binary=True))))
            for family, call in calls:
                for response in call:
                    yield from listed(response.destination.paths, family)
        except grpc.RpcError as err:
            raise rpc_error(self.target, "ListPath", err) from err
        finally:
            for _, call in calls:
                call.cancel()
            channel.close()

    def add_path(self, prefix: str, next_hop: str, communities: Sequence[str | int] = (),
                 local_pref: int | None = None) -> bytes:
        """Announce `prefix` from GoBGP's global RIB (origin IGP); GoBGP's id of the path.

        Communities are texts of :mod:`..common.bgp_values` (standard, large or
        well-known) or the 32-bit values of standard ones.
        """
        path = _path(prefix, next_hop, communities, local_pref)
        return bytes(self._unary("AddPath", api.AddPathRequest(table_type=api.GLOBAL, path=path)).uuid)

    def delete_path(self, prefix: str, next_hop: str = "", communities: Sequence[str | int] = ()) -> None:
        """Withdraw our path for `prefix` (added by :meth:`add_path`) from the global RIB."""
        path = _path(prefix, next_hop, communities, None)
        path.is_withdraw = True  # GoBGP 3.10 asks for a next hop unless the path says withdraw
        self._unary("DeletePath", api.DeletePathRequest(table_type=api.GLOBAL, family=path.family, path=path))


def rpc_error(target: str, call: str, err: grpc.RpcError) -> GoBgpError:
    """The GoBgpError of a failed gRPC `call` (for calls made on :attr:`GoBgpClient.stub`)."""
    code = err.code() if isinstance(err, grpc.Call) else None
    details = err.details() if isinstance(err, grpc.Call) else str(err)
    name = code.name if code is not None else "error"
    return GoBgpError(target, call, f"{name}: {details}", code)


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _path(prefix: str, next_hop: str, communities: Sequence[str | int], local_pref: int | None) -> Any:
    """The API Path for one of our unicast announcements; BgpValueError (a ValueError)
    names a bad argument, with the words of the one definition of BGP values (gobgpd
    itself takes almost anything: see common/bgp_values.py)."""
    net = parse_prefix(prefix)
    hop = next_hop_for(net, next_hop) if next_hop else None
    afi = api.Family.AFI_IP if net.version == 4 else api.Family.AFI_IP6
    family = api.Family(afi=afi, safi=api.Family.SAFI_UNICAST)
    nlri = _pack(attrs_pb.IPAddressPrefix(prefix=str(net.network_address), prefix_len=net.prefixlen))
    pattrs = [_pack(attrs_pb.OriginAttribute(origin=0))]
    if hop is not None:
        if net.version == 4:
            pattrs.append(_pack(attrs_pb.NextHopAttribute(next_hop=str(hop))))
        else:  # RFC 4760: other families carry the next hop in MP_REACH_NLRI
            pattrs.append(_pack(attrs_pb.MpReachNLRIAttribute(family=family, next_hops=[str(hop)], nlris=[nlri])))
    standard: list[int] = []
    large: list[Any] = []
    for item in communities:
        if isinstance(item, int):
            if not 0 <= item <= U32:
                raise BgpValueError("a BGP community", item, "a standard community's value is 32 bits")
            standard.append(item)
            continue
        community = parse_community(item)
        if community.large:  # RFC 8092, its own attribute
            a, b, c = community.parts
            large.append(attrs_pb.LargeCommunity(global_admin=a, local_data1=b, local_data2=c))
        else:
            standard.append(community.value)
    if standard:
        pattrs.append(_pack(attrs_pb.CommunitiesAttribute(communities=standard)))
    if large:
        pattrs.append(_pack(attrs_pb.LargeCommunitiesAttribute(communities=large)))
    if local_pref is not None:
        pattrs.append(_pack(attrs_pb.LocalPrefAttribute(local_pref=local_pref)))
    return api.Path(nlri=nlri, pattrs=pattrs, family=family)
