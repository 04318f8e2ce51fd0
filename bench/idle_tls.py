"""
Scenario E's client: open N TLS connections to HOST:PORT at a bounded rate,
complete every handshake, send nothing, and hold them.

Prints one line when the connections are open:
    open=N failed=F seconds=S
then holds until its standard input closes (or --hold seconds pass), and
prints:
    held=H closed_by_server=C
before closing everything. Only loopback addresses are accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import ssl
import sys
import time


class Idle(asyncio.Protocol):
    lost = 0

    def connection_lost(self, exc: object) -> None:
        Idle.lost += 1


async def main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    limit = asyncio.Semaphore(args.concurrency)
    transports: list[asyncio.BaseTransport] = []
    failed = 0
    deadline = time.monotonic() + args.open_timeout

    async def one() -> None:
        nonlocal failed
        async with limit:
            if time.monotonic() > deadline:
                failed += 1
                return
            try:
                transport, _ = await asyncio.wait_for(
                    loop.create_connection(Idle, args.host, args.port, ssl=context), 30
                )
                transports.append(transport)
            except (OSError, asyncio.TimeoutError, ssl.SSLError):
                failed += 1

    started = time.monotonic()
    await asyncio.gather(*(one() for _ in range(args.count)))
    print(
        f"open={len(transports)} failed={failed} seconds={time.monotonic() - started:.1f}",
        flush=True,
    )
    stdinClosed = loop.create_future()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def waitStdin() -> None:
        await reader.read()
        stdinClosed.set_result(None)

    task = asyncio.ensure_future(waitStdin())
    try:
        await asyncio.wait_for(stdinClosed, args.hold)
    except asyncio.TimeoutError:
        pass
    task.cancel()
    print(f"held={len(transports) - Idle.lost} closed_by_server={Idle.lost}", flush=True)
    for transport in transports:
        transport.abort()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--open-timeout", type=float, default=120)
    parser.add_argument("--hold", type=float, default=300)
    arguments = parser.parse_args()
    if not ipaddress.ip_address(arguments.host).is_loopback:
        parser.error("only loopback addresses")
    asyncio.run(main(arguments))
