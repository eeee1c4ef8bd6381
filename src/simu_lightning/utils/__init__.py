"""Leaf utilities every part of a run uses: one-line errors, content-keyed caches, files written
atomically, the out-of-memory retry, seeded work, and the console's logging."""
