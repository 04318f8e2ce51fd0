"""
Baseline: the original lab write-up's load balancer, reproduced: a Flask app
that picks a backend with random.choice and fetches the page with
requests.get (a new backend connection per request, the whole body read into
memory), served by Werkzeug's development server (threaded, the default),
over TLS with the same certificate as every other contender.

    python flask_balancer.py --backends 127.0.0.2:80,127.0.0.3:80 \
        --host 127.0.0.1 --port 8443 --cert C --key K [--no-resume]

Over TLS it lets clients resume their sessions (Python's ssl defaults:
session tickets, in TLS 1.2 and 1.3) unless given --no-resume.
"""

from __future__ import annotations

import argparse
import random
import ssl

import requests
from flask import Flask, Response

app = Flask(__name__)
servers: list[str] = []


@app.route("/", defaults={"path": ""})
@app.route("/<path:path>")
def balance(path: str) -> Response:
    server = random.choice(servers)
    response = requests.get(f"http://{server}/{path}")
    return Response(
        response.content,
        status=response.status_code,
        content_type=response.headers.get("Content-Type"),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument(
        "--no-resume",
        action="store_true",
        help="refuse TLS session resumption: no session tickets (TLS 1.2 or 1.3)",
    )
    args = parser.parse_args()
    servers.extend(args.backends.split(","))
    ssl_context: tuple[str, str] | ssl.SSLContext | None = None
    if args.cert and args.no_resume:
        # What Werkzeug makes of (cert, key), without tickets. Python's ssl
        # has no switch for OpenSSL's server session cache; a TLS 1.2
        # client could only resume from it after a clean TLS close, which
        # Werkzeug never sends (OpenSSL drops the session of a connection
        # closed without one).
        ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ssl_context.load_cert_chain(args.cert, args.key)
        ssl_context.options |= ssl.OP_NO_TICKET
        # TLS 1.3: OP_NO_TICKET alone would send "stateful" tickets, kept
        # in that cache; send none.
        ssl_context.num_tickets = 0
    elif args.cert:
        ssl_context = (args.cert, args.key)
    app.run(host=args.host, port=args.port, ssl_context=ssl_context, threaded=True)


if __name__ == "__main__":
    main()
