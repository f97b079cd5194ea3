#!/usr/bin/env python3
"""
VMM confinement and guest identity against a real daemon and real guests:

- Every VMM (sandboxes and warm slots) runs as its own unprivileged user
  (uid = gid, distinct per VMM, no capability), owns the per-VM files it was
  handed as descriptors and can open neither them nor another VM's by path;
  with no_new_privs, QEMU's seccomp filter (-sandbox on: Seccomp 2), its own mount
  namespace, in its own cgroups under the daemon's instance group with a CPU
  quota and a memory limit (cgroup v1 cpu and memory where the host mounts
  them so, else v2), and with no descriptor of the daemon's: stdin is
  /dev/null, stdout and stderr its log, nothing on /dev/fuse, no pidfd, no
  file of another VM.
- Its mount namespace holds nothing of the host but its own root (a
  read-only tmpfs with /usr bound read-only, the host's /bin, /lib...
  symlinks, a /proc of its own processes, /dev/null): every VMM (sandboxes,
  warm slots, a bake's, VMMs as root) lists exactly those mounts, nothing of
  the state directory or the mount point; a process in that namespace as the
  VMM's user (with --allow-other) reaches neither the mount point, the state
  directory nor any other host path, and can write nowhere. (The harness
  checks every VMM's mounts in every test: inventory key "vmm_mounts".)
- Its cgroups go when it does: after the sandbox is destroyed, and at
  shutdown the instance group too.
- CpuShare: the CPU figures as docs/operations.md ("Confinement") states
  them: all VMMs under one parent at half the default weight and no quota,
  each VMM at the default weight whatever its vCPUs with a quota of
  vcpus + 1 cores but never the whole host; the daemon's threads outside
  that parent, each outweighing all VMMs together.
- Access: only the mounting user gets in by default; with --allow-other the
  kernel checks modes (default_permissions): another user reads what is
  readable, cannot write ctl or mkdir a sandbox, and a guest file's own mode
  decides in live/, before and after a chmod.
- Ten sandboxes restored from one snapshot (warm slots and restores) each
  have their own hostname, machine id and random bytes.
"""
import ctypes
import errno
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402


VMM_UID_BASE = 1879048192  # --vmm-uid-base's default (engine/engine.h)


def proc_status(pid):
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


def cgroups_of(pid):
    out = {}
    with open("/proc/%d/cgroup" % pid) as f:
        for line in f:
            _, ctrl, path = line.rstrip("\n").split(":", 2)
            out[ctrl] = path
    return out


def read(path):
    with open(path) as f:
        return f.read().strip()


PERIOD_US = 100000


