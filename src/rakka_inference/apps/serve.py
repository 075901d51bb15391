"""``rakka serve``: the gateway and its topology under an HTTP server.

With ``--config FILE`` it serves the file's deployments on ``[cluster].bind`` (``--host``
and ``--port`` override it); with ``[cluster].mock_providers`` the testkit's mock providers
run in this process and answer the deployments that set no endpoint — of that config and
of every later one that asks for them (a SIGHUP or admin reload, an admin apply). With no
config it serves the embedded sandbox (:mod:`rakka_inference.apps.sandbox`): mock providers
in this process, and a real deployment for each provider whose key is in the environment.
The sandbox's admin key is ``RAKKA_ADMIN_KEY``'s, or one generated here and printed once,
on standard output, as ``export RAKKA_ADMIN_KEY=...`` (never logged).

Starting, in order, each failure one line on standard error and exit status 1, with
nothing started: the config is read and every secret it would read at start resolved (a
variable not set, a file missing: the file, line and field; a Ray cluster's nodes resolve
their own); the port is bound (in use: said so); then the topology starts under uvicorn.
The ``rakka: serving ...`` line is printed once the server accepts connections, never
before.

The server is uvicorn with uvloop and httptools, its connections under
:mod:`~rakka_inference.runtime.connection_guard` (limits on time, size and count:
``[cluster]``'s ``header_timeout_ms`` and the like). SIGTERM or SIGINT stops accepting
connections, lets in-flight requests finish within the grace period (``--grace``), stops
the engines (queued requests are served first) and exits 0. When the grace period runs
out with requests still in flight, they are cut
(:meth:`~rakka_inference.runtime.gateway.ApiGateway.cut`): a stream that has begun ends
with its route's error event, a request not yet answered gets its route's 503 JSON error,
and the process exits :data:`EXIT_GRACE_RAN_OUT`. uvicorn's own graceful timeout is set a
little later, as a backstop for a request that does not end when cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import os
import secrets
import signal
import socket
import sys
import threading
import warnings
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

from rakka_inference.apps.cli_admin import ADMIN_KEY_ENV
from rakka_inference.core.config import load_config
from rakka_inference.core.deployment import ClusterConfig, Config
from rakka_inference.core.errors import ConfigError, SecretError
from rakka_inference.runtime.topology import Topology

if TYPE_CHECKING:
    from rakka_inference.apps.sandbox import Sandbox
    from rakka_inference.cluster.member import NodeMember
    from rakka_inference.runtime.connection_limits import ConnectionGuard

__all__ = ["EXIT_GRACE_RAN_OUT", "ServeApp", "run_server", "serve"]

log = logging.getLogger("rakka_inference.apps.serve")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

EXIT_GRACE_RAN_OUT = 3
"""The exit status when stopping cut requests still in flight at the end of the grace."""
_BACKSTOP_S = 5
"""How long after the grace uvicorn cancels the request tasks that are still running."""


class ServeApp:
    """An ASGI app whose lifespan builds the topology inside the server's event loop."""

    def __init__(
        self,
        config: Config | None,
        *,
        bind: str,
        config_file: str | None = None,
        member: NodeMember | None = None,
        generation: int = 0,
        notice: str | None = None,
    ) -> None:
        self._config = config
        self._bind = bind
        self._config_file = config_file
        self._member = member
        """Set in a worker of a node: the node's shared services and answers."""
        self._generation = generation
        self._notice = notice
        """A line printed after the "serving" one (the sandbox's admin key)."""
        self._sandbox: Sandbox | None = None
        self.topology: Topology | None = None
        self.startup_error: Exception | None = None
        """Why :meth:`startup` failed under the lifespan, if it did."""
        self.grace_ran_out = False
        """Whether stopping had to :meth:`cut` requests still in flight."""
        self.guard: ConnectionGuard | None = None
        """What the server's connections may cost (:func:`run_server` sets it); it follows
        the running config's ``[cluster]`` and counts into its metrics once started."""

    @property
    def cluster(self) -> ClusterConfig:
        """The ``[cluster]`` settings it starts with (the sandbox's are the defaults)."""
        return ClusterConfig() if self._config is None else self._config.cluster

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        assert self.topology is not None, "requests arrive only after startup"
        member = self._member
        if member is not None and member.answers.intercepts(scope):
            await member.answers.handle(scope, receive, send)
            return
        await self.topology.gateway(scope, receive, send)

    async def startup(self) -> None:
        config = self._config
        if config is None:
            # Only the no-config path needs the mock providers: imported here, so that
            # ``rakka serve --config`` never loads them.
            from rakka_inference.apps.sandbox import Sandbox, sandbox_config  # noqa: PLC0415

            self._sandbox = Sandbox()
            await self._sandbox.start()
            config = sandbox_config(self._sandbox, bind=self._bind)
        elif config.cluster.mock_providers:
            from rakka_inference.apps.sandbox import Sandbox  # noqa: PLC0415

            self._sandbox = Sandbox.for_config()
            await self._sandbox.start()
        source = self._config_file
        member = self._member
        if member is not None:
            await member.start()
        self.topology = Topology(
            config,
            services=None if member is None else member.services(),
            reload_source=None if source is None else lambda: load_config(source),
            # Every config it applies, not the first alone: a reload, an admin apply.
            adapt=self._on_mocks,
        )
        await self.topology.start()
        self._guard_connections(self.topology)
        if member is not None:
            # The parent holds the node's config and announces it: a worker only says so.
            member.attach(self.topology)
            await member.announce_ready(self._generation)
            return
        if source is not None and threading.current_thread() is threading.main_thread():
            # SIGHUP applies the file again; a bad file is logged and the running config
            # stays (DeploymentManager.apply checks it whole before changing anything).
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self._reload()))

    def _guard_connections(self, topology: Topology) -> None:
        guard = self.guard
        if guard is None:
            return
        guard.follow(lambda: topology.config.cluster)  # a reload's limits, from then on
        topology.metrics.watch_connections(guard)
        guard.on_shed = topology.metrics.connection_shed

    def _on_mocks(self, config: Config) -> Config:
        """``config`` on this process's mock providers, when it asks for them and they run
        for a config (the sandbox's take only the sandbox's key). The topology calls it on
        every config it applies: the first, a SIGHUP or admin reload, an admin apply."""
        if self._sandbox is None or self._config is None or not config.cluster.mock_providers:
            return config
        from rakka_inference.apps.sandbox import with_mock_providers  # noqa: PLC0415

        return with_mock_providers(config, self._sandbox)

    def announce(self) -> None:
        """Say that it serves: called once the server accepts connections (the socket
        bound, the topology started). A worker of a node says nothing: its parent does."""
        if self._member is not None or self.topology is None:
            return
        names = ", ".join(d.name for d in self.topology.config.deployments)
        print(f"rakka: serving {names} on http://{self._bind}", flush=True)
        if self._notice is not None:
            print(self._notice, flush=True)

    async def _reload(self) -> None:
        assert self.topology is not None
        try:
            report = await self.topology.reload()
        except Exception as error:
            log.error("reload rejected, the running config stays: %s", error)
            return
        log.info(
            "reloaded: added %s, changed %s, removed %s",
            list(report.added),
            list(report.changed),
            list(report.removed),
        )

    def cut(self) -> None:
        """The grace period ran out with requests in flight: end them, each in its route's
        format (:meth:`~rakka_inference.runtime.gateway.ApiGateway.cut`)."""
        self.grace_ran_out = True
        cut = 0 if self.topology is None else self.topology.gateway.cut()
        log.warning("the grace period ran out: cutting %d request(s) in flight", cut)

    async def shutdown(self) -> None:
        try:
            if self.topology is not None:
                await self.topology.stop()
            if self._sandbox is not None:
                await self._sandbox.stop()
        finally:
            if self._member is not None:
                await self._member.aclose()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as error:
                    self.startup_error = error
                    # A rejected config or secret is the command's to say, in its own
                    # words and with no traceback (run_server); anything else is a bug.
                    expected = isinstance(error, ConfigError | SecretError)
                    if not expected:
                        log.exception("startup failed")
                    await self.shutdown()
                    reason = "" if expected else str(error)
                    await send({"type": "lifespan.startup.failed", "message": reason})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


