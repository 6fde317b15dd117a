"""SimAI-Bench core library: staging backends, workflow components, FOM schema and pytest plumbing.

Importing it loads no optional dependency (torch, mpi4py, smartredis, dragon...): each is
imported by the module that needs it.
"""

__version__ = "0.1.0"
