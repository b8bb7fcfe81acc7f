"""The fleet: hosts reached over SSH (issue 5). This package holds the trust layer so far:
ssh config resolution, host keys, client keys, connections and remote commands, the inventory,
and `hosts check`'s probe."""
