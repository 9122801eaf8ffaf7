"""The ``clarion`` command: serve, publish, subscribe, token."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from clarion import __version__
from clarion.errors import ClarionError
from clarion.settings import Settings

log = logging.getLogger("clarion.cli")

DEFAULT_URL = os.environ.get("CLARION_URL", "http://127.0.0.1:8000")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``1h``, ``2d`` → seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = text.strip().lower()
    try:
        if text and text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r}") from None


def _json_arg(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        raise argparse.ArgumentTypeError(f"not valid JSON: {text!r}") from None


# ---- serve ------------------------------------------------------------------------------------


def redact(url: str) -> str:
    """``url`` without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    user = f"{parts.username}:***@" if parts.username else ":***@"
    netloc = user + host + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def load_settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    for name in ("host", "port", "engine"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    if getattr(args, "insecure", False):
        overrides["insecure"] = True
    return Settings.load(args.config, **overrides)


def check_bind(settings: Settings) -> None:
    """Refuse to expose an unprotected hub beyond loopback."""
    if settings.binds_loopback() or settings.insecure:
        return
    missing = []
    if not settings.api_keys:
        missing.append("api_key")
    if not settings.auth_enabled:
        missing.append("token_secret (or token_public_key_file)")
    if missing:
        raise ClarionError(
            f"refusing to listen on {settings.host} without {' and '.join(missing)}: anyone "
            "could publish and subscribe. Configure them, bind 127.0.0.1, or pass --insecure.",
            code="insecure_bind",
        )


async def _serve(settings: Settings) -> int:
    from clarion.core.auth import auth_notes
    from clarion.hub import Hub
    from clarion.server import LifespanFailed
    from clarion.standalone import make_server

    # The server runs the hub's lifespan: it starts the hub before accepting connections, and
    # on shutdown stops accepting, lets the hub tell every client to reconnect elsewhere (4000),
    # then drains what is left within shutdown_timeout.
    server = make_server(Hub(settings))
    try:
        await server.start()
    except LifespanFailed as exc:
        raise ClarionError(f"the hub could not start: {exc}", code="startup") from None
    except OSError as exc:
        await server.shutdown(timeout=0)
        raise ClarionError(f"cannot listen on {settings.host}:{settings.port}: {exc}") from None
    if settings.development_mode:
        log.warning(
            "local development mode: engine=%s, no API key and no token secret, so anyone who "
            "can reach %s:%d may publish and subscribe (see docs/configuration.md)",
            redact(settings.engine),
            settings.host,
            server.port,
        )
    for note in auth_notes(settings):
        log.warning(note)
    log.info("clarion %s listening on http://%s:%d", __version__, settings.host, server.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: telling clients to reconnect elsewhere")
    await server.shutdown(timeout=settings.shutdown_timeout)
    log.info("stopped")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    _setup_logging(args.log_level or settings.log_level)
    check_bind(settings)
    try:
        import uvloop

        return int(uvloop.run(_serve(settings)))
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return asyncio.run(_serve(settings))


# ---- publish / subscribe / token ------------------------------------------------------------


def _api_headers(args: argparse.Namespace) -> dict[str, str]:
    key = args.api_key or os.environ.get("CLARION_API_KEY")
    return {"Authorization": f"apikey {key}"} if key else {}


def cmd_publish(args: argparse.Namespace) -> int:
    import httpx

    body: dict[str, Any] = {"channel": args.channel, "data": args.data}
    if args.id:
        body["id"] = args.id
    try:
        response = httpx.post(
            args.url.rstrip("/") + "/api/publish",
            content=orjson.dumps(body),
            headers={"Content-Type": "application/json", **_api_headers(args)},
            timeout=10,
        )
    except httpx.HTTPError as exc:
        raise ClarionError(f"cannot reach {args.url}: {exc}", code="unreachable") from None
    sys.stdout.write(response.text.rstrip("\n") + "\n")
    return 0 if response.status_code == 200 else 1


def cmd_subscribe(args: argparse.Namespace) -> int:
    from clarion.client import run_subscribe

    try:
        return asyncio.run(
            run_subscribe(
                args.url,
                args.channel,
                since=args.since,
                token=args.token or os.environ.get("CLARION_TOKEN"),
                transport=args.transport,
                out=sys.stdout,
            )
        )
    except KeyboardInterrupt:
        return 130


def cmd_token(args: argparse.Namespace) -> int:
    from clarion.core.auth import mint_token

    settings = Settings.load(args.config)
    secret = args.secret or settings.token_secret
    if not secret:
        raise ClarionError(
            "no token secret: pass --secret, set token_secret in the config or "
            "CLARION_TOKEN_SECRET",
            code="config",
        )
    info = args.info if isinstance(args.info, dict) else None
    token = mint_token(
        secret,
        args.user,
        args.channels,
        publish=args.publish,
        ttl=args.ttl,
        info=info,
        algorithm=settings.token_algorithm
        if settings.token_algorithm.startswith("HS")
        else "HS256",
    )
    sys.stdout.write(token + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clarion", description="clarion: a real-time messaging hub."
    )
    parser.add_argument("--version", action="version", version=f"clarion {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser(
        "serve",
        help="run the hub",
        description="Run the hub. Settings come from --config (TOML), then CLARION_* "
        "environment variables, then these flags. With no configuration it runs in local "
        "development mode (memory engine, no secrets, 127.0.0.1:8000). "
        "See docs/configuration.md for every option.",
    )
    serve.add_argument("--config", help="path to clarion.toml")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000; 0 picks a free one)")
    serve.add_argument("--engine", help='"memory" (default) or "redis://host:port/db"')
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback bind without api_key and token_secret",
    )
    serve.add_argument("--log-level", help="debug, info, warning or error")
    serve.set_defaults(func=cmd_serve)

    publish = sub.add_parser("publish", help="publish JSON to a channel through the server API")
    publish.add_argument("channel")
    publish.add_argument("data", type=_json_arg, help='a JSON value, e.g. \'{"text": "hi"}\'')
    publish.add_argument("--id", help="idempotency key")
    publish.add_argument("--url", default=DEFAULT_URL, help="hub base URL ($CLARION_URL)")
    publish.add_argument("--api-key", help="server API key ($CLARION_API_KEY)")
    publish.set_defaults(func=cmd_publish)

    subscribe = sub.add_parser(
        "subscribe",
        help="print a channel's publications as JSON lines, resuming across dropped connections",
    )
    subscribe.add_argument("channel")
    subscribe.add_argument("--since", help="a cursor to resume from")
    subscribe.add_argument("--url", default=DEFAULT_URL, help="hub base URL ($CLARION_URL)")
    subscribe.add_argument("--token", help="connection token ($CLARION_TOKEN)")
    subscribe.add_argument(
        "--transport", choices=["ws", "sse", "poll", "auto"], default="ws", help="default ws"
    )
    subscribe.set_defaults(func=cmd_subscribe)

    token = sub.add_parser("token", help="mint a development connection token (HS256 JWT)")
    token.add_argument("--user", required=True, help="the token's sub claim")
    token.add_argument(
        "--channels", nargs="+", default=[], metavar="PATTERN", help="channels it may subscribe"
    )
    token.add_argument("--publish", nargs="*", default=[], metavar="PATTERN", help="may publish")
    token.add_argument("--ttl", type=_duration, default=3600.0, help="lifetime, e.g. 1h (default)")
    token.add_argument("--info", type=_json_arg, help="JSON object shown in presence")
    token.add_argument("--secret", help="HS256 secret (default: token_secret from config/env)")
    token.add_argument("--config", help="path to clarion.toml")
    token.set_defaults(func=cmd_token)

    from clarion.webhooks.cli import add_parser as add_webhooks_parser

    add_webhooks_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
        return result
    except ClarionError as exc:
        sys.stderr.write(f"clarion: {exc.message}\n")
        return 2
    except Exception as exc:
        from pydantic import ValidationError

        if isinstance(exc, ValidationError):
            sys.stderr.write(f"clarion: invalid configuration:\n{exc}\n")
            return 2
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
