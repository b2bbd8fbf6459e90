"""flowenricher: receive, decode, enrich and store network flows; detect and mitigate attacks."""

__version__ = "0.1.0"
