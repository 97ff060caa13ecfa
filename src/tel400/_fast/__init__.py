"""The compiled hot path (Cython).  Import through ``tel400._impl`` only."""
