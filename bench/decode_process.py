"""`flowenricher decode` as a whole process beside the `netflow` package (PyPI) as a whole
process, on the same capture: wall time and peak RSS of each child, rounds alternated,
medians and the ratio.

    python bench/decode_process.py [--flows 3000000] [--rounds 3] [--protocols v9,ipfix]
                                   [--dir /tmp/decode-process] [--double] [--before DIR]

The captures (MikroTik-like templates, 30 records a packet, seed 1) are built once in
--dir and reused.  `flowenricher decode <pcap> --format summary` runs as
`python -c "from appliance.cli import main; ..."`, the console script's body, so the
project on PYTHONPATH is what runs; the `netflow` side is a small script that reads the
same capture with the project's capture reader and calls `netflow.parse_packet` per
datagram, templates carried.  --double also times flowenricher on a capture of the same
packets twice over, to show its peak RSS does not grow with the capture.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

FLOWENRICHER = "import sys; from appliance.cli import main; sys.exit(main())"

NETFLOW = """\
import sys
import netflow
from netflow.v9 import V9TemplateNotRecognized
from netflow.ipfix import IPFIXTemplateNotRecognized
from appliance.flowenricher.pcap import read_udp

templates = {"netflow": {}, "ipfix": {}}
flows = missing = 0
for d in read_udp(sys.argv[1]):
    try:
        flows += len(netflow.parse_packet(d.payload, templates).flows)
    except (V9TemplateNotRecognized, IPFIXTemplateNotRecognized):
        missing += 1
print(f"records: {flows}")
print(f"template_missing: {missing}")
"""


BUILD = """\
import sys
from appliance.flowenricher.generate.encode import build_packets
from appliance.flowenricher.generate.pcapwriter import write_pcap

path, proto, flows, repeat = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
packets = build_packets(proto, flows, records_per_packet=30, seed=1)
write_pcap(path, [packets[0]] + packets[1:] * repeat)
"""


def build(path: Path, proto: str, flows: int, repeat: int = 1) -> Path:
    """The capture of `flows` flows of `proto`, its packets `repeat` times over (the
    template packet once): built unless already there, in a child process, so that this
    one stays small (a child's peak RSS counts the memory it had when forked)."""
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        subprocess.run([sys.executable, "-c", BUILD, str(tmp), proto, str(flows), str(repeat)], check=True)
        tmp.rename(path)
    return path


def run(argv: list[str], cwd: Path, pythonpath: str | None = None) -> tuple[float, float, int, str]:
    """(wall seconds, CPU seconds, peak RSS in bytes, stdout) of one child process, run in
    `cwd`: `python -c` puts its working directory ahead of PYTHONPATH, so a child started
    in a checkout would import that checkout whatever PYTHONPATH says."""
    env = dict(os.environ, PYTHONPATH=pythonpath) if pythonpath else None
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=cwd)
    out = proc.stdout.read() if proc.stdout is not None else ""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{argv[:3]}...: exit status {proc.returncode}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024, out  # ru_maxrss: KiB on Linux


def records(out: str) -> int:
    for line in out.splitlines():
        if line.startswith("records: "):
            return int(line.split()[1])
    raise SystemExit(f"no records line in {out!r}")


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.2f}/{five:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--flows", type=int, default=3_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--protocols", default="v9,ipfix")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/decode-process"))
    ap.add_argument("--double", action="store_true", help="also time flowenricher on a capture twice the size")
    ap.add_argument("--before", default=None, help="also time flowenricher from this PYTHONPATH (an older tree, "
                                                   "`git archive REV appliance | tar -x -C DIR`)")
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    args.dir = args.dir.resolve()
    if not os.environ.get("PYTHONPATH"):
        raise SystemExit("set PYTHONPATH to the checkout to time (the children run in --dir)")
    for proto in args.protocols.split(","):
        pcap = build(args.dir / f"{proto}-{args.flows}.pcap", proto, args.flows)
        sides = {"flowenricher": [sys.executable, "-c", FLOWENRICHER, "decode", str(pcap), "--format", "summary"],
                 "netflow": [sys.executable, "-c", NETFLOW, str(pcap)]}
        if args.double:
            big = build(args.dir / f"{proto}-{args.flows}x2.pcap", proto, args.flows, repeat=2)
            sides["flowenricher x2"] = [sys.executable, "-c", FLOWENRICHER, "decode", str(big), "--format", "summary"]
        if args.before:
            sides["flowenricher before"] = sides["flowenricher"]
        walls: dict[str, list[float]] = {k: [] for k in sides}
        cpus: dict[str, list[float]] = {k: [] for k in sides}
        peaks: dict[str, list[int]] = {k: [] for k in sides}
        counts: dict[str, int] = {}
        print(f"{proto}: {pcap} ({pcap.stat().st_size / 1e6:.0f} MB)")
        for r in range(args.rounds):
            for name, argv in sides.items():  # alternately, so load from others falls on both
                wall, cpu, peak, out = run(argv, args.dir, args.before if name.endswith(" before") else None)
                walls[name].append(wall)
                cpus[name].append(cpu)
                peaks[name].append(peak)
                counts[name] = records(out)
                print(f"  round {r + 1} {name:19s} {wall:7.2f} s (CPU {cpu:6.2f} s)  {peak / 1e6:6.1f} MB  "
                      f"{counts[name]} records  ({load()})", flush=True)
        med = {k: statistics.median(v) for k, v in walls.items()}
        for name in sides:
            print(f"  median  {name:19s} {med[name]:7.2f} s (CPU {statistics.median(cpus[name]):6.2f} s)  "
                  f"{max(peaks[name]) / 1e6:6.1f} MB peak  "
                  f"{counts[name] / med[name] / 1e3:8.1f} k flows/s")
        for name in sides:
            if name.startswith("flowenricher"):
                print(f"  ratio netflow / {name}: {med['netflow'] / med[name]:.1f}x (wall time"
                      f"{', on twice the flows' if name.endswith('x2') else ''})")


if __name__ == "__main__":
    main()
