"""The ways in: the HTTP gateway, the producer library for Python channel systems, file import."""
