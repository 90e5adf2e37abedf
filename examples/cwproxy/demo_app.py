#!/usr/bin/env python3
"""The app behind cwproxy in the README's examples (Python standard library only).

Every method on every path answers 200 with JSON echoing the method, path, query and body, and
/health answers {"status":"ok"}, so the default HEALTH_URLS probe succeeds.
Usage: demo_app.py [PORT (8080)] [HOST (127.0.0.1)]
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit


class Handler(BaseHTTPRequestHandler):
    def answer(self):
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        if url.path == "/health":
            payload = {"status": "ok"}
        else:
            payload = {
                "method": self.command,
                "path": url.path,
                "query": dict(parse_qsl(url.query)),
                "body": body.decode("utf-8", "replace"),
            }
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = answer

    def log_message(self, fmt, *args):
        # One line per request on stderr, as http.server does; stdout stays cwproxy's.
        sys.stderr.write("demo app: %s\n" % (fmt % args))


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8080
    host = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"
    sys.stderr.write(f"demo app listening on {host}:{port}\n")
    ThreadingHTTPServer((host, port), Handler).serve_forever()
