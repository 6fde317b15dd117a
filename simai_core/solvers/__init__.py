"""Field producers of the online-training workflow: the interface and the real solvers.

:mod:`simai_core.solvers.base` holds the interface every producer implements (the mock
travelling wave and the Devito acoustic solver); :mod:`simai_core.solvers.config` the
solver's settings and sizes (no Devito import); :mod:`simai_core.solvers.acoustic` the
Devito solver itself (imports Devito, an optional dependency: ``pip install -e '.[full]'``).
"""
