"""Tenants and roles of API keys, and which tenant owns which uploaded data set.

Every key belongs to one tenant and has roles:

- ``read``: score models (/v1 and /v2), read models, and read its tenant's jobs and data sets;
- ``train``: also upload data sets, submit jobs, cancel its tenant's jobs, delete its tenant's
  data sets;
- ``admin``: also deletes models (DELETE /v1/models/{name}, .../versions/{version}).

Keys come from two settings: ``CPFLOW_API_KEYS`` (plain keys: tenant ``default``, every role;
what a single-team service uses) and ``CPFLOW_API_KEY_HASHES`` (sha256 of each key -> tenant
and roles; several hashes per tenant allow rotation). Without keys every caller is tenant
``default`` with every role. Jobs carry their tenant in their record (service.queue); data
sets are content-addressed in the store, so their owners are kept in Redis
(:class:`DatasetOwners`), only once hashed keys make the service multi-tenant. Models are
shared, or per tenant under CPFLOW_MODEL_SCOPE=tenant (service.model_scope).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import cast

from redis import Redis
from starlette.requests import Request

from service.settings import DEFAULT_TENANT, Role, Settings

__all__ = [
    "DEFAULT_TENANT",
    "OPEN",
    "DatasetOwners",
    "Identity",
    "KeyRing",
    "Role",
    "key_id",
    "key_matches",
    "required_role",
    "tenant_of",
]

_ALL_ROLES = frozenset(Role)
_TRAIN_PREFIXES = ("/v1/datasets", "/v1/jobs")
_MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def key_matches(presented: str, keys: Sequence[bytes]) -> bool:
    """Constant-time check of a presented key against every configured plain key."""
    token = presented.encode()
    ok = False
    for key in keys:
        # Compare against all keys, no early exit: timing does not reveal which one matched.
        ok |= hmac.compare_digest(token, key)
    return ok


def key_id(key: str) -> str:
    """A stable, non-secret name of an API key (for Redis keys and logs)."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Identity:
    """Who a request comes from: the key's id, its tenant and its roles."""

    key_id: str | None
    tenant: str
    roles: frozenset[Role]


OPEN = Identity(key_id=None, tenant=DEFAULT_TENANT, roles=_ALL_ROLES)
"""Every caller of a server without keys."""


class KeyRing:
    """The configured keys: plain ones (tenant ``default``, all roles) and sha256 hashes."""

    def __init__(self, plain: Iterable[str], hashed: dict[str, tuple[str, frozenset[Role]]]):
        self._plain = [k.encode() for k in plain]
        self._hashed = [
            (h.lower().encode(), tenant, roles) for h, (tenant, roles) in hashed.items()
        ]

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        hashed = {h: (e.tenant, frozenset(e.roles)) for h, e in settings.api_key_hashes.items()}
        return cls(settings.api_keys, hashed)

    def __bool__(self) -> bool:
        return bool(self._plain or self._hashed)

    @property
    def multi_tenant(self) -> bool:
        """Hashed keys are configured: data-set ownership is tracked per tenant."""
        return bool(self._hashed)

    def identify(self, token: str) -> Identity | None:
        """The identity of a presented key, None when it matches no key. Every configured key
        is compared (constant time, no early exit), so timing does not reveal which matched."""
        presented = token.encode()
        digest = hashlib.sha256(presented).hexdigest().encode()
        found: Identity | None = None
        if key_matches(token, self._plain):
            found = Identity(key_id(token), DEFAULT_TENANT, _ALL_ROLES)
        for stored, tenant, roles in self._hashed:
            if hmac.compare_digest(digest, stored):
                found = Identity(key_id(token), tenant, roles)
        return found


def required_role(method: str, path: str) -> Role:
    """The role a request needs: ``train`` to change data sets and jobs, ``admin`` to delete a
    model, ``read`` for everything else (scoring included)."""
    if method in _MUTATING and path.startswith(_TRAIN_PREFIXES):
        return Role.TRAIN
    if method == "DELETE" and path.startswith("/v1/models"):
        return Role.ADMIN
    return Role.READ


def tenant_of(request: Request) -> str:
    """The caller's tenant, as the auth middleware found it (``default`` without keys)."""
    return getattr(request.state, "tenant", None) or DEFAULT_TENANT


class DatasetOwners:
    """Which tenants uploaded which data set: one Redis set of data-set ids per tenant."""

    def __init__(self, connection: Redis, namespace: str) -> None:
        self.connection = connection
        self.namespace = namespace

    def _key(self, tenant: str) -> str:
        return f"cpflow:{self.namespace}:tenant:{tenant}:datasets"

    def add(self, tenant: str, dataset_id: str) -> None:
        self.connection.sadd(self._key(tenant), dataset_id)

    def owns(self, tenant: str, dataset_id: str) -> bool:
        return bool(self.connection.sismember(self._key(tenant), dataset_id))

    def ids(self, tenant: str) -> set[str]:
        members = cast(set[bytes], self.connection.smembers(self._key(tenant)))
        return {m.decode() for m in members}

    def release(self, tenant: str, dataset_id: str) -> bool:
        """Drop ``tenant``'s claim; True when no other tenant holds the data set any more."""
        self.connection.srem(self._key(tenant), dataset_id)
        for key in self.connection.scan_iter(match=self._key("*"), count=1000):
            if self.connection.sismember(key, dataset_id):
                return False
        return True
