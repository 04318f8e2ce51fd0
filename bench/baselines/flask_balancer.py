"""
Baseline: the original lab write-up's load balancer, reproduced: a Flask app
that picks a backend with random.choice and fetches the page with
requests.get (a new backend connection per request, the whole body read into
memory), served by Werkzeug's development server (threaded, the default),
over TLS with the same certificate as every other contender.

    python flask_balancer.py --backends 127.0.0.2:80,127.0.0.3:80 \
        --host 127.0.0.1 --port 8443 --cert C --key K
"""

from __future__ import annotations

import argparse
import random

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
    args = parser.parse_args()
    servers.extend(args.backends.split(","))
    ssl_context = (args.cert, args.key) if args.cert else None
    app.run(host=args.host, port=args.port, ssl_context=ssl_context, threaded=True)


if __name__ == "__main__":
    main()
