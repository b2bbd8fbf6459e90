"""Blackhole routes into GoBGP: the Announcer the blackhole manager talks to.

GoBGP originates each blackhole from its global RIB (AddPath) and advertises it to the
router; the router discards traffic to the next hop.  A failure is either a refusal
(AnnounceRefused: a value that cannot be announced, or GoBGP's own refusal: the manager
marks the blackhole failed at once) or GoBGP being unreachable (AnnounceError: retried);
the gRPC status tells them apart (bgp/client.TRANSIENT_CODES).  ``announced`` lists the paths
GoBGP originated itself (no neighbour), which is what reconciliation compares with the
state DB after either side restarted.  ``confirmed`` asks GoBGP's adj-RIB-out, peer by
peer, whether a route is sent to every Established router peer of its address family:
what the blackhole manager's *confirmed* state means.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

import grpc

from ..bgp.client import CHANNEL_OPTIONS, GoBgpClient, GoBgpError
from ..bgp.stubs import gobgp_pb2 as api
from ..bgp.stubs import gobgp_pb2_grpc as api_grpc
from ..common.bgp_values import BgpValueError
from .manager import AnnounceError, AnnounceRefused

_LOCAL_NEIGHBOR = {"", "<nil>", "0.0.0.0", "::"}


class GoBgpAnnouncer:
    """Announces and withdraws through GoBGP's gRPC API at `target`; thread-safe."""

    def __init__(self, target: str, timeout: float = 3.0) -> None:
        self.target = target
        self.timeout = timeout
        self._client = GoBgpClient(target, timeout=timeout)
        # Its own channel for listing the global table (the client streams best paths only).
        self._channel = grpc.insecure_channel(target, options=list(CHANNEL_OPTIONS))
        self._stub: Any = cast(Callable[[grpc.Channel], Any], api_grpc.GobgpApiStub)(self._channel)
        self._lock = threading.Lock()

    def announce(self, prefix: str, next_hop: str, communities: Sequence[str]) -> None:
        """Announce one blackhole route.  AnnounceRefused when it can never be announced
        (a value of :mod:`..common.bgp_values` refuses, or GoBGP answers a refusal);
        AnnounceError when GoBGP could not be asked (worth retrying)."""
        with self._lock:
            try:
                self._client.add_path(prefix, next_hop, list(communities))
            except BgpValueError as err:
                raise AnnounceRefused(str(err)) from err
            except GoBgpError as err:
                if err.refused:
                    raise AnnounceRefused(f"GoBGP refused it: {err.detail}") from err
                raise AnnounceError(str(err)) from err

    def withdraw(self, prefix: str, next_hop: str, communities: Sequence[str]) -> None:
        """Withdraw our path for `prefix`.  GoBGP finds it by prefix alone, so the next
        hop and communities are not sent: a row stored before its values were checked
        (a community refused today) is still withdrawn, never stuck."""
        with self._lock:
            try:
                self._client.delete_path(prefix)
            except (GoBgpError, ValueError) as err:
                raise AnnounceError(str(err)) from err

    def announced(self, prefixes: Iterable[str]) -> set[str]:
        """Which of `prefixes` GoBGP originates itself (paths without a neighbour).

        Only the prefixes asked about (EXACT lookups, one ListPath per family): listing
        the whole table to find our own few routes made gobgpd copy and convert a full
        table (1.2M prefixes) at every reconcile, every 5 s, growing it to 16-20 GB and
        keeping it busy, with the collector's loop waiting on the answer (found by
        bench/ingest_enriched.py: 8% of flows lost at 300k/s with the GoBGP RIB).
        """
        wanted: dict[int, list[str]] = {4: [], 6: []}
        for prefix in prefixes:
            net = ipaddress.ip_network(prefix, strict=False)
            wanted[net.version].append(str(net))
        out: set[str] = set()
        with self._lock:
            for version, afi in ((4, api.Family.AFI_IP), (6, api.Family.AFI_IP6)):
                if not wanted[version]:
                    continue
                request = api.ListPathRequest(
                    table_type=api.GLOBAL, family=api.Family(afi=afi, safi=api.Family.SAFI_UNICAST),
                    prefixes=[api.TableLookupPrefix(prefix=p, type=api.TableLookupPrefix.EXACT)
                              for p in wanted[version]])
                try:
                    call: Any = self._stub.ListPath(request, timeout=self.timeout)
                    for response in call:
                        dest = response.destination
                        if any(p.neighbor_ip in _LOCAL_NEIGHBOR and not p.is_withdraw for p in dest.paths):
                            out.add(str(ipaddress.ip_network(dest.prefix, strict=False)))
                except grpc.RpcError as err:
                    raise AnnounceError(f"GoBGP at {self.target}: ListPath: {err}") from err
        return out

    def confirmed(self, prefixes: Iterable[str]) -> set[str]:
        """Which of `prefixes` are in GoBGP's adj-RIB-out towards every Established peer
        whose session carries their address family (and there is at least one).

        The adj-RIB-out is what GoBGP sends after its export policy: a route missing
        there for a peer (a policy rejected it, the peer's session does not carry the
        family, no session is up) never reaches that router.  One ListPeer and, per
        Established peer and family, one ListPath with EXACT lookups of just these
        prefixes (never the whole table).
        """
        wanted: dict[int, list[str]] = {4: [], 6: []}
        for prefix in prefixes:
            net = ipaddress.ip_network(prefix, strict=False)
            wanted[net.version].append(str(net))
        afis = {4: api.Family.AFI_IP, 6: api.Family.AFI_IP6}
        out: set[str] = set()
        with self._lock:
            try:
                peers: dict[int, list[str]] = {4: [], 6: []}
                for response in self._stub.ListPeer(api.ListPeerRequest(), timeout=self.timeout):
                    peer = response.peer
                    if peer.state.session_state != api.PeerState.ESTABLISHED:
                        continue
                    for afi_safi in peer.afi_safis:
                        family = afi_safi.config.family
                        if afi_safi.config.enabled and family.safi == api.Family.SAFI_UNICAST:
                            for version, afi in afis.items():
                                if family.afi == afi:
                                    peers[version].append(peer.state.neighbor_address)
                for version, afi in afis.items():
                    if not wanted[version] or not peers[version]:
                        continue
                    sent: set[str] | None = None
                    for neighbor in peers[version]:
                        request = api.ListPathRequest(
                            table_type=api.ADJ_OUT, name=neighbor,
                            family=api.Family(afi=afi, safi=api.Family.SAFI_UNICAST),
                            prefixes=[api.TableLookupPrefix(prefix=p, type=api.TableLookupPrefix.EXACT)
                                      for p in wanted[version]])
                        here = {str(ipaddress.ip_network(r.destination.prefix, strict=False))
                                for r in self._stub.ListPath(request, timeout=self.timeout)
                                if any(not p.is_withdraw for p in r.destination.paths)}
                        sent = here if sent is None else sent & here
                    out |= sent or set()
            except grpc.RpcError as err:
                raise AnnounceError(f"GoBGP at {self.target}: adj-RIB-out: {err}") from err
        return out

    def close(self) -> None:
        self._client.close()
        self._channel.close()
