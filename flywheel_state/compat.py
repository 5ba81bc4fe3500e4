"""The original API (RedisSessionManager, RedisExecutionCache, RedisConfig) on the new layer."""

from __future__ import annotations

__all__: list[str] = []
