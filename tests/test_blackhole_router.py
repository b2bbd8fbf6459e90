"""The router check of blackholes (blackhole/router.py) against the RouterOS simulator.

The routes reach the simulated router's table the way they reach a real one: announced
by a BGP peer and passed through the input filter the mikrotik role writes for these
appliance settings (tests/test_routeros_sim.py builds it from the role's filter plugin).
So a route the router's filter drops, or installs without making it a blackhole, is
not reported as held.  Connection failures are real: a closed port, a port that never
answers, a wrong password, a certificate from another CA, a router that restarts.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import librouteros
import pytest
from librouteros.exceptions import TrapError
from support.routeros_sim import RouterOsSim
from test_routeros_sim import CONFIG_SET, PEER, role_filter_rules, route

from appliance.flowenricher.blackhole.router import RouterOsVerifier, RouterUnreachable
from appliance.flowenricher.config import RouterApiSettings

ADMIN_PASSWORD = "admin-Secret-1"
PASSWORD = "ro-Secret-7f3a"  # the read-only user's: must never show in a log or an error
READER = "flowenricher-read"


def settings(server: RouterOsSim, **kw: object) -> RouterApiSettings:
    values: dict[str, object] = {"host": server.host, "port": server.port, "username": READER, "password": PASSWORD,
                                 "timeout_s": 2.0}
    values.update(kw)
    return RouterApiSettings(**values)


def admin(server: RouterOsSim, **kw: object) -> librouteros.Api:
    return librouteros.connect(server.host, "admin", ADMIN_PASSWORD, port=server.port, timeout=5, **kw)


def run(server: RouterOsSim, command: str, **attrs: str) -> None:
    """A command on the router's state directly (no session: not counted, works over API-SSL)."""
    server.state.execute(command, attrs, [], {})


def set_up_router(server: RouterOsSim, chain: list[str] | None = None) -> None:
    """The simulator as the mikrotik role leaves a router: the role's input filter (or
    `chain`) on the appliance's BGP connection, the read-only API user (group policy
    read,api), the next hops routed to nowhere."""
    for text in role_filter_rules() if chain is None else chain:
        run(server, "/routing/filter/rule/add", chain="fe-in", rule=text)
    run(server, "/routing/bgp/connection/add", **{"name": "fe", "local.role": "ibgp", "remote.address": PEER,
                                                  "as": "65000", "remote.as": "65000", "input.filter": "fe-in"})
    run(server, "/user/group/add", name=READER, policy="read,api")
    run(server, "/user/add", name=READER, group=READER, password=PASSWORD)
    run(server, "/ip/route/add", **{"dst-address": "192.0.2.1/32", "blackhole": "yes", "comment": "flowenricher"})
    run(server, "/ipv6/route/add", **{"dst-address": "100::1/128", "blackhole": "yes", "comment": "flowenricher"})


@pytest.fixture
def sim() -> Iterator[RouterOsSim]:
    with RouterOsSim(users={"admin": ADMIN_PASSWORD}) as server:
        yield server


def verifier_for(server: RouterOsSim, **kw: object) -> contextlib.closing[RouterOsVerifier]:
    return contextlib.closing(RouterOsVerifier(settings(server, **kw)))


def bgp_rows(server: RouterOsSim, family: str = "ip") -> dict[str, dict[str, object]]:
    api = librouteros.connect(server.host, "admin", ADMIN_PASSWORD, port=server.port, timeout=5)
    try:
        return {str(r["dst-address"]): r for r in api.path(family, "route") if r.get("bgp")}
    finally:
        api.close()


# ---------------------------------------------------------------- what counts as held

