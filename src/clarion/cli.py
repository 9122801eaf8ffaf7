"""The ``clarion`` command: serve, publish, subscribe, token."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import os
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import orjson

from clarion import __version__
from clarion.errors import ClarionError
from clarion.settings import Settings

log = logging.getLogger("clarion.cli")

LOG_LEVELS = ("debug", "info", "warning", "error")


class Parser(argparse.ArgumentParser):
    """Usage errors in the style of every other error: ``clarion: …`` on stderr, exit 2."""

    def error(self, message: str) -> NoReturn:
        message = message.removeprefix("argument ")
        self.exit(2, f"clarion: {message}\ntry '{self.prog} --help'\n")


def _setup_logging(level: str, worker: int | None = None) -> None:
    # A worker's lines carry its number: the workers of one `serve --workers` share a stderr.
    who = f"[worker {worker}] " if worker is not None else ""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format=f"%(asctime)s %(levelname)s {who}%(name)s: %(message)s",
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


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number (0 to 65535): {text!r}")
    return port


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


class Loaded:
    """Settings with where they came from, for the start-up log."""

    def __init__(self, settings: Settings, config: Path | None, found: bool, env: list[str]):
        self.settings = settings
        self.config = config
        self.found = found  # read from the working directory without --config
        self.variables = env

    def describe(self) -> str:
        if self.config is None:
            source = "config file: none"
        else:
            source = f"config file: {self.config.resolve()}"
            if self.found:
                source += " (found in the working directory)"
        variables = ", ".join(self.variables) or "none"
        engine = redact(self.settings.engine)
        return f"{source}; environment: {variables}; engine: {engine}"


def load_settings(args: argparse.Namespace) -> Loaded:
    """The settings of a command: ``--config`` (or ``./clarion.toml``), environment, flags."""
    from clarion.settings_sources import default_file, load

    overrides: dict[str, Any] = {}
    for name in ("host", "port", "engine"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    if getattr(args, "insecure", False):
        overrides["insecure"] = True
    config = Path(args.config) if args.config else default_file()
    settings, sourced = load(Settings, config, overrides, flags=True)
    return Loaded(settings, config, config is not None and not args.config, sourced.variables)


def check_bind(settings: Settings) -> None:
    """Refuse to expose a hub beyond loopback with either credential missing."""
    if settings.binds_loopback() or settings.insecure:
        return
    token_key = "token_secret (or token_public_key_file)"
    if not settings.api_keys and not settings.auth_enabled:
        missing, consequence = f"api_key and {token_key}", "anyone could publish and subscribe"
    elif not settings.api_keys:
        missing = "api_key"
        consequence = "the server API (/api/*, /metrics) would refuse every call"
    elif not settings.auth_enabled:
        missing = token_key
        consequence = (
            "every token would be refused, and clients could connect only anonymously, to "
            "namespaces with anonymous = true"
        )
    else:
        return
    them = "them" if " and " in missing else "it"
    raise ClarionError(
        f"refusing to listen on {settings.host} without {missing}: {consequence}. "
        f"Configure {them}, bind 127.0.0.1, or pass --insecure.",
        code="insecure_bind",
    )


def _listen_error(exc: OSError) -> str:
    # asyncio's bind error repeats the address; the errno says it plainly (a negative one is
    # a name-resolution error, whose own text is the plain one).
    number = exc.errno or 0
    reason = os.strerror(number) if number > 0 else exc.strerror or str(exc)
    return reason[:1].lower() + reason[1:]


async def _serve(
    loaded: Loaded, worker: int | None = None, link_fd: int | None = None, *, demo: bool = False
) -> int:
    from clarion.core.hub import Hub
    from clarion.server import LifespanFailed
    from clarion.standalone import make_server

    settings = loaded.settings
    stop = asyncio.Event()
    link = None
    if link_fd is not None:
        from clarion.workers import watch_parent

        link = await watch_parent(link_fd, stop)
    if not demo:
        log.info("%s", loaded.describe())
    # The server binds first (a taken port fails before anything starts), then runs the hub's
    # lifespan: it starts the hub before accepting connections, and on shutdown stops
    # accepting, lets the hub tell every client to reconnect elsewhere (4000), then drains what
    # is left within shutdown_timeout.
    hub = Hub(settings)
    if worker is not None:
        from clarion.core.metrics import labelled

        hub.metrics_registry = labelled(hub.metrics_registry, {"worker": str(worker)})
    app = None
    if demo:
        from clarion.demo import Demo

        app = Demo(hub)
    server = make_server(hub, reuse_port=worker is not None, app=app)
    try:
        await server.start()
    except LifespanFailed as exc:
        cause = exc.__cause__
        reason = cause.message if isinstance(cause, ClarionError) else str(cause or exc)
        raise ClarionError(f"the hub could not start: {reason}", code="startup") from None
    except OSError as exc:
        advice = ""
        if exc.errno == errno.EADDRINUSE:
            advice = "; choose another with --port N (or port in clarion.toml / CLARION_PORT)"
        raise ClarionError(
            f"cannot listen on {settings.host}:{settings.port}: {_listen_error(exc)}{advice}",
            code="listen",
        ) from None
    if settings.development_mode:
        log.warning(
            "local development mode: engine=%s, no API key and no token secret, so anyone who "
            "can reach %s:%d may publish and subscribe (see docs/configuration.md)",
            redact(settings.engine),
            settings.host,
            server.port,
        )
    log.info("clarion %s listening on http://%s:%d", __version__, settings.host, server.port)
    if settings.host not in ("0.0.0.0", "::", ""):  # a wildcard is learned from requests
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        hub.nodes.address = f"{host}:{server.port}"
    if link is not None:
        with contextlib.suppress(OSError):
            link.send(b"r")  # listening: the supervisor counts this worker as started
    if app is not None:
        url = _local_url(settings.model_copy(update={"port": server.port}), "the demo")
        app.serving(url)
        log.info("the demo apps: %s/demo/ (demo only: tokens for whoever asks)", url)
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
    from clarion.workers import check_engine, supervise

    loaded = load_settings(args)
    _setup_logging(args.log_level or loaded.settings.log_level, args.worker_id)
    check_bind(loaded.settings)
    if args.workers > 1:
        return supervise(args.argv, args.workers, loaded.settings)
    check_engine(loaded.settings, args.workers)
    return run(_serve(loaded, args.worker_id, args.worker_link))


def run(main: Coroutine[Any, Any, int]) -> int:
    """Run a command's coroutine on uvloop (asyncio's loop where there is none)."""
    try:
        import uvloop

        return int(uvloop.run(main))
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return asyncio.run(main)


def _workers(text: str) -> int:
    from clarion.workers import worker_count

    try:
        return worker_count(text.strip().lower())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--workers takes ")) from None


# ---- publish / subscribe / token ------------------------------------------------------------


class Target:
    """The hub a client command talks to, and the API key it sends, with where each came from."""

    def __init__(self, url: str, key: str | None, key_from: str | None) -> None:
        self.url = url
        self.key = key
        self.key_from = key_from

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"apikey {self.key}"} if self.key else {}

    def refused(self, action: str, response: Any) -> ClarionError:
        error = refused(action, response)
        if response.status_code == 401:
            # The hub cannot say how to give it a key; the command can.
            hint = (
                f"the API key from {self.key_from} is not one of the hub's"
                if self.key
                else "pass the hub's API key: --api-key KEY, CLARION_API_KEY, or api_key in "
                "clarion.toml (or the file --config names)"
            )
            return ClarionError(f"{error.message}\n{hint}", code=error.code)
        return error


def _local_url(settings: Settings, source: str) -> str:
    """The URL of the hub ``clarion serve`` runs with ``settings``, seen from this machine."""
    if settings.port == 0:
        raise ClarionError(
            f"{source} sets port 0 (any free port): pass --url or set CLARION_URL", code="config"
        )
    host = settings.host
    if host in ("", "0.0.0.0"):  # every interface: loopback is one of them
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


def client_target(args: argparse.Namespace) -> Target:
    """Where ``publish``, ``subscribe`` and ``webhooks`` go: ``--url`` or ``CLARION_URL``, else
    the hub ``clarion serve`` would run here (its host and port from ``--config`` or
    ``./clarion.toml`` and ``CLARION_*``); the key from ``--api-key``, else the configured one."""
    url = args.url or os.environ.get("CLARION_URL")
    key: str | None = getattr(args, "api_key", None)
    key_from = "--api-key" if key else None
    wants_key = hasattr(args, "api_key") and not key
    if url is None or wants_key:
        loaded = load_settings(argparse.Namespace(config=args.config))
        if url is None:
            source = str(loaded.config) if loaded.config is not None else "the configuration"
            url = _local_url(loaded.settings, source)
        if wants_key and loaded.settings.api_keys:
            key = loaded.settings.api_keys[0]
            variable = "CLARION_API_KEY" in loaded.variables
            key_from = "CLARION_API_KEY" if variable else str(loaded.config)
    return Target(url, key, key_from)


def refused(action: str, response: Any) -> ClarionError:
    """The hub's answer to a server API call that failed, as the CLI reports it."""
    from clarion.client.api import failure

    error = failure(response)
    return ClarionError(
        f"{action} refused (HTTP {error.status}, {error.code}): {error.message}", code=error.code
    )


