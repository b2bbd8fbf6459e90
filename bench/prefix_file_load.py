"""Loading a full table from ``bgp.prefix_file``: time and peak RSS of the process.

    python bench/prefix_file_load.py [--v4 1000000] [--v6 200000] [--rounds 2] [--trees DIR,DIR]

The table is bench/rib.py's synthetic one, written as bench/ingest_enriched.py writes it
(about 120 MB of JSON for 1.2M routes).  Each round loads it in a fresh child process
(``load_prefix_file`` into a RouteBuilder, then the RIB's table) and reports the wall
time and the child's VmHWM; ``--trees`` runs the same child against other checkouts, in
turn, so two versions are measured side by side in one run (default: this one).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ingest_enriched import write_prefix_file  # bench/ is the script's directory
from rib import synthetic_table

REPO = Path(__file__).resolve().parent.parent

CHILD = """
import sys, time
from pathlib import Path
from appliance.flowenricher.bgp.prefix_file import load_prefix_file
from appliance.flowenricher.bgp.rib import RibState
state = RibState()
builder = state.new_builder()
started = time.perf_counter()
n = load_prefix_file(Path(sys.argv[1]), builder)
table = builder.table(copy=False)
took = time.perf_counter() - started
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(n, f"{took:.2f}", hwm // 1024)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--v4", type=int, default=1_000_000)
    ap.add_argument("--v6", type=int, default=200_000)
    ap.add_argument("--paths", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--trees", default=str(REPO), help="checkouts to load with, comma-separated")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="flowenricher-prefix-file-") as where:
        path = write_prefix_file(synthetic_table(args.v4, args.v6, args.paths), Path(where) / "prefixes.json")
        print(f"prefix file: {args.v4} IPv4 + {args.v6} IPv6 routes, {path.stat().st_size / 1e6:.0f} MB")
        for _ in range(args.rounds):
            for tree in args.trees.split(","):
                started = time.perf_counter()
                out = subprocess.run([sys.executable, "-c", CHILD, str(path)], cwd=tree, env={"PYTHONPATH": tree},
                                     capture_output=True, text=True, check=True).stdout.split()
                print(f"{tree}: {out[0]} routes loaded in {out[1]} s (process {time.perf_counter() - started:.1f} s), "
                      f"peak RSS {out[2]} MB")


if __name__ == "__main__":
    main()
