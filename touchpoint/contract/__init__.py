"""The event contract (DESIGN.md §1): Avro schema files, models, checks and codec.

* :mod:`.schemas` finds and loads the ``.avsc`` files in ``schemas/``;
* :mod:`.models` holds the pydantic models and the semantic checks;
* :mod:`.avro` maps models to Avro records and records to Confluent-framed bytes.

Everything here is pure: no I/O beyond reading the schema files once, no clock.
"""

from touchpoint.contract.avro import decode, encode, from_avro_record, to_avro_record
from touchpoint.contract.models import ContractViolation, Event, validate_event
from touchpoint.contract.schemas import event_schema, event_schema_text

__all__ = [
    "ContractViolation",
    "Event",
    "decode",
    "encode",
    "event_schema",
    "event_schema_text",
    "from_avro_record",
    "to_avro_record",
    "validate_event",
]
