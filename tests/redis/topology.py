"""Real Redis topologies on loopback for the tests: a Redis Cluster (masters + replicas made
with `redis-cli --cluster create`) and a Sentinel-managed master with replicas. Every
process is a real redis-server in a temporary folder, torn down by `stop()`."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.live import free_port


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    for _ in range(100):
        port = free_port()
        if port + 10000 >= 65536:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def wait_for(check, seconds: float, what: str, every: float = 0.05):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(every)


class RedisProcess:
    """One redis-server (or sentinel) on a loopback port; kill() is SIGKILL, start() again
    reuses its folder (a cluster node keeps its nodes.conf and rejoins)."""

    def __init__(self, workdir: Path, port: int, *args: str, sentinel: bool = False) -> None:
        self.workdir = workdir
        self.port = port
        self.args = list(args)
        self.sentinel = sentinel
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    def start(self) -> RedisProcess:
        cmd = ["redis-server"]
        if self.sentinel:
            conf = self.workdir / "sentinel.conf"
            if not conf.exists():
                conf.write_text("\n".join(self.args) + "\n")
            cmd += [str(conf), "--sentinel"]
        cmd += ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir)]
        if not self.sentinel:
            # No persistence (replicas hold the data); a full sync starts at once, not 5 s later.
            cmd += ["--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0"]
            cmd += self.args
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: self.cli("ping") == "PONG" or self._died(), 20, f"redis on {self.port}")
        if self._died():
            raise RuntimeError(f"redis-server on {self.port} exited")
        return self

    def _died(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def cli(self, *cmd: str) -> str:
        r = subprocess.run(
            ["redis-cli", "-p", str(self.port), *cmd], capture_output=True, text=True, timeout=10
        )
        return r.stdout.strip()

    def info(self, section: str) -> dict[str, str]:
        lines = self.cli("info", section).splitlines()
        return dict(line.split(":", 1) for line in lines if ":" in line)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None


class LocalCluster:
    """`masters` masters with `replicas` replicas each, on loopback. node_timeout_ms is
    Redis's cluster-node-timeout: a dead master is failed over about that long after."""

    def __init__(
        self, workdir: Path, masters: int = 3, replicas: int = 1, node_timeout_ms: int = 1500
    ) -> None:
        self.nodes = [
            RedisProcess(
                workdir / f"node{i}",
                port := _cluster_port(),
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                f"nodes-{port}.conf",
                "--cluster-node-timeout",
                str(node_timeout_ms),
                "--cluster-replica-validity-factor",
                "0",
                "--cluster-require-full-coverage",
                "yes",
            )  # fmt: skip
            for i in range(masters * (1 + replicas))
        ]
        self.masters = masters
        self.replicas = replicas

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    def start(self) -> LocalCluster:
        for n in self.nodes:
            n.start()
        addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
        r = subprocess.run(
            ["redis-cli", "--cluster", "create", *addresses,
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if r.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {r.stdout}{r.stderr}")
        self.wait_healthy()
        return self

    def live(self) -> list[RedisProcess]:
        return [n for n in self.nodes if n.proc is not None]

    def roles(self) -> dict[int, str]:
        """port -> 'master' (holding slots), 'slave' or 'fail', as a live node sees it."""
        out: dict[int, str] = {}
        for line in self.live()[0].cli("cluster", "nodes").splitlines():
            parts = line.split()
            port = int(parts[1].split("@")[0].rsplit(":", 1)[1])
            flags = parts[2].split(",")
            if "fail" in flags:
                out[port] = "fail"
            elif "master" in flags:
                out[port] = "master" if len(parts) > 8 else "empty master"
            else:
                out[port] = "slave"
        return out

    def wait_healthy(self, seconds: float = 30) -> None:
        """Every live node says cluster_state:ok, every live replica is in sync, and the
        view has `masters` masters holding slots."""

        def ok() -> bool:
            for n in self.live():
                if "cluster_state:ok" not in n.cli("cluster", "info"):
                    return False
                repl = n.info("replication")
                if repl.get("role") == "slave" and repl.get("master_link_status") != "up":
                    return False
            roles = self.roles()
            return len(self.master_ports()) == self.masters and "empty master" not in roles.values()

        wait_for(ok, seconds, "the cluster to be healthy", every=0.1)

    def master_ports(self) -> list[int]:
        return [p for p, role in self.roles().items() if role == "master"]

    def node(self, port: int) -> RedisProcess:
        return next(n for n in self.nodes if n.port == port)

    def stop(self) -> None:
        for n in self.nodes:
            n.kill()


class LocalSentinel:
    """A master with `replicas` replicas and `sentinels` sentinels (quorum: a majority)."""

    def __init__(
        self, workdir: Path, replicas: int = 1, sentinels: int = 3, down_after_ms: int = 1000
    ) -> None:
        self.name = "peephole-test"
        self.master = RedisProcess(workdir / "master", free_port())
        self.replicas = [
            RedisProcess(
                workdir / f"replica{i}",
                free_port(),
                "--replicaof",
                "127.0.0.1",
                str(self.master.port),
            )  # fmt: skip
            for i in range(replicas)
        ]
        quorum = sentinels // 2 + 1
        self.sentinels = [
            RedisProcess(
                workdir / f"sentinel{i}",
                free_port(),
                f"sentinel monitor {self.name} 127.0.0.1 {self.master.port} {quorum}",
                f"sentinel down-after-milliseconds {self.name} {down_after_ms}",
                f"sentinel failover-timeout {self.name} 5000",
                f"sentinel parallel-syncs {self.name} 1",
                sentinel=True,
            )  # fmt: skip
            for i in range(sentinels)
        ]

    @property
    def addresses(self) -> str:
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    def servers(self) -> list[RedisProcess]:
        return [self.master, *self.replicas]

    def start(self) -> LocalSentinel:
        for r in self.servers():
            r.start()
        wait_for(
            lambda: all(r.info("replication").get("master_link_status") == "up"
                        for r in self.replicas),
            20, "replicas in sync",
        )  # fmt: skip
        for s in self.sentinels:
            s.start()
        # Every sentinel knows the replicas and the other sentinels before any failover.
        wait_for(
            lambda: all(
                self._sentinel_field(s, "num-other-sentinels") == str(len(self.sentinels) - 1)
                and self._sentinel_field(s, "num-slaves") == str(len(self.replicas))
                for s in self.sentinels
            ),
            30, "sentinels to discover each other", every=0.2,
        )  # fmt: skip
        return self

    def _sentinel_field(self, s: RedisProcess, field: str) -> str | None:
        words = s.cli("sentinel", "master", self.name).splitlines()
        pairs = dict(zip(words[::2], words[1::2], strict=False))
        return pairs.get(field)

    def master_port(self) -> int:
        out = self.sentinels[0].cli("sentinel", "get-master-addr-by-name", self.name).split()
        return int(out[1])

    def by_port(self, port: int) -> RedisProcess:
        return next(r for r in self.servers() if r.port == port)

    def stop(self) -> None:
        for r in [*self.sentinels, *self.servers()]:
            r.kill()
