"""Serving the API with uvicorn in a background thread: the embedded mode, where the
control plane runs inside ``flowenricher run`` next to the one process that owns the
chDB data directory."""

from __future__ import annotations

import logging
import ssl
import threading
import time
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from appliance.flowenricher.errors import FlowEnricherError

log = logging.getLogger(__name__)


class ApiServerError(FlowEnricherError):
    """The API could not start listening (address in use, not ours)."""


class ApiServer:
    """uvicorn on `host:port` in a daemon thread; :meth:`start` returns once it listens.

    uvicorn installs no signal handlers outside the main thread, so the service keeps
    its own SIGTERM handling and calls :meth:`stop`.  With `tls` (certificate and key
    files, PEM) it serves HTTPS only; a file that cannot be read or a key that does not
    match the certificate is an ApiServerError naming both keys.
    """

    def __init__(self, app: FastAPI, host: str, port: int, tls: tuple[Path, Path] | None = None) -> None:
        certfile, keyfile = (str(tls[0]), str(tls[1])) if tls is not None else (None, None)
        if certfile is not None and keyfile is not None:
            # Read here first, so a wrong file is named, not told as "cannot listen".
            try:
                ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(certfile, keyfile)
            except (OSError, ssl.SSLError) as err:
                raise ApiServerError(f"API: api.tls_cert {certfile} / api.tls_key {keyfile}: {err}") from err
        config = uvicorn.Config(app, host=host.strip("[]"), port=port, log_level="warning", access_log=False,
                                lifespan="on", server_header=False, ssl_certfile=certfile, ssl_keyfile=keyfile)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="api", daemon=True)
        self.where = f"{host}:{port}"
        self.scheme = "https" if tls is not None else "http"

    def start(self, timeout: float = 10.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise ApiServerError(f"API: cannot listen on {self.where} (see the log above)")
            if time.monotonic() > deadline:
                self.stop()
                raise ApiServerError(f"API: not listening on {self.where} after {timeout:.0f} s")
            time.sleep(0.02)
        log.info("API on %s://%s (docs at /docs)", self.scheme, self.where)

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        for server in self._server.servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        raise ApiServerError("API: not listening")

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
