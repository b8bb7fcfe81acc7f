"""beamctl/units.py: one way to print a size, in a unit that shows it (a 5 kB code layer is not "0.0 MB")."""

from beamctl.units import human_bytes


def test_sizes_read_in_the_unit_that_shows_them():
    assert [human_bytes(n) for n in (0, 999, 1000, 5_120, 999_949, 44_123_456, 1_540_000_000)] == [
        "0 B", "999 B", "1.0 kB", "5.1 kB", "999.9 kB", "44.1 MB", "1.54 GB"]
