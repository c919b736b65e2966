"""tests/bench/compare.py, the benchmark against Postfix: its report code on canned
runs (medians, min/max, paired ratios, issue #15 targets, the quiet-machine
warning), and one end-to-end run of a handful of messages through both systems so
that CI notices when the harness breaks. No figure is asserted, only the shape."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import bench_module, require_tool

compare = bench_module("compare")
BENCH = Path(__file__).resolve().parent / "bench" / "compare.py"


def canned(system: str, rnd: int, delivered: float, cpu: float, other: float = 0.05,
           **more: float | list[float]) -> object:
    r = compare.RunResult(system, rnd, 5000, delivered_per_s=delivered, cpu_s_per_1000=cpu,
                          latency_median_ms=4.0 if system == "postfix" else 5.0,
                          pss_load_peak_mb=40.0 if system == "postfix" else 130.0,
                          other_cpu_cores=other, **more)
    return r


RUNS = [
    canned("postfix", 1, 500, 3.0), canned("pymailsys", 1, 550, 2.7),
    canned("pymailsys", 2, 400, 3.0, other=0.9, kernel_cpu_cores=0.25),
    canned("postfix", 2, 500, 2.5),
    canned("postfix", 3, 600, 2.8), canned("pymailsys", 3, 720, 2.8),
]


def test_summary_has_median_min_max_and_paired_ratios() -> None:
    summary = compare.summarize(RUNS)
    assert summary.median["postfix"]["delivered_per_s"] == 500
    assert summary.low["pymailsys"]["delivered_per_s"] == 400
    assert summary.high["pymailsys"]["delivered_per_s"] == 720
    # Paired per round: 550/500, 400/500, 720/600 -> 1.1, 0.8, 1.2, not 550/500.
    ratio = summary.ratios["delivered_per_s"]
    assert (round(ratio["min"], 3), round(ratio["median"], 3), round(ratio["max"], 3)) == (0.8, 1.1, 1.2)
    assert ratio["rounds"] == 3
    assert "other_cpu_cores" not in summary.ratios  # describes the run, not the systems


def test_latency_pooled_over_all_probes_of_all_rounds() -> None:
    """Beside the median of the per-round ratios, the median of every probe of each
    system, and their ratio, in the report."""
    runs = [canned("postfix", 1, 500, 3.0, latencies_ms=[3.0, 3.2, 9.0]),
            canned("pymailsys", 1, 500, 3.0, latencies_ms=[3.4, 3.6]),
            canned("postfix", 2, 500, 3.0, latencies_ms=[3.1, 3.3]),
            canned("pymailsys", 2, 500, 3.0, latencies_ms=[3.5, 9.5, 3.3])]
    summary = compare.summarize(runs)
    assert summary.pooled_latency == {"postfix": (3.2, 5), "pymailsys": (3.5, 5)}
    assert compare.summarize(RUNS).pooled_latency == {}  # no probes: no line
    meta = {"params": {"messages": 5000, "size": 2048, "sessions": 10,
                       "reuse_connections": False, "scenario": "local", "rounds": 2,
                       "warmup": 300, "latency": 3, "set": [], "quiet_threshold": 0.5},
            "host": {"cpus": 2, "kernel": "x"}, "cpu_accounting": "v2", "versions": {}}
    text = compare.report(runs, summary, {}, meta)
    assert ("median of all probes of all rounds: postfix 3.20 ms (5 probes), pymailsys "
            "3.50 ms (5 probes); ratio 1.09x") in text


def test_targets_are_issue_15s_per_scenario() -> None:
    summary = compare.summarize(RUNS)
    local = compare.targets("local", summary)
    assert [text.split(":")[0] for text in local] == ["goal 1"] * 4
    rate = next(ok for text, ok in local.items() if "rate" in text)
    assert rate is False  # 1.1 x < 1.25 x
    assert all(text.startswith("goal 2") for text in compare.targets("relay", summary))
    large = compare.targets("large", compare.summarize(
        [canned("postfix", 1, 1, 1, cpu_ms_per_mb=4.0),
         canned("pymailsys", 1, 1, 1, cpu_ms_per_mb=20.0)]))
    assert list(large.values()) == [False] and "goal 4" in next(iter(large))


def test_report_names_accounting_config_and_noise() -> None:
    summary = compare.summarize(RUNS)
    meta = {
        "host": {"cpus": 2, "kernel": "test"},
        "params": {"messages": 5000, "size": 2048, "sessions": 10, "reuse_connections": False,
                   "scenario": "local", "rounds": 3, "warmup": 300, "latency": 50, "set": [],
                   "quiet_threshold": 0.25},
        "cpu_accounting": "v2",
        "filesystem": "/dev/loop0 on /var/tmp/x/mnt, ext4 (rw,relatime), with a journal",
        "versions": {"postfix": "Postfix 3.7.11", "pymailsys": "pymailsys abc"},
        "configs": {"postfix": {"style": "stock", "summary": "Debian's",
                                "settings": ["alias_maps = hash:DIR/etc/aliases"]}},
    }
    text = compare.report(RUNS, summary, compare.targets("local", summary), meta)
    assert "cgroup v2 cpu.stat" in text and "exited ones too" in text
    assert "postfix configuration (stock): Debian's" in text
    assert "    alias_maps = hash:DIR/etc/aliases" in text
    warning = next(line for line in text.splitlines() if line.startswith("WARNING"))
    assert "pymailsys round 2: 0.90" in warning and "1 of 6 runs" in warning
    row = next(line for line in text.splitlines() if "delivered end to end" in line)
    assert "500 [500-600]" in row and "550 [400-720]" in row and "1.10 [0.80-1.20]x" in row
    assert "issue #15 targets" in text and "[NOT met] goal 1: local delivery rate" in text
    assert "instances on: /dev/loop0 on /var/tmp/x/mnt, ext4 (rw,relatime), with a journal" in text
    assert "the filesystem synced (syncfs)" in text
    run_line = next(line for line in text.splitlines() if line.startswith("  pymailsys round 2:"))
    assert "(user " in run_line and ", system " in run_line  # per-round user/system CPU
    assert "kernel 0.25  other 0.90 CPUs" in run_line


def test_kernel_threads_cpu_is_theirs_and_never_negative(tmp_path: Path) -> None:
    """The kernel threads' CPU: processes flagged PF_KTHREAD, whatever their name; between
    two readings each thread alive at the end counts from where it was (or from zero),
    and a kworker that exited in between cannot make the figure negative."""
    tick = compare.TICK

    def process(pid: int, comm: str, flags: int, utime: int, stime: int) -> None:
        (tmp_path / str(pid)).mkdir(exist_ok=True)
        fields = ["S", "2", "0", "0", "0", "-1", str(flags), "0", "0", "0", "0",
                  str(utime), str(stime), "0", "0", "20", "0", "1"]
        (tmp_path / str(pid) / "stat").write_text(f"{pid} ({comm}) " + " ".join(fields) + "\n")

    process(25, "kworker/u8:6-loop0", 0x04208060, 40, 60)
    process(31, "jbd2/loop0-8", 0x00208040, 0, 5)
    process(900, "kworker (a user process named so)", 0x00400100, 700, 300)
    (tmp_path / "self").mkdir()  # not a process directory
    before = compare.kernel_threads(str(tmp_path))
    assert before == {25: pytest.approx(100 / tick), 31: pytest.approx(5 / tick)}
    process(31, "jbd2/loop0-8", 0x00208040, 0, 25)  # +20 ticks
    process(40, "kworker/u8:9-writeback", 0x04208060, 3, 4)  # new: +7
    (tmp_path / "25" / "stat").unlink()  # exited, with its 100 ticks
    (tmp_path / "25").rmdir()
    after = compare.kernel_threads(str(tmp_path))
    assert compare.kernel_cpu_between(before, after) == pytest.approx(27 / tick)
    process(31, "kworker/0:2", 0x04208060, 0, 2)  # pid 31 reused by a younger thread
    assert compare.kernel_cpu_between(before, compare.kernel_threads(str(tmp_path))) == \
        pytest.approx(9 / tick)
    real = compare.kernel_threads()  # none visible in a PID namespace: then empty
    assert all(cpu >= 0 for cpu in real.values())
    assert compare.kernel_cpu_between(real, compare.kernel_threads()) >= 0


def test_mount_description_names_device_point_type_and_options() -> None:
    text = compare.mount_description("/")
    assert " on /, " in text and "(" in text


@pytest.mark.root
def test_scratch_filesystem_is_a_journaled_ext4_removed_after() -> None:
    require_tool("losetup")
    with compare.scratch_filesystem("ext4") as fs:
        assert "ext4" in fs.description and "with a journal" in fs.description
        assert "discard" not in fs.description.split("(", 1)[1]
        image = Path(fs.description.split(" image ", 1)[1].split()[0])
        (Path(fs.path) / "probe").write_text("x")
    assert not Path(fs.path).exists() and not image.exists()
    attached = subprocess.run(["losetup", "--list", "--noheadings", "--output", "BACK-FILE"],
                              capture_output=True, text=True, check=True).stdout
    assert str(image) not in attached


def test_scenario_defaults_fill_what_is_not_given() -> None:
    large = compare.parse_args(["--scenario", "large"])
    assert (large.messages, large.size, large.sessions) == (20, 10_000_000, 2)
    local = compare.parse_args(["--messages", "7"])
    assert (local.messages, local.size, local.warmup, local.rounds) == (7, 2048, 300, 5)


@pytest.mark.root
def test_a_small_run_through_both_systems(tmp_path: Path) -> None:
    require_tool(compare.SMTP_SOURCE)
    out = tmp_path / "bench.json"  # the instances go to /tmp: pytest's tmp_path is 0700
    result = subprocess.run(
        [sys.executable, str(BENCH), "--messages", "20", "--rounds", "1", "--warmup", "5",
         "--latency", "2", "--sessions", "4", "--retries", "0", "--json", str(out)],
        capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert sorted(r["system"] for r in data["runs"]) == ["postfix", "pymailsys"]
    for run in data["runs"]:
        assert run["delivered_per_s"] > 0 and run["cpu_user_s"] + run["cpu_system_s"] > 0
        assert run["warmup_messages"] == 5 and len(run["latencies_ms"]) == 2
    assert "delivered_per_s" in data["paired_ratios"]
    assert "issue #15 targets" in result.stdout
    assert "with a journal" in data["filesystem"] and data["params"]["fs"] == "ext4"
    assert all("settle_s" in run for run in data["runs"])


@pytest.mark.root
def test_drain_rate_times_delivery_alone_for_both_systems() -> None:
    """drain_rate.py: messages held at RCPT, released, timed to the last Maildir file."""
    require_tool(compare.SMTP_SOURCE)
    result = subprocess.run(
        [sys.executable, str(BENCH.parent / "drain_rate.py"), "--messages", "20", "--rounds", "1",
         "--warmup", "5"], capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stderr[-3000:]
    for label in ("postfix", "pymailsys"):
        assert re.search(rf"^{label} +round 1: 20 delivered in [\d.]+ s = \d+/s, CPU [\d.]+ "
                         r"ms/message, [\d.]+ journal commits/message$", result.stdout, re.M), \
            result.stdout
    assert re.search(r"^pymailsys/postfix: median of the paired ratios [\d.]+$", result.stdout,
                     re.M), result.stdout


@pytest.mark.root
def test_a_scratch_filesystem_left_by_a_killed_run_is_swept() -> None:
    require_tool("losetup")
    killed = subprocess.run(
        [sys.executable, "-c", "import os, sys; sys.path.insert(0, sys.argv[1]); import compare\n"
         "with compare.scratch_filesystem('ext4') as fs:\n"
         "    print(fs.path, flush=True); os.kill(os.getpid(), 9)", str(BENCH.parent)],
        capture_output=True, text=True, timeout=120)
    mount = Path(killed.stdout.strip())
    assert killed.returncode == -9 and mount.is_mount()
    compare.sweep_stale_filesystems()
    assert not mount.exists() and not mount.parent.exists()


AB = BENCH.parent / "ab_latency.py"


def test_ab_latency_summary_and_build_class() -> None:
    """ab_latency: medians, paired ratio and halves of canned paired probes; a build is
    a PymailsysSystem running another venv's python under its own label."""
    import statistics

    ab = bench_module("ab_latency")
    a = [4.0, 4.2, 3.9, 4.1, 5.0, 5.2]
    b = [3.8, 4.0, 3.9, 3.9, 4.9, 5.5]
    s = ab.summary(a, b)
    assert (s["a"], s["b"]) == (statistics.median(a), statistics.median(b))
    assert s["ratio_of_medians"] == pytest.approx(statistics.median(b) / statistics.median(a))
    pairs = list(zip(a, b, strict=True))
    assert s["paired_ratio"] == pytest.approx(statistics.median(y / x for x, y in pairs))
    assert s["paired_ratio"] < 1 < max(y / x for x, y in pairs)
    assert (s["a_first_half"], s["b_second_half"]) == (4.0, 4.9)
    build = ab.build_class("wt-one", "/opt/venvs/one/bin/python")
    assert issubclass(build, ab.compare.PymailsysSystem)
    assert (build.label, build.python) == ("wt-one", "/opt/venvs/one/bin/python")
    assert ab.compare.PymailsysSystem.python == sys.executable


