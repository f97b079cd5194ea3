#!/usr/bin/env python3
"""
Warm slots against a real daemon and real guests (docs/interface.md, "Warm
slots"):

- Pool: the pool file reads and sets the target; bad values fail with EINVAL
  and change nothing; the value is saved with the template; 0 drains the pool
  and frees every slot's process and files.
- Slots: slots/ID/status describes each slot; rmdir slots/ID recycles one;
  lookups of ids that are not slots fail with ENOENT.
- Claims: 32 concurrent creates against a pool of 8 are served exactly 8 warm
  (by 8 distinct slots) and 24 restore, all ready, nothing left afterwards.
- Page cache: the bake's snapshot holds the shells' exec path (the bake
  ran `true` with /bin/sh and /bin/bash -l, and synced): a sandbox's first
  commands, from a warm slot or a restore, read nothing from its disk (the
  guest's block counters).
- Identity: two sandboxes activated from slots of one snapshot read different
  bytes from /dev/urandom; hostname and environment are each its own.
- Staleness: a rebake or an identity change recycles the old slots at once
  and no create is ever served by one; the pool refills from the new snapshot.
- Health: a slot whose VMM is killed (SIGKILL) or stopped (SIGSTOP) is
  replaced and never handed out.
- Age and restart (own daemons): --slot-max-age replaces old slots (and
  --warmup-exec slots work); kill -9
  of the daemon with warm slots, then a restart, leaves nothing of them.
- Spares (own daemon, --spares 1): a VMM spawned on the snapshot's clones
  and waiting for its state (`-incoming defer`, no guest code run) is listed
  in slots/ as "spare"; a create that finds no warm slot restores on it (the
  sandbox's VMM is that process, no spawn phase) and the next spare follows;
  a killed spare is replaced and never claimed; a warm slot wanted is made
  from the spare (same id); a rebake replaces it; kill -9 of the daemon and
  a restart leave nothing of the old one; the stop leaves nothing at all.
  A fork's child takes the spare too (its parent ran on the same base): it
  runs in the spare's process with its parent's memory, disk and running
  processes, then diverges; its hibernation wakes on the next spare with its
  own memory, disk and console history, twice; without a spare a fork's
  child and a wake are spawned on the base with the pages given all the
  same; a child of a child on a spare works alike; a parent from before a
  rebake (another base) forks into a VMM on its own file and leaves the
  spare. After kill -9 of the daemon, sandboxes that took spares are
  re-adopted, and their next wake (nothing known of their pages) maps
  their memory file.
"""
import errno
import json
import os
import re
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

D = BASE = None


def setUpModule():
    global D, BASE
    D, BASE = harness.start_shared()


def tearDownModule():
    if D:
        D.stop()


wait_for = harness.wait_for


class PoolTest(harness.TestCase):
    """Every test leaves the shared daemon's pool at 0, drained."""

    def tearDown(self):
        try:
            D.set_pool(0)
            D.wait_pool(0)
        finally:
            super().tearDown()


