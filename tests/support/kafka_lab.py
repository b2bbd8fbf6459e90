"""Real Apache Kafka brokers for tests: KRaft mode, on 127.0.0.1, from Maven Central jars.

What runs: Apache Kafka's own broker (``kafka.Kafka``, version in kafka/pom.xml) on this
machine's Java 17, one to three nodes each acting as broker and controller (a combined
KRaft quorum, as Kafka's quickstart runs it).  Nothing here imitates Kafka: the tests
talk to the broker operators run, so what the client library negotiates (idempotent
producer ids, consumer-group rebalances, acks=all with min.insync.replicas) is the real
protocol.

The jars are resolved once with ``mvn dependency:copy-dependencies`` of
``tests/support/kafka/pom.xml`` into ``.cache/kafka-<version>/`` at the top of the
checkout (ignored by git; a clean clone resolves them again, about 10-20 s from Maven
Central).  Each lab has its own directory with one ``server.properties`` and log
directory per node, formatted with ``kafka.tools.StorageTool`` under one cluster id.

Ports: two free TCP ports per node on 127.0.0.1 (broker, controller), found by binding
port 0.  Processes are stopped by the PID the lab started (SIGTERM, SIGKILL after 20 s);
:meth:`KafkaLab.kill` sends SIGKILL to one node, :meth:`KafkaLab.start_node` brings it
back on the same ports and log directory.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from . import free_port, stop_pids

REPO = Path(__file__).resolve().parents[2]
POM = Path(__file__).with_name("kafka") / "pom.xml"
JAVA = "java"
MVN = "mvn"
HEAP = "-Xmx384m"


def kafka_version() -> str:
    """The broker version the pom pins (one definition: the pom)."""
    text = POM.read_text()
    start = text.index("<kafka.version>") + len("<kafka.version>")
    return text[start:text.index("</kafka.version>", start)]


def unavailable_reason() -> str | None:
    """Why no broker can run here (no Java or Maven), or None."""
    for tool in (JAVA, MVN):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (the Kafka tests need Java 17 and Maven)"
    return None


def broker_jars() -> Path:
    """The directory of the broker's jars, resolved from Maven Central on first use.

    A lock file serialises concurrent test processes; the directory is filled under a
    temporary name and renamed, so a run killed half-way leaves no half-filled cache."""
    cache = REPO / ".cache"
    cache.mkdir(exist_ok=True)
    lib = cache / f"kafka-{kafka_version()}"
    with (cache / "kafka.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (lib / "done").exists():
            staging = Path(tempfile.mkdtemp(prefix="kafka-jars-", dir=cache))
            result = subprocess.run(
                [MVN, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies", "-DincludeScope=runtime",
                 f"-DoutputDirectory={staging}"], capture_output=True, text=True, timeout=600)
            if result.returncode != 0:
                shutil.rmtree(staging, ignore_errors=True)
                raise RuntimeError(f"resolving the Kafka broker's jars failed:\n{result.stdout}\n{result.stderr}")
            (staging / "done").write_text(kafka_version())
            shutil.rmtree(lib, ignore_errors=True)
            staging.rename(lib)
    return lib


_LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = ${sys:kafka.logs.file}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = warn
logger.kafka.appenderRef.file.ref = file
logger.kafka.additivity = false
logger.state.name = state.change.logger
logger.state.level = warn
"""


