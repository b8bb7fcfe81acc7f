"""beamctl.agent.mountpoints: the pure parts (the engine's tier is test_hook_mounts.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from beamctl.agent import mountpoints as mp

MOUNTINFO = """\
1408 1380 0:190 / / rw,relatime master:52 - overlay overlay rw,lowerdir=/l1:/l2,upperdir=/u,workdir=/w
1409 1408 0:193 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
1410 1408 0:194 / /dev rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755
1425 1408 254:0 /var/lib/docker/containers/abc/resolv.conf /etc/resolv.conf rw,relatime - ext4 /dev/vda rw
1429 1408 254:0 /opt/x/hooked.txt /etc/with\\040space.txt rw,relatime - ext4 /dev/vda rw
1430 1410 0:6 /beamctl-fake0 /dev/beamctl-fake0 rw,relatime - devtmpfs devtmpfs rw
"""


def test_on_rootfs_is_the_mounts_whose_parent_is_the_root_mount() -> None:
    assert mp.on_rootfs(MOUNTINFO) == ["/dev", "/etc/resolv.conf", "/etc/with space.txt", "/proc"]
    assert "/dev/beamctl-fake0" in mp.mounted(MOUNTINFO)  # under /dev's tmpfs: CRIU's images hold its files


def test_record_and_read_back(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    root = proc / "7/root"
    (root / "proc").mkdir(parents=True)
    (root / "dev").mkdir()
    (root / "etc").mkdir()
    (root / "etc/resolv.conf").write_text("")
    (root / "etc/with space.txt").write_text("")
    (proc / "7/mountinfo").write_text(MOUNTINFO)
    snap = tmp_path / "snap"
    snap.mkdir()
    found = mp.record(7, snap, proc=proc)
    assert found == [mp.Mountpoint("/dev", True), mp.Mountpoint("/etc/resolv.conf", False),
                     mp.Mountpoint("/etc/with space.txt", False), mp.Mountpoint("/proc", True)]
    assert mp.recorded(snap) == found
    assert oct((snap / mp.MOUNTPOINTS).stat().st_mode & 0o777) == "0o600"
    assert mp.recorded(tmp_path) == []  # a snapshot from before this record: nothing to make


@pytest.mark.parametrize("rows", [[["../etc/x", False]], [["etc/x", False]], [["/a/../../x", True]],
                                  [["/x", "yes"]], [[1, False]]])
def test_a_damaged_record_is_an_error(tmp_path: Path, rows: list) -> None:
    (tmp_path / mp.MOUNTPOINTS).write_text(json.dumps({"mountpoints": rows}))
    with pytest.raises(ValueError):
        mp.recorded(tmp_path)


def test_make_only_what_no_layer_has_and_never_over_a_symlink(tmp_path: Path) -> None:
    upper, lower = tmp_path / "upper", tmp_path / "lower"
    (lower / "etc").mkdir(parents=True)
    (lower / "etc/resolv.conf").write_text("")
    (lower / "usr/lib").mkdir(parents=True)
    os.symlink("usr/lib", lower / "lib")  # merged /usr: /lib is a link
    upper.mkdir()
    wanted = [mp.Mountpoint("/etc/resolv.conf", False), mp.Mountpoint("/etc/hooked.txt", False),
              mp.Mountpoint("/usr/lib/x86_64-linux-gnu/libcuda.so.1", False), mp.Mountpoint("/run/nvidia", True),
              mp.Mountpoint("/lib/firmware/nvidia", True), mp.Mountpoint("/", True)]
    made = mp.make(upper, [lower], wanted)
    assert made == ["/etc/hooked.txt", "/usr/lib/x86_64-linux-gnu/libcuda.so.1", "/run/nvidia"]
    assert (upper / "etc/hooked.txt").is_file() and (upper / "run/nvidia").is_dir()
    assert not (upper / "etc/resolv.conf").exists()  # the image has it
    assert not (upper / "lib").exists()  # a folder there would hide the image's /lib -> usr/lib
    assert mp.make(upper, [lower], wanted) == []  # made once


def test_missing_names_what_the_restore_lacks() -> None:
    wanted = [mp.Mountpoint("/etc/resolv.conf", False), mp.Mountpoint("/etc/hooked.txt", False)]
    assert mp.missing(MOUNTINFO, wanted) == ["/etc/hooked.txt"]


def test_lost_reads_the_restored_process_and_a_gone_one_has_lost_everything(tmp_path: Path) -> None:
    wanted = [mp.Mountpoint("/etc/resolv.conf", False), mp.Mountpoint("/etc/hooked.txt", False)]
    (tmp_path / "9").mkdir()
    (tmp_path / "9/mountinfo").write_text(MOUNTINFO)
    assert mp.lost(9, wanted, proc=tmp_path) == ["/etc/hooked.txt"]
    assert mp.lost(10, wanted, proc=tmp_path) == ["/etc/resolv.conf", "/etc/hooked.txt"]
    assert mp.lost(10, [], proc=tmp_path) == []  # a snapshot from before the record: nothing to check