def _graceful_server_class(app: ServeApp, grace_s: float) -> type[Any]:
    import uvicorn  # noqa: PLC0415

    class GracefulServer(uvicorn.Server):
        """uvicorn's server, except that a graceful stop exits 0 and the grace is ours.

        uvicorn re-raises a captured SIGTERM/SIGINT once it has shut down, so the process
        ends "killed by signal". A stop we asked for and completed is a success: the
        handlers here only ask the server to exit (a second signal forces it).

        When ``grace_s`` has passed since the stop began and requests are still running,
        ``app`` cuts them, so that each client is told why (uvicorn would cancel them with
        no answer, or a plain-text 500).
        """

        async def startup(self, sockets: list[Any] | None = None) -> None:
            await super().startup(sockets)
            if self.started:  # listening, the topology started: now it serves
                app.announce()

        async def shutdown(self, sockets: list[Any] | None = None) -> None:
            timer = asyncio.get_running_loop().call_later(grace_s, self._grace_over)
            try:
                await super().shutdown(sockets)
            finally:
                timer.cancel()

        def _grace_over(self) -> None:
            if self.server_state.tasks:
                app.cut()

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = {
                sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)
            }
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return GracefulServer


def serve(
    config_file: str | None,
    *,
    host: str | None = None,
    port: int | None = None,
    grace_s: float = 30.0,
    workers: int | None = None,
) -> int:
    """Run until SIGTERM/SIGINT; the exit status: 0, or :data:`EXIT_GRACE_RAN_OUT` when
    requests still in flight at the end of the grace period had to be cut.

    ``workers`` (else ``[cluster].workers``) above 1 runs a node: this process supervises
    that many workers on one port (:mod:`rakka_inference.cluster.supervisor`).

    Raises :class:`ConfigError` when the configuration is rejected, read from the file (a
    secret that cannot be read among its issues) or on starting its deployments. A port
    that cannot be bound is one line on standard error and the exit status 1.
    """
    config = _read_config(config_file) if config_file is not None else None
    bind = config.cluster.bind if config is not None else "127.0.0.1:8080"
    bind_host, _, bind_port = bind.rpartition(":")
    host = host or bind_host.strip("[]")
    port = int(bind_port) if port is None else port
    if config is not None and config_file is not None and config.cluster.backend == "ray":
        if config.cluster.mock_providers:
            print(
                f"rakka: {config_file}: [cluster].mock_providers runs the mocks in this "
                "process, not on a Ray cluster: leave it out, or backend = 'local'",
                file=sys.stderr,
            )
            return 1
        return _serve_on_ray(config_file, config, grace_s)
    notice = _sandbox_admin_key() if config is None else None
    if workers is None:
        workers = config.cluster.workers if config is not None else 1
    if workers > 1:
        from rakka_inference.apps.node import serve_node  # noqa: PLC0415

        return serve_node(
            config_file, host=host, port=port, grace_s=grace_s, workers=workers, notice=notice
        )
    try:
        listener = _listen(host, port)
    except OSError as error:
        print(f"rakka: cannot listen on {host}:{port}: {_bind_failure(error)}", file=sys.stderr)
        return 1
    with listener:
        app = ServeApp(config, bind=f"{host}:{port}", config_file=config_file, notice=notice)
        return run_server(app, host=host, port=port, grace_s=grace_s, sockets=[listener])


