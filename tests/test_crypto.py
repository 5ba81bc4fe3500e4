"""Encryption at rest: what is stored, what reads back, every way a ciphertext can be wrong, and
key rotation with the encrypt / rekey / decrypt operations (resumable, locked)."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any, ClassVar

import pytest
import redis
from aredis_om import Field

from flywheel_state import (
    Backend,
    ConfigError,
    CorruptRecordError,
    EncryptionKeyError,
    ExecutionResult,
    ExecutionStatus,
    HistoryEntry,
    InvalidQueryError,
    MigrationError,
    MigrationLockedError,
    Session,
    SessionStatus,
    Settings,
    Store,
)
from flywheel_state.crypto import (
    ENCRYPTED_FIELDS,
    ENVELOPE_PREFIX,
    EncryptedFields,
    FieldCipher,
    RecordCodec,
)
from flywheel_state.migrations import MigrationContext, MigrationProgress
from flywheel_state.migrations._lock import MigrationLock
from flywheel_state.migrations.encryption import decrypt, encrypt, encryption_status, rekey
from flywheel_state.migrations.report import StepReport
from flywheel_state.models import register_upgrade
from flywheel_state.models._base import Document
from flywheel_state.models._types import Id

K1 = bytes(range(32))
K2 = bytes(range(100, 132))
SECRETS = ("structural tension", "my-secret-meta", "hello secret", "the secret answer", "42-secret")


def cipher(active: str = "k1", **keys: bytes) -> FieldCipher:
    return FieldCipher(keys=keys or {"k1": K1}, active=active)


def make_session(id: str = "s1", **overrides: Any) -> Session:
    fields: dict[str, Any] = {
        "id": id,
        "backend": Backend.FLOWISE,
        "status": SessionStatus.ACTIVE,
        "current_flow_id": "csv2507",
        "user_id": "alice",
        "context": {"topic": "structural tension", "depth": [1, 2, {"x": None}]},
        "metadata": {"note": "my-secret-meta"},
        "history": [
            HistoryEntry(role="user", content="hello secret"),
            {"q": "legacy", "a": "the secret answer"},
        ],
    }
    fields.update(overrides)
    return Session(**fields)


def make_execution(id: str = "e1", **overrides: Any) -> ExecutionResult:
    fields: dict[str, Any] = {
        "id": id,
        "session_id": "s1",
        "flow_id": "csv2507",
        "backend": Backend.FLOWISE,
        "status": ExecutionStatus.COMPLETED,
        "result": {"answer": "42-secret", "items": list(range(5))},
        "metadata": {"note": "my-secret-meta"},
        "duration_ms": 12.5,
    }
    fields.update(overrides)
    return ExecutionResult(**fields)


@pytest.fixture
async def enc(settings: Settings) -> AsyncIterator[Store]:
    async with Store(settings, auto_migrate=True, cipher=cipher()) as s:
        yield s


def raw_doc(sync_client: redis.Redis, key: str) -> dict[str, Any]:
    text = sync_client.execute_command("JSON.GET", key)
    assert isinstance(text, str)
    return json.loads(text)  # type: ignore[no-any-return]


def set_path(sync_client: redis.Redis, key: str, path: str, value: Any) -> None:
    sync_client.execute_command("JSON.SET", key, path, json.dumps(value))


# ---------------------------------------------------------------- what is stored


async def test_stored_documents_hold_no_plaintext_and_read_back_equal(
    enc: Store, sync_client: redis.Redis
) -> None:
    s = await enc.sessions.save(make_session())
    e = await enc.executions.save(make_execution())
    for key in (enc.sessions.key("s1"), enc.executions.key("e1")):
        text = sync_client.execute_command("JSON.GET", key)
        for secret in SECRETS:
            assert secret not in text
    doc = raw_doc(sync_client, enc.sessions.key("s1"))
    assert doc["context"].startswith(ENVELOPE_PREFIX + "k1:")
    assert all(item.startswith(ENVELOPE_PREFIX) for item in doc["history"])
    assert len(doc["history"]) == 2
    # Indexed fields stay in clear.
    assert doc["backend"] == "flowise" and doc["user_id"] == "alice"
    got = await enc.sessions.get("s1")
    assert got.model_dump() == s.model_dump()
    got_e = await enc.executions.get("e1")
    assert got_e.model_dump() == e.model_dump()


async def test_queries_on_indexed_fields_still_answer(enc: Store) -> None:
    await enc.sessions.save_many(
        [make_session(f"s{i}", user_id="alice" if i % 2 else "bob") for i in range(6)]
    )
    await enc.executions.save(make_execution())
    page = await enc.sessions.find(user_id="alice", backend="flowise", sort="-last_active")
    assert page.total == 3
    assert {s.id for s in page.items} == {"s1", "s3", "s5"}
    assert all(s.context["topic"] == "structural tension" for s in page.items)
    assert [e.result["answer"] for e in (await enc.executions.find(session_id="s1")).items] == [
        "42-secret"
    ]
    assert [s.id async for s in enc.sessions.iterate(user_id="bob")] != []
    assert (await enc.sessions.stats())["backend"]["flowise"] == 6


async def test_encrypted_fields_are_never_indexed(enc: Store, sync_client: redis.Redis) -> None:
    for kind in ("session", "execution"):
        info = sync_client.execute_command("FT.INFO", f"{enc.namespace}:{kind}:idx")
        attributes = info[info.index("attributes") + 1]
        paths = {a[a.index("identifier") + 1] for a in attributes}
        assert "$.backend" in paths
        assert not paths & {f"$.{name}" for name in ENCRYPTED_FIELDS[kind].names}


async def test_partial_writes_encrypt_their_values(enc: Store, sync_client: redis.Redis) -> None:
    await enc.sessions.save(make_session(history=[]))
    await enc.sessions.update("s1", context={"new": "ctx-secret"}, metadata={"m": "meta-secret"})
    await enc.sessions.append_history(
        "s1", HistoryEntry(role="user", content="append-secret"), {"q": "q-secret"}
    )
    await enc.sessions.update("s1", status=SessionStatus.IDLE)
    await enc.executions.save(make_execution())
    await enc.executions.update("e1", result=["result-secret"], metadata={"k": "v-secret"})
    for key in (enc.sessions.key("s1"), enc.executions.key("e1")):
        text = sync_client.execute_command("JSON.GET", key)
        assert "secret" not in text
    got = await enc.sessions.get("s1")
    assert got.context == {"new": "ctx-secret"}
    assert got.metadata == {"m": "meta-secret"}
    assert [h.content for h in got.history] == ["append-secret", None]
    assert got.history[1].model_extra == {"q": "q-secret"}
    assert got.status == SessionStatus.IDLE and got.total_queries == 1
    e = await enc.executions.get("e1")
    assert e.result == ["result-secret"] and e.metadata == {"k": "v-secret"}
    # Replacing the whole history encrypts each entry on its own.
    await enc.sessions.update("s1", history=[{"role": "user", "content": "h-secret"}])
    doc = raw_doc(sync_client, enc.sessions.key("s1"))
    assert len(doc["history"]) == 1 and doc["history"][0].startswith(ENVELOPE_PREFIX)
    assert [h.content for h in (await enc.sessions.get("s1")).history] == ["h-secret"]


async def test_trimmed_history_stays_readable(enc: Store) -> None:
    await enc.sessions.save(make_session(history=[]))
    for i in range(5):
        await enc.sessions.append_history("s1", {"role": "user", "content": f"m{i}"}, max_len=3)
    got = await enc.sessions.get("s1")
    assert [h.content for h in got.history] == ["m2", "m3", "m4"]


async def test_last_n_history_reads_decrypt_their_entries(
    enc: Store, sync_client: redis.Redis
) -> None:
    await enc.sessions.save(make_session(history=[]))
    for i in range(5):
        await enc.sessions.append_history("s1", {"role": "user", "content": f"turn {i}"})
    assert "turn 3" not in sync_client.execute_command("JSON.GET", enc.sessions.key("s1"))
    page = await enc.sessions.history("s1", last=2)
    assert [h.content for h in page.entries] == ["turn 3", "turn 4"]
    assert (page.start, page.total) == (3, 5)
    plain = await Store(enc.settings.replace(cipher=None)).connect()
    with pytest.raises(EncryptionKeyError):
        await plain.sessions.history("s1", last=2)
    await plain.close()


async def test_large_values_are_compressed_then_encrypted(
    enc: Store, sync_client: redis.Redis
) -> None:
    big = {"rows": [{"id": i, "text": "the same words again and again"} for i in range(500)]}
    await enc.executions.save(make_execution(result=big))
    await enc.sessions.save(make_session(context=big))
    for key, field in ((enc.executions.key("e1"), "result"), (enc.sessions.key("s1"), "context")):
        stored = raw_doc(sync_client, key)[field]
        assert stored.startswith(ENVELOPE_PREFIX + "k1:z:")
        assert len(stored) * 5 < len(json.dumps(big))
    assert (await enc.executions.get("e1")).result == big
    assert (await enc.sessions.get("s1")).context == big
    # Small values and history entries are not compressed.
    doc = raw_doc(sync_client, enc.sessions.key("s1"))
    assert doc["metadata"].startswith(ENVELOPE_PREFIX + "k1:j:")
    assert all(h.startswith(ENVELOPE_PREFIX + "k1:j:") for h in doc["history"])


async def test_values_json_can_not_hold_are_refused_before_anything_is_encrypted(
    enc: Store,
) -> None:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    for bad in (
        make_session(history=[HistoryEntry(role="user", content="\ud800")]),
        make_session(context={"loop": loop}),
    ):
        with pytest.raises(InvalidQueryError, match="can't be stored as JSON"):
            await enc.sessions.save(bad)
    assert await enc.sessions.get_or_none("s1") is None
    await enc.sessions.save(make_session())
    with pytest.raises(InvalidQueryError):
        await enc.sessions.append_history("s1", {"role": "user", "content": "\ud800"})
    assert len((await enc.sessions.get("s1")).history) == 2


def nested(levels: int) -> dict[str, object]:
    value: dict[str, object] = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


async def test_values_nested_too_deep_are_refused_as_in_clear(enc: Store) -> None:
    # An envelope would hide the depth from the server: the same limits apply, so that every
    # accepted write reads back (and could be decrypted and stored in clear again).
    with pytest.raises(InvalidQueryError, match="nest"):
        await enc.sessions.save(make_session(context=nested(127)))
    with pytest.raises(InvalidQueryError, match="nest"):
        await enc.sessions.save(make_session(history=[{"content": nested(126)}]))
    await enc.sessions.save(make_session(context=nested(126)))
    with pytest.raises(InvalidQueryError, match="nest"):
        await enc.sessions.update("s1", context=nested(127))
    with pytest.raises(InvalidQueryError, match="nest"):
        await enc.sessions.append_history("s1", {"content": nested(125)})
    await enc.sessions.append_history("s1", {"content": nested(124)})
    got = await enc.sessions.get("s1")
    assert got.context == nested(126) and got.history[-1].content == nested(124)
    await enc.sessions.save(got)


# ---------------------------------------------------------------- what must fail


async def test_tampering_with_one_character_is_a_corrupt_record(
    enc: Store, sync_client: redis.Redis
) -> None:
    await enc.sessions.save(make_session())
    key = enc.sessions.key("s1")
    env = raw_doc(sync_client, key)["context"]
    for pos in (len(ENVELOPE_PREFIX) + 8, len(env) - 5):
        flipped = "A" if env[pos] != "A" else "B"
        set_path(sync_client, key, "$.context", env[:pos] + flipped + env[pos + 1 :])
        with pytest.raises(CorruptRecordError, match=r"context.*authentication") as info:
            await enc.sessions.get("s1")
        assert info.value.key == key
    # Flipping the flag or truncating is caught too.
    set_path(sync_client, key, "$.context", env.replace(":j:", ":z:", 1))
    with pytest.raises(CorruptRecordError) as info:
        await enc.sessions.get("s1")
    assert info.value.key == key
    set_path(sync_client, key, "$.context", env[:30])
    with pytest.raises(CorruptRecordError):
        await enc.sessions.get("s1")


_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def respellings(env: str) -> list[tuple[str, str]]:
    """Other spellings of the ciphertext of ``env``, each decoding to the same bytes under a
    lenient base64 decoder: (what changed, the envelope)."""
    head, payload = env.rsplit(":", 1)
    out = [("a JSON-escaped character", head + ":\\u00" + payload[:1].encode().hex() + payload[1:])]
    if payload.endswith("="):
        pads = len(payload) - len(payload.rstrip("="))
        out.append(("the padding dropped", f"{head}:{payload.rstrip('=')}"))
        # The last data character carries 4 (one '=') or 2 (two) spare bits, zero when canonical.
        last = payload[-pads - 1]
        spare = _B64[_B64.index(last) + 1]
        out.append(("non-zero trailing bits", f"{head}:{payload[: -pads - 1]}{spare}{'=' * pads}"))
    if "+" in payload or "/" in payload:
        url_safe = payload.replace("+", "-").replace("/", "_")
        out.append(("the URL-safe alphabet", f"{head}:{url_safe}"))
    return out


async def test_another_spelling_of_a_ciphertext_is_tampering(
    enc: Store, sync_client: redis.Redis
) -> None:
    """One ciphertext has one representation: padding, trailing bits, alphabet or escapes
    changed, a history holding the same ciphertext twice spelt two ways, a flag or a key id
    altered: each is refused, also once the right spelling is in the plaintext cache."""
    key = enc.sessions.key("s1")
    # Contexts of a few lengths, so that the payload ends with '=', '==' and no padding.
    seen_pads = set()
    for n in range(3):
        await enc.sessions.save(make_session(context={"topic": "x" * n, "n": [1, 2]}))
        stored = raw_doc(sync_client, key)
        env = stored["context"]
        seen_pads.add(len(env) - len(env.rstrip("=")))
        assert (await enc.sessions.get("s1")).context["topic"] == "x" * n  # now cached
        for what, other in respellings(env):
            set_path(sync_client, key, "$.context", other)
            with pytest.raises(CorruptRecordError, match=r"context.*base64"):
                await enc.sessions.get("s1")
            set_path(sync_client, key, "$.history", stored["history"])
            entry = stored["history"][0]
            for what, twin in respellings(entry):
                set_path(sync_client, key, "$.context", env)
                set_path(sync_client, key, "$.history", [entry, twin])
                with pytest.raises(CorruptRecordError, match=r"history\[1\]") as info:
                    await enc.sessions.get("s1")
                assert info.value.key == key, what
        set_path(sync_client, key, "$.history", stored["history"])
        set_path(sync_client, key, "$.context", env)
        assert (await enc.sessions.get("s1")).context["topic"] == "x" * n
    assert seen_pads == {0, 1, 2}
    # The flag or the key id altered: a key id of the ring that did not seal it fails to
    # authenticate, one outside the ring is a missing key.
    stored = raw_doc(sync_client, key)
    env = stored["context"]
    two_keys = FieldCipher({"k1": K1, "k2": K2}, "k1")
    async with Store(enc.settings, cipher=two_keys) as both:
        for other, error, error_k1_only in (
            (env.replace(":k1:j:", ":k2:j:", 1), CorruptRecordError, EncryptionKeyError),
            (env.replace(":k1:j:", ":k1:z:", 1), CorruptRecordError, CorruptRecordError),
            (env.replace(":k1:j:", ":k1:x:", 1), CorruptRecordError, CorruptRecordError),
            (env.replace(":k1:j:", ":k3:j:", 1), EncryptionKeyError, EncryptionKeyError),
        ):
            set_path(sync_client, key, "$.context", other)
            with pytest.raises(error):
                await both.sessions.get("s1")
            with pytest.raises(error_k1_only):
                await enc.sessions.get("s1")
            for history in ([stored["history"][0], other], [other]):
                set_path(sync_client, key, "$.context", env)
                set_path(sync_client, key, "$.history", history)
                with pytest.raises((CorruptRecordError, EncryptionKeyError)):
                    await both.sessions.get("s1")
            set_path(sync_client, key, "$.history", stored["history"])


async def test_the_plaintext_cache_serves_the_exact_ciphertext_only(
    enc: Store, sync_client: redis.Redis
) -> None:
    """The cache is looked up by the envelope's tail: an envelope changed anywhere before its
    tail, once the original is cached, is still opened (and fails) rather than served."""
    await enc.sessions.save(make_session())
    key = enc.sessions.key("s1")
    stored = raw_doc(sync_client, key)
    assert (await enc.sessions.get("s1")).context["topic"] == "structural tension"  # cached
    env, entry = stored["context"], stored["history"][0]

    def changed(value: str) -> str:
        at = len(ENVELOPE_PREFIX) + 12  # inside the nonce, far from the tail
        return value[:at] + ("A" if value[at] != "A" else "B") + value[at + 1 :]

    set_path(sync_client, key, "$.context", changed(env))
    with pytest.raises(CorruptRecordError, match=r"context.*authentication"):
        await enc.sessions.get("s1")
    set_path(sync_client, key, "$.context", env)
    for history in ([changed(entry)], [entry, changed(entry)], [changed(entry), entry]):
        set_path(sync_client, key, "$.history", history)
        with pytest.raises(CorruptRecordError, match=r"history\[\d\].*authentication"):
            await enc.sessions.get("s1")
    set_path(sync_client, key, "$.history", stored["history"])
    assert len((await enc.sessions.get("s1")).history) == 2


async def test_ciphertexts_swapped_between_records_or_fields_fail(
    enc: Store, sync_client: redis.Redis
) -> None:
    await enc.sessions.save(make_session("a", context={"who": "a"}))
    await enc.sessions.save(make_session("b", context={"who": "b"}))
    ka, kb = enc.sessions.key("a"), enc.sessions.key("b")
    a, b = raw_doc(sync_client, ka), raw_doc(sync_client, kb)
    # Another record's context.
    set_path(sync_client, ka, "$.context", b["context"])
    with pytest.raises(CorruptRecordError, match="context") as info:
        await enc.sessions.get("a")
    assert info.value.key == ka
    # Another field of the same record.
    set_path(sync_client, ka, "$.context", a["metadata"])
    with pytest.raises(CorruptRecordError, match="context"):
        await enc.sessions.get("a")
    set_path(sync_client, ka, "$.context", a["context"])
    assert (await enc.sessions.get("a")).context == {"who": "a"}
    # A history entry of another record, a whole field moved into the history, a duplicate.
    for history in ([b["history"][0]], [a["metadata"]], [a["history"][0], a["history"][0]]):
        set_path(sync_client, ka, "$.history", history)
        with pytest.raises(CorruptRecordError, match=r"history\[\d\]"):
            await enc.sessions.get("a")
    # A session's context copied into an execution of the same id.
    await enc.executions.save(make_execution("a"))
    set_path(sync_client, enc.executions.key("a"), "$.metadata", a["metadata"])
    with pytest.raises(CorruptRecordError, match="metadata"):
        await enc.executions.get("a")


async def test_another_namespace_can_not_read_copied_ciphertexts(
    enc: Store, settings: Settings, sync_client: redis.Redis
) -> None:
    await enc.sessions.save(make_session())
    other_ns = settings.namespace + "x"
    try:
        other_settings = settings.replace(namespace=other_ns)
        async with Store(other_settings, cipher=cipher(), auto_migrate=True) as other:
            await other.sessions.save(make_session())
            set_path(
                sync_client,
                other.sessions.key("s1"),
                "$.context",
                raw_doc(sync_client, enc.sessions.key("s1"))["context"],
            )
            with pytest.raises(CorruptRecordError, match="context"):
                await other.sessions.get("s1")
    finally:
        for k in sync_client.scan_iter(match=f"{other_ns}:*"):
            sync_client.delete(k)
        for name in sync_client.execute_command("FT._LIST"):
            if name.startswith(f"{other_ns}:"):
                sync_client.execute_command("FT.DROPINDEX", name)


async def test_wrong_key_and_missing_key_are_typed_errors(enc: Store, settings: Settings) -> None:
    await enc.sessions.save(make_session())
    await enc.executions.save(make_execution())
    # Same key id, different key: authentication fails.
    async with Store(settings, cipher=FieldCipher(keys={"k1": K2}, active="k1")) as wrong:
        with pytest.raises(CorruptRecordError, match="authentication"):
            await wrong.sessions.get("s1")
        assert await wrong.sessions.ids(backend="flowise") == ["s1"]  # the index answers
    # A ring without the key id.
    async with Store(settings, cipher=FieldCipher(keys={"k2": K2}, active="k2")) as other:
        with pytest.raises(EncryptionKeyError, match=r"'k1'.*not in the key ring") as info:
            await other.executions.get("e1")
        assert info.value.key_id == "k1"
        with pytest.raises(EncryptionKeyError):
            await other.sessions.find(backend="flowise")
    # No cipher at all: an error, never the envelope as content.
    async with Store(settings) as plain:
        for read in (
            plain.sessions.get("s1"),
            plain.executions.get("e1"),
            plain.sessions.get_many(["s1"]),
            plain.sessions.find(user_id="alice"),
        ):
            with pytest.raises(EncryptionKeyError, match="no cipher") as info:
                await read
            assert info.value.key_id == "k1"


async def test_a_field_in_clear_under_a_cipher_is_an_error(
    settings: Settings, sync_client: redis.Redis
) -> None:
    async with Store(settings, auto_migrate=True) as plain:
        await plain.sessions.save(make_session())
        await plain.executions.save(make_execution())
    async with Store(settings, cipher=cipher()) as enc:
        with pytest.raises(CorruptRecordError, match="context is stored in clear") as info:
            await enc.sessions.get("s1")
        assert info.value.key == enc.sessions.key("s1")
        with pytest.raises(CorruptRecordError, match="result is stored in clear"):
            await enc.executions.get("e1")
        # One clear history entry among encrypted ones is refused too.
        await enc.sessions.save(make_session("s2"))
        key = enc.sessions.key("s2")
        sync_client.execute_command(
            "JSON.ARRAPPEND", key, "$.history", json.dumps({"role": "user", "content": "x"})
        )
        with pytest.raises(CorruptRecordError, match=r"history\[2\] is stored in clear"):
            await enc.sessions.get("s2")


async def test_without_a_cipher_nothing_changes(store: Store, sync_client: redis.Redis) -> None:
    await store.sessions.save(make_session())
    doc = raw_doc(sync_client, store.sessions.key("s1"))
    assert doc["context"]["topic"] == "structural tension"
    assert doc["history"][0]["content"] == "hello secret"
    # Text that merely mentions the envelope prefix is content like any other.
    await store.sessions.update("s1", context={"note": ENVELOPE_PREFIX + "k1:j:AAAA"})
    assert (await store.sessions.get("s1")).context["note"].startswith(ENVELOPE_PREFIX)
    # A value that would read back as an envelope is refused, not stored.
    with pytest.raises(InvalidQueryError, match="encrypted values"):
        await store.executions.save(make_execution(result=ENVELOPE_PREFIX + "k1:j:AAAA"))
    await store.executions.save(make_execution())
    with pytest.raises(InvalidQueryError, match="encrypted values"):
        await store.executions.update("e1", result=ENVELOPE_PREFIX + "x")
    assert (await store.executions.get("e1")).result["answer"] == "42-secret"


# ---------------------------------------------------------------- configuration


def test_bad_key_rings_are_config_errors_without_key_material() -> None:
    secret = b"\x07" * 31
    cases: list[tuple[Any, Any, str]] = [
        ({}, "k1", "empty"),
        ({"k1": secret}, "k1", "32 bytes"),
        ({"k1": b"\x07" * 33}, "k1", "32 bytes"),
        ({"k1": "x" * 32}, "k1", "got a str"),
        ({"k1": 12345}, "k1", "got a int"),
        ({"k1": K1}, "k2", "not in the key ring"),
        ({"bad id": K1}, "bad id", "1-32 letters"),
        ([("k1", K1)], "k1", "mapping"),
    ]
    for keys, active, message in cases:
        with pytest.raises(ConfigError, match=message) as info:
            FieldCipher(keys=keys, active=active)
        text = str(info.value)
        assert "\x07" not in text and "xxxx" not in text and repr(K1) not in text
    with pytest.raises(ConfigError, match="compress_min_bytes"):
        FieldCipher(keys={"k1": K1}, active="k1", compress_min_bytes=0)
    with pytest.raises(ConfigError, match="cipher must be a FieldCipher"):
        Settings(cipher="k1:abc")  # type: ignore[arg-type]


def test_keys_come_from_the_environment_and_are_never_shown() -> None:
    b1, b2 = base64.b64encode(K1).decode(), base64.urlsafe_b64encode(K2).decode().rstrip("=")
    env = {
        "FLYWHEEL_ENCRYPTION_KEYS": f"k1:{b1}, k2:{b2}",
        "FLYWHEEL_ENCRYPTION_ACTIVE_KEY": "k2",
        "FLYWHEEL_COMPRESS_MIN_BYTES": "100",
    }
    s = Settings.from_env(env)
    assert s.cipher is not None
    assert s.cipher.active == "k2" and s.cipher.key_ids == ("k1", "k2")
    assert s.cipher.compress_min_bytes == 100
    for text in (repr(s), str(s), repr(s.cipher)):
        assert b1 not in text and b2 not in text and "k2" in text
    single = Settings.from_env({"FLYWHEEL_ENCRYPTION_KEYS": f"only:{b1}"})
    assert single.cipher is not None and single.cipher.active == "only"
    off = Settings.from_env({**env, "FLYWHEEL_COMPRESS_MIN_BYTES": "off"})
    assert off.cipher is not None and off.cipher.compress_min_bytes is None
    assert Settings.from_env({}).cipher is None
    short = base64.b64encode(b"\x07" * 16).decode()
    for bad, message in (
        (f"k1:{b1},k2:{b2}", "FLYWHEEL_ENCRYPTION_ACTIVE_KEY must name"),
        (f"k1:{short}", "FLYWHEEL_ENCRYPTION_KEYS: .*32 bytes"),
        ("k1:not*base64", "FLYWHEEL_ENCRYPTION_KEYS: .*not valid base64"),
        (b1, "FLYWHEEL_ENCRYPTION_KEYS: .*id:base64key"),
        (f"k1:{b1},k1:{b1}", "FLYWHEEL_ENCRYPTION_KEYS: .*twice"),
        (",", "FLYWHEEL_ENCRYPTION_KEYS: .*empty"),
    ):
        with pytest.raises(ConfigError, match=message) as info:
            Settings.from_env({"FLYWHEEL_ENCRYPTION_KEYS": bad})
        text = str(info.value)
        assert b1 not in text and short not in text and "not*base64" not in text
    for extra, message in (
        ({"FLYWHEEL_ENCRYPTION_ACTIVE_KEY": "k3"}, "ACTIVE_KEY: key id 'k3' is not in"),
        ({**env, "FLYWHEEL_COMPRESS_MIN_BYTES": "lots"}, "COMPRESS_MIN_BYTES must be a number"),
        ({**env, "FLYWHEEL_COMPRESS_MIN_BYTES": "-5"}, "COMPRESS_MIN_BYTES must be positive"),
    ):
        with pytest.raises(ConfigError, match=message) as info:
            Settings.from_env({"FLYWHEEL_ENCRYPTION_KEYS": f"k1:{b1},k2:{b2}", **extra})
        assert b1 not in str(info.value) and b2 not in str(info.value)
    with pytest.raises(TypeError, match="pickled"):
        import pickle

        pickle.dumps(s.cipher)


async def test_the_plaintext_cache_is_bounded_and_optional(
    settings: Settings, sync_client: redis.Redis
) -> None:
    small = FieldCipher({"k1": K1}, "k1", cache_bytes=20_000)
    off = FieldCipher({"k1": K1}, "k1", cache_bytes=0)
    async with Store(settings, auto_migrate=True, cipher=small) as a:
        for i in range(30):
            await a.sessions.save(make_session(f"s{i}"))
        assert 0 < small._cache_size <= 20_000
        assert (await a.sessions.get("s0")).context["topic"] == "structural tension"
    async with Store(settings, cipher=off) as b:
        got = await b.sessions.get_many([f"s{i}" for i in range(30)])
        assert all(g is not None and g.history[0].content == "hello secret" for g in got)
        assert off._cache == {}
        key = b.sessions.key("s1")
        env = raw_doc(sync_client, key)["history"][0]
        set_path(
            sync_client, key, "$.history[0]", env[:-9] + ("A" if env[-9] != "A" else "B") + env[-8:]
        )
        with pytest.raises(CorruptRecordError, match=r"history\[0\].*authentication"):
            await b.sessions.get("s1")
    with pytest.raises(ConfigError, match="cache_bytes"):
        FieldCipher({"k1": K1}, "k1", cache_bytes=-1)


def test_json_depth_matches_the_structure_whatever_the_strings_hold() -> None:
    from flywheel_state.crypto import json_depth

    def depth(v: Any) -> int:
        if isinstance(v, dict):
            return 1 + max((depth(x) for x in v.values()), default=0)
        if isinstance(v, list):
            return 1 + max((depth(x) for x in v), default=0)
        return 0

    tricky = ['a"b\\', '[{"\\"}', 'x\\"[', "\\", '"', "{[", "ok"]
    values: list[Any] = [
        {},
        [],
        {"a": tricky},
        [[[[{"k": "]]]"}]]]],
        {"\\": [{"x[": ["{", {"y": tricky}]}]},
        nested(60),
        [nested(30), {"b": [nested(10)]}],
    ]
    for v in values:
        text = json.dumps(v)
        assert json_depth(text) == depth(v), text
        assert json_depth(text.encode()) == depth(v), text


def test_the_bracket_bound_counts_every_opening_bracket_up_to_the_limit() -> None:
    """The cheap bound that spares most values the depth scan: true exactly when the text has
    at most ``limit`` opening brackets (in strings or not), short texts and long ones alike."""
    from flywheel_state.crypto import _brackets_at_most

    for filler in (b"", b" " * 300):  # counted (short) and found one by one (long)
        for text in (b"{}", b"[[1, 2], {}]", b'{"a": "[[[{{{"}', b"{" * 5 + filler + b"[" * 5):
            full = text + filler
            n = full.count(b"{") + full.count(b"[")
            assert _brackets_at_most(full, n)
            assert not _brackets_at_most(full, n - 1)


def test_each_value_gets_its_own_nonce() -> None:
    c = cipher()
    place = b"ns\x00session\x00s1\x00context\x00"
    a, b = c.seal(b'{"a":1}', place), c.seal(b'{"a":1}', place)
    assert a != b
    assert c.open(a, place, key="k", field="context") == b'{"a":1}'


# ---------------------------------------------------------------- rotation and maintenance

RING_1 = {"k1": K1}
RING_12 = {"k1": K1, "k2": K2}


def key_ids(sync_client: redis.Redis, key: str) -> set[str]:
    doc = json.loads(sync_client.execute_command("JSON.GET", key))
    values = [doc["context"], doc["metadata"], *doc["history"]]
    return {
        v[len(ENVELOPE_PREFIX) :].split(":", 1)[0] if isinstance(v, str) else "clear"
        for v in values
    }


async def fill(store: Store, n: int) -> dict[str, Any]:
    sessions = [make_session(f"s{i:03d}", context={"i": i, "topic": "secret"}) for i in range(n)]
    await store.sessions.save_many(sessions, ttl=3600)
    await store.executions.save_many([make_execution(f"e{i:03d}") for i in range(n // 2)])
    return {s.id: s.model_dump() for s in sessions}


async def test_older_keys_stay_readable_and_new_writes_use_the_active_key(
    settings: Settings, sync_client: redis.Redis
) -> None:
    async with Store(settings, auto_migrate=True, cipher=FieldCipher(RING_1, "k1")) as old:
        await old.sessions.save(make_session("a"))
    async with Store(settings, cipher=FieldCipher(RING_12, "k2")) as new:
        assert (await new.sessions.get("a")).context["topic"] == "structural tension"
        assert key_ids(sync_client, new.sessions.key("a")) == {"k1"}
        await new.sessions.append_history("a", {"role": "user", "content": "new"})
        assert key_ids(sync_client, new.sessions.key("a")) == {"k1", "k2"}
        await new.sessions.save(make_session("b"))
        assert key_ids(sync_client, new.sessions.key("b")) == {"k2"}
        assert [h.content for h in (await new.sessions.get("a")).history][-1] == "new"


async def test_a_save_reuses_unchanged_entries_only_under_the_active_key(
    settings: Settings, sync_client: redis.Redis
) -> None:
    async with Store(settings, auto_migrate=True, cipher=FieldCipher(RING_1, "k1")) as old:
        await old.sessions.save(make_session("a"))
        s = await old.sessions.get("a")
        before = raw_doc(sync_client, old.sessions.key("a"))
        s.history.append(HistoryEntry(role="user", content="third"))
        await old.sessions.save(s)
        after = raw_doc(sync_client, old.sessions.key("a"))
        assert after["history"][:2] == before["history"][:2]  # unchanged: the same ciphertext
        assert after["context"] != before["context"]  # whole values always get a new nonce
        assert len(after["history"]) == 3
    async with Store(settings, cipher=FieldCipher(RING_12, "k2")) as new:
        s = await new.sessions.get("a")  # opened (and cached) under k1
        await new.sessions.save(s)
        assert key_ids(sync_client, new.sessions.key("a")) == {"k2"}
        assert [h.content for h in (await new.sessions.get("a")).history][-1] == "third"


async def test_equal_history_entries_never_share_a_ciphertext(
    enc: Store, sync_client: redis.Redis
) -> None:
    """Equal entries (same role, content and timestamp) are legitimate: saving them, saving
    them again after a read (the reuse path), updating the history and appending one more
    equal entry all keep one ciphertext per entry, so the history never reads as tampered."""
    when = datetime(2026, 12, 3, 8, 0, tzinfo=timezone.utc)
    twice = [HistoryEntry(role="user", content="ok", timestamp=when) for _ in range(2)]
    key = enc.sessions.key("dup")

    def stored_history() -> list[str]:
        history = raw_doc(sync_client, key)["history"]
        assert len(set(history)) == len(history), "an envelope appears twice"
        return history  # type: ignore[no-any-return]

    await enc.sessions.save(make_session("dup", history=twice))
    assert len(stored_history()) == 2
    s = await enc.sessions.get("dup")  # opened: both entries now in the plaintext cache
    assert [h.content for h in s.history] == ["ok", "ok"]
    await enc.sessions.save(s)
    assert len(stored_history()) == 2
    await enc.sessions.update("dup", history=[*twice, twice[0]])
    assert len(stored_history()) == 3
    await enc.sessions.append_history("dup", twice[0])
    assert len(stored_history()) == 4
    again = await enc.sessions.get("dup")
    assert [(h.content, h.timestamp) for h in again.history] == [("ok", when)] * 4


async def test_rekey_killed_midway_resumes_and_leaves_every_record_under_k2(
    settings: Settings, sync_client: redis.Redis
) -> None:
    async with Store(settings, auto_migrate=True, cipher=FieldCipher(RING_1, "k1")) as old:
        before = await fill(old, 40)
    store = Store(settings, cipher=FieldCipher(RING_12, "k2"))
    async with store:
        events: list[MigrationProgress] = []

        def crash_after_two_batches(event: MigrationProgress) -> None:
            events.append(event)
            if len(events) == 2:
                raise RuntimeError("injected crash")

        with pytest.raises(MigrationError, match="injected crash"):
            await rekey(store, batch_size=8, progress=crash_after_two_batches)
        status = await encryption_status(store)
        assert (
            0 < status["session"].get("k2", 0) < status["session"]["k1"] + status["session"]["k2"]
        )
        assert "k2" not in status["execution"]
        # The lock was released: the rerun is not locked out, and resumes from the checkpoint.
        report = await rekey(store, batch_size=8)
        assert report.resumed
        assert report.problem_count == 0
        status = await encryption_status(store)
        assert set(status["session"]) == {"k2"} and set(status["execution"]) == {"k2"}
        assert status["session"]["k2"] == 40 * 4  # context, metadata, two history entries
        for id in before:
            assert key_ids(sync_client, store.sessions.key(id)) == {"k2"}
            assert 0 < sync_client.ttl(store.sessions.key(id)) <= 3600  # TTLs kept
        got = await store.sessions.get_many(list(before))
        assert [g.model_dump() if g else None for g in got] == list(before.values())
        # Done: a new run changes nothing; k1 can now leave the ring.
        again = await rekey(store)
        assert again.documents_changed == 0 and not again.resumed
    async with Store(settings, cipher=FieldCipher({"k2": K2}, "k2")) as only_k2:
        assert (await only_k2.sessions.get("s007")).context == {"i": 7, "topic": "secret"}
        assert (await only_k2.executions.get("e007")).result["answer"] == "42-secret"


async def test_writes_during_a_rekey_are_never_lost(
    settings: Settings, sync_client: redis.Redis
) -> None:
    async with Store(settings, auto_migrate=True, cipher=FieldCipher(RING_1, "k1")) as old:
        before = await fill(old, 40)
    async with Store(settings, cipher=FieldCipher(RING_12, "k2")) as store:
        codec = store.sessions._codec
        assert codec is not None
        appended = False

        def write_meanwhile(event: MigrationProgress) -> None:
            # A writer on the new ring appends to every session while the run is under way:
            # sessions of batches read but not yet written must be read again, not overwritten.
            nonlocal appended
            if appended:
                return
            appended = True
            for id in before:
                key = store.sessions.key(id)
                entry = codec.seal_entry(key, "history", '{"role":"user","content":"meanwhile"}')
                sync_client.execute_command("JSON.ARRAPPEND", key, "$.history", entry)

        report = await rekey(store, batch_size=8, progress=write_meanwhile)
        assert appended and report.problem_count == 0
        got = await store.sessions.get_many(list(before))
        for g in got:
            assert g is not None
            assert [h.content for h in g.history] == ["hello secret", None, "meanwhile"]
        status = await encryption_status(store)
        assert status["session"] == {"k2": 40 * 5}


async def test_encrypt_a_namespace_written_in_clear_then_decrypt_it(
    settings: Settings, sync_client: redis.Redis
) -> None:
    async with Store(settings, auto_migrate=True) as plain:
        before = await fill(plain, 12)
    async with Store(settings, cipher=FieldCipher(RING_1, "k1")) as enc:
        with pytest.raises(CorruptRecordError, match="stored in clear"):
            await enc.sessions.get("s001")
        dry = await encrypt(enc, dry_run=True)
        assert dry.documents_changed == 18 and dry.samples == []
        assert (await encryption_status(enc))["session"] == {"clear": 12 * 4}
        report = await encrypt(enc)
        assert report.documents_changed == 18
        assert (await encryption_status(enc))["session"] == {"k1": 12 * 4}
        text = sync_client.execute_command("JSON.GET", enc.sessions.key("s001"))
        assert "secret" not in text
        got = await enc.sessions.get_many(list(before))
        assert [g.model_dump() if g else None for g in got] == list(before.values())
        assert (await encrypt(enc)).documents_changed == 0
        out = await decrypt(enc)
        assert out.documents_changed == 18
    async with Store(settings) as plain:
        got = await plain.sessions.get_many(list(before))
        assert [g.model_dump() if g else None for g in got] == list(before.values())
        assert (await plain.executions.get("e001")).result["answer"] == "42-secret"
        assert (await encryption_status(plain))["execution"] == {"clear": 6 * 2}


async def test_values_that_can_not_be_opened_are_reported_and_left_alone(
    settings: Settings, sync_client: redis.Redis
) -> None:
    async with Store(settings, auto_migrate=True, cipher=FieldCipher(RING_1, "k1")) as old:
        await fill(old, 4)
    async with Store(settings, cipher=FieldCipher({"k2": K2}, "k2")) as lost:
        report = await rekey(lost)
        assert report.documents_changed == 0
        assert report.problem_count == 6
        assert all("not in the key ring" in p.message for p in report.problems)
        assert all(K1.hex() not in p.message for p in report.problems)
        assert key_ids(sync_client, lost.sessions.key("s001")) == {"k1"}


async def test_operations_need_a_cipher_and_the_lock(settings: Settings) -> None:
    async with Store(settings, auto_migrate=True) as plain:
        with pytest.raises(ConfigError, match="key ring"):
            await rekey(plain)
    async with Store(settings, cipher=FieldCipher(RING_1, "k1")) as enc:
        other = MigrationLock(
            enc.client, f"{enc.namespace}:_migrations:lock", purpose="upgrade to head"
        )
        await other.acquire()
        try:
            with pytest.raises(MigrationLockedError, match="upgrade to head"):
                await rekey(enc)
        finally:
            await other.release()
        assert (await rekey(enc)).documents_changed == 0


# ---------------------------------------------------------------- the CLI


def test_cli_encrypt_rekey_status_without_showing_keys(
    settings: Settings, redis_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from click.testing import CliRunner

    from flywheel_state.cli import cli

    async def seed() -> None:
        async with Store(settings, auto_migrate=True) as plain:
            await fill(plain, 6)

    asyncio.run(seed())
    b1, b2 = base64.b64encode(K1).decode(), base64.b64encode(K2).decode()

    def run(*args: str, input: str | None = None) -> Any:
        result = CliRunner().invoke(
            cli, [*args, "--url", redis_url, "--namespace", namespace], input=input
        )
        assert b1 not in result.output and b2 not in result.output
        return result

    def run_json(*args: str) -> Any:
        result = run(*args, "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    # Without the key ring: status works, the operations refuse with one line.
    assert run_json("crypto", "status")["kinds"]["session"] == {"clear": 24}
    refused = run("crypto", "encrypt", "--yes")
    assert refused.exit_code == 1 and "key ring" in refused.output

    monkeypatch.setenv("FLYWHEEL_ENCRYPTION_KEYS", f"k1:{b1}")
    declined = run("crypto", "encrypt", input="n\n")
    assert declined.exit_code != 0
    assert run_json("crypto", "status")["kinds"]["session"] == {"clear": 24}
    assert run_json("crypto", "encrypt", "--dry-run")["documents_changed"] == 9
    done = run("crypto", "encrypt", "--yes")
    assert done.exit_code == 0 and "changed 9 documents of 9" in done.output, done.output
    assert run_json("crypto", "status")["kinds"] == {
        "session": {"k1": 24},
        "execution": {"k1": 6},
    }

    monkeypatch.setenv("FLYWHEEL_ENCRYPTION_KEYS", f"k1:{b1},k2:{b2}")
    monkeypatch.setenv("FLYWHEEL_ENCRYPTION_ACTIVE_KEY", "k2")
    out = run_json("crypto", "rekey", "--yes", "--batch-size", "2")
    assert out["documents_changed"] == 9 and out["problem_count"] == 0
    status = run_json("crypto", "status")
    assert status["active_key"] == "k2"
    assert status["kinds"] == {"session": {"k2": 24}, "execution": {"k2": 6}}
    shown = run("sessions", "show", "s001")
    assert shown.exit_code == 0 and "secret" in shown.output  # the CLI reads through the ring


# ---------------------------------------------------------------- the original API


async def test_compat_managers_encrypt_with_the_ring_from_the_environment(
    redis_url: str, namespace: str, sync_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flywheel_state import RedisConfig, RedisExecutionCache, RedisSessionManager

    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("REDIS_NAMESPACE", namespace)
    monkeypatch.setenv("FLYWHEEL_ENCRYPTION_KEYS", f"k1:{base64.b64encode(K1).decode()}")
    config = RedisConfig.from_env()
    assert config["cipher"].active == "k1"
    manager = RedisSessionManager(**config)
    cache = RedisExecutionCache(**RedisConfig.execution_from_env())
    try:
        assert await manager.save_session(make_session("m1")) is True
        assert await cache.cache_result("x1", {"answer": "42-secret"}) is True
        for key in (f"{namespace}:session:m1", f"{namespace}:execution:x1"):
            text = sync_client.execute_command("JSON.GET", key)
            assert "secret" not in text and "structural tension" not in text
        loaded = await manager.load_session("m1")
        assert loaded is not None and loaded.context["topic"] == "structural tension"
        assert await cache.get_result("x1") == {"answer": "42-secret"}
        # A tampered record is not read through the legacy fallbacks either.
        key = f"{namespace}:execution:x1"
        env = raw_doc(sync_client, key)["result"]
        set_path(
            sync_client, key, "$.result", env[:-6] + ("A" if env[-6] != "A" else "B") + env[-5:]
        )
        assert await cache.get_result("x1") is None
        set_path(sync_client, f"{namespace}:session:m1", "$.context", env)
        assert await manager.load_session("m1") is None
    finally:
        await manager.close()
        await cache.close()
    # Without the ring the fail-safe API returns nothing, never the ciphertext.
    monkeypatch.delenv("FLYWHEEL_ENCRYPTION_KEYS")
    plain = RedisSessionManager(**RedisConfig.from_env())
    plain_cache = RedisExecutionCache(**RedisConfig.execution_from_env())
    try:
        assert await plain.load_session("m1") is None
        assert await plain_cache.get_result("x1") is None
    finally:
        await plain.close()
        await plain_cache.close()


# ---------------------------------------------------------------- schema upgrades of encrypted data


class _Note(Document):
    KIND: ClassVar[str] = "note_enc_test"
    SCHEMA_VERSION: ClassVar[int] = 2
    id: Id = Field(primary_key=True)
    title: str
    body: dict[str, Any] = {}


@register_upgrade("note_enc_test", 1)
def _note_name_to_title(doc: dict[str, Any]) -> dict[str, Any]:
    doc["title"] = doc.pop("name")
    return doc


async def test_upgrade_documents_decrypts_upgrades_and_seals_again(
    store: Store, settings: Settings, sync_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(ENCRYPTED_FIELDS, "note_enc_test", EncryptedFields(whole=("body",)))  # type: ignore[index]
    c = cipher()
    codec = RecordCodec(c, store.namespace, _Note)
    for i in range(5):
        key = f"{store.namespace}:note_enc_test:n{i}"
        body = codec.seal_value(key, "body", json.dumps({"secret": f"note-secret-{i}"}))
        doc = f'{{"schema_version":1,"version":3,"id":"n{i}","name":"note {i}","body":{body}}}'
        sync_client.execute_command("JSON.SET", key, "$", doc)

    def context(s: Store, revision: str) -> MigrationContext:
        return MigrationContext(
            client=s.client,
            namespace=s.namespace,
            settings=s.settings,
            revision=revision,
            direction="upgrade",
            dry_run=False,
            report=StepReport(revision=revision, description="t", direction="upgrade"),
            lock=None,
            progress=None,
        )

    # Without the key the documents are reported, never rewritten in clear.
    ctx = context(store, "no-key")
    result = await ctx.ops.upgrade_documents(_Note)
    assert result.changed == 0
    problems = sync_client.lrange(ctx.problems_key, 0, -1)
    assert len(json.loads(problems[0])) == 5 and "no cipher" in problems[0]
    key0 = f"{store.namespace}:note_enc_test:n0"
    assert json.loads(sync_client.execute_command("JSON.GET", key0))["schema_version"] == 1
    async with Store(settings, cipher=c) as enc:
        result = await context(enc, "with-key").ops.upgrade_documents(_Note)
        assert result.changed == 5
        for i in range(5):
            key = f"{enc.namespace}:note_enc_test:n{i}"
            text = sync_client.execute_command("JSON.GET", key)
            assert "note-secret" not in text
            doc = json.loads(text)
            assert doc["schema_version"] == 2 and doc["title"] == f"note {i}"
            assert doc["version"] == 3
            opened = _Note.model_validate_json(codec.open_document(key, text))
            assert opened.body == {"secret": f"note-secret-{i}"}