def test_only_active_blackhole_routes_to_exactly_the_prefix_are_held(sim: RouterOsSim) -> None:
    set_up_router(sim)
    api = admin(sim)
    sim.state.feed(PEER, [
        route("203.0.113.9/32", "192.0.2.1", *CONFIG_SET),            # the appliance's: accepted as a blackhole
        route("203.0.113.10/32", "192.0.2.1", ((65535, 666),)),       # a community the role's filter rejects
        route("2001:db8::9/128", "100::1", *CONFIG_SET),              # IPv6: read from /ipv6/route
    ])
    api.path("ip", "route").add(**{"dst-address": "198.51.100.0/24", "blackhole": "yes"})
    assert set(bgp_rows(sim)) == {"203.0.113.9/32"}                   # the filter really dropped .10
    asked = [("203.0.113.9/32", "192.0.2.1"), ("203.0.113.10/32", "192.0.2.1"), ("2001:db8::9/128", "100::1"),
             ("198.51.100.7/32", "192.0.2.1"),                         # inside a held /24: not a route of its own
             ("198.51.100.0/24", "192.0.2.1"),                         # the /24 itself is an active blackhole
             ("203.0.113.11/32", "192.0.2.1")]                         # never announced
    with verifier_for(sim) as checker:
        assert checker.holds(asked) == {"203.0.113.9/32", "2001:db8::9/128", "198.51.100.0/24"}
        assert checker.holds([]) == set()
        sim.state.feed(PEER, [])                                       # withdrawn: no longer held
        assert checker.holds(asked[:3]) == set()


def test_installed_but_inactive_routes_are_not_held(sim: RouterOsSim) -> None:
    # A filter that accepts without setting blackhole (not the role's): the route is in the
    # table with the appliance's next hop as gateway, but inactive; so is a disabled static
    # blackhole route.
    set_up_router(sim, ["accept;"])
    api = admin(sim)
    sim.state.feed(PEER, [route("203.0.113.9/32", "192.0.2.1", *CONFIG_SET)])
    api.path("ip", "route").add(**{"dst-address": "203.0.113.20/32", "blackhole": "yes", "disabled": "yes"})
    installed = bgp_rows(sim)["203.0.113.9/32"]
    assert (installed["gateway"], installed["active"], installed["blackhole"]) == ("192.0.2.1", False, False)
    with verifier_for(sim) as checker:
        assert checker.holds([("203.0.113.9/32", "192.0.2.1"), ("203.0.113.20/32", "192.0.2.1")]) == set()
        # the role's filter makes the same route an active blackhole: now it is held
        rules = api.path("routing", "filter", "rule")
        for rule in list(rules):
            rules.remove(rule[".id"])
        for text in role_filter_rules():
            rules.add(chain="fe-in", rule=text)
        assert checker.holds([("203.0.113.9/32", "192.0.2.1")]) == {"203.0.113.9/32"}


def test_one_small_query_per_prefix_on_one_session(sim: RouterOsSim) -> None:
    set_up_router(sim)
    api = admin(sim)
    for i in range(200):  # the rest of a table, which the check must never print
        api.path("ip", "route").add(**{"dst-address": f"10.{i}.0.0/16", "blackhole": "yes"})
    prefixes = [f"203.0.113.{i}/32" for i in range(1, 6)] + ["2001:db8::1/128"]
    sim.state.feed(PEER, [route(p, "100::1" if ":" in p else "192.0.2.1", *CONFIG_SET) for p in prefixes])
    asked = [(p, "100::1" if ":" in p else "192.0.2.1") for p in prefixes]
    with verifier_for(sim) as checker:
        for call in range(2):
            start = len(sim.state.sentences)
            assert checker.holds(asked) == set(prefixes)
            sent = sim.state.sentences[start:]
            commands = [s[0] for s in sent]
            # one print per prefix, in its family's menu; the second call logs in no more
            assert commands == ([] if call else ["/login"]) + ["/ip/route/print"] * 5 + ["/ipv6/route/print"]
            for sentence, (prefix, _) in zip(sent[-len(prefixes):], asked, strict=True):
                assert f"?=dst-address={prefix}" in sentence, sentence
                assert any(w.startswith("=.proplist=") for w in sentence), sentence


