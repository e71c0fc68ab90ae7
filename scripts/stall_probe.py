#!/usr/bin/env python3
"""Machine stall probe (scripts/soak.sh runs it): sleeps 1 ms in a loop and prints, once a second,
the Unix time and the longest oversleep of that second in ms (how much later than asked the
sleep came back). Run it at real-time priority (`chrt -f 50`) and the scheduler's queueing
behind busy threads is out of the figure: what is left is the machine not running it at all (a
VM's vCPU descheduled or throttled by its host, a long non-preemptible kernel section). On a
quiet 2-vCPU VM it stays under ~5 ms; an oversleep of tens of ms under load tells a stall of the
machine from a stall of the server.
Usage: stall_probe.py [SECONDS]  (default: until killed)"""
import sys
import time

limit = float(sys.argv[1]) if len(sys.argv) > 1 else float("inf")
start = last = time.monotonic()
second = int(time.time())
worst = 0.0
while time.monotonic() - start < limit:
    time.sleep(0.001)
    now = time.monotonic()
    worst = max(worst, (now - last - 0.001) * 1000)
    last = now
    s = int(time.time())
    if s != second:
        print(f"{second} {worst:.2f}", flush=True)
        second, worst = s, 0.0
