"""``clarion serve``: the hub on clarion's own server, as one process or as ``--workers``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import gc
import logging
import signal

from clarion import __version__
from clarion.cli.command import Loaded, load_settings, local_url, run, setup_logging
from clarion.errors import ClarionError, LocalCode, os_reason
from clarion.settings import Settings, url_host

# Every subcommand logs as ``clarion.cli``: the start-up lines operators grep for keep one name.
log = logging.getLogger("clarion.cli")

# Allocations (of objects the collector tracks, less those freed) between two young
# collections; CPython's default is 700. A reconnect storm's new sessions live on, and at 700
# the young collections promote them fast enough to start full collections — walks over every
# object the hub holds, 0.15 to 0.2 s each at 10,000 sessions, three per hub in a storm of 10,000
# clients on two nodes. At 10,000 there are none, the young collections cost a little more in
# all, and the longest pause is ~50 ms (an older collection). Only here: a hub mounted in an
# application leaves the application's collector as it is.
YOUNG_COLLECTION_AFTER = 10_000


def tune_collector() -> None:
    """The garbage collector's settings for a process that is one hub (see above)."""
    gc.set_threshold(YOUNG_COLLECTION_AFTER, *gc.get_threshold()[1:])


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
        code=LocalCode.INSECURE_BIND,
    )


def _listen_error(exc: OSError) -> str:
    # asyncio's bind error repeats the address; the errno says it plainly (a negative one is
    # a name-resolution error, whose own text is the plain one).
    reason = os_reason(exc) or exc.strerror or str(exc)
    return reason[:1].lower() + reason[1:]


async def serve(
    loaded: Loaded, worker: int | None = None, link_fd: int | None = None, *, demo: bool = False
) -> int:
    from clarion.core.hub import Hub
    from clarion.server import LifespanFailed
    from clarion.standalone import make_server

    settings = loaded.settings
    tune_collector()
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
        raise ClarionError(f"the hub could not start: {reason}", code=LocalCode.STARTUP) from None
    except OSError as exc:
        advice = ""
        if exc.errno == errno.EADDRINUSE:
            advice = "; choose another with --port N"
            if not demo:  # the demo reads neither
                advice += " (or port in clarion.toml / CLARION_PORT)"
        raise ClarionError(
            f"cannot listen on {settings.host}:{settings.port}: {_listen_error(exc)}{advice}",
            code=LocalCode.LISTEN,
        ) from None
    # Handled before anything says the hub listens: a SIGTERM sent on "listening on" (or on
    # the worker's ready byte) shuts the hub down, never ends it by the signal's default action.
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    log.info(
        "clarion %s listening on http://%s:%d", __version__, url_host(settings.host), server.port
    )
    if settings.host not in ("0.0.0.0", "::", ""):  # a wildcard is learned from requests
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        hub.nodes.address = f"{host}:{server.port}"
    if link is not None:
        with contextlib.suppress(OSError):
            link.send(b"r")  # listening: the supervisor counts this worker as started
    if app is not None:
        url = local_url(settings.model_copy(update={"port": server.port}), "the demo")
        app.serving(url)
        log.info("the demo apps: %s/demo/ (demo only: tokens for whoever asks)", url)
    await stop.wait()
    log.info("shutting down: telling clients to reconnect elsewhere")
    await server.shutdown(timeout=settings.shutdown_timeout)
    log.info("stopped")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from clarion.workers import check_engine, supervise

    loaded = load_settings(args)
    setup_logging(args.log_level or loaded.settings.log_level, args.worker_id)
    check_bind(loaded.settings)
    if args.workers > 1:
        return supervise(args.argv, args.workers, loaded.settings)
    check_engine(loaded.settings, args.workers)
    return run(serve(loaded, args.worker_id, args.worker_link))
