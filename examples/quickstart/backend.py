#!/usr/bin/env python3
"""A tiny echo backend for the Sluice quick start and end-to-end tests (python3 stdlib only).

    python3 backend.py --port 9001 --name echo-a

Answers every method and path with 200 and a JSON description of what it received:

    {"backend": "echo-a", "method": "GET", "path": "/echo/hi?x=1",
     "headers": {"host": "...", "x-request-id": "...", ...}, "body": ""}

A path ending in /slow (e.g. /slow?ms=3000) waits that many milliseconds first, to show
the gateway's timeouts. HTTP/1.1 with keep-alive; every response has a Content-Length.
"""

import argparse
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

MAX_SLOW_MS = 60_000


class EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; requires a Content-Length on every response
    backend_name = "backend"

    def version_string(self):
        return "sluice-quickstart-backend"

    def __getattr__(self, attr):
        # BaseHTTPRequestHandler dispatches to do_<METHOD>; answer every method the same way.
        if attr.startswith("do_"):
            return self._answer
        raise AttributeError(attr)

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass  # quiet: the gateway's access log is the interesting one

    def _read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size_line = self.rfile.readline(65537)
                if not size_line:
                    break
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    # Trailers (if any) end with an empty line.
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline(3)  # the CRLF after the chunk data
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _answer(self):
        try:
            body = self._read_body()
        except ValueError:
            self.send_error(400, "bad request body")
            return
        url = urlsplit(self.path)
        if url.path.endswith("/slow"):
            try:
                ms = int(parse_qs(url.query).get("ms", ["1000"])[0])
            except ValueError:
                ms = 1000
            time.sleep(max(0, min(ms, MAX_SLOW_MS)) / 1000)
        headers = {}
        for name, value in self.headers.items():
            name = name.lower()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        payload = json.dumps(
            {
                "backend": self.backend_name,
                "method": self.command,
                "path": self.path,
                "headers": headers,
                "body": body.decode("utf-8", errors="replace"),
            },
            indent=2,
        ).encode() + b"\n"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        # A client that gave up (e.g. the gateway after a timeout) is not worth a traceback.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()

    EchoHandler.backend_name = args.name
    server = QuietServer((args.host, args.port), EchoHandler)
    print(f"backend {args.name} listening on {args.host}:{args.port}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