def cmd_publish(args: argparse.Namespace) -> int:
    import httpx

    target = client_target(args)
    body: dict[str, Any] = {"channel": args.channel, "data": args.data}
    if args.id:
        body["id"] = args.id
    try:
        response = httpx.post(
            target.url.rstrip("/") + "/api/publish",
            content=orjson.dumps(body),
            headers={"Content-Type": "application/json", **target.headers()},
            timeout=10,
        )
    except httpx.HTTPError as exc:
        raise ClarionError(f"cannot reach {target.url}: {exc}", code="unreachable") from None
    if response.status_code != 200:
        raise target.refused("publish", response)
    sys.stdout.write(response.text.rstrip("\n") + "\n")
    return 0


def _show_client_progress() -> None:
    """The client's connection lines (connecting, retrying, lost, connected) on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("clarion: %(message)s"))
    client_log = logging.getLogger("clarion.client")
    client_log.addHandler(handler)
    client_log.setLevel(logging.INFO)
    client_log.propagate = False


def cmd_subscribe(args: argparse.Namespace) -> int:
    from clarion.client import run_subscribe

    url = client_target(args).url
    _show_client_progress()
    try:
        return asyncio.run(
            run_subscribe(
                url,
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
    from clarion.core.auth import mint_token, secret_note

    settings = load_settings(args).settings
    secret = args.secret or settings.token_secret
    if not secret:
        raise ClarionError(
            "no token secret: pass --secret, set token_secret in the config or "
            "CLARION_TOKEN_SECRET",
            code="config",
        )
    info = args.info if isinstance(args.info, dict) else None
    algorithm = settings.token_algorithm if settings.token_algorithm.startswith("HS") else "HS256"
    note = secret_note(secret, algorithm)
    if note:  # a development secret is allowed, but not silently
        sys.stderr.write(f"clarion: warning: {note}\n")
    token = mint_token(
        secret,
        args.user,
        args.channels,
        publish=args.publish,
        presence=args.presence,
        ttl=args.ttl,
        info=info,
        algorithm=algorithm,
    )
    sys.stdout.write(token + "\n")
    return 0


def add_client_options(parser: argparse.ArgumentParser, *, api_key: bool) -> None:
    """``--url``, ``--config`` (and ``--api-key``): how a client command finds the hub."""
    parser.add_argument(
        "--url",
        help="hub base URL (default $CLARION_URL, else http://HOST:PORT of the configuration, "
        "http://127.0.0.1:8000 without one)",
    )
    parser.add_argument(
        "--config", help="clarion.toml for the default URL and key (default ./clarion.toml)"
    )
    if api_key:
        parser.add_argument(
            "--api-key",
            help="server API key (default $CLARION_API_KEY, else api_key of the config)",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="clarion", description="clarion: a real-time messaging hub.")
    parser.add_argument("--version", action="version", version=f"clarion {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser(
        "serve",
        help="run the hub",
        description="Run the hub. Settings come from --config (TOML; default ./clarion.toml "
        "when there is one), then CLARION_* environment variables, then these flags. With no "
        "configuration it runs in local development mode (memory engine, no secrets, "
        "127.0.0.1:8000). See docs/configuration.md for every option.",
    )
    serve.add_argument("--config", help="path to clarion.toml (default ./clarion.toml, if any)")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=_port, help="port (default 8000; 0 picks a free one)")
    serve.add_argument(
        "--engine",
        help='"memory" (default), "redis://host:port/db", "redis+sentinel://…" or '
        '"redis+cluster://host:port,…"',
    )
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback bind without api_key and token_secret",
    )
    serve.add_argument("--log-level", type=str.lower, choices=LOG_LEVELS, help="default info")
    serve.add_argument(
        "--workers",
        type=_workers,
        default=1,
        metavar="N",
        help="hub processes sharing the port (SO_REUSEPORT) and the engine, which must be "
        'Redis; "auto" = one per core (default 1)',
    )
    # Set by the supervisor of --workers for each worker it starts.
    serve.add_argument("--worker-id", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--worker-link", type=int, help=argparse.SUPPRESS)
    serve.set_defaults(func=cmd_serve)

    publish = sub.add_parser("publish", help="publish JSON to a channel through the server API")
    publish.add_argument("channel")
    publish.add_argument("data", type=_json_arg, help='a JSON value, e.g. \'{"text": "hi"}\'')
    publish.add_argument("--id", help="idempotency key")
    add_client_options(publish, api_key=True)
    publish.set_defaults(func=cmd_publish)

    subscribe = sub.add_parser(
        "subscribe",
        help="print a channel's publications as JSON lines, resuming across dropped connections",
    )
    subscribe.add_argument("channel")
    subscribe.add_argument("--since", help="a cursor to resume from")
    add_client_options(subscribe, api_key=False)
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
    token.add_argument(
        "--presence",
        nargs="*",
        default=[],
        metavar="PATTERN",
        help="may read presence without subscribing",
    )
    token.add_argument("--ttl", type=_duration, default=3600.0, help="lifetime, e.g. 1h (default)")
    token.add_argument(
        "--info", type=_json_arg, help="JSON object shown with publications (and presence)"
    )
    token.add_argument("--secret", help="HS256 secret (default: token_secret from config/env)")
    token.add_argument("--config", help="path to clarion.toml (default ./clarion.toml, if any)")
    token.set_defaults(func=cmd_token)

    from clarion.demo.cli import add_parser as add_demo_parser
    from clarion.webhooks.cli import add_parser as add_webhooks_parser

    add_webhooks_parser(sub)
    add_demo_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for the workers of serve
    try:
        result: int = args.func(args)
        return result
    except ClarionError as exc:
        sys.stderr.write("".join(f"clarion: {line}\n" for line in exc.message.splitlines()))
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