def _read_config(config_file: str) -> Config:
    """The configuration, with every secret it reads at start resolved once (ConfigError
    naming the file, line and field of one that cannot be). On a Ray cluster each node
    resolves its own: the machine that submits it need not hold them.

    Its warnings (an inline secret) are printed as ``rakka validate`` prints them, once
    each: Python's own display would quote the line, and so the secret."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            config = load_config(config_file)
            if config.cluster.backend != "ray":
                config = load_config(config_file, check_secrets=True)
        finally:
            said = dict.fromkeys(f"{w.filename}:{w.lineno}: {w.message}" for w in caught)
            for line in said:
                print(f"warning: {line}", file=sys.stderr)
    return config


def _sandbox_admin_key() -> str:
    """The sandbox's admin key (:mod:`rakka_inference.apps.sandbox` reads it from
    ``RAKKA_ADMIN_KEY``): the one set there, else a new one put there, so that the workers
    of a node inherit it. Returns the line that tells the operator, printed once."""
    if os.environ.get(ADMIN_KEY_ENV):
        return f"rakka: the admin API takes the key in ${ADMIN_KEY_ENV} (rakka status reads it)"
    key = secrets.token_hex(24)  # hex: safe to paste into any shell
    os.environ[ADMIN_KEY_ENV] = key
    return f"rakka: admin API key for this run, for rakka status: export {ADMIN_KEY_ENV}={key}"


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything starts (OSError when it cannot be)."""
    from rakka_inference.apps.node import bind_listener  # noqa: PLC0415

    listener = bind_listener(host, port)
    listener.set_inheritable(False)  # a child process (an engine server) gets no copy
    return listener


