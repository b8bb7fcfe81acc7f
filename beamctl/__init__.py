"""beamctl: declare a GPU app in beam.yaml, build it, roll it out over SSH, start it cold fast."""

__version__ = "0.3.2"
