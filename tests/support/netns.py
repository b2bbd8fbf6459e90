"""Test network namespaces, veth pairs and the processes started inside them.

Real kernel objects, made with iproute2 (`ip netns add`, `ip link add ... type veth`):
a test gets private namespaces whose addresses exist nowhere else, so traffic it makes
never leaves the veth pairs it created, and fixed addresses and ports cannot clash with
the host or with another test run.  Everything is undone on exit, failure included:

* processes started with :meth:`TestNetwork.spawn` are stopped by their own PID (SIGTERM,
  then SIGKILL to the process group the spawn created), never by name;
* namespaces are deleted, which deletes the veth ends inside them.

Usage::

    with TestNetwork(tmp_path) as net:
        a, b = net.namespace("a"), net.namespace("b")
        net.veth(a, "veth0", "10.255.1.1/30", b, "veth0", "10.255.1.2/30")
        server = net.spawn(b, [sys.executable, "-c", SERVER], name="server")
        a.run([sys.executable, "-c", CLIENT])

or the :func:`network_namespaces` fixture (``from support.netns import network_namespaces``
in a test module, or in a conftest).  :func:`unavailable_reason` says why namespaces
cannot be used here (not root, no iproute2, no netns support), for ``pytest.skip``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest

PREFIX = "fet"
"""Namespace names are ``fet<creator pid>-<random>-<label>`` (see :func:`sweep_stale`)."""

IP = "ip"


@functools.cache
def unavailable_reason() -> str | None:
    """None when this process can create network namespaces, else why not (probed once)."""
    if os.geteuid() != 0:
        return "network namespaces need root (run the tests as root, as CI does)"
    if shutil.which(IP) is None:
        return "iproute2 `ip` is not installed"
    probe = f"{PREFIX}{os.getpid()}-{secrets.token_hex(3)}-probe"
    made = subprocess.run([IP, "netns", "add", probe], capture_output=True, text=True, timeout=10)
    if made.returncode != 0:
        return f"`ip netns add` does not work here: {made.stderr.strip() or made.returncode}"
    subprocess.run([IP, "netns", "del", probe], capture_output=True, timeout=10)
    return None


def require_netns() -> None:
    """Skip the calling test, with the reason, when namespaces are not available."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)


@dataclass(frozen=True)
class Namespace:
    """One network namespace (its loopback is up)."""

    name: str

    def cmd(self, argv: Sequence[str]) -> list[str]:
        """`argv` to run inside this namespace (`ip netns exec` execs it: same PID)."""
        return [IP, "netns", "exec", self.name, *argv]

    def run(self, argv: Sequence[str], timeout: float = 30.0, check: bool = True,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run to completion inside the namespace; output captured as text."""
        done = subprocess.run(self.cmd(argv), capture_output=True, text=True, timeout=timeout, input=input)
        if check and done.returncode != 0:
            raise RuntimeError(f"in netns {self.name}: {' '.join(argv)} exited {done.returncode}:\n"
                               f"{done.stdout}{done.stderr}")
        return done

    def ip(self, *args: str) -> None:
        """`ip -n <ns> ...`, raising on failure."""
        _ip("-n", self.name, *args)

    def sysctl(self, key: str, value: str) -> None:
        """Set a (per-namespace) sysctl inside this namespace."""
        self.run(["sysctl", "-q", "-w", f"{key}={value}"])


@dataclass
class Spawned:
    """A process started by :meth:`TestNetwork.spawn`; stdout/stderr go to log files."""

    name: str
    popen: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path
    _files: list[IO[bytes]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll `predicate` until true; fail with this process's output if it dies or
        the time runs out."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if not self.alive():
                raise RuntimeError(f"{self.name} exited ({self.popen.returncode}) before {what}:\n"
                                   f"{self.describe()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: no {what} within {timeout} s:\n{self.describe()}")
            time.sleep(0.05)

    def wait_for_output(self, text: str, timeout: float = 20.0, stream: str = "stderr") -> None:
        path = self.stderr_path if stream == "stderr" else self.stdout_path
        self.wait_for(lambda: text in path.read_text(errors="replace"), timeout, repr(text))

    def send_signal(self, signum: int) -> None:
        if self.alive():
            self.popen.send_signal(signum)

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit by itself; its exit code.  Past `timeout` it
        is stopped (:meth:`stop`) and TimeoutError raised with its output."""
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise TimeoutError(f"{self.name} still running after {timeout} s:\n{self.describe()}") from None
        return self.stop()

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Send `signum` to the PID, wait; past `timeout`, SIGKILL its process group
        (the group this spawn created, so children such as worker processes go too).
        Returns the exit code (negative: killed by that signal)."""
        if self.alive():
            self.popen.send_signal(signum)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        code = self.popen.wait()
        for f in self._files:
            f.close()
        self._files.clear()
        return code

    def kill(self) -> None:
        """SIGKILL to the process group created at spawn (its id is our PID)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)

    def describe(self, tail: int = 8000) -> str:
        return (f"--- {self.name} (pid {self.pid}) stdout ---\n{self.stdout()[-tail:]}\n"
                f"--- {self.name} stderr ---\n{self.stderr()[-tail:]}")