@dataclass
class Node:
    """One combined broker+controller of a lab."""

    node_id: int
    broker_port: int
    controller_port: int
    dir: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = field(default=0)

    @property
    def log_path(self) -> Path:
        return self.dir / "server.log"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class KafkaLab:
    """`nodes` Kafka nodes (1 or 3) on 127.0.0.1; see the module docstring."""

    def __init__(self, nodes: int = 1) -> None:
        if nodes < 1:
            raise ValueError("a lab has at least one node")
        self.jars = broker_jars()
        self.dir = Path(tempfile.mkdtemp(prefix="kafkalab-"))
        self.cluster_id = self._java_tool("random-uuid").strip().splitlines()[-1]
        self.nodes = [Node(i + 1, free_port_tcp(), free_port_tcp(), self.dir / f"node{i + 1}") for i in range(nodes)]
        (self.dir / "log4j2.properties").write_text(_LOG4J2)
        replication = min(3, nodes)
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes)
        for node in self.nodes:
            node.dir.mkdir()
            (node.dir / "server.properties").write_text("\n".join([
                "process.roles=broker,controller",
                f"node.id={node.node_id}",
                f"controller.quorum.voters={voters}",
                f"listeners=PLAINTEXT://127.0.0.1:{node.broker_port},CONTROLLER://127.0.0.1:{node.controller_port}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{node.broker_port}",
                "controller.listener.names=CONTROLLER",
                "inter.broker.listener.name=PLAINTEXT",
                "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                f"log.dirs={node.dir / 'data'}",
                f"offsets.topic.replication.factor={replication}",
                f"transaction.state.log.replication.factor={replication}",
                f"transaction.state.log.min.isr={min(2, replication)}",
                f"share.coordinator.state.topic.replication.factor={replication}",
                f"share.coordinator.state.topic.min.isr={min(2, replication)}",
                f"default.replication.factor={replication}",
                f"min.insync.replicas={min(2, replication)}",
                "num.partitions=4",
                "group.initial.rebalance.delay.ms=0",
                "auto.create.topics.enable=false",
                "",
            ]))
        # One JVM per node formats its log directory; in parallel, each takes seconds to start.
        formats = [self._java_tool_start("format", "-t", self.cluster_id, "-c", str(n.dir / "server.properties"))
                   for n in self.nodes]
        for proc in formats:
            out, _ = proc.communicate(timeout=180)
            if proc.returncode != 0:
                raise RuntimeError(f"kafka StorageTool format failed:\n{out}")

    # -- processes -------------------------------------------------------------------

    def _java_tool(self, *args: str) -> str:
        result = subprocess.run([JAVA, "-cp", f"{self.jars}/*", "kafka.tools.StorageTool", *args],
                                capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"kafka StorageTool {args[0]} failed:\n{result.stdout}\n{result.stderr}")
        return result.stdout

    def _java_tool_start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([JAVA, "-cp", f"{self.jars}/*", "kafka.tools.StorageTool", *args],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def start(self, timeout: float = 90.0) -> None:
        """Every node, then wait until each answers as a broker of the cluster."""
        for node in self.nodes:
            self.start_node(node.node_id, wait=False)
        self.wait_ready(timeout)

    def start_node(self, node_id: int, wait: bool = True, timeout: float = 90.0) -> None:
        node = self.node(node_id)
        if node.running():
            return
        node.starts += 1
        out = (node.dir / "stdout.log").open("ab")
        env = dict(os.environ, KAFKA_HEAP_OPTS=HEAP)
        node.proc = subprocess.Popen(
            [JAVA, HEAP, "-Xms128m", "-XX:+UseG1GC", f"-Dlog4j2.configurationFile={self.dir / 'log4j2.properties'}",
             f"-Dkafka.logs.file={node.log_path}", "-cp", f"{self.jars}/*", "kafka.Kafka",
             str(node.dir / "server.properties")],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        out.close()
        if wait:
            self.wait_ready(timeout, nodes=[node])

    def wait_ready(self, timeout: float, nodes: list[Node] | None = None) -> None:
        """Until the metadata seen through each node lists every running node as a broker."""
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + timeout
        wanted = {n.node_id for n in self.nodes if n.running()}
        for node in nodes or self.nodes:
            admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{node.broker_port}", "log_level": 0,
                                 "logger": _quiet_logger()})  # type: ignore[dict-item]
            while True:
                if node.proc is not None and node.proc.poll() is not None:
                    raise RuntimeError(f"Kafka node {node.node_id} exited {node.proc.returncode}:\n"
                                       f"{self.output(node.node_id)}")
                try:
                    brokers = set(admin.list_topics(timeout=2).brokers)
                    if wanted <= brokers:
                        break
                except Exception:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Kafka node {node.node_id} not ready after {timeout:.0f} s:\n"
                                       f"{self.output(node.node_id)}")
                time.sleep(0.3)

    def kill(self, node_id: int, sig: int = signal.SIGKILL) -> None:
        """Signal one node by its PID and wait for it to exit."""
        stop_pids([self.node(node_id).proc], sig, 30)

    def close(self) -> None:
        """Every node stopped by its PID (SIGTERM, then SIGKILL), the directory removed."""
        stop_pids([node.proc for node in self.nodes], signal.SIGTERM, 20)
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- facts -------------------------------------------------------------------------

    def node(self, node_id: int) -> Node:
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise KeyError(node_id)

    @property
    def bootstrap(self) -> str:
        """Every node's broker address, as a client's ``bootstrap.servers``."""
        return ",".join(f"127.0.0.1:{n.broker_port}" for n in self.nodes)

    @property
    def brokers(self) -> list[str]:
        return [f"127.0.0.1:{n.broker_port}" for n in self.nodes]

    def output(self, node_id: int) -> str:
        node = self.node(node_id)
        text = ""
        for path in (node.dir / "stdout.log", node.log_path):
            if path.exists():
                text += path.read_text(errors="replace")[-3000:]
        return text

    def create_topic(self, name: str, partitions: int, replication: int | None = None) -> None:
        from confluent_kafka.admin import AdminClient
        from confluent_kafka.cimpl import NewTopic

        admin = AdminClient({"bootstrap.servers": self.bootstrap, "logger": _quiet_logger()})  # type: ignore[dict-item]
        factor = replication if replication is not None else min(3, len(self.nodes))
        for future in admin.create_topics([NewTopic(name, num_partitions=partitions,
                                                    replication_factor=factor)]).values():
            future.result(timeout=60)


def free_port_tcp() -> int:
    import socket
    return free_port(socket.SOCK_STREAM)


def _quiet_logger() -> object:
    import logging
    logger = logging.getLogger("tests.kafka_lab.client")
    logger.setLevel(logging.CRITICAL)
    return logger


def topic_name(prefix: str = "flows") -> str:
    """A topic name no other test uses (labs may be shared by a module)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def kafka_lab() -> Iterator[KafkaLab]:
    """One single-node broker for a test module."""
    reason = unavailable_reason()
    if reason:
        pytest.fail(reason)
    lab = KafkaLab(1)
    try:
        lab.start()
        yield lab
    finally:
        lab.close()
