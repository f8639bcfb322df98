"""`make bench`: run every benchmark, then rewrite the results section of bench/README.md.

The section between the two ``results`` markers of the README is replaced by this run's
machine description and tables; the text around it (the method) is left alone. Raw figures
go to bench/out/results.json (not committed). Everything is written under bench/out/, on the
disk of the working tree: never /tmp, which may be a tmpfs where fsync costs nothing.
"""

from __future__ import annotations

import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import time
from typing import Any

import backup
import commit
import delivery
import directory
import mail
import recovery
import restore

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "out")
README = os.path.join(HERE, "README.md")
BEGIN = "<!-- results:begin (written by bench/run.py: edits inside are overwritten) -->"
END = "<!-- results:end -->"


def log(msg: str) -> None:
    print(msg, flush=True)


# -- machine -------------------------------------------------------------------------------
def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _mount_of(path: str) -> tuple[str, str, str]:
    """(mount point, file system type, options) of the file system holding ``path``."""
    best = ("/", "?", "")
    path = os.path.realpath(path)
    for line in _read("/proc/mounts").splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        mnt = parts[1]
        if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best[0]):
            best = (mnt, parts[2], parts[3])
    return best


def _disk_of(path: str) -> str:
    st = os.stat(path)
    sysdev = os.path.realpath(f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}")
    if not os.path.exists(sysdev):
        return "unknown block device"
    if os.path.exists(os.path.join(sysdev, "partition")):
        sysdev = os.path.dirname(sysdev)
    name = os.path.basename(sysdev)
    rotational = _read(os.path.join(sysdev, "queue", "rotational"))
    cache = _read(os.path.join(sysdev, "queue", "write_cache"))
    model = _read(os.path.join(sysdev, "device", "model"))
    bus = "virtio" if "virtio" in sysdev else ("nvme" if name.startswith("nvme") else "")
    kind = {"0": "non-rotational", "1": "rotational"}.get(rotational, "rotational flag unknown")
    if bus == "virtio":  # the flag says nothing there: the fsync probe below characterizes the disk
        kind = f"rotational flag {rotational or '?'} (a virtio disk reports 1 whatever backs it)"
    desc = " ".join(x for x in (bus, "block device", name) if x)
    return f"{desc}{f' ({model})' if model else ''}, {kind}, write cache: {cache or 'unknown'}"


