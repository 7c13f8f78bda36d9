"""TLS and mutual TLS on both front doors: served to clients that trust the certificate (and,
with mTLS, present one the client CA signed), refused in plain text or without a certificate."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx2
import pytest

from cluster.cli import main
from cluster.local_backend import LocalBackend
from protos.kvfleet.v1 import generation_pb2 as pb
from protos.kvfleet.v1 import generation_pb2_grpc as pb_grpc
from router.tls import TLSConfig
from tests.certificates import Certificates, make_certificates
from tests.router.serving import RunningServer
from tests.worker.engine_helpers import make_engine
from worker.async_engine import AsyncEngine


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certificates"))


def _server(model: Path, tls: TLSConfig) -> RunningServer:
    engine = AsyncEngine(make_engine(model))
    return RunningServer(LocalBackend(engine, "demo-tiny", 8), http=True, tls=tls)


@pytest.fixture(scope="module")
def tls_server(demo_model_dir: Path, certificates: Certificates) -> Iterator[RunningServer]:
    server = _server(demo_model_dir, TLSConfig(certificates.server_cert, certificates.server_key))
    yield server
    server.close()


@pytest.fixture(scope="module")
def mtls_server(demo_model_dir: Path, certificates: Certificates) -> Iterator[RunningServer]:
    c = certificates
    server = _server(demo_model_dir, TLSConfig(c.server_cert, c.server_key, c.ca))
    yield server
    server.close()


def _list_models(channel: grpc.Channel) -> list[str]:
    stub = pb_grpc.GenerationStub(channel)
    answer = stub.ListModels(pb.ListModelsRequest(), timeout=5)
    return [m.name for m in answer.models]


def _credentials(c: Certificates, with_client_cert: bool) -> grpc.ChannelCredentials:
    if not with_client_cert:
        return grpc.ssl_channel_credentials(root_certificates=c.ca.read_bytes())
    return grpc.ssl_channel_credentials(
        c.ca.read_bytes(), c.client_key.read_bytes(), c.client_cert.read_bytes()
    )


def test_tls_serves_clients_that_trust_it_and_refuses_plain_text(
    tls_server: RunningServer, certificates: Certificates
) -> None:
    target = f"127.0.0.1:{tls_server.port}"
    with grpc.secure_channel(target, _credentials(certificates, False)) as channel:
        assert _list_models(channel) == ["demo-tiny"]
    with grpc.insecure_channel(target) as channel, pytest.raises(grpc.RpcError) as err:
        _list_models(channel)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    http = tls_server.base_url.replace("http://", "https://")
    assert httpx2.get(f"{http}/v1/models", verify=str(certificates.ca)).status_code == 200
    with pytest.raises(httpx2.HTTPError):
        httpx2.get(f"{tls_server.base_url}/v1/models")


def test_mutual_tls_serves_only_clients_with_a_certificate(
    mtls_server: RunningServer, certificates: Certificates
) -> None:
    target = f"127.0.0.1:{mtls_server.port}"
    with grpc.secure_channel(target, _credentials(certificates, True)) as channel:
        assert _list_models(channel) == ["demo-tiny"]
    with (
        grpc.secure_channel(target, _credentials(certificates, False)) as channel,
        pytest.raises(grpc.RpcError),
    ):
        _list_models(channel)
    http = mtls_server.base_url.replace("http://", "https://")
    with_cert = ssl.create_default_context(cafile=certificates.ca)
    with_cert.load_cert_chain(certificates.client_cert, certificates.client_key)
    assert httpx2.get(f"{http}/v1/models", verify=with_cert).status_code == 200
    with pytest.raises(httpx2.HTTPError):
        httpx2.get(f"{http}/v1/models", verify=str(certificates.ca))


def test_health_checks_over_tls(
    tls_server: RunningServer, certificates: Certificates, capsys: pytest.CaptureFixture[str]
) -> None:
    target = f"127.0.0.1:{tls_server.port}"
    assert main(["health", "--target", target, "--tls-ca", str(certificates.ca)]) == 0
    assert capsys.readouterr().out == f"kvfleet health: {target} SERVING\n"


def test_a_missing_certificate_file_is_named(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("a certificate")
    with pytest.raises(ValueError, match=r"tls key_file \S*nope\.key: no such file"):
        TLSConfig(cert, tmp_path / "nope.key")


def test_generate_over_mutual_tls(
    mtls_server: RunningServer, certificates: Certificates, capsys: pytest.CaptureFixture[str]
) -> None:
    c = certificates
    args = ["generate", "--target", f"127.0.0.1:{mtls_server.port}", "--max-tokens", "3"]
    args += ["--ignore-eos", "--tls-ca", str(c.ca), "--tls-cert", str(c.client_cert)]
    assert main([*args, "--tls-key", str(c.client_key), "Hello"]) == 0
    assert "3 generated" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main([*args, "Hello"])  # a certificate without its key
    assert exit_.value.code == 2
    assert "--tls-cert and --tls-key go together" in capsys.readouterr().err


def test_serve_with_half_a_tls_configuration_says_so(
    demo_model_dir: Path, certificates: Certificates, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--model", str(demo_model_dir), "--tls-cert", str(certificates.ca)])
    assert exit_.value.code == 2
    assert "--tls-cert and --tls-key go together" in capsys.readouterr().err
