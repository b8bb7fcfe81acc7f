"""Scale-out of a GPU app (issue 17) on an inventory of 8 fake H100s: each container gets GPUs of its own
(the version's pinned ones for the first, free ones of the same kind for the others: `spare`), never a GPU
another app holds or another container uses; spares neither restore nor capture (the snapshot was taken
on the pinned GPUs, and a key mismatch would mark it incompatible); freed GPUs are given again; a host
with no free GPU says why in `status`."""

from __future__ import annotations

import threading
import time

from beamctl.agent.service import Agent
from beamctl.protocol import gpus as rules
from tests.agent.test_pool_faults import FakeContainers

EIGHT = [rules.Gpu(i, "NVIDIA H100 80GB HBM3", "H100", 81559, "580.1") for i in range(8)]


class Recording(FakeContainers):
    def __init__(self) -> None:
        super().__init__(create_delay=0.05)
        self.args: dict[str, dict] = {}

    def create(self, args: dict) -> str:
        cid = super().create(args)
        self.args[cid] = dict(args)
        return cid


def agent_with_gpu_app(tmp_path, max_containers: int = 8, containers: Recording | None = None
                       ) -> tuple[Agent, Recording]:
    containers = containers or Recording()
    agent = Agent(tmp_path, containers, gpus=EIGHT)
    for app, devices, state in (("embed", [3], "active"), ("chat", [0], "active")):
        agent.store.ensure_app(app, "sha256:x")
        spec = {"app": app, "image": "img", "gpu": ["H100"], "gpu_count": 1, "gpu_devices": devices, "workers": 1,
                "keep_warm_s": 60, "timeout_s": 5, "cpu": 0.01, "memory_bytes": 1 << 20,
                "max_containers": max_containers if app == "chat" else 1, "tasks_per_container": 1}
        version = agent.store.new_version(app, "img", spec)
        agent.store.set_version_state(app, version, state)
        agent.store.set_active(app, version)
    return agent, containers


def hold(pool, n: int, seconds: float) -> list:
    got, lock = [], threading.Lock()

    def one() -> None:
        live = pool.acquire(timeout=30)
        with lock:
            got.append(live)
        time.sleep(seconds)
        pool.release(live)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return got


def test_each_container_of_a_gpu_app_gets_gpus_of_its_own(tmp_path):
    agent, containers = agent_with_gpu_app(tmp_path)
    embed = agent.state.pool("embed")
    hold(embed, 1, 0.0)  # embed runs a container on its GPU 3
    chat = agent.state.pool("chat")
    hold(chat, 12, 0.5)
    chat_args = [a for a in containers.args.values() if a["labels"]["dev.beamctl.app"] == "chat"]
    devices = [tuple(a["gpus"]) for a in chat_args]
    assert len(devices) == 7, devices  # 8 GPUs, one of them embed's
    assert len(set(devices)) == 7 and ("3",) not in devices and devices[0] == ("0",)
    spares = [live for live in chat.live if live.spare]
    assert len(spares) == 6 and all(live.gpus != ("0",) for live in spares)
    assert "GPU" in (chat.blocked or ""), chat.blocked  # the eighth could not be placed, and status says why
    status = agent.status("chat")["apps"][0]["scaling"]
    assert status["blocked"] == chat.blocked


def test_freed_gpus_are_given_again_and_the_pinned_ones_first(tmp_path):
    agent, containers = agent_with_gpu_app(tmp_path, max_containers=3)
    chat = agent.state.pool("chat")
    hold(chat, 6, 0.3)
    assert len(chat.live) == 3
    for live in chat.idle_out(time.monotonic() + 3600):
        agent.state.retire("chat", live)
    assert chat.live == []
    before = len(containers.created)
    hold(chat, 1, 0.0)
    (live,) = chat.live
    assert live.gpus == ("0",) and not live.spare and len(containers.created) == before + 1


def test_a_spare_container_neither_restores_nor_captures(tmp_path):
    agent, _ = agent_with_gpu_app(tmp_path, max_containers=2)
    chat = agent.state.pool("chat")
    asked: list[str] = []

    class Snaps:
        def restorable(self, version, args_hash):
            asked.append("restorable")
            return None

        def wants_capture(self, version):
            asked.append("wants_capture")
            return False

    chat.snapshots = Snaps()
    hold(chat, 4, 0.3)
    assert len(chat.live) == 2 and sum(live.spare for live in chat.live) == 1
    assert asked.count("restorable") == 1  # the pinned container's start only


