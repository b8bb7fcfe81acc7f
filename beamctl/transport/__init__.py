"""Reaching a host (issue 5): ~/.ssh/config, known_hosts, client keys, sessions and remote commands,
the bulk stream, and the SSH error types. Imports neither `beamctl.hosts` nor `beamctl.fleet`."""
