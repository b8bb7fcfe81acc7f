"""The host agent: one long-running process per host that owns deployments, containers, volumes,
tasks and their records. beamctl talks to it over its control socket (DESIGN.md, "Agent")."""