def _bind_failure(error: OSError) -> str:
    if error.errno == errno.EADDRINUSE:
        return "the port is in use"
    return error.strerror or str(error)


def _serve_on_ray(config_file: str, config: Config, grace_s: float) -> int:
    try:
        from rakka_inference.cluster.ray_driver import serve_ray  # noqa: PLC0415
    except ImportError:
        print(
            "rakka: backend = 'ray' needs Ray: pip install 'rakka-inference[ray]'",
            file=sys.stderr,
        )
        return 1
    return serve_ray(config_file, config, grace_s=grace_s)


def run_server(
    app: ServeApp,
    *,
    host: str,
    port: int,
    grace_s: float,
    sockets: list[socket.socket] | None = None,
) -> int:
    """Serve ``app`` with uvicorn (on ``sockets`` when given, else on ``host:port``) until
    stopped; the exit status as :func:`serve` gives it."""
    import uvicorn  # noqa: PLC0415 - only the server needs it

    from rakka_inference.runtime.connection_guard import guarded_protocol  # noqa: PLC0415
    from rakka_inference.runtime.connection_limits import ConnectionGuard  # noqa: PLC0415

    app.guard = ConnectionGuard(app.cluster)
    server = _graceful_server_class(app, grace_s)(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            loop="uvloop",
            # httptools, with the time, size and count limits of every connection.
            http=guarded_protocol(app.guard),
            lifespan="on",
            timeout_graceful_shutdown=math.ceil(grace_s) + _BACKSTOP_S,
            access_log=False,
            log_level="info",
        )
    )
    # uvicorn exits 3 when the lifespan's startup or the bind fails; the exit status is
    # ours to give (the CLI's documented codes), so the reason is taken from here.
    with contextlib.suppress(SystemExit):
        server.run(sockets=sockets)
    if isinstance(app.startup_error, ConfigError):
        raise app.startup_error
    if isinstance(app.startup_error, SecretError):
        print(f"rakka: cannot serve: {app.startup_error}", file=sys.stderr)
        return 1
    if not server.started:
        print("rakka: the server did not start (see the log above)", file=sys.stderr)
        return 1
    return EXIT_GRACE_RAN_OUT if app.grace_ran_out else 0