def test_a_new_version_takes_its_pinned_gpus_while_the_old_ones_container_still_has_them(tmp_path):
    """Versions of one app share their GPUs during a switch (by design): v2's first container is on the
    pinned GPU beside v1's, not a spare (a spare would boot without its snapshot)."""
    agent, containers = agent_with_gpu_app(tmp_path, max_containers=2)
    chat = agent.state.pool("chat")
    hold(chat, 1, 0.0)
    spec = {**agent.state.spec("chat", 1)}
    v2 = agent.store.new_version("chat", "img2", spec)
    live = chat.start(v2)
    assert (live.gpus, live.spare) == (("0",), False)
    assert [c.gpus for c in chat.live] == [("0",), ("0",)]
    got = agent.state.gpu_set("chat", v2, (0,))  # a second v2 container: a spare
    assert got[1] is True and got[0] not in ((0,), (3,))


def test_a_restarted_agent_adopts_spares_with_the_gpus_they_hold(tmp_path):
    from beamctl.agent.containers import ContainerInfo
    from beamctl.agent.container_args import LABEL_SPARE

    class Restartable(Recording):
        def __init__(self) -> None:
            super().__init__()
            self.addresses: dict[str, str] = {}

        def start(self, cid: str) -> str:
            self.addresses[cid] = super().start(cid)
            return self.addresses[cid]

        def address(self, cid: str) -> str:
            return self.addresses[cid]

        def list(self, agent_id: str) -> list:
            return [ContainerInfo(cid, a["labels"]["dev.beamctl.app"], int(a["labels"]["dev.beamctl.version"]),
                                  cid in self.servers,
                                  tuple((a["labels"].get(LABEL_SPARE) or "").split(",")) if a["labels"].get(LABEL_SPARE)
                                  else ()) for cid, a in self.args.items()]

    containers = Restartable()
    first, _ = agent_with_gpu_app(tmp_path, max_containers=3, containers=containers)
    hold(first.state.pool("chat"), 6, 0.3)
    held = sorted(live.gpus for live in first.state.pool("chat").live)
    assert len(held) == 3

    again = Agent(tmp_path, containers, gpus=EIGHT)  # the agent restarted: same data, same containers
    again.recover()
    adopted = again.state.pool("chat").live
    assert sorted(live.gpus for live in adopted) == held and sum(live.spare for live in adopted) == 2
    got = again.state.gpu_set("chat", 1, (0,))
    assert got[1] is True and got[0][0] not in {int(g) for gpus in held for g in gpus} | {3}


def test_a_gpu_container_made_to_restore_has_no_gpus_hook_and_a_cold_one_has_it(tmp_path):
    """Docker's --gpus hook would run again inside runc's restore and lose the mounts CRIU brings back
    (mountpoints.py): the container a GPU snapshot is restored into is created without it (`restore_target`:
    containers.py gives it the driver's device rules instead). When that restore fails, the container that
    replaces it boots cold, with the hook; a spare never restores, so it has the hook too."""
    from beamctl.agent.checkpoint import RestoreFailed

    agent, containers = agent_with_gpu_app(tmp_path, max_containers=2)
    chat = agent.state.pool("chat")
    failed: list[str] = []

    class Snaps:
        def restorable(self, version, args_hash):
            return None if failed else (tmp_path, 10.0)

        def wants_capture(self, version):
            return False

        def verify(self, version):
            pass

        def restore_failed(self, version, reason):
            failed.append(reason)

    def restore(cid, folder, timeout_s):
        raise RestoreFailed("the restored container lacks the mount at /usr/lib/libcuda.so.1")

    chat.snapshots, containers.restore = Snaps(), restore
    hold(chat, 4, 0.3)
    made = [containers.args[c] for c in containers.created if containers.args[c]["labels"]["dev.beamctl.app"] == "chat"]
    assert made[0]["gpus"] == ["0"] and made[0].get("restore_target") is True
    assert failed == ["the restored container lacks the mount at /usr/lib/libcuda.so.1"]
    assert len(made) == 3 and not any(a.get("restore_target") for a in made[1:])  # the cold one, the spare
    assert [a["gpus"] for a in made[1:]].count(["0"]) == 1


def test_the_driver_s_device_rules_come_from_proc_devices():
    from beamctl.agent.gpus import device_rules

    text = ("Character devices:\n  1 mem\n195 nvidia-frontend\n 10 misc\n508 nvidia-uvm\n509 nvidia-caps\n"
            "\nBlock devices:\n195 nvidia-not-a-char\n  8 sd\n")
    assert device_rules(text) == ["c 195:* rwm", "c 508:* rwm", "c 509:* rwm"]
    assert device_rules("Character devices:\n  1 mem\n") == []  # no driver: none
