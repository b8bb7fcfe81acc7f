from __future__ import annotations

from beamctl.image.steps import BuildLog, explain_failure

STREAM = """Step 1/4 : FROM base
 ---> 1234
Step 2/4 : COPY site/ /opt/site/
 ---> Using cache
 ---> abcd
Step 3/4 : ENV A=1
 ---> Using cache
 ---> ef01
Step 4/4 : COPY app/ /app/
 ---> 9876
Successfully built 9876
"""


def test_steps_and_cache_hits_are_counted():
    seen = []
    log = BuildLog(seen.append)
    for line in STREAM.splitlines(keepends=True):
        log.feed(line)
    log.finish()
    assert [(s.index, s.cached, s.writes_layer) for s in seen] == [
        (1, False, False), (2, True, True), (3, True, False), (4, False, True)]
    assert (log.built, log.cached) == (1, 1)


def test_apt_failure_is_one_line_with_the_package():
    tail = ["Reading package lists...", "Building dependency tree...", "E: Unable to locate package ffmpg"]
    message, hint = explain_failure("The command '/bin/sh -c apt-get install ffmpg' returned a non-zero "
                                    "code: 100", tail)
    assert message == ("apt cannot find the package 'ffmpg' (image.system_packages): "
                       "E: Unable to locate package ffmpg")
    assert "packages.debian.org" in hint


def test_disk_full_is_named():
    message, hint = explain_failure("write /var/lib/docker/tmp/x: no space left on device", [])
    assert message.startswith("the disk is full") and "--prune" in hint


def test_failed_command_shows_its_last_lines():
    tail = [f"line {i}" for i in range(20)] + [" ---> Running in abc"]
    message, _ = explain_failure("The command '/bin/sh -c make all' returned a non-zero code: 2", tail)
    assert message == ("the build command `make all` failed with exit code 2; its last output:\n  "
                       + "\n  ".join(f"line {i}" for i in range(14, 20)))


def test_lines_cut_across_chunks_are_joined():
    log = BuildLog(lambda s: None)
    for chunk in ["Step 1/1 : RUN apt-get install x\n", "E: Unable to loc", "ate package x\n", "tail without newline"]:
        log.feed(chunk)
    log.finish()
    assert list(log.tail) == ["E: Unable to locate package x", "tail without newline"]


def test_colour_codes_from_the_engine_are_dropped():
    log = BuildLog(lambda s: None)
    for chunk in ["Step 1/1 : RUN apt-get install x\n", "\x1b[91mE\x1b[0m\x1b[91m: Unable to locate package x\n",
                  "\x1b[0mRemoving intermediate container ca431016e7aa\n"]:
        log.feed(chunk)
    message, _ = explain_failure("The command '/bin/sh -c apt-get install x' returned a non-zero code: 100",
                                 log.tail)
    assert message.startswith("apt cannot find the package 'x' (image.system_packages)")