class Pool(PoolTest):

    def test_pool_file_values(self):
        self.assertEqual(harness.read_text(D.tpl("default", "pool")), "0\n")
        D.set_pool(1)
        self.assertEqual(harness.read_text(D.tpl("default", "pool")), "1\n")
        saved = os.path.join(D.state, "store", "templates", "default", "pool")
        self.assertEqual(harness.read_text(saved), "1\n")
        # an empty write never reaches the daemon (the kernel sends none): nothing changes
        harness.write_file(D.tpl("default", "pool"), "")
        self.assertEqual(harness.read_text(D.tpl("default", "pool")), "1\n")
        for bad in ("abc", "-1", "257", "\n", "1 2", "0x5", "1.5", "Auto", "auto 3", "99999999999999999999"):
            with self.subTest(value=bad):
                self.assertErrno(errno.EINVAL, harness.write_file, D.tpl("default", "pool"), bad)
                self.assertEqual(harness.read_text(D.tpl("default", "pool")), "1\n")
        self.assertEqual(D.pool()["target"], 1)
        D.wait_pool(1)

    def test_slot_files(self):
        D.set_pool(2)
        D.wait_pool(2)
        slots = D.slots()
        self.assertEqual(len(slots), 2)
        tst = D.template_status()
        for sid, st in slots.items():
            self.assertEqual(st["id"], sid)
            self.assertEqual(st["state"], "warm")
            self.assertEqual(st["template"], "default")
            self.assertEqual(st["identity"], tst["identity"])
            self.assertEqual(st["state_sha256"], tst["bake"]["state_sha256"])
            self.assertGreaterEqual(st["age_ms"], 0)
            self.assertEqual(list(st["timings"]), ["clone", "spawn", "restore", "warmup", "pause"])
            self.assertTrue(harness.pid_alive(st["vmm_pid"]))
        # not slots
        for name in ("abc", "0", "01", str(max(slots) + 1000), "-1"):
            with self.subTest(name=name):
                self.assertErrno(errno.ENOENT, os.stat, D.tpl("default", "slots", name))
        self.assertErrno(errno.EPERM, os.mkdir, D.tpl("default", "slots", "5"))
        self.assertErrno(errno.EACCES, harness.write_file, D.tpl("default", "slots", str(min(slots)), "status"), "x")
        # rmdir recycles one; the filler replaces it
        victim = min(slots)
        pid = slots[victim]["vmm_pid"]
        os.rmdir(D.tpl("default", "slots", str(victim)))
        self.assertNotIn(victim, D.slots())
        wait_for(lambda: not harness.pid_alive(pid), 5, "the recycled slot's VMM exits")
        p = D.wait_pool(2)
        self.assertGreaterEqual(p["recycled"]["removed"], 1)
        self.assertNotIn(victim, D.slots())

    def test_pool_zero_drains(self):
        D.set_pool(3)
        D.wait_pool(3)
        pids = [st["vmm_pid"] for st in D.slots().values()]
        self.assertEqual(len(pids), 3)
        self.assertEqual(len(D.inventory()["slots"]) > 0, True)
        D.set_pool(0)
        D.wait_pool(0, timeout=10)
        self.assertEqual(D.slots(), {})
        for pid in pids:
            wait_for(lambda: not harness.pid_alive(pid), 5, "slot VMM %d exits" % pid)
        inv = D.wait_inventory(BASE, timeout=5, with_slots=True)
        self.assertEqual(inv, {**BASE, "slots": []})


class Claims(PoolTest):
    def test_32_concurrent_against_8(self):
        D.set_pool(8)
        D.wait_pool(8, timeout=120)
        names = ["c%02d" % i for i in range(32)]
        go = threading.Barrier(len(names))
        errors = {}

        def one(n):
            go.wait()
            try:
                D.create(n)
            except OSError as e:
                errors[n] = "mkdir: %s" % e

        th = [threading.Thread(target=one, args=(n,)) for n in names]
        for x in th:
            x.start()
        for x in th:
            x.join()
        self.assertEqual(errors, {})
        try:
            sts = {n: D.wait_ready(n) for n in names}
            paths = [st["path"] for st in sts.values()]
            self.assertEqual(paths.count("warm"), 8, paths)
            self.assertEqual(paths.count("restore"), 24, paths)
            ids = [st["slot"]["id"] for st in sts.values() if st["path"] == "warm"]
            self.assertEqual(len(set(ids)), 8, ids)
            for st in sts.values():
                if st["path"] == "restore":
                    self.assertIsNone(st["slot"])
            # every guest is its own and answers
            n = names[0]
            self.assertEqual(D.sh(n, "hostname").strip(), n)
        finally:
            for n in names:
                D.destroy(n)
        p = D.pool()
        self.assertGreaterEqual(p["creates"]["warm"], 8)
        D.set_pool(0)
        D.wait_pool(0)
        D.assert_inventory(BASE, timeout=10)

    def test_identity_and_entropy(self):
        D.set_pool(2)
        D.wait_pool(2)
        a, b = D.create_ready("ea"), D.create_ready("eb")
        try:
            self.assertEqual((a["path"], b["path"]), ("warm", "warm"))
            self.assertNotEqual(a["slot"]["id"], b["slot"]["id"])
            ra = D.exec_json("ea", {"sh": "head -c 32 /dev/urandom"})
            rb = D.exec_json("eb", {"sh": "head -c 32 /dev/urandom"})
            self.assertEqual((ra["exit_code"], rb["exit_code"]), (0, 0))
            self.assertEqual((len(ra["stdout"]), len(rb["stdout"])), (32, 32))
            self.assertNotEqual(ra["stdout"], rb["stdout"])
            for n in ("ea", "eb"):
                self.assertEqual(D.sh(n, "hostname").strip(), n)
                self.assertEqual(D.sh(n, "echo $EMBERFS_SANDBOX $EMBERFS_TEMPLATE").strip(), n + " default")
                # the guest clock was set at activation, not left at the bake's time
                guest = int(D.sh(n, "date +%s").strip())
                self.assertLess(abs(guest - time.time()), 5)
                con = harness.read_text(D.sb(n, "console"))
                self.assertIn("%s activated from warm slot" % n, con)
                self.assertEqual(D.status(n)["timings"].keys(), {"claim", "queue", "resume", "agent"})
        finally:
            D.destroy("ea")
            D.destroy("eb")
        D.assert_inventory(BASE, timeout=10)


