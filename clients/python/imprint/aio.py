"""The asyncio API: ``AsyncClient`` wraps a ``Client`` (its poll thread does the work),
so subscribing is awaited without blocking the event loop. Subscriptions are the same
objects: ``get()`` is a plain read, ``await sub.wait_for_change()`` / ``async for v in
sub.changes()`` follow updates."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

from .client import Client
from .subscription import Payload, Subscription

T = TypeVar("T")


class AsyncClient:
    """``async with AsyncClient(url, **settings) as client: sub = await client.subscribe_json(...)``;
    takes the keyword arguments of ``Client``."""

    def __init__(self, url: str, **settings: Any):
        self.sync = Client(url, **settings)

    async def subscribe(self, topic: str, default: T, decoder: Callable[[bytes], T]) -> Subscription[T]:
        return await asyncio.to_thread(self.sync.subscribe, topic, default, decoder)

    async def subscribe_json(self, topic: str, default: Any = None, decoder: Optional[Callable[[Any], Any]] = None) -> Subscription[Any]:
        return await asyncio.to_thread(self.sync.subscribe_json, topic, default, decoder)

    async def subscribe_bytes(self, topic: str, default: Optional[bytes] = None) -> Subscription[Optional[bytes]]:
        return await asyncio.to_thread(self.sync.subscribe_bytes, topic, default)

    async def subscribe_file(self, topic: str, default: Any = None, decoder: Optional[Callable[[Path], Any]] = None) -> Subscription[Any]:
        return await asyncio.to_thread(self.sync.subscribe_file, topic, default, decoder)

    async def subscribe_payload(self, topic: str, default: T, decoder: Callable[[Payload], T]) -> Subscription[T]:
        return await asyncio.to_thread(self.sync.subscribe_payload, topic, default, decoder)

    async def close(self) -> None:
        await asyncio.to_thread(self.sync.close)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
