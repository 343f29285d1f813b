"""Span attribute names used by Touchpoint's adapters, in one place.

Only ids, counts and positions: never a clear identifier value.
"""

EVENT_ID = "touchpoint.event_id"
EVENT_TYPE = "touchpoint.event_type"
CHANNEL = "touchpoint.channel"
BATCH_SIZE = "touchpoint.batch_size"
MESSAGING_TOPIC = "messaging.destination.name"
MESSAGING_PARTITION = "messaging.kafka.destination.partition"
MESSAGING_OFFSET = "messaging.kafka.message.offset"
PROJECTION = "touchpoint.projection"
HTTP_ROUTE = "http.route"
STAGE = "touchpoint.stage"
OUTCOME = "touchpoint.outcome"
