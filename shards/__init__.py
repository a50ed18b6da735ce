"""The longcap shard format: schema, readers, writers, sub-caption splitting, token statistics."""
