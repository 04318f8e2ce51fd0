"""
Scenario F's client: GET PATH over TLS from HOST:PORT and read the body at
no more than RATE bytes per second, through a small receive buffer, so the
server side has to hold back (or buffer) the rest.

Prints: status=200 bytes=N seconds=S  (bounded by --time-limit).
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import ssl
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/big.bin")
    parser.add_argument("--rate", type=float, required=True, help="bytes per second")
    parser.add_argument("--time-limit", type=float, required=True)
    parser.add_argument("--plain", action="store_true")
    args = parser.parse_args()
    if not ipaddress.ip_address(args.host).is_loopback:
        parser.error("only loopback addresses")

    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    raw.settimeout(args.time_limit)
    raw.connect((args.host, args.port))
    if args.plain:
        sock = raw
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        sock = context.wrap_socket(raw)
    sock.sendall(
        f"GET {args.path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
    )
    started = time.monotonic()
    deadline = started + args.time_limit
    received = 0
    head = b""
    status = "-"
    chunk = 64 * 1024
    while time.monotonic() < deadline:
        try:
            data = sock.recv(chunk)
        except (TimeoutError, OSError):
            break
        if not data:
            break
        if status == "-":
            head += data
            if b"\r\n\r\n" in head:
                status = head.split(b" ", 2)[1].decode()
                received += len(head.split(b"\r\n\r\n", 1)[1])
                head = b""
        else:
            received += len(data)
        ahead = received / args.rate - (time.monotonic() - started)
        if ahead > 0:
            time.sleep(min(ahead, max(0.0, deadline - time.monotonic())))
    print(f"status={status} bytes={received} seconds={time.monotonic() - started:.1f}", flush=True)
    sock.close()


if __name__ == "__main__":
    main()
