"""A JWKS endpoint of the tests' own: an RSA and an EC signing key, a document the test may
change (or break) at any time, and a count of fetches."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm


class Jwks:
    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.document: Any = {"keys": [self.rsa_jwk("rsa-1"), self.ec_jwk("ec-1")]}
        self.fetches = 0
        self.url = ""

    def rsa_jwk(self, kid: str, key: rsa.RSAPrivateKey | None = None) -> dict[str, Any]:
        public = (key or self.rsa).public_key()
        return {**json.loads(RSAAlgorithm.to_jwk(public)), "kid": kid, "alg": "RS256", "use": "sig"}

    def ec_jwk(self, kid: str) -> dict[str, Any]:
        public = self.ec.public_key()
        return {**json.loads(ECAlgorithm.to_jwk(public)), "kid": kid, "alg": "ES256", "use": "sig"}

    def rsa_public_pem(self) -> bytes:
        return self.rsa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


@contextmanager
def serve_jwks() -> Iterator[Jwks]:
    keys = Jwks()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            keys.fetches += 1
            document = keys.document
            body = document if isinstance(document, bytes) else json.dumps(document).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    keys.url = f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield keys
    finally:
        server.shutdown()
