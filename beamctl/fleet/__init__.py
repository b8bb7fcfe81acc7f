"""Operations across hosts: deploy (placement, the deploy lock, shipping images, the rollout) and the
app commands' queries. The top of the three layers: imports `beamctl.hosts` and `beamctl.transport`."""
