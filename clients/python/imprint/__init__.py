"""Imprint's Python consumer client.

A node subscribes to topics and always holds a valid, recent value of each: one
background thread long-polls all of a client's subscriptions in one request, fetches and
verifies each update, decodes it with your function, swaps the value in atomically and
reports the outcome to the server. The protocol is docs/protocol.md of the Imprint
repository; the Rust ``imprint-client`` is the reference implementation.
"""

from .aio import AsyncClient
from .client import Client
from .errors import ApiError, ImprintError, NetworkError, VerifyError
from .subscription import Payload, Source, Subscription

__all__ = [
    "ApiError",
    "AsyncClient",
    "Client",
    "ImprintError",
    "NetworkError",
    "Payload",
    "Source",
    "Subscription",
    "VerifyError",
]
