"""One task's layout in a store: its data, task.json, results, status.json, signing, pickling, the cache's entries, retention."""
