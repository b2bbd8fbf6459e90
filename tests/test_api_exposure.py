"""What the API and `run` expose beyond this machine: HTTPS with the configured certificate
(a real uvicorn on 127.0.0.1, a certificate made here), plain HTTP beyond loopback refused
unless the operator allows it, and the default-secrets refusal made by `run` whether or not
it serves the API."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client import CollectorRegistry
from support.api import SAFETY
from support.recording_gobgp import RecordingGoBGP

from appliance.api import ApiDeps, create_app
from appliance.api.server import ApiServer, ApiServerError
from appliance.flowenricher import cli, service
from appliance.flowenricher.blackhole.manager import BlackholeManager
from appliance.flowenricher.blackhole.safety import SafetyPolicy
from appliance.flowenricher.blackhole.state import StateDB
from appliance.flowenricher.config import parse_config
from appliance.flowenricher.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it: (ca, cert, key) PEM files."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "flowenricher test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.pem", directory / "api.pem", directory / "api.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def test_the_api_serves_https_with_the_configured_certificate(tmp_path: Path) -> None:
    ca, cert, key = _certificates(tmp_path)
    settings = parse_config({"api": {"listen": "127.0.0.1:0", "tls_cert": str(cert), "tls_key": str(key)}})
    assert settings.api.tls == (cert, key)
    state = StateDB(f"sqlite:///{tmp_path}/state.db")
    manager = BlackholeManager(state, RecordingGoBGP(), SafetyPolicy(SAFETY), None)
    app = create_app(ApiDeps(settings=settings, blackholes=manager, registry=CollectorRegistry()))
    server = ApiServer(app, settings.api.host, settings.api.port, settings.api.tls)
    server.start()
    try:
        url = f"https://127.0.0.1:{server.port}/health/live"
        trusting = ssl.create_default_context(cafile=str(ca))
        with urllib.request.urlopen(url, context=trusting, timeout=10) as answer:
            assert answer.status == 200 and b"status" in answer.read()
        with pytest.raises(urllib.error.URLError) as err:  # the system's CAs do not know ours
            urllib.request.urlopen(url, context=ssl.create_default_context(), timeout=10)
        assert isinstance(err.value.reason, ssl.SSLCertVerificationError)
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # no plain HTTP beside it
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/health/live", timeout=10)
    finally:
        server.stop()
        manager.close()
        state.close()


def test_a_key_that_does_not_fit_is_named(tmp_path: Path) -> None:
    _, cert, _ = _certificates(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    _, _, wrong_key = _certificates(other)
    state = StateDB(f"sqlite:///{tmp_path}/state.db")
    manager = BlackholeManager(state, RecordingGoBGP(), SafetyPolicy(SAFETY), None)
    try:
        app = create_app(ApiDeps(settings=parse_config({}), blackholes=manager, registry=CollectorRegistry()))
        for key in (wrong_key, tmp_path / "missing.key"):
            with pytest.raises(ApiServerError, match=f"api.tls_cert {cert} / api.tls_key {key}: "):
                ApiServer(app, "127.0.0.1", 0, (cert, key))
    finally:
        manager.close()
        state.close()


def test_plain_http_beyond_loopback_is_refused_unless_allowed() -> None:
    for api in ({"listen": "0.0.0.0:9600"}, {"listen": "[::]:9600", "enabled": False}):
        with pytest.raises(ConfigError) as err:  # enabled: false is `flowenricher api`'s block too
            parse_config({"api": api})
        [line] = err.value.problems
        assert line.startswith("config: $.api.listen: ") and "plain HTTP" in line and "api.tls_cert" in line
    for api in ({"listen": "0.0.0.0:9600", "allow_plain_http": True},
                {"listen": "0.0.0.0:9600", "tls_cert": "/etc/x.pem", "tls_key": "/etc/x.key"},
                {"listen": "0.0.0.0:9600", "dev_mode": True},
                {"listen": "127.0.0.1:9600"}):
        parse_config({"api": api})
    with pytest.raises(ConfigError) as err:
        parse_config({"api": {"tls_cert": "/etc/x.pem"}})
    assert err.value.problems == ["config: $.api.tls_key: required with tls_cert: the API serves HTTPS with both "
                                  "or neither"]


def test_run_refuses_default_secrets_with_the_api_disabled(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"storage:\n  path: {tmp_path / 'data'}\nclickhouse:\n  host: 192.0.2.10\n  password: ''\n"
                      "api:\n  enabled: false\n", encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "appliance.flowenricher.cli", "run", "--config", str(config)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2, done.stderr
    assert f"{config}: $.clickhouse.password: empty while clickhouse.host '192.0.2.10'" in done.stderr
    assert not (tmp_path / "data").exists()  # refused before anything started


def test_run_warns_in_dev_mode_with_the_api_disabled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Dev mode lets the same config start, but says what it would refuse even though no API
    (whose start used to be the only place saying it) runs in this process."""
    config = tmp_path / "config.yaml"
    config.write_text("clickhouse:\n  host: 192.0.2.10\napi:\n  enabled: false\n  dev_mode: true\n"
                      "  listen: 0.0.0.0:9600\n", encoding="utf-8")
    started: list[object] = []

    def run_service(settings: object, factory: object = None) -> int:
        started.append(settings)
        return 0

    monkeypatch.setattr(service, "run_service", run_service)  # every check before the start runs as it is
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert cli.main(["run", "--config", str(config)]) == 0
    assert started
    warned = [line for line in capsys.readouterr().err.splitlines() if "WARNING" in line and "would refuse" in line]
    assert any("$.clickhouse.password" in line for line in warned)
    assert any("$.api.listen" in line and "plain HTTP" in line for line in warned)
