"""Datagram mutations for fuzzing the decoders (tests and bench/fuzz.py).

Kept in the package so the short CI run and the long recorded run share one mutator.
"""

from __future__ import annotations

import random


def mutate_datagram(payload: bytes, rnd: random.Random) -> bytes:
    """One structure-aware mutation of a real datagram: truncation, byte flips, inflated
    16-bit lengths/counts (length-looping), zeroed fields, or duplication."""
    data = bytearray(payload)
    choice = rnd.randrange(6)
    if choice == 0 and data:
        return bytes(data[: rnd.randrange(len(data))])
    if choice == 1:
        for _ in range(rnd.randint(1, 8)):
            if data:
                data[rnd.randrange(len(data))] = rnd.randrange(256)
        return bytes(data)
    if choice == 2 and len(data) > 4:
        pos = rnd.randrange(0, len(data) - 1)
        value = rnd.choice([0, 1, 3, 4, 0xFFFF, 0x7FFF, len(data), len(data) + 4])
        data[pos : pos + 2] = value.to_bytes(2, "big")
        return bytes(data)
    if choice == 3 and len(data) > 4:
        pos = rnd.randrange(len(data))
        data[pos : pos + 4] = bytes(min(4, len(data) - pos))
        return bytes(data)
    if choice == 4:
        return bytes(data) * rnd.randint(2, 3)
    return bytes(rnd.randrange(256) for _ in range(rnd.randrange(64)))