def test_ab_latency_step_table() -> None:
    """ab_latency's step table: each side's median per step in µs, in compare.py's
    LATENCY_STEPS order, and B - A."""
    ab = bench_module("ab_latency")
    assert ab.compare.LATENCY_STEPS == ("banner", "ehlo", "mail", "rcpt", "data", "delivery")
    a = {name: [0.1, 0.3, 0.2] for name in ab.compare.LATENCY_STEPS}
    b = {name: [0.4, 0.5, 0.6] for name in ab.compare.LATENCY_STEPS}
    a["rcpt"] = [0.6, 0.7, 0.5]
    head, row_a, row_b, diff = ab.step_table(["postfix", "wt"], {"postfix": a, "wt": b})
    assert head.split()[-2:] == ["DATA..250", "250..Maildir"]
    assert row_a.split()[:2] == ["postfix", "(A)"] and row_b.split()[:2] == ["wt", "(B)"]
    assert row_a.split()[2:] == ["200", "200", "200", "600", "200", "200"]
    assert diff.split()[3:] == ["+300", "+300", "+300", "-100", "+300", "+300"]


@pytest.mark.root
def test_ab_latency_runs_a_build_against_itself(tmp_path: Path) -> None:
    require_tool(compare.SMTP_SOURCE)
    venv = str(Path(sys.executable).parent.parent)
    out = tmp_path / "ab.json"
    result = subprocess.run([sys.executable, str(AB), venv, venv, "--messages", "4",
                             "--one-fs", "--gap", "0", "--json", str(out)],
                            capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    first, second = data["latencies_ms"].values()
    assert len(first) == len(second) == 4 and min(first + second) > 0
    assert "median of the paired ratios" in result.stdout
    # --gap 0: the probes back to back, said in the first line and the JSON
    assert "4 probes each, 0 ms apart" in result.stdout.splitlines()[0] and data["gap_s"] == 0
    # --one-fs: both builds on one scratch filesystem, so one journal
    assert len(set(data["filesystems"].values())) == 1
    assert result.stdout.rstrip().endswith("(one journal)")


@pytest.mark.root
def test_ab_latency_runs_a_build_against_postfix(tmp_path: Path) -> None:
    """``postfix`` as a side: compare.py's Postfix system is probed, interleaved with the
    build, whichever side it is on; two ``postfix`` sides are refused."""
    require_tool(compare.SMTP_SOURCE)
    venv = str(Path(sys.executable).parent.parent)
    out = tmp_path / "ab.json"
    result = subprocess.run([sys.executable, str(AB), "postfix", venv, "--messages", "3",
                             "--json", str(out)], capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert list(data["latencies_ms"]) == ["postfix", Path(venv).resolve().name]
    assert all(len(probes) == 3 and min(probes) > 0 for probes in data["latencies_ms"].values())
    assert result.stdout.startswith("postfix (A): median ")
    assert result.stdout.splitlines()[0].endswith("3 probes each, 20 ms apart")  # PROBE_GAP
    # each probe's steps, connect -> 220 to 250 -> Maildir, add up to its latency
    for label, probes in data["latencies_ms"].items():
        steps = data["steps_ms"][label]
        assert list(steps) == list(compare.LATENCY_STEPS)
        assert all(len(times) == 3 and min(times) > 0 for times in steps.values())
        for i, total in enumerate(probes):
            assert sum(times[i] for times in steps.values()) == pytest.approx(total, abs=0.01)
    table = result.stdout[result.stdout.index("step medians (us)"):].splitlines()
    assert table[1].startswith("postfix (A) ") and table[3].startswith("B - A ")
    # by default each side has a scratch filesystem (a loop device, a journal) of its own
    devices = data["filesystems"]
    assert list(devices) == list(data["latencies_ms"])
    assert len(set(devices.values())) == 2 and all(d.startswith("/dev/loop") for d in devices.values())
    assert table[4].startswith("filesystems: postfix on /dev/loop") and table[4].endswith("(a journal each)")
    both = subprocess.run([sys.executable, str(AB), "postfix", "postfix"],
                          capture_output=True, text=True, timeout=60)
    assert both.returncode == 2 and "postfix against itself" in both.stderr
    negative = subprocess.run([sys.executable, str(AB), "postfix", venv, "--gap", "-1"],
                              capture_output=True, text=True, timeout=60)
    assert negative.returncode == 2 and "--gap -1.0: a pause cannot be negative" in negative.stderr


FLOOR = BENCH.parent / "latency_floor.py"


def test_latency_floor_delivers_a_message_and_leaves_no_queue_file(tmp_path: Path) -> None:
    """latency_floor.py, the yardstick: started, it takes a message over SMTP, writes the
    Maildir file (un-dot-stuffed, with its Received: header), logs a line per daemon,
    removes the queue file; stopped, its four processes are gone."""
    import os
    import smtplib

    from harness import free_port, wait_until

    maildir = tmp_path / "Maildir"
    for sub in ("tmp", "new"):
        (maildir / sub).mkdir(parents=True)
    base, port = tmp_path / "floor", free_port()
    subprocess.run([sys.executable, str(FLOOR), "start", str(base), str(port), str(os.getuid()),
                    str(os.getgid()), str(maildir)], check=True, timeout=60)
    pids = [int(pid) for pid in (base / "floor.pids").read_text().split()]
    try:
        assert len(pids) == 4
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            refused = client.sendmail("a@example.org", ["b@example.org"],
                                      b"Subject: floor\r\n\r\n.a dot line\r\nend\r\n")
            assert refused == {}
        wait_until(lambda: any((maildir / "new").iterdir()), 10, what="the Maildir file")
        (mail,) = (maildir / "new").iterdir()
        text = mail.read_bytes()
        assert text.startswith(b"Delivered-To: b@example.org\nReceived: by floor with ESMTP id ")
        assert text.endswith(b"\nSubject: floor\n\n.a dot line\nend\n")
        wait_until(lambda: not any((base / "spool" / "active").iterdir()), 10, what="the queue to empty")
        assert not any((base / "spool" / "incoming").iterdir())
        maillog = base / "log" / "maillog"
        # qmgr logs "removed" right after the unlink that empties active/, and cleanup
        # logs after its fsync, which can end after the delivery: wait for every line
        wanted = [": removed"] + [f" floor/{daemon}[" for daemon in
                                  ("smtpd", "cleanup", "qmgr", "local")]
        wait_until(lambda: all(w in maillog.read_text() for w in wanted), 10,
                   what="a log line from each daemon and the removed line")
        log = maillog.read_text()
        assert "status=sent" in log
    finally:
        subprocess.run([sys.executable, str(FLOOR), "stop", str(base)], timeout=60)

    def running(pid: int) -> bool:  # reparented when start exited: not ours to reap
        fields = compare.proc_stat(pid)  # index 0: the state
        return fields is not None and fields[0] != "Z"
    wait_until(lambda: not any(running(pid) for pid in pids), 10, what="the floor's processes to exit")


def test_latency_path_names_the_daemons_of_every_system() -> None:
    """latency_path.py groups processes by daemon: Postfix's, pymailsys's and the floor's
    command lines name the same roles, so their per-daemon CPU lines up."""
    path = bench_module("latency_path")
    assert path.role_of("qmgr -l -t unix -u") == "qmgr"
    assert path.role_of("/usr/lib/postfix/sbin/master -w") == "master"
    assert path.role_of("/opt/venv/bin/python -P -m pymailsys.daemons.local") == "local"
    assert path.role_of("/usr/bin/python3 /r/tests/bench/latency_floor.py cleanup /b") == "cleanup"
    assert path.role_of("/usr/bin/python3 /r/tests/bench/latency_floor.py start /b") == "other"
    assert path.role_of("/usr/bin/python3 /tmp/smtpdx.py") == "other"


@pytest.mark.root
def test_ab_latency_runs_the_floor_against_postfix(tmp_path: Path) -> None:
    """``floor`` as a side: latency_floor.py's pipeline (compare.FloorSystem) is created,
    warmed up and probed beside Postfix; the floor against itself is refused."""
    require_tool(compare.SMTP_SOURCE)
    out = tmp_path / "ab.json"
    result = subprocess.run([sys.executable, str(AB), "floor", "postfix", "--messages", "3",
                             "--json", str(out)], capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert list(data["latencies_ms"]) == ["floor", "postfix"]
    assert all(len(probes) == 3 and min(probes) > 0 for probes in data["latencies_ms"].values())
    assert result.stdout.startswith("floor (A): median ")
    same = subprocess.run([sys.executable, str(AB), "floor", "floor"],
                          capture_output=True, text=True, timeout=60)
    assert same.returncode == 2 and "floor against itself" in same.stderr


def test_cleanup_cpu_times_requests_from_cold_caches() -> None:
    """cleanup_cpu.py --cold: each request after the caches were evicted, one median a
    round, for both stages; --idle: after a sleep instead, never a negative one."""
    script = BENCH.parent / "cleanup_cpu.py"
    for stage in ("handle", "assemble"):
        result = subprocess.run([sys.executable, str(script), "--cold", "--stage", stage,
                                 "--messages", "5", "--rounds", "2"],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-3000:]
        m = re.fullmatch(rf"{stage}: ([\d.]+) ([\d.]+) us/request, cold caches \(median\); "
                         r"median ([\d.]+)\n", result.stdout)
        assert m is not None, result.stdout
        assert all(float(figure) > 0 for figure in m.groups())
    idle = subprocess.run([sys.executable, str(script), "--idle", "0.001", "--messages", "5",
                           "--rounds", "1"], capture_output=True, text=True, timeout=120)
    assert idle.returncode == 0, idle.stderr[-3000:]
    assert re.fullmatch(r"handle: [\d.]+ us/request, 0\.001 s idle before each \(median\); "
                        r"median [\d.]+\n", idle.stdout), idle.stdout
    negative = subprocess.run([sys.executable, str(script), "--idle", "-1"],
                              capture_output=True, text=True, timeout=60)
    assert negative.returncode == 2 and "cannot be negative" in negative.stderr


@pytest.mark.root
def test_local_cpu_delivers_from_cold_caches() -> None:
    """local_cpu.py --cold: every request is a delivery (it stops at the first that is
    not), the client and local on one CPU."""
    script = BENCH.parent / "local_cpu.py"
    result = subprocess.run([sys.executable, str(script), "--cold", "--tmpfs",
                             "--messages", "5", "--rounds", "1"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"^median of 1 rounds: local [\d.]+ ms/delivery .* median request "
                     r"[\d.]+ ms$", result.stdout, re.M), result.stdout


def test_stage_busy_counts_only_the_slices_inside_the_load() -> None:
    """stage_busy.py: each process's share of the window asleep and in fsync, from
    bpftrace's half-second slices; a slice counts when all of it lies inside the load
    (its sums are of calls that returned in the half second before its line), so the
    idle time before and after the load does not."""
    busy = bench_module("stage_busy")
    s = 10**9
    trace = "\n".join([
        "Attaching 9 probes...",
        f"slice {10 * s}", "@asleep[7]: 500000000",  # before the load: not counted
        f"slice {int(10.5 * s)}", "@asleep[7]: 200000000",
        f"slice {11 * s}", "@asleep[7]: 100000000", "@fsync[8]: 250000000", "",
        f"slice {int(11.5 * s)}", "@asleep[7]: 150000000", "@asleep[8]: 50000000",
        "@fsync[8]: 250000000",
        f"slice {12 * s}", "@asleep[7]: 500000000",  # ends after the load: not counted
    ])
    window, shares = busy.shares(trace, 10 * s, int(11.6 * s))
    assert window == 1.5
    assert shares == {7: {"asleep": pytest.approx(0.3)},
                      8: {"asleep": pytest.approx(0.05 / 1.5), "fsync": pytest.approx(0.5 / 1.5)}}
    with pytest.raises(busy.compare.BenchError):
        busy.shares(trace, 20 * s, 21 * s)


def test_stage_busy_counts_the_journal_commits_that_end_inside_the_load(tmp_path: Path) -> None:
    """stage_busy.py: journal commits per message come from bpftrace's ``commit START
    END`` lines; a commit counts when it ends inside the load, and its time inside the
    load (clipped) is the share of the load with a commit running."""
    busy = bench_module("stage_busy")
    trace = "\n".join([
        "Attaching 12 probes...",
        "commit 10 90",  # ends before the load: not counted
        "commit 50 150",  # began before it: counted, 50 ns of it inside
        "slice 200",
        "commit 300 500",
        "@asleep[7]: 10",
        "commit 600 900",
        "commit 950 1100",  # ends after the load: not counted, 50 ns inside
    ])
    count, mean_us, running = busy.commits(trace, 100, 1000)
    assert count == 3
    assert mean_us == pytest.approx((100 + 200 + 300) / 3 / 1000)
    assert running == pytest.approx((50 + 200 + 300 + 50) / 900)
    assert busy.commits("", 0, 10) == (0, 0.0, 0.0)
    st_dev = os.stat(tmp_path).st_dev
    assert busy.kernel_device(tmp_path) == (os.major(st_dev) << 20) | os.minor(st_dev)