def test_input_that_is_not_a_canonical_route_is_refused(sim: RouterOsSim) -> None:
    checker = RouterOsVerifier(settings(sim))
    with pytest.raises(ValueError, match=r"'203.0.113.9'.*203.0.113.9/32"):
        checker.holds([("203.0.113.9", "192.0.2.1")])
    with pytest.raises(ValueError, match="host bits"):
        checker.holds([("203.0.113.9/24", "192.0.2.1")])
    with pytest.raises(ValueError, match="IPv4 address"):
        checker.holds([("2001:db8::9/128", "192.0.2.1")])
    assert sim.state.sentences == []  # refused before anything was sent


# ---------------------------------------------------------------- users and permissions

def test_the_read_only_user_reads_and_cannot_write(sim: RouterOsSim) -> None:
    set_up_router(sim)
    reader = librouteros.connect(sim.host, READER, PASSWORD, port=sim.port, timeout=5)
    assert any(r["dst-address"] == "192.0.2.1/32" for r in reader.path("ip", "route"))
    with pytest.raises(TrapError, match="not enough permissions"):
        reader.path("ip", "route").add(**{"dst-address": "192.0.2.66/32", "blackhole": "yes"})
    reader.close()
    # the group's policy prints as RouterOS 7 does: granted, then every other one negated
    group = next(g for g in admin(sim).path("user", "group") if g["name"] == READER)
    assert str(group["policy"]).startswith("read,api,!local,")
    assert all("password" not in u for u in admin(sim).path("user"))


def test_a_user_without_the_api_policy_cannot_log_in(sim: RouterOsSim) -> None:
    api = admin(sim)
    api.path("user", "group").add(name="webonly", policy="read,web")
    api.path("user").add(name="webonly", group="webonly", password=PASSWORD)
    with verifier_for(sim, username="webonly") as checker, pytest.raises(RouterUnreachable, match="login"):
        checker.holds([("203.0.113.9/32", "192.0.2.1")])


# ---------------------------------------------------------------- failures

def test_wrong_password_names_the_router_and_the_login(sim: RouterOsSim) -> None:
    set_up_router(sim)
    with verifier_for(sim, password="not-" + PASSWORD) as checker, pytest.raises(RouterUnreachable) as err:
        checker.holds([("203.0.113.9/32", "192.0.2.1")])
    message = str(err.value)
    assert f"{sim.host}:{sim.port}" in message and "login" in message and READER in message
    assert "invalid user name or password" in message


def test_closed_port_is_refused(sim: RouterOsSim) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with verifier_for(sim, port=port) as checker, pytest.raises(RouterUnreachable, match=f"127.0.0.1:{port}.*refused"):
        checker.holds([("203.0.113.9/32", "192.0.2.1")])


def test_a_router_that_does_not_answer_times_out(sim: RouterOsSim) -> None:
    with socket.socket() as silent:  # accepts (the kernel's backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        started = time.monotonic()
        with verifier_for(sim, port=port, timeout_s=0.5) as checker, pytest.raises(RouterUnreachable,
                                                                                   match=r"0\.5 s.*timeout"):
            checker.holds([("203.0.113.9/32", "192.0.2.1")])
        assert time.monotonic() - started < 3


