"""Whether a lock's holder is provably gone (agent/holders.py): the pure decision and the facts of /proc."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from beamctl.protocol import holders

HERE = holders.Machine(boot_id="b-1", pid_ns="pid:[4026531836]")
NOW = 1_700_000_100.0
SAME = {"pid": 4242, "boot_id": "b-1", "pid_ns": "pid:[4026531836]", "pid_start": 777, "renewed": NOW - 3600}


@pytest.mark.parametrize("record, start_now, want", [
    (SAME, None, "pid 4242 has exited"),
    (SAME, 778, "pid 4242 is now another process"),
    (SAME, 777, None),  # running here: respected however old its heartbeat
    (SAME, holders.UNSEEN, None),  # running, its start time hidden from the agent (hidepid): respected
    ({**SAME, "pid_start": None}, 5, None),  # no start time recorded: a running pid counts as the holder
    ({**SAME, "boot_id": "b-0"}, None, "no heartbeat for 3600 s (lease 60 s)"),  # another boot: the lease
    ({**SAME, "pid_ns": "pid:[1]"}, None, "no heartbeat for 3600 s (lease 60 s)"),  # a container's pids
    ({**SAME, "pid_ns": "pid:[1]", "renewed": NOW - 59}, None, None),  # within the lease
    ({**SAME, "pid_ns": "pid:[1]", "renewed": NOW - 61}, None, "no heartbeat for 61 s (lease 60 s)"),
    ({"pid": 4242, "renewed": NOW - 30}, None, None),  # no facts (an older client): the lease only
    ({"pid": 4242}, None, None),  # nothing to judge by: never taken over (`beamctl unlock` is)
    ({**SAME, "pid": True}, None, "no heartbeat for 3600 s (lease 60 s)"),
])
def test_gone_decides_from_the_record_and_the_facts_here(record, start_now, want):
    assert holders.gone(record, HERE, start_now, NOW) == want


def test_an_agent_that_cannot_read_its_machine_judges_by_the_lease_only():
    unknown = holders.Machine(boot_id=None, pid_ns=None)
    assert holders.gone({**SAME, "boot_id": None, "pid_ns": None}, unknown, None, NOW) == \
        "no heartbeat for 3600 s (lease 60 s)"
    assert holders.gone({**SAME, "boot_id": None, "pid_ns": None, "renewed": NOW}, unknown, None, NOW) is None


def test_facts_of_this_process_and_of_ended_ones():
    me = holders.this_process()
    assert me["boot_id"] == open("/proc/sys/kernel/random/boot_id").read().strip()
    assert me["pid_ns"].startswith("pid:[") and me["pid_start"] == holders.start_time(os.getpid()) > 0
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    started = holders.start_time(child.pid)
    child.wait()
    assert started is None or started >= me["pid_start"]
    assert holders.start_time(child.pid) is None  # reaped: gone
    zombie = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while open(f"/proc/{zombie.pid}/stat").read().rpartition(")")[2].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert holders.start_time(zombie.pid) is None  # ended, not yet reaped: gone too
    zombie.wait()
    assert holders.start_time(0) is None and holders.start_time(-5) is None
