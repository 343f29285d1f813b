"""Operations' tools: alerts on their topics and their tail, the event-time clock, privacy commands."""