class SnapshotPageCache(PoolTest):
    def test_first_exec_reads_nothing_from_disk(self):
        """The bake ran `true` in its shells and synced: they are in every sandbox's page cache."""
        timings = json.loads(harness.read_text(D.tpl("default", "status")))["bake"]["timings"]
        self.assertIn("exec_path", timings)
        self.assertIn("guest_sync", timings)
        made = []
        try:
            for name, pool, path in (("pcw", 1, "warm"), ("pcr", 0, "restore")):
                D.set_pool(pool)
                D.wait_pool(pool)
                made.append(name)
                self.assertEqual(D.create_ready(name)["path"], path)
                # the block device's counters (reads: I/Os, merges, sectors, ms), read without an exec
                reads = lambda: harness.read_text(D.sb(name, "root/sys/block/vda/stat")).split()[:4]
                before = reads()
                for cmd in ("true", "/bin/bash -l -c true"):  # /bin/sh's exec, the E2B SDK's way
                    self.assertEqual(D.sh(name, cmd), "")
                    self.assertEqual(reads(), before, "%r in a sandbox from the %s path read the disk" % (cmd, path))
        finally:
            for name in made:
                D.destroy(name)
        D.assert_inventory(BASE, timeout=10)


class Staleness(PoolTest):
    def test_rebake_recycles(self):
        D.set_pool(2)
        D.wait_pool(2)
        old = D.slots()
        old_digest = D.template_status()["bake"]["state_sha256"]
        D.ctl("rebake\n")
        # during the bake: never an old slot (the template is not ready: cold)
        D.create("during")
        try:
            st = D.wait_ready("during")
            self.assertNotEqual(st["path"], "warm", st)
        finally:
            D.destroy("during")
        wait_for(lambda: not (set(D.slots()) & set(old)), 2, "old slots recycled after the rebake started")
        D.wait_template_ready()
        new_digest = D.template_status()["bake"]["state_sha256"]
        D.wait_pool(2, timeout=60)
        for sid, st in D.slots().items():
            self.assertNotIn(sid, old)
            self.assertEqual(st["state_sha256"], new_digest)
        st = D.create_ready("after")
        try:
            self.assertEqual(st["path"], "warm")
            self.assertNotIn(st["slot"]["id"], old)
        finally:
            D.destroy("after")
        self.assertGreaterEqual(D.pool()["recycled"]["stale"], 2)
        for s in old.values():
            wait_for(lambda: not harness.pid_alive(s["vmm_pid"]), 5, "old slot VMM exits")
        sys.stderr.write("\n  rebake: state %s.. -> %s..\n" % (old_digest[:12], new_digest[:12]))

    def test_identity_change_recycles(self):
        D.set_pool(2)
        D.wait_pool(2)
        old = set(D.slots())
        cfg = harness.read_json(D.tpl("default", "config"))
        changed = dict(cfg, cmdline=cfg["cmdline"] + " emberfs.test=1")
        harness.write_file(D.tpl("default", "config"), __import__("json").dumps(changed))
        try:
            self.assertEqual(D.template_status()["state"], "stale")
            self.assertEqual(D.slots(), {})  # at once, within the write
            st = D.create_ready("x")
            try:
                self.assertEqual(st["path"], "cold")
            finally:
                D.destroy("x")
        finally:
            harness.write_file(D.tpl("default", "config"), __import__("json").dumps(cfg))
        self.assertEqual(D.template_status()["state"], "ready")
        D.wait_pool(2, timeout=60)
        self.assertFalse(set(D.slots()) & old)


