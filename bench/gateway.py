"""Benchmark of the HTTP ingest gateway against the local stack.

Starts the gateway with uvicorn in a child process on a free 127.0.0.1 port
(settings from the environment, a unique topic prefix, topics created), then
posts N valid generated events with httpx, first one event per request and
then B per request (JSON arrays), ``--concurrency`` requests in flight, and
prints events/s and requests/s for each with the machine's size. Every
answer must be 202 with every event accepted, i.e. acknowledged by Kafka.
The client holds a fresh source key for every channel and type, with a rate
limit far above what it can send, so the limit is checked but never hit.
The client runs in this process and the server in its child, so on a small
machine the two share the CPUs: figures are for the pair.

    python -m bench.gateway --events 20000 --batch 500
    python -m bench.gateway --events 20000 --batch 500 --producer async
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import uuid
from typing import Any

import httpx

from bench.machine import machine_line
from connectors.frontline.access import digest
from connectors.platform.topics import ensure_topics
from touchpoint.generate import generate
from touchpoint.settings import load_settings


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _serve(port: int, prefix: str, kind: str) -> None:
    """The child: the gateway on uvicorn, with the synchronous or the asyncio producer."""
    import uvicorn

    from connectors.intake.gateway import create_gateway
    from connectors.intake.producer import AsyncEventProducer

    settings = load_settings(topic_prefix=prefix)
    if kind == "sync":
        uvicorn.run(create_gateway(settings), host="127.0.0.1", port=port, log_level="warning", access_log=False)
        return

    async def main() -> None:  # the asyncio producer must live on the serving loop
        producer = await AsyncEventProducer.start(settings)
        try:
            config = uvicorn.Config(create_gateway(settings, producer), host="127.0.0.1", port=port,
                                    log_level="warning", access_log=False)
            await uvicorn.Server(config).serve()
        finally:
            await producer.close()

    asyncio.run(main())


def _events(count: int) -> list[dict[str, Any]]:
    good = (e for e in generate(max(50, count // 15), 365, seed=7, bad_share=0.0) if e["event_id"].startswith("ev-"))
    events = [e for _, e in zip(range(count), good, strict=False)]
    if len(events) < count:
        raise SystemExit(f"the generator gave only {len(events)} events")
    return events


async def _post_all(base: str, key: str, bodies: list[bytes], per_body: int, concurrency: int) -> float:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            body = queue.get_nowait()
            response = await client.post("/v1/events", content=body,
                                         headers={"Content-Type": "application/json", "X-API-Key": key})
            if response.status_code != 202 or response.json()["accepted"] != per_body:
                raise SystemExit(f"unexpected answer {response.status_code}: {response.text[:500]}")

    # TCP_NODELAY: httpcore writes headers and body separately, and Nagle's algorithm meeting the server's
    # delayed ACK would add ~40 ms to every small request, measuring TCP rather than the gateway.
    transport = httpx.AsyncHTTPTransport(limits=limits, socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
    async with httpx.AsyncClient(base_url=base, transport=transport, timeout=60) as client:
        began = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        return time.perf_counter() - began


def _wait_ready(base: str, child: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise SystemExit(f"the gateway exited with {child.returncode}")
        try:
            if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit("the gateway did not become ready")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway", description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    parser.add_argument("--producer", choices=("sync", "async"), default="sync",
                        help="EventProducer in the thread pool (default) or AsyncEventProducer on the loop")
    parser.add_argument("--serve", nargs=2, metavar=("PORT", "PREFIX"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        _serve(int(args.serve[0]), args.serve[1], args.producer)
        return 0

    settings = load_settings(topic_prefix=f"bench-gw-{uuid.uuid4().hex[:8]}")
    ensure_topics(settings)
    events = _events(args.events)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    key = secrets.token_urlsafe(32)  # the child knows only its digest, as a deployed gateway would
    entry = {"name": "bench", "channels": ["*"], "types": ["*"], "rate_per_s": 1e6}
    env = {**os.environ, "TOUCHPOINT_GATEWAY_KEYS": json.dumps({digest(key): entry})}
    child = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "bench.gateway", "--producer", args.producer, "--serve", str(port),
         settings.topic_prefix], stdin=subprocess.DEVNULL, env=env)
    try:
        _wait_ready(base, child)
        print(machine_line())
        print(f"gateway: {args.producer} producer, {args.events} events, concurrency {args.concurrency}, "
              f"topics {settings.topic_prefix}.*")
        # Warm up (schema registration, metadata, connections) outside the timings.
        asyncio.run(_post_all(base, key, [json.dumps(e).encode() for e in events[:50]], 1, args.concurrency))
        for size in dict.fromkeys((1, args.batch)):
            bodies = [json.dumps(events[i] if size == 1 else events[i:i + size]).encode()
                      for i in range(0, len(events) - len(events) % size, size)]
            seconds = asyncio.run(_post_all(base, key, bodies, size, args.concurrency))
            sent = len(bodies) * size
            print(f"batch {size:>5}: {sent:>8} events in {seconds:7.2f} s = {sent / seconds:>9.0f} events/s, "
                  f"{len(bodies) / seconds:>7.0f} requests/s")
    finally:
        child.terminate()
        try:
            child.wait(20)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
