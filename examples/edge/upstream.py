#!/usr/bin/env python3
"""A demo upstream for the Weft examples: answers every request with its own name,
the request line and the request headers it received, so you can see what the proxy
forwarded. Usage: python3 upstream.py PORT NAME  (listens on 127.0.0.1:PORT)."""

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so the proxy can pool connections

    def do_GET(self):
        lines = [f"hello from {NAME}", f"{self.command} {self.path} {self.request_version}"]
        lines += [f"{k}: {v}" for k, v in self.headers.items()]
        body = ("\n".join(lines) + "\n").encode()
        self.send_response(200)
        self.send_header("content-type", "text/plain; charset=utf-8")
        self.send_header("content-length", str(len(body)))
        self.send_header("x-upstream", NAME)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, fmt, *args):
        sys.stderr.write(f"[{NAME}] {fmt % args}\n")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: upstream.py PORT NAME")
    PORT, NAME = int(sys.argv[1]), sys.argv[2]
    ThreadingHTTPServer(("127.0.0.1", PORT), Echo).serve_forever()
