#!/usr/bin/env python3
"""
A full store, against a real daemon whose loop-mounted XFS store is small
(--store-size 1536) and really filled (fallocate):

- Filled to 90%: less than a new VM's RAM plus the reserve
  (--store-reserve-mib) is free, so a create (mkdir), a fork and a rebake are
  refused at once with ENOSPC and the figures, before anything is written:
  nothing is created, the source sandbox and the template's snapshot are
  unchanged and keep working.
- Filled to 100%: a hibernate (of a paused sandbox: a running guest's own
  copy-on-write would hit the full store too) fails with ENOSPC, its partial
  state file is removed, the sandbox is still paused and resumes.
- Space freed: every refused operation then succeeds, and nothing is left
  after the sandboxes are destroyed.
"""
import errno
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402


def free_bytes(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(path, leave):
    """A file taking the store's free space down to about `leave` bytes."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        want = free_bytes(os.path.dirname(path)) - leave
        if want > 0:
            os.posix_fallocate(fd, 0, want)
        if leave == 0:
            # what fallocate could not take (metadata, rounding): in small writes until the store refuses
            chunk = b"\0" * 65536
            off = want if want > 0 else 0
            try:
                while True:
                    os.pwrite(fd, chunk, off)
                    off += len(chunk)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
    finally:
        os.close(fd)


class StoreFull(harness.TestCase):
    def test_refused_when_full_and_retried_when_freed(self):
        with harness.own_daemon(extra_args=["--store-size", "1536"]) as d:
            store = os.path.join(d.state, "store")
            if not os.path.ismount(store):
                self.skipTest("the state dir reflinks by itself: no loop store to fill")
            base = d.core(d.wait_inventory({**d.inventory(), "qemu": [], "run": [], "zombies": []}))
            d.create_ready("p")
            d.create_ready("h")
            harness.write_file(d.sb("h", "ctl"), b"pause")
            snap = os.path.join(store, "templates", "default", "snapshot")
            snap_before = {f: os.stat(os.path.join(snap, f)).st_ctime_ns for f in os.listdir(snap)}
            total = os.statvfs(store).f_blocks * os.statvfs(store).f_frsize
            filler = os.path.join(store, "filler")
            try:
                # ---- 90%: refused before anything is written
                fill(filler, total // 10)
                sys.stderr.write("\n  store %d MiB, %d MiB free\n" % (total >> 20, free_bytes(store) >> 20))
                listing = sorted(d.sandboxes())
                self.assertErrno(errno.ENOSPC, os.mkdir, d.sb("q"))
                self.assertEqual(sorted(d.sandboxes()), listing)
                self.assertErrno(errno.ENOSPC, harness.write_file, d.sb("p", "ctl"), b"fork q")
                st = d.status("p")
                self.assertEqual(st["state"], "ready")
                self.assertRegex(st["ctl_error"], r"MiB free.*reserve", st)
                self.assertNotIn("q", d.sandboxes())
                self.assertErrno(errno.ENOSPC, harness.write_file, d.tpl("default", "ctl"), b"rebake")
                ts = d.template_status()
                self.assertEqual(ts["state"], "ready", ts)
                self.assertIn("bake: refused", ts["error"] or "", ts)
                self.assertEqual({f: os.stat(os.path.join(snap, f)).st_ctime_ns for f in os.listdir(snap)},
                                 snap_before)
                self.assertEqual(d.sh("p", "hostname").strip(), "p")
                inv = d.core(d.inventory())
                self.assertEqual(inv["sandboxes"], ["default/h", "default/p"], inv)

                # ---- 100%: a hibernate's state file cannot be written
                harness.write_file(d.sb("p", "ctl"), b"pause")  # no guest may write memory now
                fill(filler + "2", 0)
                hdir = d.sandbox_vm_dir("h")
                self.assertErrno(errno.ENOSPC, harness.write_file, d.sb("h", "ctl"), b"hibernate")
                st = d.status("h")
                self.assertEqual(st["state"], "paused", st)
                self.assertIn("No space left", st["ctl_error"] or "", st)
                self.assertEqual([f for f in os.listdir(hdir) if f.startswith("hibernate.state")], [])
            finally:
                for f in (filler, filler + "2"):
                    if os.path.exists(f):
                        os.unlink(f)

            # ---- freed: each of them works
            harness.write_file(d.sb("h", "ctl"), b"hibernate")
            self.assertEqual(d.status("h")["state"], "hibernated")
            harness.write_file(d.sb("h", "ctl"), b"resume")
            harness.write_file(d.sb("p", "ctl"), b"resume")
            self.assertEqual(d.sh("h", "hostname").strip(), "h")
            self.assertEqual(d.create_ready("q")["state"], "ready")
            harness.write_file(d.sb("p", "ctl"), b"fork r")
            self.assertEqual(d.wait_ready("r")["state"], "ready")
            self.assertEqual(d.sh("r", "hostname").strip(), "r")
            harness.write_file(d.tpl("default", "ctl"), b"rebake")
            harness.wait_for(lambda: d.template_status()["state"] == "ready" and
                             d.template_status()["error"] is None, harness.BAKE_TIMEOUT, "the rebake")
            for n in ("p", "h", "q", "r"):
                d.destroy(n)
            d.assert_inventory(base, timeout=15)


if __name__ == "__main__":
    harness.main()
