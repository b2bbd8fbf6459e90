"""The record a `collect` process produces: encode and decode cost and bytes per flow of
the candidate formats, on the decoded (not enriched) batches a collector holds.

    python bench/kafka_record.py [--flows 400000] [--rows 2500] [--protocol ipfix]

Candidates: flowenricher's column block (kafka/blocks.py: numpy buffers behind a small
header), Arrow IPC (pyarrow, already a dependency: one RecordBatch per record, dictionary
strings, FixedSizeBinary(16) addresses) and the ClickHouse Native block (storage/native.py;
encode only: no Native reader exists in this code base, so its decode would be new code).
Each record holds `--rows` flows, about what one partition's share of a worker batch is.
Bytes are given raw and after the compression the Kafka producer applies
(``compression.type`` lz4 or zstd: here lz4.frame and backports.zstd level 1 on each
record, close to what librdkafka does on a batch of records).
Times are CPU seconds per million flows (process time), single thread.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import lz4.frame  # type: ignore[import-untyped]
import numpy as np
import pyarrow as pa
from backports import zstd
from storage_size import batches  # bench/ is the script's directory

from appliance.flowenricher.batch import DictColumn, FlowBatch, ListColumn
from appliance.flowenricher.columns import BY_NAME, COLUMNS, Kind
from appliance.flowenricher.kafka import blocks
from appliance.flowenricher.storage.native import encode_block


def to_arrow(batch: FlowBatch) -> bytes:
    names = [c.name for c in COLUMNS if c.name in set(batch.set_columns())]
    arrays: list[Any] = []
    for name in names:
        kind, data = BY_NAME[name].kind, batch[name]
        if kind is Kind.UINT:
            arrays.append(pa.array(data))
        elif kind is Kind.ADDR:
            arrays.append(pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), batch.n,
                                                               [None, pa.py_buffer(np.ascontiguousarray(data))]))
        elif kind is Kind.STR:
            arrays.append(pa.DictionaryArray.from_arrays(pa.array(data.codes.astype(np.int32)),
                                                         pa.array(data.values, pa.string())))
        else:
            arrays.append(pa.ListArray.from_arrays(pa.array(data.offsets.astype(np.int32)), pa.array(data.values)))
    record = pa.RecordBatch.from_arrays(arrays, names=names)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, record.schema) as writer:
        writer.write_batch(record)
    return bytes(sink.getvalue().to_pybytes())


def from_arrow(value: bytes) -> FlowBatch:
    table = pa.ipc.open_stream(value).read_all()
    out = FlowBatch(table.num_rows)
    for name, column in zip(table.column_names, table.columns, strict=True):
        chunk = column.chunks[0]
        kind = BY_NAME[name].kind
        if kind is Kind.UINT:
            out[name] = chunk.to_numpy()
        elif kind is Kind.ADDR:
            out[name] = np.frombuffer(chunk.buffers()[1], np.uint8).reshape(-1, 16)
        elif kind is Kind.STR:
            out[name] = DictColumn(chunk.indices.to_numpy().astype(np.uint32), chunk.dictionary.to_pylist())
        else:
            out[name] = ListColumn(chunk.offsets.to_numpy().astype(np.uint64), chunk.values.to_numpy())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flows", type=int, default=400_000)
    parser.add_argument("--rows", type=int, default=2500)
    parser.add_argument("--protocol", default="ipfix")
    args = parser.parse_args()
    parts: list[FlowBatch] = []
    for batch in batches(args.flows, 1.0, args.protocol, 1):
        idx = np.arange(batch.n)
        parts += [batch.take(idx[i:i + args.rows]) for i in range(0, batch.n, args.rows)]
    flows = sum(p.n for p in parts)
    per_m = 1e6 / flows
    print(f"{flows} decoded {args.protocol} flows, {len(parts)} records of {args.rows} rows")
    print(f"{'format':<22}{'encode s/M':>11}{'decode s/M':>11}{'B/flow':>8}{'lz4':>7}{'zstd1':>7}")
    formats: list[tuple[str, Callable[[FlowBatch], bytes], Callable[[bytes], FlowBatch] | None]] = [
        ("flowenricher block", blocks.encode_record, blocks.decode_record),
        ("Arrow IPC", to_arrow, from_arrow),
        ("Native (encode only)", encode_block, None),
    ]
    for name, encode, decode in formats:
        start = time.process_time()
        records = [encode(p) for p in parts]
        t_enc = time.process_time() - start
        t_dec = float("nan")
        if decode is not None:
            start = time.process_time()
            for r in records:
                decode(r)
            t_dec = time.process_time() - start
        raw = sum(len(r) for r in records)
        lz4_bytes = sum(len(lz4.frame.compress(r)) for r in records)
        zstd_bytes = sum(len(zstd.compress(r, level=1)) for r in records)
        print(f"{name:<22}{t_enc * per_m:>11.3f}{t_dec * per_m:>11.3f}{raw / flows:>8.1f}"
              f"{lz4_bytes / flows:>7.1f}{zstd_bytes / flows:>7.1f}")


if __name__ == "__main__":
    main()