def machine_info() -> dict[str, Any]:
    cpu, hypervisor = "", False
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name") and not cpu:
            cpu = line.split(":", 1)[1].strip()
        elif line.startswith("flags"):
            hypervisor = hypervisor or "hypervisor" in line.split()
    mem_kb = 0
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    try:
        virt = subprocess.run(["systemd-detect-virt"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        virt = ""
    try:
        rev = subprocess.run(["git", "-C", HERE, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", HERE, "status", "--porcelain", "--", "../src"], capture_output=True,
                               text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev, dirty = "", ""
    mnt, fstype, opts = _mount_of(OUT)
    tmp_fs = _mount_of("/tmp")[1]
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "virtualization": f"{virt or 'none detected'} (systemd-detect-virt)"
        + ("; the CPU reports running under a hypervisor" if hypervisor else ""),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "disk": _disk_of(OUT),
        "filesystem": f"{fstype} on {mnt} ({opts})",
        "tmp_filesystem": tmp_fs,
        "revision": (rev + (" with uncommitted changes in src/" if dirty else "")) or "unknown",
    }


def fsync_probe(seconds: float = 1.0) -> dict[str, float]:
    """Latency of a 512-byte overwrite + fsync in a pre-allocated file on the bench disk."""
    path = os.path.join(OUT, "fsync-probe")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, bytes(1 << 20), 0)
        os.fsync(fd)
        lat: list[float] = []
        off = 0
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t = time.perf_counter()
            os.pwrite(fd, b"p" * 512, off)
            os.fsync(fd)
            lat.append(time.perf_counter() - t)
            off = (off + 512) % (1 << 20)
    finally:
        os.close(fd)
        os.unlink(path)
    lat.sort()
    return {"median_us": statistics.median(lat) * 1e6, "p90_us": lat[int(len(lat) * 0.9)] * 1e6}


# -- report --------------------------------------------------------------------------------
def results_section(m: dict[str, Any], probes: list[dict[str, float]], c: dict[str, Any], r: dict[str, Any],
                    minutes: float, dl: dict[str, Any], dv: dict[str, Any], ml: dict[str, Any],
                    bk: dict[str, Any], rs: dict[str, Any]) -> str:
    probe = ", ".join(f"median {p['median_us']:.0f} µs / p90 {p['p90_us']:.0f} µs" for p in probes)
    return "\n".join([
        BEGIN,
        "## Results",
        "",
        f"Run of {time.strftime('%Y-%m-%d %H:%M %Z')} ({minutes:.1f} min), source revision {m['revision']}.",
        "",
        f"- Machine: `nproc` = {m['nproc']} ({m['cpu']}), {m['memory_gib']} GiB RAM, "
        f"virtualization: {m['virtualization']}, Linux {m['kernel']}.",
        f"- Disk: {m['disk']}; {m['filesystem']}. (/tmp is {m['tmp_filesystem']}; the benchmarks use bench/out/.)",
        f"- A 512-byte overwrite + fsync on that disk, before and after the run: {probe}.",
        f"- Python {m['python']}, SQLite {m['sqlite']}.",
        "",
        f"### Durable commits per second (median of {commit.REPEATS} runs of {commit.SECONDS:.0f} s; "
        "min–max in parentheses)",
        "",
        commit.markdown(c),
        "",
        f"### Soft recovery ({recovery.LOG_SIZE // 1024} KiB generations, page cache dropped before each open)",
        "",
        recovery.markdown(r),
        "",
        "### Directory lookups (embedded backend; one user by `mail`)",
        "",
        directory.markdown(dl),
        "",
        f"### Deliveries per second (`deliver()`, durable; one run per cell of up to {delivery.SECONDS:.0f} s)",
        "",
        delivery.markdown(dv),
        "",
        f"### Mail service against Dovecot (SMTP / LMTP delivery and IMAP FETCH over loopback, {mail.CLIENTS} "
        "delivering clients)",
        "",
        mail.markdown(ml),
        "",
        "### Full online backup against cp and tar (the same database and log files, on the same disk)",
        "",
        backup.markdown(bk),
        "",
        "### Restore and replay (a mailbox store lost and restored; delivery produced the logs it replays)",
        "",
        restore.markdown(rs),
        END,
    ])


def rewrite_readme(section: str) -> None:
    try:
        with open(README) as f:
            text = f.read()
    except FileNotFoundError:
        text = "# Benchmarks\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    with open(README, "w") as f:
        f.write(text)


def main() -> int:
    t0 = time.perf_counter()
    os.makedirs(OUT, exist_ok=True)
    m = machine_info()
    if m["filesystem"].startswith("tmpfs"):
        log("bench/out/ is on a tmpfs: fsync would cost nothing there; run from a working tree on a real disk.")
        return 1
    problem = mail.missing_prerequisites()
    if problem:
        log(problem)
        return 1
    log(f"machine: {m['nproc']} CPUs, {m['disk']}, {m['filesystem']}")
    probes = [fsync_probe()]
    log(f"fsync probe: median {probes[0]['median_us']:.0f} µs")
    log("commit throughput (bench/commit.py)")
    c = commit.measure(log=log)
    log("soft recovery (bench/recovery.py)")
    r = recovery.measure(log=log)
    log("directory lookups (bench/directory.py)")
    dl = directory.measure(log=log)
    log("deliveries (bench/delivery.py)")
    dv = delivery.measure(log=log)
    log("mail service against Dovecot (bench/mail.py)")
    ml = mail.measure(log=log)
    log("online backup against cp and tar (bench/backup.py)")
    bk = backup.measure(log=log)
    log("restore and replay (bench/restore.py)")
    rs = restore.measure(log=log)
    probes.append(fsync_probe())
    minutes = (time.perf_counter() - t0) / 60
    section = results_section(m, probes, c, r, minutes, dl, dv, ml, bk, rs)
    rewrite_readme(section)
    with open(os.path.join(OUT, "results.json"), "w") as f:
        json.dump({"machine": m, "fsync_probe": probes, "commit": c, "recovery": r, "directory": dl,
                   "delivery": dv, "mail": ml, "backup": bk, "restore": rs,
                   "minutes": minutes}, f,
                  indent=1, default=str)
    log(section)
    log(f"bench/README.md rewritten ({minutes:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