def _ip(*args: str) -> None:
    done = subprocess.run([IP, *args], capture_output=True, text=True, timeout=15)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


class TestNetwork:
    """Namespaces, veth pairs and processes of one test; :meth:`close` undoes all of it."""

    __test__ = False  # not a pytest test class

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.tag = f"{PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
        self.namespaces: list[Namespace] = []
        self.processes: list[Spawned] = []

    def __enter__(self) -> TestNetwork:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def namespace(self, label: str, ipv6: bool = False) -> Namespace:
        """A new namespace, loopback up.  IPv6 is off unless asked for, so that no
        router/neighbour solicitation or MLD report shows up in captures at random
        times; with `ipv6`, router advertisements are ignored (there is no router)."""
        ns = Namespace(f"{self.tag}-{label}")
        _ip("netns", "add", ns.name)
        self.namespaces.append(ns)
        for scope in ("all", "default"):
            if ipv6:
                ns.sysctl(f"net.ipv6.conf.{scope}.accept_ra", "0")
            else:
                ns.sysctl(f"net.ipv6.conf.{scope}.disable_ipv6", "1")
        ns.ip("link", "set", "lo", "up")
        return ns

    def veth(self, ns_a: Namespace, if_a: str, addr_a: str | Sequence[str], ns_b: Namespace, if_b: str,
             addr_b: str | Sequence[str], mtu: int | None = None) -> None:
        """A veth pair between two of this test's namespaces, created inside them (the
        host's namespace never holds either end), addressed and up.  Addresses are CIDR,
        one or several per end; IPv6 ones skip duplicate address detection, so they are
        usable at once."""
        ns_a.ip("link", "add", if_a, "type", "veth", "peer", "name", if_b, "netns", ns_b.name)
        for ns, ifname, addrs in ((ns_a, if_a, addr_a), (ns_b, if_b, addr_b)):
            if mtu:
                ns.ip("link", "set", ifname, "mtu", str(mtu))
            for addr in [addrs] if isinstance(addrs, str) else addrs:
                ns.ip("addr", "add", addr, "dev", ifname, *(["nodad"] if ":" in addr else []))
            ns.ip("link", "set", ifname, "up")

    def spawn(self, ns: Namespace | None, argv: Sequence[str], name: str, cwd: Path | None = None,
              env: dict[str, str] | None = None) -> Spawned:
        """Start `argv` (inside `ns`, or here when None) in a new session, output to
        `<workdir>/<name>.out|.err`; stopped by :meth:`close` if still running."""
        out_path, err_path = self.workdir / f"{name}.out", self.workdir / f"{name}.err"
        out, err = out_path.open("wb"), err_path.open("wb")
        try:
            popen = subprocess.Popen(ns.cmd(argv) if ns else list(argv), stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=err, cwd=cwd, env=env, start_new_session=True)
        except BaseException:
            out.close()
            err.close()
            raise
        proc = Spawned(name, popen, out_path, err_path, [out, err])
        self.processes.append(proc)
        return proc

    def close(self) -> None:
        """Stop our processes (latest first) by PID, then delete our namespaces."""
        problems: list[str] = []
        for proc in reversed(self.processes):
            try:
                proc.stop(signal.SIGTERM, timeout=5)
            except Exception as err:
                problems.append(f"{proc.name}: {err}")
        self.processes.clear()
        for ns in reversed(self.namespaces):
            done = subprocess.run([IP, "netns", "del", ns.name], capture_output=True, text=True, timeout=15)
            if done.returncode != 0:
                problems.append(f"ip netns del {ns.name}: {done.stderr.strip()}")
        self.namespaces.clear()
        if problems:
            raise RuntimeError("test network cleanup: " + "; ".join(problems))


def sweep_stale() -> list[str]:
    """Delete namespaces left by test runs that were killed before cleaning up: ours by
    name (:data:`PREFIX`), whose creating process is gone and in which nothing runs.
    Returns the names deleted."""
    listed = subprocess.run([IP, "netns", "list"], capture_output=True, text=True, timeout=10)
    removed = []
    for line in listed.stdout.splitlines():
        name = line.split(" ", 1)[0]
        if not name.startswith(PREFIX):
            continue
        pid_text = name[len(PREFIX):].split("-", 1)[0]
        if not pid_text.isdigit() or Path(f"/proc/{pid_text}").exists():
            continue
        pids = subprocess.run([IP, "netns", "pids", name], capture_output=True, text=True, timeout=10)
        if pids.returncode == 0 and not pids.stdout.strip():
            subprocess.run([IP, "netns", "del", name], capture_output=True, timeout=10)
            removed.append(name)
    return removed


@pytest.fixture
def network_namespaces(tmp_path: Path) -> Iterator[TestNetwork]:
    """A :class:`TestNetwork` in `tmp_path/net`; skips when namespaces are unavailable."""
    require_netns()
    sweep_stale()
    with TestNetwork(tmp_path / "net") as net:
        yield net
