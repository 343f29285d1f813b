"""The pure core: domain logic over plain data, with no I/O and no wall clock."""
