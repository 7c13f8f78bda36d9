"""The KV-event bus over Redis with a password and mutual TLS: replicas publish and routers
follow as over plain TCP, with the TLS files and password from the environment (as a Secret
mounts them); a client without the password, without a client certificate, or trusting
another CA is refused."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from cluster.kv_publisher import KVEventPublisher
from cluster.redis_server import RedisServer, RedisTLS
from router.hashing import PromptBlocks
from router.kv_bus import (
    REDIS_PASSWORD_ENV,
    REDIS_TLS_CA_ENV,
    REDIS_TLS_CERT_ENV,
    REDIS_TLS_KEY_ENV,
    StreamKeys,
    redis_client,
)
from router.kv_subscriber import KVEventSubscriber
from tests.certificates import Certificates, make_certificates
from tests.router.replica_sim import CacheReplica
from tests.router.test_kv_bus import (
    BLOCK,
    FAST,
    drain_of,
    eventually,
    make_prompts,
    router_for,
    running,
    serve,
)

PASSWORD = "bus-password-from-a-secret"


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("redis-certs"))


@pytest.fixture(scope="module")
def tls_redis(certificates: Certificates) -> Iterator[RedisServer]:
    tls = RedisTLS(
        certificates.server_cert, certificates.server_key, certificates.ca,
        require_client_certs=True, client_cert_file=certificates.client_cert,
        client_key_file=certificates.client_key,
    )  # fmt: skip
    with RedisServer(password=PASSWORD, tls=tls) as server:
        yield server


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch, certificates: Certificates) -> None:
    monkeypatch.setenv(REDIS_PASSWORD_ENV, PASSWORD)
    monkeypatch.setenv(REDIS_TLS_CA_ENV, str(certificates.ca))
    monkeypatch.setenv(REDIS_TLS_CERT_ENV, str(certificates.client_cert))
    monkeypatch.setenv(REDIS_TLS_KEY_ENV, str(certificates.client_key))


async def test_the_router_index_follows_a_replica_over_mutual_tls(
    tls_redis: RedisServer, secrets: None
) -> None:
    assert tls_redis.url.startswith("rediss://") and PASSWORD not in tls_redis.url
    keys = StreamKeys("tls-test")
    replica, prompts = CacheReplica(num_blocks=48), make_prompts(1, 20)
    publisher = KVEventPublisher(tls_redis.url, keys, "r0", drain_of(replica), **FAST)
    policy = router_for("r0")
    subscriber = KVEventSubscriber(tls_redis.url, keys, policy)
    subscriber.watch("r0")
    async with running(publisher, subscriber):
        await serve(replica, prompts)

        def caught_up() -> bool:
            now = time.monotonic()
            return all(
                policy.index.longest_match(PromptBlocks(t, BLOCK), now).get("r0", 0) * BLOCK
                == replica.cached_prefix_tokens(t)
                for t in prompts
            )

        await eventually(caught_up)
    assert publisher.stats.published_batches > 0 and subscriber.stats.bad_entries == 0


async def test_clients_without_the_password_a_certificate_or_the_ca_are_refused(
    tls_redis: RedisServer,
    secrets: None,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    assert await _ping(tls_redis.url)
    plain = redis.Redis(port=tls_redis.port, password=PASSWORD, socket_timeout=1.0)
    with pytest.raises(redis.ConnectionError):  # the plain port is closed: TLS only
        plain.ping()
    monkeypatch.delenv(REDIS_PASSWORD_ENV)
    with pytest.raises(redis.AuthenticationError):
        await _ping(tls_redis.url)
    monkeypatch.setenv(REDIS_PASSWORD_ENV, PASSWORD)
    monkeypatch.delenv(REDIS_TLS_CERT_ENV)
    monkeypatch.delenv(REDIS_TLS_KEY_ENV)
    with pytest.raises(redis.ConnectionError):  # no client certificate
        await _ping(tls_redis.url)
    other = make_certificates(tmp_path)
    monkeypatch.setenv(REDIS_TLS_CA_ENV, str(other.ca))
    monkeypatch.setenv(REDIS_TLS_CERT_ENV, str(other.client_cert))
    monkeypatch.setenv(REDIS_TLS_KEY_ENV, str(other.client_key))
    with pytest.raises(redis.ConnectionError):  # the server's certificate is not trusted
        await _ping(tls_redis.url)


async def _ping(url: str) -> bool:
    client = redis_client(url)
    try:
        return bool(await client.ping())
    finally:
        await client.aclose()
