"""One adapter per peer runtime, all exposing the same command line (see ``adapter.py``)."""
