"""The in-container runtime: what runs as the container's process.

Standard library only: this package is copied into every image (as `beamctl_runtime`,
beside the app, not inside it) and must run on whatever Python the image has.
Nothing here imports the rest of beamctl.
"""