def vmm_quota_us(vcpus, ncpus):
    """A VMM's CPU quota: a core per vCPU plus one, but half a core (a quarter
    of a 1-CPU host) always left to the rest (engine/cgroup.c)."""
    host = max(ncpus, 1) * PERIOD_US
    return min((vcpus + 1) * PERIOD_US, host - min(host // 4, PERIOD_US // 2))


def fd_targets(pid):
    out = {}
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            out[int(fd)] = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            pass
    return out


CLONE_NEWNS = 0x00020000


def in_mount_ns(pid, uid, gid, fn):
    """fn() in a child that entered pid's mount namespace (setns: root and cwd
    become the namespace's root) and dropped to uid and gid; returns what fn
    returned (through JSON)."""
    ns = os.open("/proc/%d/ns/mnt" % pid, os.O_RDONLY | os.O_CLOEXEC)
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(r)
            if harness._libc.setns(ns, CLONE_NEWNS) != 0:
                raise OSError(ctypes.get_errno(), "setns")
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            out = {"result": fn()}
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            out = {"exception": repr(e)}
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    os.close(ns)
    data = b""
    while True:
        b = os.read(r, 1 << 16)
        if not b:
            break
        data += b
    os.close(r)
    os.waitpid(child, 0)
    out = json.loads(data.decode())
    if "exception" in out:
        raise AssertionError("in the namespace of %d: %s" % (pid, out["exception"]))
    return out["result"]


def probe_from_inside(host_paths, vmm_pid):
    """Run inside a VMM's namespace as its user: what of host_paths answers,
    every path of the tree but /usr and /proc, what /proc lists, and every
    write tried that did not fail."""
    def err(fn, *a):
        try:
            fn(*a)
            return "ok"
        except OSError as e:
            return errno.errorcode.get(e.errno, str(e.errno))

    reached = {p: err(os.stat, p) for p in host_paths}
    reached = {p: e for p, e in reached.items() if e != "ENOENT"}
    tree = []
    for top, dirs, files in os.walk("/"):
        tree += [os.path.join(top, x) for x in dirs + files]
        if top == "/":  # not into what is bound from the host, nor /proc
            dirs[:] = [x for x in dirs if x not in ("usr", "proc") + harness.VMM_ROOT_DIRS]
    procs = sorted(os.listdir("/proc"))
    writes = {}
    for dirpath in ("/", "/dev", "/proc", "/proc/%d" % vmm_pid, "/usr", "/usr/bin", "/usr/lib", "/usr/share",
                    "/usr/local", "/bin", "/lib"):
        f = os.path.join(dirpath, ".efprobe")
        for what, fn in (("create", lambda: os.close(os.open(f, os.O_CREAT | os.O_WRONLY, 0o600))),
                         ("mkdir", lambda: os.mkdir(f)), ("symlink", lambda: os.symlink("/", f))):
            e = err(fn)
            if e == "ok":
                writes["%s %s" % (what, f)] = e
    for f in ("/usr/bin/qemu-system-x86_64", "/proc/%d/environ" % vmm_pid):
        e = err(lambda: os.close(os.open(f, os.O_WRONLY)))
        if e == "ok":
            writes["write " + f] = e
    for src, dst in (("/usr/bin/env", "/env"), ("/usr/bin/env", "/usr/env")):
        e = err(os.link, src, dst)
        if e == "ok":
            writes["link " + dst] = e
    return {"reached": reached, "tree": sorted(tree), "proc": procs, "writes": writes, "uid": os.getuid()}


class Confinement(harness.TestCase):
    def assert_vmm_root(self, pid):
        """pid's mount namespace holds exactly its root, each mount as it should be."""
        ms = harness.vmm_mounts(pid)
        self.assertIsNotNone(ms, "VMM %d gone" % pid)
        kvm = "kvm" in " ".join(harness.proc_cmdline(pid)).split("-accel ")[1].split()[0]
        self.assertEqual(sorted(m[0] for m in ms), sorted(harness.vmm_expected_mounts(kvm)),
                         "VMM %d mounts:\n%s" % (pid, "\n".join("%s %s" % m[:2] for m in ms)))
        self.assertEqual(harness.vmm_mount_problems(pid), [])

    def check_vmm(self, d, pid, vm_dir, mem_mib, vcpus):
        st = proc_status(pid)
        self.assertEqual(st["NoNewPrivs"], "1", st)
        self.assertEqual(st["Seccomp"], "2", st)
        if "THP_enabled" in st:  # no huge pages for its translation buffer (benchmarks.md, issue 22's second pass)
            self.assertEqual(st["THP_enabled"], "0", st)
        self.assertNotEqual(os.readlink("/proc/%d/ns/mnt" % pid), os.readlink("/proc/self/ns/mnt"))
        cg = cgroups_of(pid)
        tag = re.escape("/emberfs-")
        if "memory" in cg and re.search(tag, cg.get("memory", "")):
            # cgroup v1: cpu and memory groups of its own, named by its pid
            mem_dir = "/sys/fs/cgroup/memory" + cg["memory"]
            cpu_dir = "/sys/fs/cgroup/cpu" + cg["cpu"]
            self.assertTrue(cg["memory"].endswith("/%d" % pid), cg)
            self.assertTrue(cg["cpu"].endswith("/%d" % pid), cg)
            self.assertEqual(int(read(mem_dir + "/memory.limit_in_bytes")), (mem_mib + 256) << 20)
            self.assertEqual(int(read(cpu_dir + "/cpu.cfs_quota_us")),
                             vmm_quota_us(vcpus, len(os.sched_getaffinity(d.pid))))
            self.assertEqual(int(read(cpu_dir + "/cpu.cfs_period_us")), 100000)
            groups = [mem_dir, cpu_dir]
        else:
            self.assertRegex(cg.get("", ""), tag + r"[0-9a-f]{4}/%d$" % pid, cg)
            g = "/sys/fs/cgroup" + cg[""]
            self.assertEqual(int(read(g + "/memory.max")), (mem_mib + 256) << 20)
            self.assertEqual(read(g + "/cpu.max"), "%d 100000" % vmm_quota_us(vcpus, len(os.sched_getaffinity(d.pid))))
            groups = [g]
        # its own unprivileged user and group, no capability, no supplementary group (TCG)
        uids, gids = st["Uid"].split(), st["Gid"].split()
        self.assertEqual(len(set(uids)), 1, st["Uid"])
        self.assertEqual(len(set(gids)), 1, st["Gid"])
        uid = int(uids[0])
        self.assertGreaterEqual(uid, VMM_UID_BASE)
        self.assertLess(uid, VMM_UID_BASE + 65536)
        self.assertEqual(int(gids[0]), uid)
        self.assertEqual(st["CapEff"], "0000000000000000", st)
        self.assertEqual(st["CapPrm"], "0000000000000000", st)
        if d.template_status().get("accel", "tcg") == "tcg" or st["Groups"] == "":
            self.assertEqual(st["Groups"], "", st)
        # the per-VM files it writes are its own; it got them as descriptors
        con = os.readlink("/proc/%d/fd/%d" % (pid, harness.VMM_FD_CONSOLE))
        self.assertEqual(os.stat(con).st_uid, uid)
        mem = harness.vmm_mem_path(pid)
        if mem.startswith("/memfd:"):
            # restored from a template's snapshot: its sealed base, mapped privately; it can
            # open it again (QEMU does) but nobody, root included, can write it
            self.assertEqual(mem, "/memfd:emberfs-ram-base (deleted)")
            maps = [l.split() for l in open("/proc/%d/maps" % pid) if l.rstrip().endswith("emberfs-ram-base (deleted)")]
            self.assertEqual(len(maps), 1, maps)
            self.assertEqual(maps[0][1][3], "p", maps)  # private: its writes are its own
            fd = os.open("/proc/%d/fd/%d" % (pid, harness.VMM_FD_MEM), os.O_RDWR)
            try:
                with self.assertRaises(PermissionError):
                    os.write(fd, b"x")
            finally:
                os.close(fd)
        else:
            self.assertEqual(os.stat(mem).st_uid, uid)
        fds = fd_targets(pid)
        self.assertEqual(fds[0], "/dev/null")
        self.assertTrue(fds[1].endswith("/vmm.log") and fds[2] == fds[1], fds)
        for fd, target in fds.items():
            self.assertNotEqual(target, "/dev/fuse", "fd %d" % fd)
            self.assertNotIn("pidfd", target, "fd %d" % fd)
            if target.startswith(d.state + "/"):
                self.assertTrue(target.startswith(vm_dir + "/") or "/run/" in target or
                                target.startswith(d.state + "/store/templates/"),
                                "fd %d -> %s is not this VM's" % (fd, target))
        return groups, uid

    def test_every_vmm_confined(self):
        with harness.own_daemon(pool=1) as d:
            d.wait_pool(1, timeout=60)
            cfg = harness.read_json(d.tpl("default", "config"))
            groups = []
            (sid, slot), = d.slots().items()
            slot_dir = [harness.vmm_dir(slot["vmm_pid"])]
            uids, mems, pids = [], [], []
            for name in ("c1", "c2"):
                st = d.create_ready(name)
                g, uid = self.check_vmm(d, st["vmm_pid"], d.sandbox_vm_dir(name), cfg["mem_mib"], cfg["vcpus"])
                groups += g
                uids.append(uid)
                mems.append(os.path.join(d.sandbox_vm_dir(name), "mem"))
                pids.append(st["vmm_pid"])
            self.assertEqual(len(slot_dir), 1, fd_targets(slot["vmm_pid"]))
            slot_groups, slot_uid = self.check_vmm(d, slot["vmm_pid"], slot_dir[0], cfg["mem_mib"], cfg["vcpus"])
            # c1 took the slot claimed above, c2 restored or took its replacement: one user per process
            by_pid = {pid: uid for pid, uid in zip(pids + [slot["vmm_pid"]], uids + [slot_uid])}
            self.assertEqual(len(set(by_pid.values())), len(by_pid), "VMMs share a user: %s" % by_pid)
            self.assertGreaterEqual(len(by_pid), 2)
            # as a VMM's user, neither its own files nor another VM's can be opened by path
            for mem in mems:
                r = subprocess.run(["/bin/sh", "-c", 'exec 3<"$0" && echo opened', mem], preexec_fn=lambda: (
                    os.setgroups([]), os.setresgid(uids[0], uids[0], uids[0]), os.setresuid(uids[0], uids[0], uids[0])),
                    capture_output=True, text=True)
                self.assertNotEqual(r.returncode, 0, mem)
                self.assertIn("Permission denied", r.stderr)
            for name in ("c1", "c2"):
                d.destroy(name)
            for g in groups:
                harness.wait_for(lambda: not os.path.exists(g), 5, "the group %s removed" % g)
            groups += slot_groups
            bases = {os.path.dirname(g) for g in groups}
        for b in bases:
            self.assertFalse(os.path.exists(b), "the instance group %s left after shutdown" % b)


    def test_vmm_root_holds_only_its_own(self):
        # every VMM of the daemon: a warm slot, a sandbox from a slot, one restored, a bake's
        with harness.own_daemon(pool=1) as d:
            d.wait_pool(1, timeout=60)
            (_, slot), = d.slots().items()
            self.assert_vmm_root(slot["vmm_pid"])
            st1 = d.create_ready("m1")
            d.set_pool(0)
            d.wait_pool(0)
            st2 = d.create_ready("m2")
            self.assertEqual((st1["path"], st2["path"]), ("warm", "restore"))
            for st in (st1, st2):
                self.assert_vmm_root(st["vmm_pid"])
            pids = d._qemu_pids()
            self.assertEqual(len(pids), 2, pids)
            d.ctl("rebake\n")
            bake = harness.wait_for(lambda: [p for p in d._qemu_pids() if "/templates/" in
                                             (harness.vmm_dir(p) or "")], 60, "the bake's VMM")
            self.assert_vmm_root(bake[0])
            d.wait_template_ready()
            for name in ("m1", "m2"):
                d.destroy(name)

    def test_vmm_user_reaches_nothing_of_the_host(self):
        # with --allow-other the mount would let any user in: a VMM's namespace must not have it
        with harness.own_daemon(extra_args=["--allow-other"]) as d:
            st = d.create_ready("n1")
            d.create_ready("n2")
            d.sh("n2", "echo secret > /tmp/s; chmod 644 /tmp/s")
            pid = st["vmm_pid"]
            uid = int(proc_status(pid)["Uid"].split()[0])
            gid = int(proc_status(pid)["Gid"].split()[0])
            host_paths = [d.mount, d.state, d.sb("n2", "status"), os.path.join(d.mount, "live", "n2", "tmp", "s"),
                          os.path.join(d.state, "run"), harness.vmm_dir(pid),
                          "/etc/passwd", "/etc", "/tmp", "/root", "/home", "/var", "/run", "/sys", "/dev/fuse",
                          "/dev/net/tun", "/proc/1", "/proc/%d" % d.pid, "/proc/%d" % os.getpid(),
                          "/proc/%d" % d.status("n2")["vmm_pid"], "/proc/sys", "/proc/kcore", "/proc/mounts",
                          "/usr/../etc", "/lib/../etc/passwd"]
            if "kvm" not in harness.proc_cmdline(pid):  # -accel kvm: its /dev/kvm is there
                host_paths.append("/dev/kvm")
            got = in_mount_ns(pid, uid, gid, lambda: probe_from_inside(host_paths, pid))
            self.assertEqual(got["uid"], uid)
            self.assertEqual(got["reached"], {}, "host paths reached from the VMM's namespace")
            # the whole tree: /usr, /proc, /dev/null and the host's /bin, /lib... (symlinks into /usr here)
            tops = {"/" + x for x in harness.VMM_ROOT_DIRS if os.path.lexists("/" + x)}
            kvm = {"/dev/kvm"} if "kvm" in harness.proc_cmdline(pid) else set()
            self.assertEqual(sorted(got["tree"]), sorted(tops | kvm | {"/usr", "/proc", "/dev", "/dev/null"}))
            # /proc: the VMM and the probe itself (the same user), nothing of the host
            nums = [int(p) for p in got["proc"] if p.isdigit()]
            self.assertEqual(set(got["proc"]) - {str(n) for n in nums}, {"self", "thread-self"}, got["proc"])
            self.assertIn(pid, nums)
            self.assertNotIn(d.pid, nums)
            self.assertNotIn(1, nums)
            self.assertEqual(got["writes"], {}, "writes that worked in the VMM's namespace")
            for name in ("n1", "n2"):
                d.destroy(name)

    def test_vmms_as_root_get_the_same_root(self):
        with harness.own_daemon(extra_args=["--vmm-uid-base", "0"]) as d:
            st = d.create_ready("r1")
            self.assertEqual(proc_status(st["vmm_pid"])["Uid"].split()[0], "0")
            self.assertEqual(d.sh("r1", "echo up").strip(), "up")
            self.assert_vmm_root(st["vmm_pid"])
            d.destroy("r1")

    def test_qemu_outside_the_vmm_root_is_refused(self):
        # a QEMU binary that is not under /usr would not be in the VMM's root: refused with the reason
        qdir = tempfile.mkdtemp(prefix="efq", dir="/tmp")
        try:
            qemu = os.path.join(qdir, "qemu-system-x86_64")
            shutil.copy2(shutil.which("qemu-system-x86_64"), qemu)
            d = harness.Daemon(extra_args=["--qemu", qemu])
            d.expect_log_error(r"VMM: the QEMU binary %s is outside /usr" % re.escape(qemu))
            d.expect_log_error(r"template default: bake failed at spawn \(see [^)]*\): No such file or directory")
            d.start(wait_default=False)
            try:
                st = harness.wait_for(lambda: d.template_status()["state"] == "failed" and d.template_status(),
                                      60, "the bake refused")
                self.assertIn("No such file or directory", st.get("error", ""), st)
                self.assertIn("is outside /usr", d.log_text())
                self.assertEqual(d._qemu_pids(), [])
            finally:
                d.stop()
        finally:
            shutil.rmtree(qdir, ignore_errors=True)
class CpuShare(harness.TestCase):
    """The mechanism that keeps a busy sandbox from slowing its neighbours and
    the daemon (the figures themselves: contrib/bench.sh noisy)."""

    def test_weights_and_quotas(self):
        with harness.own_daemon() as d:
            cfg = harness.read_json(d.tpl("default", "config"))
            self.assertEqual(cfg["vcpus"], 1)
            with d.template("wide", bake=True, vcpus=2):
                vmms = {1: d.create_ready("one")["vmm_pid"], 2: d.create_ready("two", t="wide")["vmm_pid"]}
                ncpus = len(os.sched_getaffinity(d.pid))
                cg = cgroups_of(d.pid)
                tasks = os.listdir("/proc/%d/task" % d.pid)
                if "cpu" in cg:
                    # cgroup v1: the daemon's threads stay in the group it started in, G; every
                    # VMM is under G/emberfs-TAG, whose weight is half of one daemon thread's
                    g = "/sys/fs/cgroup/cpu" + ("" if cg["cpu"] == "/" else cg["cpu"])
                    base = "%s/emberfs-%s" % (g, d.tag)
                    self.assertEqual(int(read(base + "/cpu.shares")), 512)
                    self.assertEqual(int(read(base + "/cpu.cfs_quota_us")), -1)
                    for t in tasks:
                        with open("/proc/%d/task/%s/cgroup" % (d.pid, t)) as f:
                            self.assertIn(":cpu:%s\n" % cg["cpu"], f.read(), "daemon thread %s" % t)
                        # nice 0: a thread weighs the default 1024, twice all VMMs together
                        self.assertEqual(os.getpriority(os.PRIO_PROCESS, int(t)), 0)
                    for vcpus, pid in vmms.items():
                        vg = "%s/%d" % (base, pid)
                        self.assertEqual(cgroups_of(pid)["cpu"], vg[len("/sys/fs/cgroup/cpu"):])
                        self.assertEqual(int(read(vg + "/cpu.shares")), 1024, "%d vCPUs" % vcpus)
                        self.assertEqual(int(read(vg + "/cpu.cfs_period_us")), PERIOD_US)
                        self.assertEqual(int(read(vg + "/cpu.cfs_quota_us")), vmm_quota_us(vcpus, ncpus))
                        self.assertLess(vmm_quota_us(vcpus, ncpus), ncpus * PERIOD_US)
                else:
                    # cgroup v2: the daemon in G (the root) or, where G could not hand the
                    # controllers down while it held the daemon, in G/emberfs-TAG-daemon
                    own = cg[""]
                    g = own[:-len("/emberfs-%s-daemon" % d.tag)] if own.endswith("-daemon") else own
                    g = "/sys/fs/cgroup" + ("" if g == "/" else g)
                    base = "%s/emberfs-%s" % (g, d.tag)
                    self.assertEqual(int(read(base + "/cpu.weight")), 50)
                    self.assertEqual(read(base + "/cpu.max"), "max 100000")
                    if own.endswith("-daemon"):
                        self.assertEqual(int(read("/sys/fs/cgroup" + own + "/cpu.weight")), 100)
                    for vcpus, pid in vmms.items():
                        vg = "%s/%d" % (base, pid)
                        self.assertEqual(int(read(vg + "/cpu.weight")), 100, "%d vCPUs" % vcpus)
                        self.assertEqual(read(vg + "/cpu.max"), "%d 100000" % vmm_quota_us(vcpus, ncpus))
                log = d.log_text()
                self.assertRegex(log, r"VMM limits: cgroup v[12] .*all VMMs at CPU weight (512|50), a 1-vCPU VMM at "
                                      r"most [0-9.]+ of %d CPUs" % ncpus)
                for n, t in (("one", "default"), ("two", "wide")):
                    d.destroy(n, t=t)


class Identity(harness.TestCase):
    def test_ten_clones_share_nothing(self):
        d = harness.Daemon(pool=4).start()
        d2 = None
        try:
            d.wait_pool(4, timeout=60)
            names = ["i%d" % k for k in range(10)]
            for n in names:
                d.create(n)
            seen = {"hostname": set(), "machine-id": set(), "random": set()}
            paths = set()
            for n in names:
                paths.add(d.wait_ready(n)["path"])
                out = d.sh(n, "hostname; cat /etc/machine-id; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'")
                host, mid, rnd = out.split("\n")[:3]
                self.assertEqual(host, n)
                self.assertRegex(mid, r"^[0-9a-f]{32}$")
                seen["hostname"].add(host)
                seen["machine-id"].add(mid)
                seen["random"].add(rnd)
            self.assertEqual(paths, {"warm", "restore"})  # both ways of cloning the snapshot
            for k, v in seen.items():
                self.assertEqual(len(v), 10, "%s shared between clones: %s" % (k, v))
            # a sandbox keeps its machine id over pause, hibernate and a daemon restart; a fork has its own
            mid = lambda dd, n="i0": dd.sh(n, "cat /etc/machine-id").strip()
            first = mid(d)
            for op in ("pause", "resume", "hibernate", "resume"):
                harness.write_file(d.sb("i0", "ctl"), op)
            self.assertEqual(mid(d), first)
            for n in names[1:]:
                d.destroy(n)
            d.kill9()
            d2 = harness.Daemon(reuse=d).start()
            self.assertEqual(mid(d2), first)
            harness.write_file(d2.sb("i0", "ctl"), "fork i1")
            d2.wait_ready("i1")
            self.assertNotEqual(mid(d2, "i1"), first)
            harness.write_file(d2.sb("i0", "ctl"), "pause")
            harness.write_file(d2.sb("i0", "ctl"), "resume")
            self.assertEqual(mid(d2), first)
            # what the guest does to its id's file does not outlive the next attach: grown, or replaced
            # by another file
            d2.sh("i0", "echo junk >> /run/machine-id")
            for op in ("hibernate", "resume"):
                harness.write_file(d2.sb("i0", "ctl"), op)
            self.assertEqual(d2.sh("i0", "cat /etc/machine-id"), first + "\n")
            d2.sh("i0", "echo junk > /run/m && mv /run/m /run/machine-id")
            harness.write_file(d2.sb("i0", "ctl"), "fork i2")
            d2.wait_ready("i2")
            self.assertRegex(mid(d2, "i2"), r"^[0-9a-f]{32}$")
            self.assertNotIn(mid(d2, "i2"), (first, mid(d2, "i1")))
            for op in ("hibernate", "resume"):
                harness.write_file(d2.sb("i0", "ctl"), op)
            self.assertEqual(d2.sh("i0", "cat /etc/machine-id"), first + "\n")
        except BaseException:
            (d2 or d).force_cleanup()
            raise
        d2.stop()


def as_nobody(*cmd):
    """Runs cmd as nobody:nogroup; (exit code, stderr)."""
    import subprocess

    def drop():
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
    p = subprocess.run(cmd, preexec_fn=drop, capture_output=True, text=True, timeout=60)
    return p.returncode, p.stdout + p.stderr


class Access(harness.TestCase):
    def test_owner_only_by_default(self):
        with harness.own_daemon() as d:
            rc, out = as_nobody("ls", d.mount)
            self.assertNotEqual(rc, 0, out)
            self.assertIn("Permission denied", out)
            rc, out = as_nobody("cat", os.path.join(d.mount, "version"))
            self.assertNotEqual(rc, 0, out)

    def test_allow_other_checks_modes(self):
        with harness.own_daemon(extra_args=["--allow-other"]) as d:
            rc, out = as_nobody("cat", os.path.join(d.mount, "version"))
            self.assertEqual(rc, 0, out)
            rc, out = as_nobody("ls", d.sbdir())
            self.assertEqual(rc, 0, out)
            # write-only root files and root's directories: refused by the kernel
            rc, out = as_nobody("sh", "-c", "echo bake > %s" % d.tpl("default", "ctl"))
            self.assertNotEqual(rc, 0, out)
            rc, out = as_nobody("mkdir", d.sb("intruder"))
            self.assertNotEqual(rc, 0, out)
            self.assertNotIn("intruder", d.sandboxes())
            # a guest file's own mode decides, before and after a chmod through live/
            d.create_ready("g")
            d.sh("g", "echo secret > /tmp/s; chmod 600 /tmp/s")
            path = os.path.join(d.mount, "live", "g", "tmp", "s")
            rc, out = as_nobody("cat", path)
            self.assertNotEqual(rc, 0, out)
            self.assertIn("Permission denied", out)
            os.chmod(path, 0o644)
            self.assertEqual(d.sh("g", "stat -c %a /tmp/s").strip(), "644")
            time.sleep(1.1)  # the kernel caches attributes for 1 s
            rc, out = as_nobody("cat", path)
            self.assertEqual((rc, out.strip()), (0, "secret"))
            d.destroy("g")


if __name__ == "__main__":
    harness.main()
