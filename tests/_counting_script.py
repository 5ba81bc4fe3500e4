"""The test-only migration script that counts its transforms (test_migrations, test_cluster).

It turns each ``{ns}:item:*`` string into the JSON document ``{"value": <the string>}``; the
module's globals steer it from a test (``scripts.get("0002").module``):

- ``CALLS``: the keys transformed, in order;
- ``FAIL_AT``: raise an injected failure at that many transforms;
- ``PROBLEM_SUFFIX``: strings ending with it are rewritten with a problem reported;
- ``BEFORE_TRANSFORM``: called with ``(key, value)`` before each transform, between the
  runner's read of a batch and its write (a test changes keys there).
"""

from __future__ import annotations

COUNTING_SCRIPT = '''\
"""Test-only: turn item strings into JSON documents, counting each transform."""
from __future__ import annotations

import json

from flywheel_state.migrations.ops import Rewrite

revision = "0002"
down_revision = "0001"
description = "count transforms"

CALLS: list[str] = []
FAIL_AT: int | None = None
PROBLEM_SUFFIX: str | None = None
BEFORE_TRANSFORM = None


async def upgrade(ctx):
    def transform(key, raw):
        if FAIL_AT is not None and len(CALLS) == FAIL_AT:
            raise RuntimeError("injected failure mid-batch")
        CALLS.append(key)
        if BEFORE_TRANSFORM is not None:
            BEFORE_TRANSFORM(key, raw)
        value = json.dumps({"value": raw.decode()})
        if PROBLEM_SUFFIX is not None and raw.decode().endswith(PROBLEM_SUFFIX):
            return Rewrite(value, (ctx.problem(key, f"ends in {PROBLEM_SUFFIX}"),))
        return value

    await ctx.ops.rewrite_keys(
        match=ctx.key("item", "*"),
        from_type="string",
        to_type="ReJSON-RL",
        transform=transform,
        label="items",
    )


async def downgrade(ctx):
    raise ctx.irreversible("test script")
'''
"""The script's text (revision 0002 on 0001)."""


def counting_script(revision: str = "0002", down_revision: str = "0001") -> str:
    """The counting script's text, as ``revision`` on ``down_revision``."""
    return COUNTING_SCRIPT.replace('revision = "0002"', f'revision = "{revision}"').replace(
        'down_revision = "0001"', f'down_revision = "{down_revision}"'
    )
