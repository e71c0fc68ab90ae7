#!/usr/bin/env python3
"""The client side of scripts/faults.sh (issue 15): plain HTTP/1.1 over asyncio, standard library only.

  drive URL BODY --workers N [--duration S | --stop-file F | --count N] [--timeout T] --out JSON
      Closed loop: N workers each send a POST of BODY (JSON) on a fresh connection (Connection:
      close, so that every request's fate is its own: refused before it was sent, or answered) and
      wait at most T seconds for the answer. Records every request: sent (written to the socket),
      answered by status, refused (connect failed: never sent), reset (the connection died after
      the request was written, before any answer byte) and hung (no answer within T).
  disconnect URL BODY --clients N --hold-ms H --out JSON
      N clients at once, each connects, writes its request, waits H ms, and closes the socket
      without reading the answer (a FIN; --reset: a reset, SO_LINGER 0, as a killed client, whose
      request the server's kernel drops unread if it has not read it yet, so that the server never
      sees it). Records how many wrote their request and how many were answered before they left.
"""

import argparse
import asyncio
import json
import os
import socket
import struct
import sys
import time
from collections import Counter
from urllib.parse import urlsplit


def request_bytes(url, body, keep_alive=False):
    u = urlsplit(url)
    head = (
        f"POST {u.path} HTTP/1.1\r\nHost: {u.netloc}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
    )
    return u.hostname, u.port, head.encode() + body


async def one(host, port, raw, timeout, stats, latencies):
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        stats["refused"] += 1
        return
    t0 = time.monotonic()
    try:
        writer.write(raw)
        await writer.drain()
    except OSError:
        stats["refused"] += 1  # the server closed before the request was written: never received
        writer.close()
        return
    stats["sent"] += 1
    try:
        line = await asyncio.wait_for(reader.readline(), timeout)
        if not line:
            stats["reset"] += 1
        else:
            code = line.split()[1].decode()
            stats[f"status_{code}"] += 1
            latencies.append(time.monotonic() - t0)
    except asyncio.TimeoutError:
        stats["hung"] += 1
    except OSError:
        stats["reset"] += 1
    finally:
        writer.close()


async def drive(a):
    host, port, raw = request_bytes(a.url, open(a.body, "rb").read())
    stats, latencies = Counter(), []
    deadline = time.monotonic() + a.duration if a.duration else None
    budget = [a.count] if a.count else None

    def more():
        if deadline and time.monotonic() >= deadline:
            return False
        if a.stop_file and os.path.exists(a.stop_file):
            return False
        if budget is not None:
            if budget[0] <= 0:
                return False
            budget[0] -= 1
        return True

    async def worker():
        while more():
            await one(host, port, raw, a.timeout, stats, latencies)
            if stats["refused"] and a.stop_on_refused:
                return

    if a.ready_file:
        open(a.ready_file, "w").close()
    await asyncio.gather(*(worker() for _ in range(a.workers)))
    latencies.sort()
    out = dict(stats)
    out["answered"] = sum(v for k, v in stats.items() if k.startswith("status_"))
    out["ok"] = stats["status_200"]
    out["errors"] = out["answered"] - out["ok"]
    out["max_latency_s"] = round(latencies[-1], 3) if latencies else 0
    out["p99_latency_s"] = round(latencies[int(0.99 * (len(latencies) - 1))], 3) if latencies else 0
    json.dump(out, open(a.out, "w"))


async def disconnect(a):
    host, port, raw = request_bytes(a.url, open(a.body, "rb").read())
    stats = Counter()
    go = asyncio.Event()

    async def client():
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            stats["refused"] += 1
            return
        await go.wait()
        try:
            writer.write(raw)
            await writer.drain()
            stats["sent"] += 1
            try:
                line = await asyncio.wait_for(reader.readline(), a.hold_ms / 1000)
                stats["answered_before_leaving" if line else "closed_by_server"] += 1
            except asyncio.TimeoutError:
                stats["left_unanswered"] += 1
        except OSError:
            stats["write_failed"] += 1
        sock = writer.get_extra_info("socket")
        if a.reset and sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()

    tasks = [asyncio.create_task(client()) for _ in range(a.clients)]
    await asyncio.sleep(0.5)  # let the connections open, then send every request at once
    go.set()
    await asyncio.gather(*tasks)
    json.dump(dict(stats), open(a.out, "w"))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("drive")
    d.add_argument("url")
    d.add_argument("body")
    d.add_argument("--workers", type=int, default=8)
    d.add_argument("--duration", type=float)
    d.add_argument("--count", type=int)
    d.add_argument("--stop-file")
    d.add_argument("--ready-file")
    d.add_argument("--stop-on-refused", action="store_true")
    d.add_argument("--timeout", type=float, default=30.0)
    d.add_argument("--out", required=True)
    x = sub.add_parser("disconnect")
    x.add_argument("url")
    x.add_argument("body")
    x.add_argument("--clients", type=int, default=1000)
    x.add_argument("--hold-ms", type=float, default=200)
    x.add_argument("--reset", action="store_true", help="leave with a reset (SO_LINGER 0), not a close")
    x.add_argument("--out", required=True)
    a = p.parse_args()
    asyncio.run(drive(a) if a.cmd == "drive" else disconnect(a))


if __name__ == "__main__":
    sys.exit(main())
