"""The framework peer of bench/test_bench_http.py: ``GET /v1/ping`` on aiohttp.web.

The same answer as tel400-http's trivial endpoint (``{"pong":true}``,
``application/json``), one handler, no middleware, access log off; on uvloop
like tel400-http (uvicorn's ``loop="auto"``), so that what differs is the HTTP
server and framework, not the event loop.

    .venv/bin/python bench/http_peer_aiohttp.py --port 8401 [--asyncio]

Prints ``listening on http://127.0.0.1:PORT`` on stdout once it accepts
connections; SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from aiohttp import web

PONG = b'{"pong":true}'


async def ping(request: web.Request) -> web.Response:
    return web.Response(body=PONG, content_type="application/json")


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/v1/ping", ping)
    return app


async def serve(host: str, port: int) -> None:
    runner = web.AppRunner(make_app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    print(f"listening on http://{host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--asyncio", action="store_true", help="the standard event loop instead of uvloop")
    args = p.parse_args(argv)
    if args.asyncio:
        asyncio.run(serve(args.host, args.port))
    else:
        import uvloop

        uvloop.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
