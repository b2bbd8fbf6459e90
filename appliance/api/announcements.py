"""Manual blackhole requests from the API, handed to the blackhole manager.

The manager is the one owner of announcements (DESIGN §1): the API never talks to
GoBGP itself.  A refusal by the safety policy becomes a 409 whose detail is the
policy's own sentence, which names the rule (never-blackhole list, shortest prefix,
maximum active, rate); the request is recorded with the token that made it.  One that
GoBGP refuses for good (the manager marks it failed at once) is a 409 too, with GoBGP's
reason: never a 200 for a blackhole that is not announced and will not be.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from appliance.flowenricher.blackhole.manager import detection_role, rule_next_hop
from appliance.flowenricher.blackhole.safety import Refused as PolicyRefused
from appliance.flowenricher.blackhole.safety import SafetyPolicy
from appliance.flowenricher.blackhole.state import Blackhole, BlackholeRow, StateDB

from .auth import Principal
from .errors import NotFound, Refused


class Blackholes(Protocol):
    """What the API uses of the blackhole manager: the manager itself when the API runs
    inside `flowenricher run`, remote.RemoteBlackholes (the collector's manager over its
    control socket) when it runs as `flowenricher api`."""

    @property
    def state(self) -> StateDB: ...

    @property
    def policy(self) -> SafetyPolicy: ...

    def announce(self, prefix: str, next_hop: str | None = None, communities: Sequence[str] | None = None,
                 duration_s: float | None = None, source: str = "api", rule: str = "",
                 evidence: dict[str, Any] | None = None, role: str = "manual") -> Blackhole: ...

    def withdraw(self, prefix: str, reason: str = "api") -> Blackhole | None: ...

    def active(self) -> list[Blackhole]: ...


def announce(manager: Blackholes, principal: Principal, prefix: str, next_hop: str | None,
             communities: Sequence[str] | None, duration_s: float | None = None) -> tuple[Blackhole, bool]:
    """Blackhole `prefix` for `principal`; returns the blackhole and whether it was a dry run."""
    evidence = {"requested_by": principal.name, "token_id": principal.token_id}
    try:
        blackhole = manager.announce(prefix, next_hop, list(communities) if communities else None, duration_s,
                                     source="api", evidence=evidence, role="manual")
    except PolicyRefused as err:
        raise Refused(f"refused by the safety policy: {err}") from err
    if blackhole.state == "failed":
        raise Refused(f"{blackhole.prefix} failed, not announced: {blackhole.failed_reason}")
    return blackhole, manager.policy.settings.dry_run


def request_for_rule(manager: Blackholes, principal: Principal, prefix: str, next_hop: str | None,
                     communities: Sequence[str], duration_s: float, rule: str,
                     evidence: dict[str, Any]) -> tuple[Blackhole, bool]:
    """A storer's rule request (it sends them here, its ``blackhole.owner``): what this
    host's manager does with its own rules' requests (`BlackholeManager.request`), with
    the refusal answered as a 409 instead of logged, so the storer counts it and does
    not retry.  The token that sent it is kept in the evidence."""
    evidence = {**evidence, "requested_by": principal.name, "token_id": principal.token_id}
    try:
        blackhole = manager.announce(prefix, rule_next_hop(prefix, next_hop), list(communities) or None,
                                     duration_s, source="rule", rule=rule, evidence=evidence,
                                     role=detection_role(evidence))
    except PolicyRefused as err:
        raise Refused(f"refused by the safety policy: {err}") from err
    if blackhole.state == "failed":
        raise Refused(f"{blackhole.prefix} failed, not announced: {blackhole.failed_reason}")
    return blackhole, manager.policy.settings.dry_run


def withdraw(manager: Blackholes, principal: Principal, prefix: str) -> Blackhole:
    """Withdraw an active blackhole; NotFound when `prefix` is not blackholed."""
    withdrawn = manager.withdraw(prefix, reason=f"api:{principal.name}"[:64])
    if withdrawn is None:
        raise NotFound(f"{prefix} is not blackholed")
    with manager.state.session() as session:  # the row as withdrawn, with its withdrawal time
        row = session.get(BlackholeRow, withdrawn.id)
        return Blackhole.of(row) if row is not None else withdrawn
