"""What every adapter stands on: the schema registry, the event serde, topics, consumer batches, the key store."""
