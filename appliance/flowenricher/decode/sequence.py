"""Sequence-number gaps: flows an exporter sent that never reached us.

Every protocol numbers what it sends, per exporter and observation domain: NetFlow v5
counts flows (flow_sequence), NetFlow v9 export packets (RFC 3954 §5.1), IPFIX data
records (RFC 7011 §3.1), sFlow datagrams per agent and sub-agent.  A datagram's number
should be the previous one plus what the previous one carried.  A number ahead of that
opens a hole; a late datagram landing in a hole fills it (UDP reorders), so a hole is
counted lost only after `CONFIRM_AFTER` more datagrams of the stream.  A number far
behind (an exporter restart) or implausibly far ahead is a reset, counted apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .bounded import BoundedDict

MOD = 1 << 32
CONFIRM_AFTER = 8  # datagrams after which a hole is loss, not reordering
MAX_HOLES = 16  # open holes per stream: beyond, the oldest is confirmed at once
# Default bound of tracked streams (exporter, domain): as TemplateCache's, a hostile
# sender's spoofed sources evict the least recently seen stream, never grow memory.
MAX_STREAMS = 65_536
# Largest forward jump counted as loss; beyond it, a reset.  In the units the protocol
# counts: datagrams (v9, sFlow) or records (v5, IPFIX, about 30 a datagram): about a
# minute of a busy exporter's traffic either way.
MAX_GAP_DATAGRAMS = 1 << 16
RESET = -1  # what observe() returns for a reset
MAX_GAP_RECORDS = 1 << 21


@dataclass
class _Stream:
    expected: int
    last_advance: int
    holes: list[list[int]] = field(default_factory=list)  # [start, length, age]


class SequenceTracker:
    """Counts lost units per stream from (sequence number, units carried) observations.

    `max_gap` is the largest forward jump taken as loss (units: what the protocol's
    sequence counts); beyond it, or backwards beyond the reorder window, the stream
    restarts.
    """

    def __init__(self, max_gap: int, max_streams: int = MAX_STREAMS) -> None:
        self.max_gap = max_gap
        self.streams: BoundedDict[tuple[str, int], _Stream] = BoundedDict(max_streams)

    def observe(self, key: tuple[str, int], seq: int, advance: int) -> int:
        """One datagram of `key` numbered `seq` carrying `advance` units (-1: unknown).

        Returns the units confirmed lost now, or RESET when the stream restarted.
        """
        stream = self.streams.get(key)
        if stream is None:
            if advance >= 0:
                self.streams[key] = _Stream((seq + advance) % MOD, advance)
            return 0
        if seq == stream.expected and not stream.holes:  # the common case
            if advance < 0:
                del self.streams[key]  # next datagram restarts tracking
            else:
                stream.expected = (seq + advance) % MOD
                stream.last_advance = advance
            return 0
        lost, reset = self._slow(key, stream, seq, advance)
        return RESET if reset else lost

    def _slow(self, key: tuple[str, int], stream: _Stream, seq: int, advance: int) -> tuple[int, bool]:
        diff = (seq - stream.expected) % MOD
        if diff >= MOD // 2:
            diff -= MOD
        lost = 0
        if diff < 0:
            for hole in stream.holes:
                offset = (seq - hole[0]) % MOD
                if offset < hole[1]:  # a late datagram: it fills part of a hole, splitting it
                    used = min(max(advance, 1), hole[1] - offset)
                    tail = hole[1] - offset - used
                    hole[1] = offset
                    if tail > 0:
                        stream.holes.append([(seq + used) % MOD, tail, hole[2]])
                    stream.holes = [h for h in stream.holes if h[1] > 0]
                    return self._age(stream), False
            window = max(stream.last_advance, 1) * 64
            if -diff <= window:
                return self._age(stream), False  # a duplicate, or later than we track
            return self._reset(key, seq, advance)
        if diff > self.max_gap:
            return self._reset(key, seq, advance)
        if diff > 0:
            stream.holes.append([stream.expected, diff, 0])
            if len(stream.holes) > MAX_HOLES:
                lost += stream.holes.pop(0)[1]
        if advance < 0:
            del self.streams[key]
            return lost + sum(h[1] for h in stream.holes), False
        stream.expected = (seq + advance) % MOD
        stream.last_advance = advance
        return lost + self._age(stream), False

    @staticmethod
    def _age(stream: _Stream) -> int:
        lost = 0
        kept = []
        for hole in stream.holes:
            hole[2] += 1
            if hole[2] > CONFIRM_AFTER:
                lost += hole[1]
            else:
                kept.append(hole)
        stream.holes = kept
        return lost

    def _reset(self, key: tuple[str, int], seq: int, advance: int) -> tuple[int, bool]:
        if advance >= 0:
            self.streams[key] = _Stream((seq + advance) % MOD, advance)
        else:
            self.streams.pop(key, None)
        return 0, True
