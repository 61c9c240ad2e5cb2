"""Imported by the parse pool's fork server when full text is on, and never otherwise.

A module imported for its effect, as the fork server's preload must be: trafilatura, and the
caches its first extraction fills, are made here once, before any parse process is forked,
so that every process shares them instead of building its own copy (about 43 MB each, of
which jusText's stop words are 27 MB). `gc.freeze()` keeps them shared: the cyclic garbage
collector writes to each object it visits, which would copy their pages into every process.
"""

import gc

from monitor.extract import warm_up

warm_up()
gc.freeze()
