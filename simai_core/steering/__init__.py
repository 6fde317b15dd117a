"""Motif ``steering``: an AI learner chooses the next simulations of a running ensemble.

``solver`` (the MPI diffusion solver), ``problem`` (hidden parameters and misfit), ``learner``
(Gaussian process + expected improvement, or random), ``worker`` (one simulation, the pool
worker), ``launchers`` (pool, mpiexec, SmartSim, Dragon), ``steerer`` (the loop) and
``report`` (the FOMs).
"""
