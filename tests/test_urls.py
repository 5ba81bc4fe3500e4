"""Connection URLs of every topology, and secrets that never show (repr, str, safe_url,
errors, CLI and doctor output)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from click.testing import CliRunner

from flywheel_state import Settings, Store
from flywheel_state._urls import parse_url, redact
from flywheel_state.cli import cli
from flywheel_state.errors import ConfigError, FlywheelStateError, StoreUnavailableError
from flywheel_state.models import Session
from flywheel_state.server import EmbeddedRedis

# A password with every URL-special character, and the sentinel's own.
SECRET = "p#w/?@:&=%zz-Do-Not-Print"
SENTINEL_SECRET = "s#nt/?@-Not-Shown-Either"
ENC = quote(SECRET, safe="")
SENC = quote(SENTINEL_SECRET, safe="")


def _no_secret(text: str) -> None:
    for secret in (SECRET, SENTINEL_SECRET, ENC, SENC, "Do-Not-Print", "Not-Shown"):
        assert secret not in text, text


# ------------------------------------------------------------------ parsing


def test_parse_single_node_urls() -> None:
    e = parse_url(f"redis://alice:{ENC}@db.example:6390/3")
    assert (e.kind, e.addresses, e.db, e.username, e.password) == (
        "single",
        (("db.example", 6390),),
        3,
        "alice",
        SECRET,
    )
    assert parse_url("rediss://h").tls and parse_url("rediss://h").addresses == (("h", 6379),)
    q = parse_url(f"redis://h/0?password={ENC}&db=4&socket_timeout=1.5")
    assert (q.password, q.db, dict(q.options)) == (SECRET, 4, {"socket_timeout": 1.5})
    u = parse_url("unix:///tmp/redis.sock?db=2")
    assert (u.kind, u.path, u.db) == ("unix", "/tmp/redis.sock", 2)
    six = parse_url("redis://[::1]:7000/1")
    assert six.addresses == (("::1", 7000),)


def test_parse_sentinel_urls() -> None:
    e = parse_url(
        f"redis+sentinel://bob:{ENC}@s1:26380,s2,[::1]:26381/mymaster/2"
        f"?sentinel_username=watch&sentinel_password={SENC}"
    )
    assert e.kind == "sentinel" and not e.tls
    assert e.addresses == (("s1", 26380), ("s2", 26379), ("::1", 26381))  # default 26379
    assert (e.service_name, e.db, e.username, e.password) == ("mymaster", 2, "bob", SECRET)
    assert (e.sentinel_username, e.sentinel_password) == ("watch", SENTINEL_SECRET)
    t = parse_url("rediss+sentinel://s1/svc")
    assert t.tls and t.db == 0 and t.addresses == (("s1", 26379),)


def test_parse_cluster_urls() -> None:
    e = parse_url("redis+cluster://n1:7000,n2:7001,n3")
    assert e.kind == "cluster"
    assert e.addresses == (("n1", 7000), ("n2", 7001), ("n3", 6379))
    assert parse_url("rediss+cluster://n1:7000").tls


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("redis+sentinel://", "no host"),
        ("redis+cluster://", "no host"),
        ("redis+sentinel://s1:26379", "service name"),
        ("redis+sentinel://s1:26379/", "service name"),
        ("redis+sentinel://s1:99999/m", "port 99999"),
        ("redis+cluster://a:1,:2", "empty"),
        ("redis+cluster://a:x", "not a number"),
        ("redis+cluster://a:1/3", "database 0"),
        ("redis://a:1,b:2/0", "one host"),
        ("redis://h:0", "port 0"),
        ("redis://h/abc", "database"),
        ("redis://h/0?nope=1", "unknown query parameter"),
        ("redis://h/0?sentinel_password=x", "need a redis.sentinel"),
        ("memcached://h", "must start with"),
        ("redis//:pw@x", "must start with"),
        ("unix://h/sock", "no host"),
    ],
)
def test_bad_urls_are_config_errors(url: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        Settings(url=url)


@pytest.mark.parametrize(
    "url",
    [
        f"redis://:{SECRET}@h:6379/0",  # raw: '#', '/', '?', '@' unencoded
        f"redis://user:{SECRET}@h/0",
        "redis://:pa#ss-Do-Not-Print@h/0",
        "redis://:pa/ss-Do-Not-Print@h/0",
        "redis://:pa?ss-Do-Not-Print@h/0",
        "redis://:pa@ss-Do-Not-Print@h/0",
        f"redis+sentinel://:{SECRET}@s1/m",
        "redis//:pw-Do-Not-Print@x",
        "redis:/:pw-Do-Not-Print@x",
        "redis://:pw-Do-Not-Print@h:notaport/0",
        "redis+cluster://:pw-Do-Not-Print@a:1,b:99999",
        f"redis+sentinel://s1/m?sentinel_password={SENTINEL_SECRET}",
    ],
)
def test_unencoded_or_malformed_urls_are_refused_without_the_password(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings(url=url)
    _no_secret(str(info.value))
    assert "Do-Not-Print" not in str(info.value) and "Not-Shown" not in str(info.value)


def test_from_env_names_the_variable_and_hides_the_secret() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"REDIS_URL": f"redis://:{SECRET}@h/0"})
    assert str(info.value).startswith("REDIS_URL:")
    _no_secret(str(info.value))


# ------------------------------------------------------------------ redaction


def test_repr_str_and_safe_url_hide_every_password() -> None:
    cases = [
        Settings(url=f"redis://alice:{ENC}@h:1/0"),
        Settings(url=f"redis://h:1/0?password={ENC}"),
        Settings(url=f"unix://:{ENC}@/tmp/x.sock"),
        Settings(
            url=f"redis+sentinel://:{ENC}@s1,s2/m?sentinel_password={SENC}&sentinel_username=w"
        ),
        Settings(url=f"rediss+cluster://:{ENC}@n1:7000,n2:7001"),
        Settings(
            sentinel_hosts="s1,s2:26380",
            service_name="m",
            password=SECRET,
            sentinel_password=SENTINEL_SECRET,
        ),
        Settings(cluster_hosts=[("n1", 7000)], password=SECRET),
        Settings(password=SECRET),
        Settings(url="redis://h/0", password=SECRET),
    ]
    for settings in cases:
        for text in (repr(settings), str(settings), settings.safe_url, f"{settings}"):
            _no_secret(text)
        assert "***" in repr(settings)
        if settings.url != "redis://h/0":  # there the password is a field, not in the URL
            assert "***" in settings.safe_url


def test_settings_fields_match_the_url_parts() -> None:
    by_fields = Settings(
        sentinel_hosts=[("s1", 26379), "s2:26380"],
        service_name="m",
        db=2,
        sentinel_username="w",
        sentinel_password=SENTINEL_SECRET,
    )
    by_url = Settings(
        url=f"redis+sentinel://s1:26379,s2:26380/m/2?sentinel_username=w&sentinel_password={SENC}"
    )
    assert by_fields.endpoint == by_url.endpoint
    assert (
        by_fields.safe_url
        == "redis+sentinel://s1:26379,s2:26380/m/2?sentinel_username=w&sentinel_password=***"
    )
    cluster = Settings(cluster_hosts="n1:7000,n2:7001")
    assert cluster.endpoint == Settings(url="redis+cluster://n1:7000,n2:7001").endpoint
    with pytest.raises(ConfigError, match="service_name"):
        Settings(sentinel_hosts="s1")
    with pytest.raises(ConfigError, match="exclude"):
        Settings(sentinel_hosts="s1", service_name="m", cluster_hosts="n1")
    with pytest.raises(ConfigError, match="port"):
        Settings(cluster_hosts="n1:0")


def test_from_env_topology_variables() -> None:
    s = Settings.from_env(
        {
            "REDIS_SENTINEL_HOSTS": "s1:26379,s2",
            "REDIS_SENTINEL_SERVICE": "svc",
            "REDIS_SENTINEL_USERNAME": "w",
            "REDIS_SENTINEL_PASSWORD": SENTINEL_SECRET,
            "REDIS_WAIT_REPLICAS": "1",
        }
    )
    assert s.endpoint.kind == "sentinel"
    assert s.sentinel_hosts == (("s1", 26379), ("s2", 26379))
    assert (s.service_name, s.sentinel_password, s.wait_replicas) == ("svc", SENTINEL_SECRET, 1)
    _no_secret(repr(s))
    c = Settings.from_env({"REDIS_CLUSTER_HOSTS": "n1:7000,n2:7001"})
    assert c.endpoint.kind == "cluster" and c.cluster_hosts == (("n1", 7000), ("n2", 7001))
    with pytest.raises(ConfigError, match="REDIS_CLUSTER_HOSTS"):
        Settings.from_env({"REDIS_CLUSTER_HOSTS": "n1:abc"})
    with pytest.raises(ConfigError, match="REDIS_WAIT_REPLICAS"):
        Settings.from_env({"REDIS_WAIT_REPLICAS": "-1"})


def test_redact_hides_passwords_in_free_text() -> None:
    text = (
        f"cannot use redis://u:{SECRET}@h:1/0 or redis://h/0?password={SECRET}&db=1 "
        f"and 'redis+sentinel://s/m?sentinel_password={SENTINEL_SECRET}'"
    )
    _no_secret(redact(text, [SECRET, SENTINEL_SECRET]))
    # Known secrets vanish even outside a URL (a driver message quoting them).
    assert redact(f"AUTH failed for {SECRET}", [SECRET]) == "AUTH failed for ***"


# ------------------------------------------------------------------ against a real server


@pytest.fixture(scope="module")
def protected() -> Iterator[EmbeddedRedis]:
    """A server whose password holds every URL-special character."""
    with EmbeddedRedis(extra_args=["--requirepass", SECRET]) as server:
        yield server


async def test_percent_encoded_password_works(protected: EmbeddedRedis) -> None:
    for url in (
        f"redis://default:{ENC}@127.0.0.1:{protected.port}/0",
        f"redis://127.0.0.1:{protected.port}/0?password={ENC}",
    ):
        async with Store(url=url, namespace="pwtest", auto_migrate=True) as store:
            await store.sessions.save(Session(id="s1", backend="flowise", user_id="u"))
            assert (await store.sessions.get("s1")).user_id == "u"
            _no_secret(repr(store))
            await store.sessions.delete("s1")


async def test_connect_errors_never_show_the_password(protected: EmbeddedRedis) -> None:
    wrong = quote(SECRET + "x", safe="")
    for url in (
        f"redis://default:{wrong}@127.0.0.1:{protected.port}/0",  # refused by the server
        f"redis://default:{ENC}@127.0.0.1:1/0",  # nobody listens
        f"redis+sentinel://:{ENC}@127.0.0.1:1/m?sentinel_password={SENC}",  # no sentinel
    ):
        settings = Settings(url=url, connect_timeout=0.5, command_timeout=0.5)
        with pytest.raises(StoreUnavailableError) as info:
            await asyncio.wait_for(Store(settings).connect(), timeout=10)
        _no_secret(str(info.value))
        _no_secret(repr(info.value))


def test_doctor_and_cli_never_print_the_password(protected: EmbeddedRedis, tmp_path: Path) -> None:
    url = f"redis://default:{ENC}@127.0.0.1:{protected.port}/0"
    runner = CliRunner()
    ok = runner.invoke(cli, ["doctor", "--url", url, "--namespace", "pwdoc"])
    assert "available" in ok.output, ok.output
    assert "default:***@" in ok.output
    _no_secret(ok.output)
    as_json = runner.invoke(cli, ["doctor", "--url", url, "--json", "--namespace", "pwdoc"])
    _no_secret(as_json.output)
    assert json.loads(as_json.output)["json"] is True
    # Through the environment, a wrong password, a query password and an unencoded one: the
    # reason, never the secret.
    for env_url in (
        f"redis://default:{quote(SECRET + 'x', safe='')}@127.0.0.1:{protected.port}/0",
        f"redis://127.0.0.1:{protected.port}/0?password={quote(SECRET + 'x', safe='')}",
        f"redis://default:{SECRET}@127.0.0.1:{protected.port}/0",
    ):
        env = {**os.environ, "REDIS_URL": env_url}
        for args in (["doctor"], ["sessions", "list"], ["migrate", "status"]):
            bad = subprocess.run(
                [sys.executable, "-m", "flywheel_state.cli", *args],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert bad.returncode != 0
            _no_secret(bad.stdout + bad.stderr)
            assert "Traceback" not in bad.stderr


@pytest.mark.parametrize(
    "url",
    [
        f"redis://:{ENC}@127.0.0.1:1/0?ssl_cert_reqs=required",  # TLS option without TLS
        f"rediss://:{ENC}@127.0.0.1:1/0?ssl_cert_reqs=bogus",
        f"redis://:{ENC}@127.0.0.1:1/0?socket_timeout=soon",
        f"redis://:{ENC}@127.0.0.1:1/0?db=-1",
    ],
)
async def test_options_the_driver_would_refuse_are_config_errors(url: str) -> None:
    # Refused when the settings are built: never a raw ValueError/TypeError on connect.
    with pytest.raises(ConfigError) as info:
        Store(url=url)
    _no_secret(str(info.value))


async def test_unreachable_rediss_url_is_a_typed_error() -> None:
    settings = Settings(url=f"rediss://:{ENC}@127.0.0.1:1/0", connect_timeout=0.5)
    with pytest.raises(FlywheelStateError) as info:
        await asyncio.wait_for(Store(settings).connect(), timeout=10)
    _no_secret(str(info.value))
