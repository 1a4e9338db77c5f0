"""Who a request is: its bearer token, checked before anything else is done for it.

A server knows two kinds of token. The *bootstrap* token is the one it was
started with (``--token-file``, ``$SCHEDY_TOKEN``, ``--token``); it acts as
admin and is compared in constant time, so its secret cannot be guessed
byte by byte from response times. *Stored* tokens (``schedy token create``)
live in the database as the SHA-256 of their secret with a role; a request's
secret is hashed and looked up there. A lookup's answer -- the role, or "no
such token" -- is kept for a few seconds at most, so a worker's requests do
not each cost a query, and a revoked token stops working within that time
on every server replica.

A server started with no token at all, over a store holding none, is open:
every request is admin. ``serve`` only lets such a server listen on loopback.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

import anyio.to_thread

from .. import _wire
from .._records import TokenRole
from ..errors import StorageError
from ..storage._base import Storage

__all__ = [
    "DEFAULT_CACHE_SECONDS",
    "Authenticator",
    "allows",
    "check_bootstrap_token",
]

#: How long a stored token's lookup is trusted: a revoked token works this long at most.
DEFAULT_CACHE_SECONDS = 2.0
#: A bearer this long is no secret schedy made (those have 43 characters): refused unseen.
_LONGEST_SECRET = 1024
#: Lookups remembered at once; past that the expired ones go, then all.
_CACHE_SIZE = 4096
#: The clock the cache reads (a test moves it instead of sleeping).
_clock: Callable[[], float] = time.monotonic

_RANK = {TokenRole.READ: 0, TokenRole.WORKER: 1, TokenRole.ADMIN: 2}


def allows(role: TokenRole, needed: TokenRole) -> bool:
    """Whether a token of ``role`` may do what needs ``needed`` (admin > worker > read)."""
    return _RANK[role] >= _RANK[needed]


def check_bootstrap_token(token: str) -> str:
    """``token`` without surrounding whitespace, if it is strong enough to guard a
    server: at least ``MIN_SECRET_LENGTH`` characters of printable ASCII, no
    spaces (it travels in an HTTP header). ValueError otherwise, which never
    repeats the token: error messages end up in logs."""
    cleaned = token.strip()
    advice = (
        "make one with `python -c 'import secrets; print(secrets.token_urlsafe(32))'`, "
        "or give workers tokens of their own with `schedy token create`"
    )
    if len(cleaned) < _wire.MIN_SECRET_LENGTH:
        raise ValueError(
            f"the server's token is too weak: it has {len(cleaned)} characters, it needs at "
            f"least {_wire.MIN_SECRET_LENGTH} characters; {advice}"
        )
    if not cleaned.isascii() or not cleaned.isprintable():
        raise ValueError(
            f"the server's token must be printable ASCII (it travels in an HTTP header); {advice}"
        )
    if any(character.isspace() for character in cleaned):
        raise ValueError(f"the server's token may not contain spaces; {advice}")
    return cleaned


def _keeps_tokens(storage: Storage) -> tuple[bool, bool]:
    """Whether ``storage`` keeps server tokens, and whether any is active now."""
    try:
        tokens = storage.list_tokens()
    except StorageError:  # a backend without tokens
        return False, False
    return True, any(token.revoked_at is None for token in tokens)


class Authenticator:
    """The role of a request's bearer secret, or None when it is refused.

    ``required`` says whether a token is needed at all: with a bootstrap token,
    or stored tokens when the server starts. A server that started open stays
    open until restarted (tokens created meanwhile secure its next start).
    """

    def __init__(self, storage: Storage, bootstrap: str | None, cache_seconds: float) -> None:
        if not cache_seconds >= 0:
            raise ValueError(f"token_cache_seconds must be >= 0, not {cache_seconds!r}")
        self._storage = storage
        self._bootstrap = None if bootstrap is None else check_bootstrap_token(bootstrap).encode()
        self._bootstrap_digest = (
            None if self._bootstrap is None else _wire.hash_secret(self._bootstrap.decode())
        )
        self._looks_up, stored = _keeps_tokens(storage)
        self.required = self._bootstrap is not None or stored
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, TokenRole | None]] = {}

    async def role(self, authorization: bytes | None) -> TokenRole | None:
        """The role of ``Authorization: Bearer <secret>`` (raw header bytes), or None."""
        if not self.required:
            return TokenRole.ADMIN
        secret = _bearer(authorization)
        if secret is None:
            return None
        if self._bootstrap is not None and secrets.compare_digest(secret, self._bootstrap):
            return TokenRole.ADMIN
        return await self._stored_role(_wire.hash_secret(secret.decode("ascii")))

    async def role_of_digest(self, digest: str) -> TokenRole | None:
        """The role of the token whose secret hashes to ``digest``, or None: what a
        dashboard session (which keeps the digest, never the secret) checks, so a
        revoked token ends its sessions as it ends its bearer calls."""
        if not self.required:
            return TokenRole.ADMIN
        if self._bootstrap_digest is not None and secrets.compare_digest(
            digest, self._bootstrap_digest
        ):
            return TokenRole.ADMIN
        return await self._stored_role(digest)

    async def _stored_role(self, digest: str) -> TokenRole | None:
        if not self._looks_up:
            return None
        now = _clock()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        # A query is blocking: off the event loop, like the routes' own storage calls.
        found = await anyio.to_thread.run_sync(self._storage.find_token, digest)
        role = None if found is None else TokenRole(found.role)
        if self._cache_seconds > 0:
            self._remember(digest, role, now)
        return role

    def _remember(self, digest: str, role: TokenRole | None, now: float) -> None:
        if len(self._cache) >= _CACHE_SIZE:
            self._cache = {key: entry for key, entry in self._cache.items() if entry[0] > now}
            if len(self._cache) >= _CACHE_SIZE:  # a flood of made-up tokens
                self._cache.clear()
        self._cache[digest] = (now + self._cache_seconds, role)


def _bearer(authorization: bytes | None) -> bytes | None:
    """The secret of a ``Bearer`` header, stripped; None when there is none to check."""
    if authorization is None:
        return None
    scheme, _, secret = authorization.partition(b" ")
    secret = secret.strip()
    if scheme.lower() != b"bearer" or not secret or len(secret) > _LONGEST_SECRET:
        return None
    if not secret.isascii():
        return None
    return secret
