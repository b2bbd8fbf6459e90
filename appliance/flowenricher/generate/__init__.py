"""Synthetic flow export of a small AS, and capture replay, to feed a collector.

`traffic` models the flows (numpy columns, seeded), `scenarios` adds attacks with their
ground truth, `benign` labelled benign mixes (web, DNS, NTP, backups, video, speed tests,
gaming) and a scan under every shipped rule, `encode` turns flows into NetFlow v5/v9,
IPFIX and sFlow datagrams without a Python loop per record, `sender` paces them onto a UDP socket, and `pcapwriter` stores
datagrams as a capture so independent decoders (tshark) can read them.
"""

from __future__ import annotations

from . import benign  # noqa: F401  (registers its scenarios)
