#!/usr/bin/env python3
"""
Cold path and readiness, against a real daemon:

- a new template "t2" (mkdir templates/t2) starts "new", never baked, with
  the default's config; a create in it boots cold, says why (path_reason),
  and becomes ready;
- while that cold boot runs the mount stays responsive: os.listdir of the
  sandboxes directory answers within 50 ms (measured several times, the
  maximum is asserted) and a mkdir of a second sandbox returns within 50 ms;
- rmdir of a template with sandboxes is EBUSY;
- after `echo bake > ctl` and the bake, the next create restores;
- with garbage written into the snapshot's device state file the next create
  boots cold with a path_reason naming the digest, and still becomes ready.
- SnapshotFaults: empty, truncated and bit-flipped state; truncated, missing
  and bit-flipped memory; missing, bit-flipped and unreadable disk: each
  found before a VMM maps anything, the create boots cold with the reason;
  a wrong checksum (as bit rot would leave) is found at the first use after
  a start.
"""
import errno
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

LIMIT_S = 0.050  # the responsiveness bound of the spec
SAMPLES = 10

D = None
BASE = None


def setUpModule():
    global D, BASE
    D, BASE = harness.start_shared()


def tearDownModule():
    if D is not None:
        D.stop()


def timed(fn, *args):
    t0 = time.perf_counter()
    r = fn(*args)
    return time.perf_counter() - t0, r


