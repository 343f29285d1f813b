"""PostgreSQL projections: mappers (records -> rows) and one transactional writer.

A projection is rebuilt by dropping its read model and replaying the log;
because rows and the consumed offsets are written in one transaction, a
crash anywhere leaves the two consistent and a restart resumes exactly where
the last commit stopped.
"""
