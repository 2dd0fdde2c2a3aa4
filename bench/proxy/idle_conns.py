#!/usr/bin/env python3
"""Open COUNT idle keep-alive HTTP/1.1 connections to HOST:PORT and hold them.

Used by bench/proxy.sh to see what idle clients cost a proxy in memory. Each
connection sends one `GET / HTTP/1.1`, reads the whole response, then stays open
and silent. When every connection is open (or has failed), one line goes to
stdout:

    ready open=9998 failed=2 (connection refused: 2)

The connections are then held until SIGTERM or SIGINT, or --hold seconds (so a
crashed caller never leaves them behind), after which the script closes them and
prints how many the server had closed on its own:

    done held=9998 closed_by_server=0

Standard library only; the caller raises `ulimit -n` (the script raises its soft
limit to the hard one).
"""

import argparse
import asyncio
import resource
import signal
import sys
from collections import Counter


async def read_response(reader):
    """Reads one HTTP/1.1 response (Content-Length or chunked); returns the status."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


class Pool:
    def __init__(self, host, port, timeout):
        self.host, self.port, self.timeout = host, port, timeout
        self.open = []  # (reader, writer)
        self.failures = Counter()
        self.closed_by_server = 0

    async def one(self, gate):
        async with gate:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(self.host, self.port), self.timeout
                )
            except Exception as err:  # noqa: BLE001 - every failure is counted by kind
                self.failures[kind(err)] += 1
                return
            try:
                writer.write(
                    f"GET / HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                    "User-Agent: gatehouse-bench-idle\r\n\r\n".encode()
                )
                status = await asyncio.wait_for(read_response(reader), self.timeout)
            except Exception as err:  # noqa: BLE001
                self.failures[kind(err)] += 1
                writer.close()
                return
            if not 200 <= status < 300:
                self.failures[f"HTTP {status}"] += 1
                writer.close()
                return
            self.open.append((reader, writer))
        # Outside the gate: wait for the server to close (it should not).
        if await reader.read(1) == b"":
            self.closed_by_server += 1


def kind(err):
    if isinstance(err, asyncio.TimeoutError):
        return "timeout"
    if isinstance(err, asyncio.IncompleteReadError):
        return "closed before a complete response"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror.lower()
    return type(err).__name__


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("count", type=int)
    parser.add_argument("--parallel", type=int, default=200, help="connections being opened at once")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per connect and per response")
    parser.add_argument("--hold", type=float, default=600.0, help="give up holding after this many seconds")
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < args.count + 100:
        sys.exit(f"idle_conns: ulimit -n is {hard}, too low for {args.count} connections")

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    pool = Pool(args.host, args.port, args.timeout)
    gate = asyncio.Semaphore(args.parallel)
    tasks = [asyncio.create_task(pool.one(gate)) for _ in range(args.count)]
    while len(pool.open) + sum(pool.failures.values()) < args.count:
        await asyncio.sleep(0.05)
    failed = sum(pool.failures.values())
    why = ", ".join(f"{k}: {v}" for k, v in pool.failures.most_common())
    print(f"ready open={len(pool.open)} failed={failed}" + (f" ({why})" if why else ""), flush=True)

    try:
        await asyncio.wait_for(stop.wait(), args.hold)
    except asyncio.TimeoutError:
        pass
    held = len(pool.open) - pool.closed_by_server
    print(f"done held={held} closed_by_server={pool.closed_by_server}", flush=True)
    for _reader, writer in pool.open:
        writer.close()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


if __name__ == "__main__":
    asyncio.run(main())