class Health(PoolTest):
    def _replaced(self, sig):
        D.set_pool(1)
        D.wait_pool(1)
        (sid, st), = D.slots().items()
        dead0 = D.pool()["recycled"]["dead"]
        os.kill(st["vmm_pid"], sig)
        # a create right away never gets the slot: it is checked at the claim
        D.create("h")
        try:
            got = D.wait_ready("h")
            self.assertTrue(got["path"] == "restore" or got["slot"]["id"] != sid, got)
        finally:
            D.destroy("h")
        wait_for(lambda: D.pool()["recycled"]["dead"] > dead0, 5, "the slot recycled as dead")
        wait_for(lambda: not harness.pid_alive(st["vmm_pid"]), 5, "its VMM gone")
        D.wait_pool(1, timeout=60)
        self.assertNotIn(sid, D.slots())
        st2 = D.create_ready("h2")
        try:
            self.assertEqual(st2["path"], "warm")
        finally:
            D.destroy("h2")
        D.set_pool(0)
        D.wait_pool(0)
        D.assert_inventory(BASE, timeout=10)

    def test_killed_slot_replaced(self):
        self._replaced(signal.SIGKILL)

    def test_stopped_slot_replaced(self):
        self._replaced(signal.SIGSTOP)


class OwnDaemons(harness.TestCase):
    def test_max_age_and_warmup_exec(self):
        d = harness.Daemon(pool=1, extra_args=["--slot-max-age", "2", "--warmup-exec"]).start()
        try:
            d.wait_pool(1, timeout=60)
            first = set(d.slots())
            self.assertIn("exec", list(d.slots().values())[0]["prepared_by"])
            wait_for(lambda: d.pool()["recycled"]["aged"] >= 1, 10, "a slot recycled for its age")
            d.wait_pool(1, timeout=60)
            self.assertFalse(set(d.slots()) & first)
            st = d.create_ready("x")
            self.assertEqual(st["path"], "warm")
            self.assertEqual(d.sh("x", "hostname").strip(), "x")
            d.destroy("x")
        except BaseException:
            d.force_cleanup()
            raise
        d.stop()

    def test_daemon_kill9_with_slots(self):
        d = harness.Daemon(pool=2).start()
        d2 = None
        try:
            d.wait_pool(2, timeout=60)
            pids = [st["vmm_pid"] for st in d.slots().values()]
            d.kill9()
            d2 = harness.Daemon(reuse=d, pool=2).start()
            for pid in pids:
                wait_for(lambda: not harness.pid_alive(pid), 10, "the old slot VMM %d reaped" % pid)
            d2.wait_pool(2, timeout=60)
            self.assertEqual(len(d2.inventory()["slots"]) > 0, True)
            st = d2.create_ready("r")
            self.assertEqual(st["path"], "warm")
            d2.destroy("r")
        except BaseException:
            (d2 or d).force_cleanup()
            raise
        d2.stop()



def code_buffer_rss_kib(pid):
    """Rss (KiB) of each private anonymous rwx mapping of process pid (QEMU's TCG translation buffer)."""
    out, cur = [], None
    with open("/proc/%d/smaps" % pid) as f:
        for line in f:
            head = line.split()
            if re.match(r"^[0-9a-f]+-[0-9a-f]+$", head[0]):
                cur = len(head) == 5 and head[1] == "rwxp" and head[4] == "0"
            elif cur and head[0] == "Rss:":
                out.append(int(head[1]))
    return out


