"""Spool codec: bytes per spooled row and the time to compress and read back a block,
raw Native against LZ4 and ZSTD at a few levels (ZSTD through backports.zstd, Python
3.14's compression.zstd for earlier versions, and python-zstandard when installed), on the blocks the service stores.

    python bench/spool_codec.py [--blocks 4] [--protocol ipfix]

The blocks are built as bench/storage_size.py builds them (generated traffic encoded
as a router sends it, decoded by the collector, direction added): 250k-row Native blocks,
the service's ``insert.batch_size``.  Each codec runs over every block; the figures are
the totals (ratio = raw bytes / compressed bytes; speeds in MB/s of raw Native).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import ipaddress
import time
from collections.abc import Callable
from typing import Any

import lz4.frame  # type: ignore[import-untyped]
from backports import zstd as backports_zstd
from storage_size import BATCH, batches  # bench/ is the script's directory

from appliance.flowenricher.enrich.networks import NetworksStage
from appliance.flowenricher.enrich.pipeline import Enricher
from appliance.flowenricher.generate.traffic import DEFAULT_MY_PREFIXES
from appliance.flowenricher.storage.native import encode_block

zstandard: Any
try:  # not a dependency: pip install zstandard to compare the other binding
    zstandard = importlib.import_module("zstandard")
except ImportError:
    zstandard = None

Codec = tuple[str, Callable[[bytes], bytes], Callable[[bytes], bytes]]


def codecs() -> list[Codec]:
    out: list[Codec] = [
        ("lz4 (level 0)", functools.partial(lz4.frame.compress, compression_level=0), lz4.frame.decompress),
        ("lz4 (level 3)", functools.partial(lz4.frame.compress, compression_level=3), lz4.frame.decompress),
    ]
    for level in (1, 3, 6):
        out.append((
            f"backports.zstd {level}", functools.partial(backports_zstd.compress, level=level),
            backports_zstd.decompress,
        ))
        if zstandard is not None:
            out.append((
                f"zstandard {level}", zstandard.ZstdCompressor(level=level).compress,
                zstandard.ZstdDecompressor().decompress,
            ))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--blocks", type=int, default=4, help="250k-row blocks measured (default 4)")
    ap.add_argument("--protocol", choices=("ipfix", "v9"), default="ipfix")
    args = ap.parse_args()
    enricher = Enricher([NetworksStage([ipaddress.ip_network(p) for p in DEFAULT_MY_PREFIXES], {})])
    blocks = []
    for batch in batches(args.blocks * BATCH, 1.0, args.protocol, seed=1):
        enricher.enrich(batch)
        blocks.append(encode_block(batch))
    raw = sum(len(b) for b in blocks)
    rows = args.blocks * BATCH
    print(f"{len(blocks)} blocks, {rows} rows, raw Native {raw / rows:.1f} bytes/row")
    print(f"{'codec':18} {'bytes/row':>9} {'ratio':>6} {'compress MB/s':>14} {'decompress MB/s':>16}")
    for name, compress, decompress in codecs():
        started = time.perf_counter()
        packed = [compress(b) for b in blocks]
        mid = time.perf_counter()
        for p, b in zip(packed, blocks, strict=True):
            if decompress(p) != b:
                raise RuntimeError(f"{name}: a block did not round-trip")
        done = time.perf_counter()
        size = sum(len(p) for p in packed)
        print(
            f"{name:18} {size / rows:9.1f} {raw / size:6.1f} {raw / 1e6 / (mid - started):14.0f} "
            f"{raw / 1e6 / (done - mid):16.0f}"
        )


if __name__ == "__main__":
    main()
