"""What a host is and has: the inventory, `hosts check`'s probe and prerequisites, and `hosts install`
(the agent, CRIU). Reaches hosts through `beamctl.transport`; never imports `beamctl.fleet`."""