def maps_base(pid):
    """Whether process pid maps a template snapshot's sealed memory base (its guest RAM on the base)."""
    with open("/proc/%d/maps" % pid) as f:
        return "/memfd:emberfs-ram-base" in f.read()


class Spares(harness.TestCase):
    """One daemon with --spares 1 and no warm slots, for the whole class."""

    @classmethod
    def setUpClass(cls):
        cls.d = harness.Daemon(spares=1).start()

    @classmethod
    def tearDownClass(cls):
        # the README's stop, with a spare waiting: nothing may be left (its VMM, files, network slot)
        cls.d.stop(command=["fusermount3", "-u", cls.d.mount])

    def spares(self, n=1):
        """Waits for n spares (and nothing being prepared); {id: status} of them."""
        d = self.d

        def got():
            p = d.pool()
            sp = {k: v for k, v in d.slots().items() if v["state"] == "spare"}
            return sp if p["spares"] == n and len(sp) == n and p["preparing"] == 0 else None
        return wait_for(got, 60, "%d spare(s): %s" % (n, d.pool()))

    def test_restore_on_spare(self):
        d = self.d
        (sid, sp), = self.spares().items()
        self.assertEqual(sp["prepared_by"], "spawn on clones of the snapshot, waiting for its state (a spare)")
        self.assertEqual(list(sp["timings"]), ["clone", "spawn"])
        argv = harness.proc_cmdline(sp["vmm_pid"])
        self.assertIn("-incoming", argv)
        self.assertEqual(argv[argv.index("-incoming") + 1], "defer")
        # prepared for its first run (architecture.md, "A VMM's first run"): the start of its
        # translation buffer (its one private anonymous rwx mapping) is resident, 5 MiB of 64
        self.assertEqual(code_buffer_rss_kib(sp["vmm_pid"]), [5120])
        before = d.pool()["creates"]
        st = d.create_ready("sp1")
        try:
            self.assertEqual(st["path"], "restore")
            self.assertEqual((st["slot"]["id"], st["slot"]["kind"]), (int(sid), "spare"))
            self.assertEqual(st["vmm_pid"], sp["vmm_pid"], "the sandbox runs in the spare's process")
            self.assertEqual(st["pool_miss"], "pool_empty")  # a miss of the warm pool all the same
            self.assertNotIn("spawn", st["timings"])
            self.assertIn("restore", st["timings"])
            self.assertEqual(d.sh("sp1", "echo hi; hostname").split(), ["hi", "sp1"])
            after = d.pool()["creates"]
            self.assertEqual(after["restore_on_spare"] - before["restore_on_spare"], 1)
            self.assertEqual(after["restore"] - before["restore"], 1)
            (nid, _), = self.spares().items()
            self.assertNotEqual(nid, sid)
            self.assertIn("sp1 restored (on a spare VMM)", harness.read_text(d.sb("sp1", "console")))
        finally:
            d.destroy("sp1")

    def test_fork_on_spare(self):
        d = self.d

        def sb(n, f):
            return d.sb(n, f)
        d.create_ready("pf")  # on the spare; the next one follows
        try:
            d.sh("pf", "echo before > /tmp/x; head -c 3000000 /dev/urandom > /tmp/big; md5sum /tmp/big > /tmp/sum; "
                       "echo diskbefore > /root/d; sync; "
                       "(i=0; while true; do i=$((i+1)); echo $i > /tmp/c; sleep 0.1; done) >/dev/null 2>&1 &")
            (sid, sp), = self.spares().items()
            forks = d.pool()["forks_on_spare"]
            harness.write_file(sb("pf", "ctl"), "fork pf2\n")
            c = d.wait_ready("pf2")
            self.assertEqual((c["path"], c["path_reason"]), ("fork", "fork of pf"))
            self.assertEqual((c["slot"]["id"], c["slot"]["kind"]), (int(sid), "spare"))
            self.assertEqual(c["vmm_pid"], sp["vmm_pid"], "the child runs in the spare's process")
            self.assertNotIn("spawn", c["timings"])
            self.assertIn("pages", c["timings"])
            self.assertEqual(d.pool()["forks_on_spare"], forks + 1)
            self.assertIn("pf2 forked (on a spare VMM)", harness.read_text(sb("pf2", "console")))
            self.assertEqual(d.sh("pf2", "hostname").strip(), "pf2")
            for n in ("pf", "pf2"):
                self.assertEqual(d.sh(n, "cat /tmp/x; cat /root/d").split(), ["before", "diskbefore"])
                self.assertEqual(d.sh(n, "md5sum -c /tmp/sum >/dev/null && echo same").strip(), "same")
                a = int(d.sh(n, "cat /tmp/c").strip())
                time.sleep(0.5)
                self.assertGreater(int(d.sh(n, "cat /tmp/c").strip()), a, "the loop does not run in %s" % n)
            # each its own from here; the child's writes survive its hibernation
            d.sh("pf", "echo parent > /tmp/x; echo parentdisk > /root/d; sync")
            d.sh("pf2", "echo child > /tmp/x; echo childdisk > /root/d; sync")
            harness.write_file(sb("pf2", "ctl"), "hibernate")
            self.assertEqual(d.status("pf2")["state"], "hibernated")
            # the wake takes the next spare: the spare's process, disk and console are the sandbox's
            (sid, sp), = self.spares().items()
            wakes = d.pool()["wakes_on_spare"]
            harness.write_file(sb("pf2", "ctl"), "resume")
            st = d.status("pf2")
            self.assertEqual((st["state"], st["vmm_pid"]), ("ready", sp["vmm_pid"]))
            self.assertEqual(d.pool()["wakes_on_spare"], wakes + 1)
            self.assertNotIn(sid, d.slots())
            con = harness.read_text(sb("pf2", "console"))
            self.assertIn("pf2 forked (on a spare VMM)", con)  # its history kept
            self.assertIn("pf2 woke (on a spare VMM)", con)
            self.assertEqual(d.sh("pf2", "cat /tmp/x; cat /root/d").split(), ["child", "childdisk"])
            self.assertEqual(d.sh("pf2", "md5sum -c /tmp/sum >/dev/null && echo same").strip(), "same")
            d.sh("pf2", "echo again > /tmp/x; echo diskagain > /root/d; sync")
            self.spares()
            harness.write_file(sb("pf2", "ctl"), "hibernate")  # and again, from a VMM that woke on a spare
            harness.write_file(sb("pf2", "ctl"), "resume")
            self.assertEqual(d.pool()["wakes_on_spare"], wakes + 2)
            self.assertEqual(d.sh("pf2", "cat /tmp/x; cat /root/d").split(), ["again", "diskagain"])
            self.assertEqual(d.sh("pf2", "md5sum -c /tmp/sum >/dev/null && echo same").strip(), "same")
            self.assertEqual(d.sh("pf", "cat /tmp/x; cat /root/d").split(), ["parent", "parentdisk"])
            # no spare (a decoy took it): the child's VMM is spawned, on the base all the same
            self.spares()
            d.create_ready("decoy")
            harness.write_file(sb("pf", "ctl"), "fork pfs\n")
            c = d.wait_ready("pfs")
            self.assertIsNone(c.get("slot"))
            self.assertIn("spawn", c["timings"])
            self.assertIn("pages", c["timings"])
            self.assertTrue(maps_base(c["vmm_pid"]))
            self.assertEqual(d.sh("pfs", "cat /tmp/x; cat /root/d").split(), ["parent", "parentdisk"])
            self.assertEqual(d.sh("pfs", "md5sum -c /tmp/sum >/dev/null && echo same").strip(), "same")
            # and a wake without a spare: spawned on the base, the delta's pages given
            self.spares()
            harness.write_file(sb("pfs", "ctl"), "hibernate")
            d.destroy("decoy")
            d.create_ready("decoy")
            harness.write_file(sb("pfs", "ctl"), "resume")
            self.assertTrue(maps_base(d.status("pfs")["vmm_pid"]))
            self.assertEqual(d.sh("pfs", "cat /tmp/x; cat /root/d").split(), ["parent", "parentdisk"])
            for n in ("pfs", "decoy"):
                d.destroy(n)
            # a fork of a child that ran on a spare: on the next spare, with the child's memory
            d.destroy("pf2")
            (sid, sp), = self.spares().items()
            harness.write_file(sb("pf", "ctl"), "fork pf3\n")
            c = d.wait_ready("pf3")
            self.assertEqual(c["vmm_pid"], sp["vmm_pid"])
            d.sh("pf3", "echo three > /tmp/x")
            self.spares()
            harness.write_file(sb("pf3", "ctl"), "fork pf4\n")
            c4 = d.wait_ready("pf4")
            self.assertEqual(c4["slot"]["kind"], "spare")
            self.assertEqual(d.sh("pf4", "cat /tmp/x; cat /root/d").split(), ["three", "parentdisk"])
            self.assertEqual(d.sh("pf4", "md5sum -c /tmp/sum >/dev/null && echo same").strip(), "same")
            for n in ("pf3", "pf4"):
                d.destroy(n)
            # a parent on an older snapshot's base: the spare (the new base) is left alone
            d.ctl("rebake\n")
            d.wait_template_ready()
            (sid, sp), = self.spares().items()
            harness.write_file(sb("pf", "ctl"), "fork pf5\n")
            c = d.wait_ready("pf5")
            self.assertIn("spawn", c["timings"])
            self.assertNotIn("pages", c["timings"])
            self.assertIsNone(c.get("slot"))
            self.assertFalse(maps_base(c["vmm_pid"]))  # its own memory file, mapped shared
            self.assertEqual(d.sh("pf5", "cat /tmp/x").strip(), "parent")
            self.assertIn(sid, d.slots())
            self.assertEqual(d.slots()[sid]["state"], "spare")
            d.destroy("pf5")
        finally:
            for n in ("pf2", "pf3", "pf4", "pf5", "pfs", "decoy", "pf"):
                if os.path.exists(sb(n, "status")):
                    d.destroy(n)

    def test_two_vcpus(self):
        """TCG cuts a 2-vCPU VMM's buffer into regions (their own mappings): the first of each
        vCPU is prepared, 2.5 MiB each; a restore on that spare runs both vCPUs."""
        d = self.d
        with d.template("two", bake=True, vcpus=2) as t:
            def spare():
                sp = [v for v in d.slots(t=t).values() if v["state"] == "spare"]
                return sp[0] if sp and d.pool(t=t)["preparing"] == 0 else None
            sp = wait_for(spare, 60, "a spare of %s: %s" % (t, d.pool(t=t)))
            rss = code_buffer_rss_kib(sp["vmm_pid"])
            self.assertGreater(len(rss), 2)
            self.assertEqual(rss[:2], [2560, 2560])
            self.assertEqual(sum(rss[2:]), 0)
            st = d.create_ready("two1", t=t)
            self.assertEqual((st["path"], st["slot"]["kind"]), ("restore", "spare"))
            self.assertEqual(d.sh("two1", "grep -c ^processor /proc/cpuinfo", t=t).split(), ["2"])

    def test_killed_spare_replaced(self):
        d = self.d
        (sid, sp), = self.spares().items()
        os.kill(sp["vmm_pid"], signal.SIGKILL)
        wait_for(lambda: sid not in d.slots(), 10, "the killed spare recycled")
        (nid, _), = self.spares().items()
        self.assertNotEqual(nid, sid)
        self.assertGreaterEqual(d.pool()["recycled"]["dead"], 1)
        st = d.create_ready("sp2")
        try:
            self.assertEqual((st["path"], st["slot"]["id"]), ("restore", int(nid)))
            self.assertEqual(d.sh("sp2", "echo ok").strip(), "ok")
        finally:
            d.destroy("sp2")

    def test_warm_slot_from_spare(self):
        d = self.d
        (sid, _), = self.spares().items()
        promoted = d.pool()["spares_promoted"]
        d.set_pool(1)
        try:
            d.wait_pool(1)
            self.assertEqual(d.slots()[sid]["state"], "warm")
            self.assertEqual(d.pool()["spares_promoted"], promoted + 1)
            self.spares()  # and a new spare beside it
            st = d.create_ready("sp3")
            self.assertEqual((st["path"], st["slot"]["id"], st["slot"]["kind"]), ("warm", int(sid), "warm"))
            d.destroy("sp3")
        finally:
            d.set_pool(0)
            d.wait_pool(0)

    def test_rebake_replaces_spare(self):
        d = self.d
        (sid, sp), = self.spares().items()
        d.ctl("rebake\n")
        d.wait_template_ready()
        wait_for(lambda: sid not in d.slots(), 10, "the old snapshot's spare recycled")
        self.assertFalse(harness.pid_alive(sp["vmm_pid"]))
        (nid, nsp), = self.spares().items()
        self.assertEqual(nsp["state_sha256"], d.template_status()["bake"]["state_sha256"])
        st = d.create_ready("sp4")
        try:
            self.assertEqual(st["slot"]["id"], int(nid))
            self.assertEqual(d.sh("sp4", "echo ok").strip(), "ok")
        finally:
            d.destroy("sp4")


