"""A real Redis Cluster on 127.0.0.1, built from the server binary the suite already runs.

:class:`LocalCluster` starts N ``redis-server`` (or ``valkey-server``) processes with
``--cluster-enabled yes`` and forms the cluster itself through redis-py, the way
``redis-cli --cluster create`` would (redis-cli may be absent): each master gets an even share
of the 16384 slots (CLUSTER ADDSLOTSRANGE, or ADDSLOTS in chunks on Redis 6.2) and a distinct
config epoch, every node meets the first one, replicas CLUSTER REPLICATE their master once they
know it, and :meth:`LocalCluster.wait_ok` returns only when every running node reports
``cluster_state:ok``, all of them agree on who is master of which slots and who replicates
whom, every slot is served by a running master, and every replica's link is up.

The binary is ``QRUNNER_TEST_REDIS_SERVER`` when set, else the default of
:func:`qrunner_devservers.embedded.redis_binary` (the same choice the rest of the suite makes).

Ports: a cluster node also listens on its port + 10000 (the cluster bus; Redis 6.2 cannot move
it), so client ports are drawn from 12000-21999 and bus ports land in 22000-31999, below the
kernel's ephemeral range where other servers' random ports come from.

Processes are children of the test process in their own session; :meth:`LocalCluster.stop`
SIGKILLs them (the data is throwaway), a failed start stops whatever it launched, and an
``atexit`` hook stops a cluster nobody stopped.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import redis
from qrunner_devservers.embedded import redis_binary
from redis import Redis as SyncRedis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = [
    "BAD_FLAGS",
    "HOST",
    "NODE_TIMEOUT_MS",
    "SLOTS",
    "ClusterStartError",
    "LocalCluster",
    "LocalNode",
    "NodeEntry",
    "ServerBinary",
    "resolve_binary",
]

HOST = "127.0.0.1"
SLOTS = 16384
NODE_TIMEOUT_MS = 2000
SERVER_ENV = "QRUNNER_TEST_REDIS_SERVER"
BUS_PORT_OFFSET = 10000
_PORT_RANGE = (12000, 22000)
_ADDSLOTS_CHUNK = 1000
_POLL_S = 0.05
# (port, is master, master id, slot ranges): what every node must agree on about each node.
_Role = tuple[int, bool, str | None, tuple[tuple[int, int], ...]]
# Flags that mean "this node is not a healthy member" in another node's CLUSTER NODES.
BAD_FLAGS = frozenset({"fail", "fail?", "handshake", "noaddr"})


class ClusterStartError(RuntimeError):
    """A node did not start, or the cluster did not form in time."""


# -- the server binary -------------------------------------------------------------------------


def resolve_binary(binary: str | os.PathLike[str] | None = None) -> str:
    """``binary`` if given, else ``QRUNNER_TEST_REDIS_SERVER``, else the embedded default."""
    named = str(binary) if binary is not None else os.environ.get(SERVER_ENV) or None
    if named is None:
        return redis_binary()
    found = shutil.which(named)
    if found is None:
        raise ClusterStartError(f"{named} is not an executable file")
    return found


@dataclass(frozen=True)
class ServerBinary:
    """A redis-server or valkey-server and what its version can do."""

    path: str
    kind: str  # "redis" or "valkey"
    version: tuple[int, ...]

    @classmethod
    def of(cls, path: str) -> ServerBinary:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
        found = re.search(r"^(\w+) server v=(\d+(?:\.\d+)*)", out)
        if found is None:
            raise ClusterStartError(f"{path} --version names no Redis or Valkey server: {out!r}")
        version = tuple(int(part) for part in found.group(2).split("."))
        return cls(path, found.group(1).lower(), version)

    @property
    def label(self) -> str:
        return f"{self.kind} {'.'.join(map(str, self.version))}"

    @property
    def modern(self) -> bool:
        """Redis 7.0+ or any Valkey: CLUSTER ADDSLOTSRANGE, CLUSTER SHARDS and the
        ``enable-debug-command`` setting exist (Redis 6.2 has none of them)."""
        return self.kind == "valkey" or self.version >= (7, 0)


# -- one node ----------------------------------------------------------------------------------


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def _pick_port(taken: set[int]) -> int:
    """A port whose bus port (+10000) is free too, and not already given to a node."""
    for _ in range(1000):
        port = random.randrange(*_PORT_RANGE)
        if port in taken:
            continue
        if _port_free(port) and _port_free(port + BUS_PORT_OFFSET):
            taken.add(port)
            return port
    raise ClusterStartError(f"no free port pair in {_PORT_RANGE} (+{BUS_PORT_OFFSET})")


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no server log)"
    kept = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(kept) if kept else "(server log is empty)"


def _info_fields(text: str) -> dict[str, str]:
    """``key:value`` lines of INFO / CLUSTER INFO."""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition(":")
        if sep:
            fields[key] = value
    return fields


@dataclass(frozen=True)
class NodeEntry:
    """One line of CLUSTER NODES, as one node sees another."""

    node_id: str
    port: int
    flags: frozenset[str]
    master_id: str | None  # None for a master
    slots: tuple[tuple[int, int], ...]  # owned ranges, inclusive; migrations left out

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @classmethod
    def parse(cls, line: str) -> NodeEntry:
        # <id> <ip:port@cport[,hostname]> <flags> <master> <ping> <pong> <epoch> <link> <slot>...
        fields = line.split()
        address = fields[1].split(",", 1)[0].split("@", 1)[0]
        port = int(address.rsplit(":", 1)[1] or 0)
        slots = []
        for item in fields[8:]:
            if item.startswith("["):
                continue  # "[slot->-id]" / "[slot-<-id]": a migration in progress
            start, _, end = item.partition("-")
            slots.append((int(start), int(end or start)))
        return cls(
            node_id=fields[0],
            port=port,
            flags=frozenset(fields[2].split(",")),
            master_id=None if fields[3] == "-" else fields[3],
            slots=tuple(sorted(slots)),
        )


class LocalNode:
    """One cluster-enabled server: a child process with its data, log and nodes.conf in
    ``folder``. The port and nodes.conf survive :meth:`kill`, so :meth:`launch` again
    brings back the same cluster member."""

    def __init__(
        self,
        binary: ServerBinary,
        folder: Path,
        port: int,
        *,
        node_timeout_ms: int = NODE_TIMEOUT_MS,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.binary = binary
        self.folder = folder
        self.port = port
        self.node_timeout_ms = node_timeout_ms
        self.extra_args = tuple(extra_args)
        self.node_id = ""  # known once started (CLUSTER MYID); nodes.conf keeps it on restart
        self._child: subprocess.Popen[bytes] | None = None
        self._client: SyncRedis | None = None

    def __repr__(self) -> str:
        return f"<LocalNode {HOST}:{self.port} {self.node_id[:8] or '?'}>"

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.folder / "server.log"

    @property
    def console_path(self) -> Path:
        return self.folder / "console.log"

    def last_words(self, lines: int = 3) -> str:
        """The end of its console output and log, for error messages."""
        return f"{_tail(self.console_path, lines)} | {_tail(self.log_path, lines)}"

    @property
    def nodes_conf(self) -> Path:
        return self.folder / "nodes.conf"

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child is not None else None

    def argv(self) -> list[str]:
        argv = [
            self.binary.path,
            "--port", str(self.port),
            "--bind", HOST,
            "--dir", str(self.folder),
            "--logfile", str(self.log_path),
            "--daemonize", "no",
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--maxmemory-policy", "noeviction",
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(self.nodes_conf),
            "--cluster-node-timeout", str(self.node_timeout_ms),
            "--cluster-announce-ip", HOST,
            # A replica may always stand in for a dead master, however stale it thinks it is.
            "--cluster-replica-validity-factor", "0",
            # Full syncs start at once instead of waiting 5 s for more replicas to join.
            "--repl-diskless-sync", "yes",
            "--repl-diskless-sync-delay", "0",
        ]  # fmt: skip
        if self.binary.modern:
            argv += ["--enable-debug-command", "yes"]  # Redis 6.2 always allows DEBUG
        return argv + list(self.extra_args)

    def running(self) -> bool:
        return self._child is not None and self._child.poll() is None

    def launch(self) -> None:
        """Start the process; :meth:`wait_ready` waits for it to answer."""
        if self.running():
            raise RuntimeError(f"{self} is already running")
        self.folder.mkdir(parents=True, exist_ok=True)
        self._close_client()
        with self.console_path.open("ab") as console:  # config errors go here, not to the log
            self._child = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C at the terminal must not reach it first
            )

    def wait_ready(self, deadline: float) -> None:
        """Return once it answers PING (so has loaded its AOF); raise if it exited or the
        monotonic ``deadline`` passed."""
        while True:
            if self._child is None or self._child.poll() is not None:
                raise ClusterStartError(
                    f"{self.binary.label} on {HOST}:{self.port} exited at start: "
                    f"{self.last_words()}"
                )
            with contextlib.suppress(redis.RedisError, OSError):
                if self.client().ping():
                    if not self.node_id:
                        self.node_id = str(self.call("CLUSTER", "MYID"))
                    return
            if time.monotonic() > deadline:
                raise ClusterStartError(
                    f"{self.binary.label} on {HOST}:{self.port} did not answer in time: "
                    f"{self.last_words()}"
                )
            time.sleep(_POLL_S)

    def kill(self) -> None:
        """SIGKILL, as a crash would; waits until the process is gone."""
        self._close_client()
        child, self._child = self._child, None
        if child is None:
            return
        if child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)  # its own session: the group is just it
            with contextlib.suppress(ProcessLookupError):
                child.kill()
        child.wait(30)

    def client(self) -> SyncRedis:
        """A plain (non-cluster) client of this node; replies are str."""
        if self._client is None:
            self._client = SyncRedis(
                host=HOST,
                port=self.port,
                decode_responses=True,
                socket_timeout=5,
                socket_connect_timeout=2,
                retry=Retry(NoBackoff(), 0),  # callers poll; redis-py's backoff only slows them
            )
        return self._client

    def call(self, *args: Any) -> Any:
        """One command with the raw reply (no redis-py reply parsing)."""
        return self.client().execute_command(*args)  # type: ignore[no-untyped-call]

    def view(self) -> dict[str, NodeEntry]:
        """CLUSTER NODES as this node sees it, by node id."""
        text = self.call("CLUSTER", "NODES")
        entries = [NodeEntry.parse(line) for line in str(text).splitlines() if line.strip()]
        return {entry.node_id: entry for entry in entries}

    def cluster_info(self) -> dict[str, str]:
        return _info_fields(str(self.call("CLUSTER", "INFO")))

    def replication(self) -> dict[str, str]:
        """INFO replication, values as text."""
        return {key: str(value) for key, value in self.client().info("replication").items()}

    def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()


# -- the cluster -------------------------------------------------------------------------------


class LocalCluster:
    """A Redis Cluster of child processes on 127.0.0.1, for tests.

    ``cluster = LocalCluster(tmp_path).start(masters=3, replicas_per_master=1)``; then
    ``cluster.seed_url``, ``cluster.node_for_key(b"k")``, ``cluster.kill(node)``,
    ``cluster.failover(replica)``, ``cluster.wait_ok()``, and finally ``cluster.stop()``
    (or use it as a context manager). Roles change with failovers, so ``masters``,
    ``replicas`` and ``replicas_of`` ask the cluster each time.
    """

    def __init__(
        self,
        folder: Path,
        binary: str | os.PathLike[str] | None = None,
        *,
        node_timeout_ms: int = NODE_TIMEOUT_MS,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.folder = folder.resolve()
        self.binary = ServerBinary.of(resolve_binary(binary))
        self.node_timeout_ms = node_timeout_ms
        self.extra_args = tuple(extra_args)
        self.nodes: list[LocalNode] = []
        self.start_seconds: float | None = None  # how long start() took

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- life cycle ----------------------------------------------------------------------------

    def start(
        self, masters: int = 3, replicas_per_master: int = 0, *, timeout: float = 60.0
    ) -> LocalCluster:
        """Start ``masters`` masters with ``replicas_per_master`` replicas each and return once
        the cluster is ok (see :meth:`wait_ok`). Anything launched is killed on failure."""
        if self.nodes:
            raise RuntimeError("this cluster was started already")
        if masters < 1 or replicas_per_master < 0:
            raise ValueError("need at least one master and no negative replica count")
        began = time.monotonic()
        deadline = began + timeout
        atexit.register(self.stop)
        try:
            self._launch_nodes(masters * (1 + replicas_per_master), deadline)
            self._form(masters, replicas_per_master, deadline)
            self.wait_ok(max(deadline - time.monotonic(), 0.0))
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - began
        return self

    def stop(self) -> None:
        """SIGKILL every node (the data is throwaway) and wait for each to be gone."""
        atexit.unregister(self.stop)
        for node in self.nodes:
            node.kill()

    def _launch_nodes(self, count: int, deadline: float) -> None:
        taken: set[int] = set()
        for index in range(count):
            node = LocalNode(
                self.binary,
                self.folder / f"node-{index}",
                _pick_port(taken),
                node_timeout_ms=self.node_timeout_ms,
                extra_args=self.extra_args,
            )
            self.nodes.append(node)
            node.launch()  # all start in parallel; readiness is awaited below
        for node in self.nodes:
            for attempt in range(3):
                try:
                    node.wait_ready(deadline)
                    break
                except ClusterStartError:
                    # Someone took the port (or its bus port) since we checked: pick another.
                    if attempt == 2 or "in use" not in node.last_words(5):
                        raise
                    node.kill()
                    node.log_path.unlink(missing_ok=True)
                    node.console_path.unlink(missing_ok=True)
                    node.port = _pick_port(taken)
                    node.launch()

    def _form(self, masters: int, replicas_per_master: int, deadline: float) -> None:
        primaries, replicas = self.nodes[:masters], self.nodes[masters:]
        for index, node in enumerate(primaries):
            first, last = index * SLOTS // masters, (index + 1) * SLOTS // masters - 1
            # Distinct epochs up front spare the nodes resolving a collision per pair.
            node.call("CLUSTER", "SET-CONFIG-EPOCH", index + 1)
            self._add_slots(node, first, last)
        seed = self.nodes[0]
        for node in self.nodes[1:]:
            node.call("CLUSTER", "MEET", HOST, seed.port)
        self._wait(self._membership_problems, deadline, "all nodes to meet")
        for index, node in enumerate(replicas):
            master = primaries[index // replicas_per_master]
            replicate = functools.partial(self._replicate, node, master)
            self._wait(replicate, deadline, f"{node} to replicate {master}")

    def _add_slots(self, node: LocalNode, first: int, last: int) -> None:
        if self.binary.modern:
            node.call("CLUSTER", "ADDSLOTSRANGE", first, last)
            return
        for start in range(first, last + 1, _ADDSLOTS_CHUNK):  # Redis 6.2: no ADDSLOTSRANGE
            node.call("CLUSTER", "ADDSLOTS", *range(start, min(start + _ADDSLOTS_CHUNK, last + 1)))

    def _membership_problems(self) -> list[str]:
        """What keeps the nodes from all knowing each other as healthy members."""
        ids = {node.node_id for node in self.nodes}
        problems = []
        for node in self.nodes:
            view = node.view()
            if view.keys() != ids:
                problems.append(f"{node} knows {len(view.keys() & ids)} of {len(ids)} nodes")
            bad = [f"{e.node_id[:8]}:{','.join(e.flags & BAD_FLAGS)}" for e in view.values()
                   if e.flags & BAD_FLAGS]  # fmt: skip
            if bad:
                problems.append(f"{node} sees {bad}")
        return problems

    @staticmethod
    def _replicate(node: LocalNode, master: LocalNode) -> list[str]:
        try:
            node.call("CLUSTER", "REPLICATE", master.node_id)
        except redis.ResponseError as exc:  # "Unknown node" until gossip told it
            return [f"CLUSTER REPLICATE: {exc}"]
        return []

    # -- waiting for health --------------------------------------------------------------------

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Return once the running nodes form a healthy cluster: each says cluster_state:ok,
        all agree (CLUSTER NODES and CLUSTER SLOTS) on masters, slots and replicas, every slot
        is served by a running master and every running replica's link is up."""
        self._wait(self.problems, time.monotonic() + timeout, "the cluster to be ok")

    def _wait(self, check: Any, deadline: float, what: str) -> None:
        while True:
            try:
                problems = check()
            except (redis.RedisError, OSError) as exc:
                problems = [repr(exc)]
            if not problems:
                return
            if time.monotonic() > deadline:
                raise ClusterStartError(
                    f"timed out waiting for {what} ({self.binary.label}, logs in "
                    f"{self.folder}): {'; '.join(problems[:6])}"
                )
            time.sleep(_POLL_S)

    def problems(self) -> list[str]:
        """Why the cluster is not ok right now; empty when it is."""
        live = self.running_nodes()
        if not live:
            return ["no node is running"]
        live_ids = {node.node_id for node in live}
        problems: list[str] = []
        agreed: dict[str, _Role] | None = None
        agreed_slots: list[tuple[int, int, int]] | None = None
        for node in live:
            try:
                state = node.cluster_info().get("cluster_state")
                view = node.view()
                slot_map = self._slot_map(node)
                replication = node.replication()
            except (redis.RedisError, OSError) as exc:
                problems.append(f"{node}: {exc!r}")
                continue
            if state != "ok":
                problems.append(f"{node}: cluster_state {state}")
            seen = {
                node_id: (e.port, e.is_master, e.master_id, e.slots)
                for node_id, e in view.items()
                if node_id in live_ids
            }
            if seen.keys() != live_ids:
                problems.append(f"{node} does not know {sorted(live_ids - seen.keys())}")
            bad = [f"{e.port}:{','.join(sorted(e.flags & BAD_FLAGS))}" for e in view.values()
                   if e.node_id in live_ids and e.flags & BAD_FLAGS]  # fmt: skip
            if bad:
                problems.append(f"{node} flags running nodes {bad}")
            if agreed is None:
                agreed, agreed_slots = seen, slot_map
            else:
                if seen != agreed:
                    problems.append(f"{node} disagrees on roles or slots")
                if slot_map != agreed_slots:
                    problems.append(f"{node} disagrees on CLUSTER SLOTS")
            own = view.get(node.node_id)
            if own is not None and own.is_master != (replication.get("role") == "master"):
                problems.append(f"{node} is {replication.get('role')} but its view says not")
            if replication.get("role") == "slave":
                link = replication.get("master_link_status")
                syncing = replication.get("master_sync_in_progress")
                if link != "up" or syncing != "0":
                    problems.append(f"{node}: replica link {link}, sync in progress {syncing}")
        if agreed is not None:
            problems += self._coverage_problems(agreed, live_ids)
        return problems

    @staticmethod
    def _coverage_problems(
        agreed: dict[str, _Role],
        live_ids: set[str],
    ) -> list[str]:
        problems = []
        served = 0
        for port, is_master, master_id, slots in agreed.values():
            if is_master:
                served += sum(last - first + 1 for first, last in slots)
            elif master_id not in live_ids:
                problems.append(f"replica {port} follows a master that is not running")
        if served != SLOTS:
            problems.append(f"running masters serve {served} of {SLOTS} slots")
        return problems

    @staticmethod
    def _slot_map(node: LocalNode) -> list[tuple[int, int, int]]:
        """CLUSTER SLOTS as (first, last, master port), sorted. Replicas are left out: servers
        differ on when they list one (Redis 7.2+/Valkey hide replicas not yet synced), and
        replication is judged from CLUSTER NODES and INFO instead."""
        reply = node.call("CLUSTER", "SLOTS")
        return sorted((int(r[0]), int(r[1]), int(r[2][1])) for r in reply)

    # -- who is who ----------------------------------------------------------------------------

    def running_nodes(self) -> list[LocalNode]:
        return [node for node in self.nodes if node.running()]

    def by_id(self, node_id: str) -> LocalNode:
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise KeyError(node_id)

    def _current_view(self) -> dict[str, NodeEntry]:
        errors = []
        for node in self.running_nodes():
            try:
                return node.view()
            except (redis.RedisError, OSError) as exc:
                errors.append(f"{node}: {exc!r}")
        raise ClusterStartError(f"no running node answers CLUSTER NODES: {errors}")

    @property
    def masters(self) -> list[LocalNode]:
        """Nodes that are masters with slots, as a running node sees it now."""
        view = self._current_view()
        owners = [e for e in view.values() if e.is_master and e.slots and "fail" not in e.flags]
        return [self.by_id(e.node_id) for e in sorted(owners, key=lambda e: e.slots)]

    @property
    def replicas(self) -> list[LocalNode]:
        """Nodes that replicate a master, ordered as their masters are in :attr:`masters`."""
        return [replica for master in self.masters for replica in self.replicas_of(master)]

    def replicas_of(self, master: LocalNode) -> list[LocalNode]:
        view = self._current_view()
        followers = [e for e in view.values() if e.master_id == master.node_id]
        return [self.by_id(e.node_id) for e in sorted(followers, key=lambda e: e.port)]

    def master_of(self, replica: LocalNode) -> LocalNode:
        entry = self._current_view()[replica.node_id]
        if entry.master_id is None:
            raise ValueError(f"{replica} is not a replica")
        return self.by_id(entry.master_id)

    def master_of_slot(self, slot: int) -> LocalNode:
        for entry in self._current_view().values():
            if entry.is_master and any(first <= slot <= last for first, last in entry.slots):
                return self.by_id(entry.node_id)
        raise LookupError(f"no master serves slot {slot}")

    def keyslot(self, key: str | bytes) -> int:
        """The key's slot, as the server computes it (CLUSTER KEYSLOT)."""
        return int(self.running_nodes()[0].call("CLUSTER", "KEYSLOT", key))

    def node_for_key(self, key: str | bytes) -> LocalNode:
        return self.master_of_slot(self.keyslot(key))

    # -- addresses -----------------------------------------------------------------------------

    @property
    def urls(self) -> list[str]:
        """``redis://127.0.0.1:<port>`` of every node, running or not."""
        return [node.url for node in self.nodes]

    @property
    def seed_url(self) -> str:
        """``redis://`` URL of a running node, for a cluster client to discover the rest."""
        return self._seed().url

    @property
    def cluster_url(self) -> str:
        """The seed as ``redis+cluster://127.0.0.1:<port>``, the scheme qrunner reads as a
        cluster."""
        return f"redis+cluster://{HOST}:{self._seed().port}"

    @property
    def startup_nodes(self) -> list[AsyncClusterNode]:
        """Fresh ``redis.asyncio.cluster.ClusterNode`` objects for every running node."""
        return [AsyncClusterNode(HOST, node.port) for node in self.running_nodes()]

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [(HOST, node.port) for node in self.running_nodes()]

    def _seed(self) -> LocalNode:
        live = self.running_nodes()
        if not live:
            raise ClusterStartError("no node is running")
        return live[0]

    # -- faults --------------------------------------------------------------------------------

    def kill(self, node: LocalNode) -> None:
        """SIGKILL one node. Its replica (if any) takes over after the node timeout."""
        node.kill()

    def restart(self, node: LocalNode, *, wait: bool = True, timeout: float = 30.0) -> None:
        """Start a node again on its port with its nodes.conf and AOF (killing it first if it
        runs); with ``wait``, return once the cluster is ok with it back in."""
        deadline = time.monotonic() + timeout
        node.kill()
        node.launch()
        try:
            node.wait_ready(deadline)
        except BaseException:
            node.kill()
            raise
        if wait:
            self.wait_ok(max(deadline - time.monotonic(), 0.0))

    def failover(self, replica: LocalNode, *, force: bool = False, timeout: float = 30.0) -> None:
        """CLUSTER FAILOVER on ``replica`` (``force`` when its master is unreachable); return
        once it is a master and the cluster is ok again, its old master now replicating it."""
        deadline = time.monotonic() + timeout
        self.master_of(replica)  # raises unless it replicates someone
        replica.call("CLUSTER", "FAILOVER", *(["FORCE"] if force else []))
        self._wait(
            lambda: [] if replica.replication().get("role") == "master" else ["still a replica"],
            deadline,
            f"{replica} to become master",
        )
        self.wait_ok(max(deadline - time.monotonic(), 0.0))

    # -- data ----------------------------------------------------------------------------------

    def flushall(self) -> None:
        """FLUSHALL on every running master (replicas follow through replication)."""
        for node in self.masters:
            if node.running():
                node.call("FLUSHALL")

    def pids(self) -> Iterator[int]:
        for node in self.nodes:
            if node.pid is not None:
                yield node.pid
