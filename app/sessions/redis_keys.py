"""Key names of the Redis store, and which bucket (hence which cluster slot) a session is in.

Each session is a hash; each bucket has an index (a sorted set of its live ids scored by
expiry) that counts them. A session's hash and its bucket's index must be in one hash slot,
so that one script can change both on a cluster: in cluster mode both carry the bucket's
hash tag `{...}`. Tags are chosen so that bucket b of B lands exactly in slot b * 16384 / B:
the buckets spread over the cluster's slot ranges as evenly as the slots do.

On one master with one bucket the names are the first release's (`<prefix>s:<id>`,
`<prefix>sessions`), so replicas of both releases share sessions during a rolling update.
"""

from __future__ import annotations

import binascii
import functools
import zlib

SLOTS = 16384


@functools.cache
def slot_tags() -> tuple[str, ...]:
    """For every cluster slot, the shortest decimal string whose CRC16 lands in it
    (Redis Cluster's key -> slot rule); about 110,000 CRCs, a tenth of a second, once."""
    tags: dict[int, str] = {}
    i = 0
    while len(tags) < SLOTS:
        s = str(i)
        tags.setdefault(binascii.crc_hqx(s.encode(), 0) % SLOTS, s)
        i += 1
    return tuple(tags[slot] for slot in range(SLOTS))


class Keys:
    """Names for one deployment (prefix), bucket count and layout (hash tags or not)."""

    def __init__(self, prefix: str, buckets: int, tagged: bool) -> None:
        if not 1 <= buckets <= SLOTS:
            raise ValueError(f"buckets must be between 1 and {SLOTS}")
        self.prefix = prefix
        self.buckets = buckets
        self.tagged = tagged
        if tagged:
            tags = slot_tags()
            self._bucket = [f"{prefix}{{{tags[b * SLOTS // buckets]}}}:" for b in range(buckets)]
        elif buckets == 1:
            self._bucket = [prefix]
        else:
            self._bucket = [f"{prefix}{b}:" for b in range(buckets)]
        # The shared live count (several buckets): a key of its own, outside every bucket.
        self.total = f"{prefix}{{count}}:total"
        self.total_lock = f"{prefix}{{count}}:lock"

    def bucket_of(self, session_id: str) -> int:
        return zlib.crc32(session_id.encode()) % self.buckets if self.buckets > 1 else 0

    def session(self, session_id: str) -> tuple[str, str]:
        """(the session's hash, its bucket's index)."""
        b = self._bucket[self.bucket_of(session_id)]
        return f"{b}s:{session_id}", f"{b}sessions"

    def index(self, bucket: int) -> str:
        return f"{self._bucket[bucket]}sessions"