def test_a_restarted_router_is_read_again_on_a_new_session(sim: RouterOsSim) -> None:
    set_up_router(sim)
    sim.state.feed(PEER, [route("203.0.113.9/32", "192.0.2.1", *CONFIG_SET)])
    port = sim.port
    with verifier_for(sim) as checker:
        assert checker.holds([("203.0.113.9/32", "192.0.2.1")]) == {"203.0.113.9/32"}
        sim.stop()  # the reboot drops the session the checker keeps
        with pytest.raises(RouterUnreachable, match="refused"):
            checker.holds([("203.0.113.9/32", "192.0.2.1")])
        with RouterOsSim(port=port, users={"admin": ADMIN_PASSWORD}) as again:
            set_up_router(again)
            again.state.feed(PEER, [route("203.0.113.9/32", "192.0.2.1", *CONFIG_SET)])
            assert checker.holds([("203.0.113.9/32", "192.0.2.1")]) == {"203.0.113.9/32"}
            again.stop()
            with RouterOsSim(port=port, users={"admin": ADMIN_PASSWORD}) as third:
                set_up_router(third)  # rebooted with the route gone: the kept session is replaced at once
                assert checker.holds([("203.0.113.9/32", "192.0.2.1")]) == set()
                assert [s[0] for s in third.state.sentences] == ["/login", "/ip/route/print"]


# ---------------------------------------------------------------- API-SSL

def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """The router's certificate and key, and a CA that did not sign it."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("certs")
    cert, key = self_signed(d, "router")
    other, _ = self_signed(d, "other")
    return cert, key, other


def test_api_ssl_checks_the_routers_certificate(certificates: tuple[Path, Path, Path]) -> None:
    cert, key, other = certificates
    with RouterOsSim(users={"admin": ADMIN_PASSWORD}, tls=(cert, key)) as server:
        set_up_router(server)
        server.state.feed(PEER, [route("203.0.113.9/32", "192.0.2.1", *CONFIG_SET)])
        wanted = [("203.0.113.9/32", "192.0.2.1")]
        with verifier_for(server, tls=True, ca_file=cert) as checker:
            assert checker.holds(wanted) == {"203.0.113.9/32"}
        with verifier_for(server, tls=True, ca_file=other) as checker, pytest.raises(RouterUnreachable) as err:
            checker.holds(wanted)
        assert "TLS certificate not accepted" in str(err.value) and f"127.0.0.1:{server.port}" in str(err.value)
        with verifier_for(server, tls=True, ca_file=None) as checker, pytest.raises(RouterUnreachable, match="TLS"):
            checker.holds(wanted)  # the system CAs do not know a self-signed router certificate
        with verifier_for(server, tls=True, ca_file=cert.with_name("missing.pem")) as checker, \
                pytest.raises(RouterUnreachable, match=r"missing\.pem"):
            checker.holds(wanted)
        with verifier_for(server, timeout_s=1.0) as checker, pytest.raises(RouterUnreachable):
            checker.holds(wanted)  # plain API on the API-SSL port


# ---------------------------------------------------------------- the password stays secret

def test_the_password_is_in_no_log_record_and_no_error(sim: RouterOsSim, caplog: pytest.LogCaptureFixture) -> None:
    set_up_router(sim)
    sim.state.feed(PEER, [route("203.0.113.9/32", "192.0.2.1", *CONFIG_SET)])
    errors: list[BaseException] = []
    with caplog.at_level(logging.DEBUG):  # librouteros logs every word it sends at DEBUG
        logging.getLogger("librouteros").setLevel(logging.DEBUG)
        with verifier_for(sim) as checker:
            assert checker.holds([("203.0.113.9/32", "192.0.2.1")]) == {"203.0.113.9/32"}
        for bad in ("wrong-" + PASSWORD, PASSWORD + "\u00e9"):  # refused, and not ASCII (not encodable)
            with verifier_for(sim, password=bad) as checker, pytest.raises(RouterUnreachable) as err:
                checker.holds([("203.0.113.9/32", "192.0.2.1")])
            errors.append(err.value)
    assert any("'/ip/route/print'" in r.getMessage() for r in caplog.records)  # the words sent were logged...
    texts = [r.getMessage() for r in caplog.records]
    for error in errors:
        while error is not None:  # ...and the errors, with what they were raised from
            texts += [str(error), repr(error)]
            error = error.__cause__ or error.__context__  # type: ignore[assignment]
    assert not [t for t in texts if PASSWORD in t]
