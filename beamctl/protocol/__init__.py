"""What the agent and its clients share, and all they share: the wire (JSON lines, AgentClient), the app
spec, the agent's errors, the host layout, and the rules both sides apply (GPU fit, CRIU versions, lock
holders). Imports only config and errors."""
