"""The compat API without the redis package: it imports, disables itself, warns once."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import asyncio, logging, sys

    class BlockRedis:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("redis", "aredis_om", "redis_om"):
                raise ImportError("no module named " + name)

    sys.meta_path.insert(0, BlockRedis())
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    from flywheel_state import RedisExecutionCache, RedisSessionManager

    async def main():
        m = RedisSessionManager()
        c = RedisExecutionCache()
        print(await m.save_session({"id": "a", "backend": "flowise"}))
        print(await m.load_session("a"))
        print(await m.list_sessions())
        print(await c.cache_result("e", {"result": 1}))
        print(await c.get_result("e"))
        await m.close()

    asyncio.run(main())
    """
)


def test_compat_disables_itself_without_redis() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "None", "[]", "False", "None"]
    warnings = [line for line in out.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1, out.stderr
    assert "redis" in warnings[0]
