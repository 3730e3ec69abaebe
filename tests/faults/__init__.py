"""Fault-injection suite: real worker processes, a real Redis and a breakable proxy."""
