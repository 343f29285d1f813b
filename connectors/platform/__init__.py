"""What every adapter stands on: the schema registry, the event and alert serdes, the log's control
records (ticks, erasures), topics, consumer batches, the key store."""
