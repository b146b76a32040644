"""The cache's entries in the store, and the worker's side: filling them as results land.

Kept apart from kubemap.api.cache (which builds on kubemap.api.maprun), so the worker, below the
backends, does not import the SDK surface. See kubemap.api.cache for the design.
"""

from __future__ import annotations

import json
from typing import Any

from kubemap.stores import KeyNotFound, Store, open_store
from kubemap.task.pickling import dumps

CACHE_DIR = "_cache"  # "_" keeps it apart from every task name (DNS-1123 has no "_")
CONFIG_KEY = "cache.json"  # in the task: where its entries go
KEYS_KEY = "cache.keys"  # in the task: the item digest of each of its indices, then the hits'
MAP_KEY = "cache.map"  # in the task: the caller's index of each of its indices, then the hits'
DIGEST_SIZE = 16


_configs: dict[str, tuple[Store, str] | None] = {}


def record_slice(task: Store, start: int, count: int, values: dict[int, Any]) -> int:
    """Write cache entries for the values a worker just computed (if the task is cached);
    returns how many entries it created. Called after the result object is written."""
    if task.url not in _configs:
        if len(_configs) > 64:
            _configs.clear()  # a worker process seldom sees many tasks; keep it bounded
        try:
            config = json.loads(task.get(CONFIG_KEY))
            _configs[task.url] = (open_store(config["entries"]), task.url)
        except KeyNotFound:
            _configs[task.url] = None
    found = _configs[task.url]
    if found is None or not values:
        return 0
    entries = found[0]
    digests = task.get_range(KEYS_KEY, start * DIGEST_SIZE, (start + count) * DIGEST_SIZE)
    created = 0
    for index, value in values.items():
        offset = (index - start) * DIGEST_SIZE
        name = digests[offset : offset + DIGEST_SIZE].hex()
        if len(name) == 2 * DIGEST_SIZE and entries.put_if_absent(name, dumps(value)):
            created += 1
    return created
