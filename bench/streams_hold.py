"""Opens N concurrent SSE chat streams through the gateway (127.0.0.1) and holds them.

Used by bench/streams_rss.sh. Each stream is a raw HTTP/1.1 connection: POST with
"stream": true, read the head and the first event. When all are open (or --timeout has
passed), prints "OPENED SECONDS" on stdout; with --hold 1 it then waits for a line on
stdin (at most --timeout seconds) before closing every connection. Standard library only.
"""

import argparse
import asyncio
import json
import os
import sys
import time

BODY = json.dumps(
    {
        "model": "mock-model",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 8,
        "stream": True,
    }
).encode()


async def open_stream(port, gate, deadline):
    async with gate:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port), remaining
            )
        except (OSError, asyncio.TimeoutError):
            return None
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
        f"content-type: application/json\r\ncontent-length: {len(BODY)}\r\n\r\n"
    ).encode()
    writer.write(head + BODY)
    try:
        remaining = max(deadline - time.monotonic(), 0.1)
        status = await asyncio.wait_for(reader.readline(), remaining)
        if b" 200 " not in status:
            writer.close()
            return None
        # Head, then the first event (a chunk holding "data:").
        buf = b""
        while b"data:" not in buf:
            remaining = max(deadline - time.monotonic(), 0.1)
            chunk = await asyncio.wait_for(reader.read(4096), remaining)
            if not chunk:
                writer.close()
                return None
            buf += chunk
    except (OSError, asyncio.TimeoutError):
        writer.close()
        return None
    return writer


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--streams", type=int, required=True)
    p.add_argument("--hold", type=int, default=1)
    p.add_argument("--timeout", type=float, default=120)
    args = p.parse_args()

    started = time.monotonic()
    deadline = started + args.timeout
    # At most 256 connects in flight: the listen backlog stays far from full.
    gate = asyncio.Semaphore(256)
    writers = await asyncio.gather(
        *(open_stream(args.port, gate, deadline) for _ in range(args.streams))
    )
    open_writers = [w for w in writers if w is not None]
    print(f"{len(open_writers)} {time.monotonic() - started:.1f}", flush=True)
    if args.hold:
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(
                loop.run_in_executor(None, sys.stdin.readline), args.timeout
            )
        except asyncio.TimeoutError:
            pass
    for w in open_writers:
        w.close()
    await asyncio.sleep(0.2)
    sys.stdout.flush()
    # Not asyncio.run's executor shutdown: a stdin reader may still block after a timeout.
    os._exit(0)


if __name__ == "__main__":
    asyncio.run(main())
