"""The rules an SNMP agent's credentials must meet, apart from pysnmp so that config
validation (``flowenricher validate``, the API, ``run``) applies them without loading it;
enrich/snmp.py applies the same rules to the targets it polls."""

from __future__ import annotations

from collections.abc import Collection

# RFC 3414 section 11.2: pass phrases shorter than 8 characters are refused by agents.
MIN_KEY_LENGTH = 8


def credential_problems(version: str, community: str, user: str, auth_protocol: str, auth_key: str,
                        priv_protocol: str, priv_key: str, *, auth_protocols: Collection[str] = (),
                        priv_protocols: Collection[str] = ()) -> list[tuple[str, str]]:
    """What is wrong with one agent's credentials: (setting, reason) pairs, empty when
    usable.  Protocol names are checked against `auth_protocols` and `priv_protocols`
    when given (the poller passes pysnmp's tables; the config's schema lists them)."""
    if version == "2c":
        return [] if community else [("community", "empty (SNMP v2c needs one)")]
    if version != "3":
        return [("version", f"{version!r} is not '2c' or '3'")]
    out: list[tuple[str, str]] = []
    if not user:
        out.append(("user", "empty (SNMP v3 needs a user name)"))
    auth, priv = auth_protocol.lower(), priv_protocol.lower()
    if auth_protocols and auth not in auth_protocols:
        out.append(("auth_protocol", f"{auth_protocol!r} is not one of {', '.join(auth_protocols)}"))
    if priv_protocols and priv not in priv_protocols:
        out.append(("priv_protocol", f"{priv_protocol!r} is not one of {', '.join(priv_protocols)}"))
    if auth != "none" and len(auth_key) < MIN_KEY_LENGTH:
        out.append(("auth_key", f"shorter than {MIN_KEY_LENGTH} characters"))
    if priv != "none" and len(priv_key) < MIN_KEY_LENGTH:
        out.append(("priv_key", f"shorter than {MIN_KEY_LENGTH} characters"))
    if auth == "none" and priv != "none":
        out.append(("priv_protocol", "privacy needs authentication (auth_protocol is none)"))
    return out
