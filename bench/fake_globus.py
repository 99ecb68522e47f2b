#!/usr/bin/env python3
"""A loopback stand-in for Globus Auth introspection, for measuring the gateway's auth
overhead with a cached token (bench/auth.sh). Every token is an active anl.gov identity;
the gateway caches it after the first request, so this server's speed does not matter.
Usage: fake_globus.py PORT"""
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.path != "/v2/oauth2/token/introspect":
            self.send_error(404)
            return
        now = int(time.time())
        body = json.dumps({
            "active": True, "token_type": "Bearer", "client_id": "bench", "sub": "bench-user",
            "username": "bench@anl.gov", "name": "Bench", "exp": now + 3600, "iat": now,
            "iss": "https://auth.globus.org",
            "identity_set_detail": [{"id": "bench-user", "sub": "bench-user", "username": "bench@anl.gov",
                                     "name": "Bench", "identity_provider": "idp-anl",
                                     "identity_provider_display_name": "Argonne"}],
            "session_info": {"session_id": "s", "authentications": {"bench-user": {"idp": "idp-anl"}}},
        }).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