class ColdPath(harness.TestCase):
    """One ordered scenario on template t2 (the steps depend on each other)."""

    def test_cold_then_bake_then_restore_then_corrupt(self):
        T = "t2"
        # ---- a new template: state "new", default's config, not baked
        os.mkdir(D.tpl(T))
        self.assertIn(T, os.listdir(os.path.join(D.mount, "templates")))
        st = D.template_status(T)
        self.assertEqual(st["name"], T)
        self.assertEqual(st["state"], "new")
        self.assertEqual(st["sandboxes"], 0)
        self.assertEqual(json.loads(harness.read_text(D.tpl(T, "config"))),
                         json.loads(harness.read_text(D.tpl("default", "config"))))
        ident = harness.read_text(D.tpl(T, "identity")).strip()
        self.assertRegex(ident, r"^[0-9a-f]{64}$")
        self.assertEqual(sorted(os.listdir(D.tpl(T))), ["Dockerfile", "build.log", "config", "create", "ctl", "identity",
                                                        "pool", "sandboxes", "slots", "stats", "status"])
        self.assertEqual(os.listdir(D.sbdir(T)), [])

        # ---- cold create; the mount answers quickly meanwhile
        D.create("c1", t=T)
        listing_times = []
        states = []
        for _ in range(SAMPLES):
            dt, names = timed(os.listdir, D.sbdir(T))
            listing_times.append(dt)
            self.assertEqual(names, ["c1"])
            states.append(D.status("c1", t=T)["state"])
            time.sleep(0.02)
        dt_mkdir, _ = timed(os.mkdir, D.sb("c2", t=T))
        state_after = D.status("c1", t=T)["state"]
        # the measurements are meaningful only if they overlapped the cold boot
        self.assertEqual(states, ["creating"] * SAMPLES,
                         "the cold create finished during the measurements: %s" % states)
        self.assertEqual(state_after, "creating")
        sys.stderr.write("\n  listdir during a cold create: max %.1f ms, median %.1f ms (n=%d); "
                         "mkdir %.1f ms\n" % (max(listing_times) * 1000,
                                              sorted(listing_times)[SAMPLES // 2] * 1000, SAMPLES,
                                              dt_mkdir * 1000))
        self.assertLess(max(listing_times), LIMIT_S, "listdir took %s ms" % [round(t * 1000, 1)
                                                                            for t in listing_times])
        self.assertLess(dt_mkdir, LIMIT_S, "mkdir during a cold create took %.1f ms" % (dt_mkdir * 1000))

        # ---- rmdir of a template with sandboxes: EBUSY
        self.assertErrno(errno.EBUSY, os.rmdir, D.tpl(T))

        # ---- both become ready, cold, with the reason
        for n in ("c1", "c2"):
            st = D.wait_ready(n, t=T)
            self.assertEqual(st["path"], "cold", st)
            self.assertIsInstance(st["path_reason"], str)
            self.assertIn("not baked", st["path_reason"])
            self.assertEqual(st["identity"], ident)
            self.assertEqual(st["template"], T)
            self.assertEqual(D.sh(n, "hostname", t=T).strip(), n)
            phases, total, _ = harness.parse_timings(harness.read_text(D.sb(n, "timings", t=T)))
            self.assertEqual(set(phases), set(st["timings"]))
        # a cold boot writes the guest's serial console
        self.assertIsInstance(harness.read_text(D.sb("c1", "console", t=T)), str)
        self.assertEqual(D.template_status(T)["state"], "new")
        D.destroy("c1", t=T)
        D.destroy("c2", t=T)
        D.assert_inventory(BASE)

        # ---- bake, then restore
        harness.write_file(D.tpl(T, "ctl"), "bake\n")
        st = D.wait_template_ready(T)
        self.assertEqual(st["bake"]["identity"], ident)
        self.assertRegex(st["bake"]["state_sha256"], r"^[0-9a-f]{64}$")
        st = D.create_ready("r1", t=T)
        self.assertEqual(st["path"], "restore", st)
        self.assertIsNone(st["path_reason"])
        self.assertEqual(D.sh("r1", "hostname", t=T).strip(), "r1")
        D.destroy("r1", t=T)
        D.assert_inventory(BASE)

        # ---- corrupt the snapshot's device state: the next create boots cold, and works.
        state_file = os.path.join(D.state, "store", "templates", T, "snapshot", "state")
        self.assertTrue(os.path.isfile(state_file))
        with open(state_file, "r+b") as f:
            f.write(b"garbage!" * 64)
        with self.subTest(step="create after the snapshot's state file was corrupted"):
            try:
                st = D.create_ready("r2", t=T)
                self.assertEqual(st["path"], "cold", st)
                self.assertIn("digest", st["path_reason"] or "", st)
                self.assertEqual(st["state"], "ready")
                self.assertEqual(D.sh("r2", "hostname", t=T).strip(), "r2")
            finally:
                if "r2" in D.sandboxes(t=T):
                    D.destroy("r2", t=T)
        with self.subTest(step="warm slots are never prepared from the corrupt snapshot"):
            harness.write_file(D.tpl(T, "pool"), "1\n")
            try:
                deadline = time.monotonic() + 20
                while D.pool(T)["prepare_failed"] == 0 and time.monotonic() < deadline:
                    time.sleep(0.05)
                p = D.pool(T)
                self.assertGreaterEqual(p["prepare_failed"], 1, p)
                self.assertIn("digest", p["error"] or "", p)
                self.assertEqual((p["warm"], D.slots(T)), (0, {}))
            finally:
                harness.write_file(D.tpl(T, "pool"), "0\n")

        # ---- the template goes away once empty
        os.rmdir(D.tpl(T))
        self.assertNotIn(T, os.listdir(os.path.join(D.mount, "templates")))
        self.assertFalse(os.path.exists(os.path.join(D.state, "store", "templates", T)))
        D.assert_inventory(BASE)


class SnapshotFaults(harness.TestCase):
    """The snapshot fault matrix on template sf (rebaked after each fault):
    every fault is found before a VMM maps anything, and the create boots
    cold with the reason in path_reason, then works."""

    def snap(self, *rest):
        return os.path.join(D.state, "store", "templates", "sf", "snapshot", *rest)

    def bake(self):
        harness.write_file(D.tpl("sf", "ctl"), "rebake\n" if D.template_status("sf")["state"] != "new" else "bake\n")
        deadline = time.monotonic() + harness.BAKE_TIMEOUT
        while D.template_status("sf")["state"] != "ready" or not os.path.exists(self.snap("bake.json")):
            self.assertLess(time.monotonic(), deadline, "no bake")
            time.sleep(0.05)
        D.wait_template_ready("sf")

    def flip(self, path, offset):
        with open(path, "r+b") as f:
            f.seek(offset)
            b = f.read(1)
            f.seek(offset)
            f.write(bytes([b[0] ^ 0x01]))

    def truncate(self, path, size):
        os.truncate(path, size)

    def replace_with_dir(self, path):
        os.unlink(path)
        os.mkdir(path)

    def test_each_fault_boots_cold_with_the_reason(self):
        with D.template("sf"):
            faults = [
                ("state empty", lambda: self.truncate(self.snap("state"), 0), "state digest mismatch"),
                ("state truncated", lambda: self.truncate(self.snap("state"), os.path.getsize(self.snap("state")) // 2),
                 "state digest mismatch"),
                ("state bit flipped", lambda: self.flip(self.snap("state"), 100), "state digest mismatch"),
                ("memory truncated", lambda: self.truncate(self.snap("mem"), 1 << 20), "snapshot mem: 1048576 bytes, baked with"),
                ("memory bit flipped", lambda: self.flip(self.snap("mem"), 12345), "snapshot mem: changed since the bake"),
                ("disk missing", lambda: os.unlink(self.snap("disk.img")), "snapshot disk.img: No such file"),
                ("disk bit flipped", lambda: self.flip(self.snap("disk.img"), 4096), "snapshot disk.img: changed since the bake"),
                ("disk unreadable (a directory)", lambda: self.replace_with_dir(self.snap("disk.img")),
                 "snapshot disk.img: not a regular file"),
            ]
            seen = []
            saved = None
            for what, fault, reason in faults:
                with self.subTest(fault=what):
                    if saved is not None and what.startswith("state"):
                        # the state is checked by its digest alone: its bytes put back make the bake sound again
                        with open(self.snap("state"), "wb") as f:
                            f.write(saved)
                    else:
                        self.bake()
                        with open(self.snap("state"), "rb") as f:
                            saved = f.read()
                    self.assertEqual(D.create_ready("ok", t="sf")["path"], "restore")  # the bake is sound
                    D.destroy("ok", t="sf")
                    fault()
                    st = D.create_ready("f", t="sf")
                    try:
                        self.assertEqual(st["path"], "cold", st)
                        self.assertIn(reason, st["path_reason"] or "", st)
                        self.assertEqual(D.sh("f", "hostname", t="sf").strip(), "f")
                        seen.append("%s: %s" % (what, st["path_reason"]))
                    finally:
                        D.destroy("f", t="sf")
            sys.stderr.write("\n  " + "\n  ".join(seen) + "\n")
        D.assert_inventory(BASE)

    def test_checksum_checked_once_per_daemon_run(self):
        # a change that keeps size and ctime (bit rot under the filesystem) is caught by the
        # CRC-32C checked at the first use after a start: simulated by a wrong recorded sum
        d = harness.Daemon().start()
        try:
            bj = os.path.join(d.state, "store", "templates", "default", "snapshot", "bake.json")
            st = d.create_ready("a")
            self.assertEqual(st["path"], "restore")
            rec = harness.read_json(bj)
            self.assertRegex(rec["files"]["mem"]["crc32c"], r"^[0-9a-f]{8}$")
            self.assertIn("disk.img", rec["files"])
            rec["files"]["mem"]["crc32c"] = "%08x" % (int(rec["files"]["mem"]["crc32c"], 16) ^ 1)
            with open(bj, "w") as f:
                json.dump(rec, f)
            # this run checked its sums already: the record is read again at the next start
            d.create_ready("b")
            os.rmdir(d.sb("a"))
            os.rmdir(d.sb("b"))
        except BaseException:
            d.force_cleanup()
            raise
        d2 = harness.Daemon(reuse=d, extra_args=["--no-bake"])
        d.stop()
        d2.start(wait_default=False)
        try:
            st = d2.create_ready("c")
            self.assertEqual(st["path"], "cold", st)
            self.assertIn("snapshot mem: checksum mismatch", st["path_reason"] or "", st)
            os.rmdir(d2.sb("c"))
        except BaseException:
            d2.force_cleanup()
            raise
        d2.stop()


if __name__ == "__main__":
    harness.main()