class SpareRestart(harness.TestCase):
    def test_daemon_kill9_with_spare(self):
        d = harness.Daemon(spares=1).start()
        d2 = None
        try:
            sp = wait_for(lambda: [v for v in d.slots().values() if v["state"] == "spare"], 60, "a spare")
            pid = sp[0]["vmm_pid"]
            old_dirs = set(d.vm_dirs())
            d.kill9()
            d2 = harness.Daemon(reuse=d, spares=1).start()
            wait_for(lambda: not harness.pid_alive(pid), 10, "the old spare's VMM %d reaped" % pid)
            wait_for(lambda: not (set(d2.vm_dirs()) & old_dirs), 10, "the old spare's files removed")
            st = wait_for(lambda: d2.pool()["spares"] == 1 and d2.create_ready("r"), 60, "a create on a new spare")
            self.assertEqual((st["path"], st["slot"]["kind"]), ("restore", "spare"))
            d2.destroy("r")
        except BaseException:
            (d2 or d).force_cleanup()
            raise
        d2.stop()

    def test_daemon_kill9_after_fork_and_wake_on_spares(self):
        """A sandbox woken on a spare and a fork's child on one are re-adopted after kill -9 of the
        daemon (their records name the run directories they took over; nothing of the spares is
        left), and wake later by a spawn (what their memory was beyond the base is not known to a
        new daemon) with their memory."""
        d = harness.Daemon(spares=1).start()
        d2 = None

        def spare(dd):
            wait_for(lambda: dd.pool()["spares"] == 1 and dd.pool()["preparing"] == 0, 60, "a spare")
        try:
            d.create_ready("a")
            d.sh("a", "echo mem > /tmp/x")
            spare(d)
            harness.write_file(d.sb("a", "ctl"), "hibernate")
            harness.write_file(d.sb("a", "ctl"), "resume")
            self.assertEqual(d.pool()["wakes_on_spare"], 1)
            spare(d)
            harness.write_file(d.sb("a", "ctl"), "fork b\n")
            self.assertEqual(d.wait_ready("b")["slot"]["kind"], "spare")
            self.assertEqual(d.pool()["forks_on_spare"], 1)
            pids = {n: d.status(n)["vmm_pid"] for n in ("a", "b")}
            d.kill9()
            d2 = harness.Daemon(reuse=d, spares=1).start()
            for n in ("a", "b"):
                st = d2.status(n)
                self.assertEqual((st["state"], st["vmm_pid"]), ("ready", pids[n]))
                self.assertEqual(d2.sh(n, "cat /tmp/x").strip(), "mem")
            spare(d2)
            harness.write_file(d2.sb("a", "ctl"), "hibernate")
            harness.write_file(d2.sb("a", "ctl"), "resume")
            self.assertEqual(d2.pool()["wakes_on_spare"], 0)
            self.assertFalse(maps_base(d2.status("a")["vmm_pid"]))
            self.assertEqual(d2.sh("a", "cat /tmp/x").strip(), "mem")
            for n in ("a", "b"):
                d2.destroy(n)
        except BaseException:
            (d2 or d).force_cleanup()
            raise
        d2.stop()


if __name__ == "__main__":
    harness.main()
