"""The envtest control plane's pieces that need no binaries: finding the assets, and the PKI it writes.

The control plane itself runs in the envtest tier (`make test-envtest`), where every cluster fixture is
one; here the certificates are checked with the `cryptography` library and Python's TLS stack.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from medserve_sandbox import controlplane


def test_missing_assets_name_the_variable_and_the_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(controlplane.ASSETS_ENV, raising=False)
    with pytest.raises(controlplane.MissingAssets, match=r"\$KUBEBUILDER_ASSETS is not set"):
        controlplane.find_assets()
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    with pytest.raises(controlplane.MissingAssets, match="has no kube-apiserver or etcd"):
        controlplane.find_assets(tmp_path)
    apiserver = tmp_path / "kube-apiserver"
    apiserver.write_text("#!/bin/sh\n")
    with pytest.raises(controlplane.MissingAssets, match="has no kube-apiserver or etcd"):
        controlplane.find_assets(tmp_path)  # not executable
    apiserver.chmod(0o755)
    (tmp_path / "etcd").write_text("#!/bin/sh\n")
    (tmp_path / "etcd").chmod(0o755)
    found = controlplane.find_assets(tmp_path)
    assert found == {"kube-apiserver": apiserver, "etcd": tmp_path / "etcd"}


def test_pki_is_a_chain_a_tls_client_accepts(tmp_path: Path) -> None:
    pki = controlplane.write_pki(tmp_path / "pki")
    ca = x509.load_pem_x509_certificate(pki["ca.crt"].read_bytes())
    server = x509.load_pem_x509_certificate(pki["server.crt"].read_bytes())
    admin = x509.load_pem_x509_certificate(pki["admin.crt"].read_bytes())
    for cert in (server, admin):
        cert.verify_directly_issued_by(ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "127.0.0.1" in {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    assert "kubernetes.default.svc" in sans.get_values_for_type(x509.DNSName)
    assert admin.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:masters"
    usage = admin.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in usage
    assert {p.stat().st_mode & 0o777 for p in pki.values()} == {0o600}
    context = ssl.create_default_context(cafile=str(pki["ca.crt"]))
    context.load_cert_chain(str(pki["admin.crt"]), str(pki["admin.key"]))


def test_kubeconfig_carries_a_certificate_or_a_token(tmp_path: Path) -> None:
    pki = controlplane.write_pki(tmp_path / "pki")
    path = tmp_path / "kubeconfig"
    controlplane.write_kubeconfig(path, "https://127.0.0.1:1", pki["ca.crt"], cert=pki["admin.crt"],
                                  key=pki["admin.key"])
    config = yaml.safe_load(path.read_text())
    assert config["users"][0]["user"] == {"client-certificate": str(pki["admin.crt"]),
                                          "client-key": str(pki["admin.key"])}
    controlplane.write_kubeconfig(path, "https://127.0.0.1:1", pki["ca.crt"], token="t", user="sa")
    config = yaml.safe_load(path.read_text())
    assert config["users"] == [{"name": "sa", "user": {"token": "t"}}]
    assert config["clusters"][0]["cluster"] == {"server": "https://127.0.0.1:1",
                                                "certificate-authority": str(pki["ca.crt"])}
