"""A forwarding HTTP proxy for apt inside the Molecule VM (run on the controller).

The VM lives in its own network namespace with no route out (an appliance often has no
internet either); apt reaches the Debian mirror through this proxy, which the `common`
role configures with `common_apt_proxy`, as an operator would with apt-cacher-ng.  Only
GET/HEAD of absolute ``http://`` URLs on the allowed mirror hosts are forwarded.

    python3 apt_proxy.py --listen <router address>:3142 [--allow deb.debian.org ...]
"""

from __future__ import annotations

import argparse
import http.client
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "te", "trailer",
              "transfer-encoding", "upgrade"}


def make_handler(allowed: frozenset[str]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive and pipelining, as apt uses them

        def do_GET(self) -> None:
            self._forward()

        def do_HEAD(self) -> None:
            self._forward()

        def _forward(self) -> None:
            url = urlsplit(self.path)
            if url.scheme != "http" or url.hostname not in allowed:
                self._reply(403, f"apt_proxy: {self.path} is not on an allowed mirror ({', '.join(sorted(allowed))})")
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            path = url.path + (f"?{url.query}" if url.query else "")
            try:
                upstream = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=60)
                upstream.request(self.command, path, headers=headers)
                resp = upstream.getresponse()
                body = resp.read()
                upstream.close()
            except OSError as err:
                self._reply(502, f"apt_proxy: {url.hostname}: {err}")
                return
            self.send_response(resp.status, resp.reason)
            for key, value in resp.getheaders():
                if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _reply(self, status: int, text: str) -> None:
            data = (text + "\n").encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            sys.stderr.write("apt_proxy: " + format % args + "\n")

    return Handler


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT")
    parser.add_argument("--allow", nargs="*", default=["deb.debian.org", "security.debian.org"])
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    server = ThreadingHTTPServer((host, int(port)), make_handler(frozenset(args.allow)))
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"apt_proxy: listening on {host}:{port}", flush=True)
    server.serve_forever()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
