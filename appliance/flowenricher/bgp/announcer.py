"""Blackhole routes into GoBGP: the Announcer the blackhole manager talks to.

GoBGP originates each blackhole from its global RIB (AddPath) and advertises it to the
router; the router discards traffic to the next hop.  ``announced`` lists the paths
GoBGP originated itself (no neighbour), which is what reconciliation compares with the
state DB after either side restarted.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Callable, Sequence
from typing import Any, cast

import grpc

from ..blackhole.manager import AnnounceError
from .client import CHANNEL_OPTIONS, GoBgpClient, GoBgpError
from .stubs import gobgp_pb2 as api
from .stubs import gobgp_pb2_grpc as api_grpc

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
        with self._lock:
            try:
                self._client.add_path(prefix, next_hop, list(communities))
            except (GoBgpError, ValueError) as err:
                raise AnnounceError(str(err)) from err

    def withdraw(self, prefix: str, next_hop: str, communities: Sequence[str]) -> None:
        with self._lock:
            try:
                self._client.delete_path(prefix, next_hop, list(communities))
            except (GoBgpError, ValueError) as err:
                raise AnnounceError(str(err)) from err

    def announced(self) -> set[str]:
        """Prefixes GoBGP originates itself (paths without a neighbour), both families."""
        out: set[str] = set()
        with self._lock:
            for afi in (api.Family.AFI_IP, api.Family.AFI_IP6):
                request = api.ListPathRequest(table_type=api.GLOBAL,
                                              family=api.Family(afi=afi, safi=api.Family.SAFI_UNICAST))
                try:
                    call: Any = self._stub.ListPath(request, timeout=self.timeout)
                    for response in call:
                        dest = response.destination
                        if any(p.neighbor_ip in _LOCAL_NEIGHBOR and not p.is_withdraw for p in dest.paths):
                            out.add(str(ipaddress.ip_network(dest.prefix, strict=False)))
                except grpc.RpcError as err:
                    raise AnnounceError(f"GoBGP at {self.target}: ListPath: {err}") from err
        return out

    def close(self) -> None:
        self._client.close()
        self._channel.close()
