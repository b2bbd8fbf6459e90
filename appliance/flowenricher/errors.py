"""The one exception tree of flowenricher: every error names its input and place."""

from __future__ import annotations


class FlowEnricherError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(FlowEnricherError):
    """A config or rules file is unreadable or fails its schema.

    `problems` holds one line per error: file, JSON path, what is wrong.
    """

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class DecodeError(FlowEnricherError):
    """A datagram cannot be decoded; `reason` is the short counter label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class StoreError(FlowEnricherError):
    """The flow store refused or could not take a batch."""


class KafkaTopicError(FlowEnricherError):
    """A Kafka topic the config names does not exist or cannot be used."""


class CaptureError(FlowEnricherError):
    """A capture file cannot be read."""
