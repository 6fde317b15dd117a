"""pytest integration: options, MPI plumbing, staging fixtures and FOM recording."""
