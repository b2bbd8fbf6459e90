"""The generated GoBGP API modules, imported in one place so that a missing generation
step fails with the command that fixes it instead of a bare ModuleNotFoundError.

The stubs are built from GoBGP's own .proto files by tools/gen_gobgp_stubs.py, and
committed (see there).
"""

from __future__ import annotations

from ..errors import FlowEnricherError


class StubsMissingError(FlowEnricherError, ImportError):
    """The GoBGP API stubs were not generated in this checkout or installation."""


try:
    from ._api import attribute_pb2, gobgp_pb2, gobgp_pb2_grpc
except ImportError as err:  # the generated package or one of its modules is absent
    raise StubsMissingError(
        "the GoBGP API stubs are not generated (appliance/flowenricher/bgp/_api): "
        f"run python tools/gen_gobgp_stubs.py ({err})"
    ) from err

__all__ = ["StubsMissingError", "attribute_pb2", "gobgp_pb2", "gobgp_pb2_grpc"]
