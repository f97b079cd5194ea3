#!/usr/bin/env python3
"""
The live guest filesystem (MOUNT/live/NAME/, docs/interface.md "The guest's
files") and watching (MOUNT/events, poll on status), against real guests.

- Random binary content round-trips (several MiB, host -> guest -> host, and
  a file made in the guest) with SHA-256 checked on both sides; reads at
  odd offsets across the 1 MiB read-ahead; the root disk as well as tmpfs.
- rename (over a file, RENAME_NOREPLACE, a directory with children, between
  two sandboxes: EXDEV) and unlink (gone for the guest too; an open file
  stays readable).
- errno mapping: ENOENT, EACCES (a 0000 file opened by a non-root host user:
  the mount is default_permissions), EISDIR, ENOTEMPTY, ENOTDIR, EEXIST, ENXIO
  (a FIFO never blocks the agent).
- symlink / readlink (absolute targets shown relative, stored as given), link,
  mkdir / rmdir, truncate, chmod / chown / utime, statfs.
- `root` is a symlink to live/NAME; `rm -rf` of the sandbox directory
  destroys it without walking into the guest.
- A paused or hibernated sandbox is resumed by an access below live/NAME
  (listing live/ does not wake it); a stopped one answers EIO.
- Shell only: cat, echo, printf, ls, cp, mv, rm, find through live/NAME.
- events: JSON lines per lifecycle event, blocking reads, poll(); poll on a
  sandbox's status wakes on a state change and re-arms after lseek+read.
"""
import ctypes
import errno
import hashlib
import json
import os
import select
import stat
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

D = BASE = None
SB = "lv"


def setUpModule():
    global D, BASE
    # --allow-other: the EACCES checks run as a non-root host user, and modes (default_permissions) decide
    D = harness.Daemon(extra_args=["--allow-other"]).start()
    BASE = D.core(D.wait_inventory({**D.inventory(), "qemu": [], "run": [], "zombies": []}))
    D.create_ready(SB)


def tearDownModule():
    harness.stop_shared(D, BASE)


def L(*rest, name=SB):
    return os.path.join(D.mount, "live", name, *rest)


def read_file(path, chunk=1 << 20):
    with open(path, "rb", buffering=0) as f:
        out = bytearray()
        while True:
            b = f.read(chunk)
            if not b:
                return bytes(out)
            out += b


def write_file(path, data, chunk=1 << 20):
    with open(path, "wb", buffering=0) as f:
        view = memoryview(data)
        while view:
            n = f.write(view[:chunk])
            view = view[n:]


def guest_sha(path, name=SB):
    return D.sh(name, "sha256sum %s" % path).split()[0]


_libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2


def renameat2(a, b, flags):
    if _libc.renameat2(AT_FDCWD, a.encode(), AT_FDCWD, b.encode(), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), a)


def as_nobody(fn, dirpath):
    """Runs fn(dirfd) in a child with uid/gid 65534, dirfd a directory opened (as root) at dirpath, so
    only the guest's own modes decide (the test mount point itself is 0700); returns the errno fn raised
    (0 if none)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(r)
            dfd = os.open(dirpath, os.O_RDONLY | os.O_DIRECTORY)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            fn(dfd)
        except OSError as e:
            code = e.errno
        except BaseException:  # noqa: BLE001
            code = 255
        os.write(w, str(code).encode())
        os._exit(0)
    os.close(w)
    data = os.read(r, 100)
    os.close(r)
    os.waitpid(pid, 0)
    return int(data)


class Live(harness.TestCase):
    def setUp(self):
        super().setUp()
        D.sh(SB, "rm -rf /tmp/t /root/t; mkdir /tmp/t /root/t")

    def test_roundtrip_random(self):
        data = os.urandom(6 * 1024 * 1024 + 4321)
        write_file(L("tmp/t/blob"), data)
        self.assertEqual(os.stat(L("tmp/t/blob")).st_size, len(data))
        self.assertEqual(guest_sha("/tmp/t/blob"), hashlib.sha256(data).hexdigest())
        back = read_file(L("tmp/t/blob"))
        self.assertEqual(hashlib.sha256(back).hexdigest(), hashlib.sha256(data).hexdigest())
        back = read_file(L("tmp/t/blob"), chunk=65536 + 7)  # small, unaligned reads
        self.assertTrue(back == data, "small reads differ")
        # reads at odd offsets, around and across the 1 MiB read-ahead boundaries
        fd = os.open(L("tmp/t/blob"), os.O_RDONLY)
        try:
            for off, n in ((0, 1), ((1 << 20) - 10, 100), (3 * (1 << 20) + 5, 2 * (1 << 20)), (len(data) - 5, 100),
                           (len(data), 10), (12345, 777), ((1 << 20) - 1, 1)):
                self.assertEqual(os.pread(fd, n, off), data[off:off + n], "pread(%d, %d)" % (n, off))
        finally:
            os.close(fd)
        # pwrite in the middle
        fd = os.open(L("tmp/t/blob"), os.O_WRONLY)
        try:
            os.pwrite(fd, b"X" * 10, 2 * (1 << 20) - 5)
        finally:
            os.close(fd)
        data = data[:2 * (1 << 20) - 5] + b"X" * 10 + data[2 * (1 << 20) + 5:]
        self.assertEqual(guest_sha("/tmp/t/blob"), hashlib.sha256(data).hexdigest())
        # a file made in the guest
        D.sh(SB, "head -c 5000001 /dev/urandom > /tmp/t/g")
        want = guest_sha("/tmp/t/g")
        self.assertEqual(hashlib.sha256(read_file(L("tmp/t/g"))).hexdigest(), want)
        # a change made inside the guest is never served stale (direct_io)
        write_file(L("tmp/t/c"), b"one")
        self.assertEqual(read_file(L("tmp/t/c")), b"one")
        D.sh(SB, "printf two > /tmp/t/c")
        self.assertEqual(read_file(L("tmp/t/c")), b"two")
        # the root disk (ext4) as well as tmpfs
        disk = os.urandom(2 * 1024 * 1024 + 1)
        write_file(L("root/t/d"), disk)
        D.sh(SB, "sync")
        self.assertEqual(guest_sha("/root/t/d"), hashlib.sha256(disk).hexdigest())
        self.assertTrue(read_file(L("root/t/d")) == disk)
        # O_APPEND
        with open(L("tmp/t/c"), "ab", buffering=0) as f:
            f.write(b"-three")
        self.assertEqual(D.sh(SB, "cat /tmp/t/c"), "two-three")

    def test_rename_unlink(self):
        write_file(L("tmp/t/a"), b"A")
        write_file(L("tmp/t/b"), b"B")
        os.rename(L("tmp/t/a"), L("tmp/t/a2"))
        self.assertErrno(errno.ENOENT, os.stat, L("tmp/t/a"))
        self.assertEqual(read_file(L("tmp/t/a2")), b"A")
        self.assertEqual(D.sh(SB, "ls /tmp/t").split(), ["a2", "b"])
        # over an existing file: it is replaced
        os.rename(L("tmp/t/a2"), L("tmp/t/b"))
        self.assertEqual(read_file(L("tmp/t/b")), b"A")
        self.assertEqual(sorted(os.listdir(L("tmp/t"))), ["b"])
        # RENAME_NOREPLACE refuses, RENAME_EXCHANGE swaps
        write_file(L("tmp/t/c"), b"C")
        self.assertErrno(errno.EEXIST, renameat2, L("tmp/t/c"), L("tmp/t/b"), RENAME_NOREPLACE)
        self.assertEqual((read_file(L("tmp/t/b")), read_file(L("tmp/t/c"))), (b"A", b"C"))
        renameat2(L("tmp/t/c"), L("tmp/t/b"), RENAME_EXCHANGE)
        self.assertEqual((read_file(L("tmp/t/b")), read_file(L("tmp/t/c"))), (b"C", b"A"))
        self.assertEqual(D.sh(SB, "cat /tmp/t/b /tmp/t/c"), "CA")
        renameat2(L("tmp/t/c"), L("tmp/t/n"), RENAME_NOREPLACE)
        # a directory with children: the children are found under the new name
        os.makedirs(L("tmp/t/d1/sub"))
        write_file(L("tmp/t/d1/sub/f"), b"deep")
        os.stat(L("tmp/t/d1/sub/f"))  # known to the kernel under the old path
        os.rename(L("tmp/t/d1"), L("tmp/t/d2"))
        self.assertEqual(read_file(L("tmp/t/d2/sub/f")), b"deep")
        self.assertErrno(errno.ENOENT, os.stat, L("tmp/t/d1/sub/f"))
        write_file(L("tmp/t/d2/sub/f"), b"deeper")
        self.assertEqual(D.sh(SB, "cat /tmp/t/d2/sub/f"), "deeper")
        # a rename onto a non-empty directory
        os.makedirs(L("tmp/t/d3/x"))
        self.assertErrno(errno.ENOTEMPTY, os.rename, L("tmp/t/d2"), L("tmp/t/d3"))
        # unlink: gone for the guest too, but an open file stays readable
        write_file(L("tmp/t/u"), b"still here")
        fd = os.open(L("tmp/t/u"), os.O_RDONLY)
        try:
            os.unlink(L("tmp/t/u"))
            self.assertErrno(errno.ENOENT, os.stat, L("tmp/t/u"))
            self.assertNotIn("u", os.listdir(L("tmp/t")))
            self.assertFalse(D.exec_plain(SB, "test -e /tmp/t/u")[1])
            self.assertEqual(os.pread(fd, 100, 0), b"still here")
        finally:
            os.close(fd)
        self.assertErrno(errno.ENOENT, os.unlink, L("tmp/t/u"))
        # a file unlinked in the guest is gone on the host
        D.sh(SB, "rm /tmp/t/n")
        time.sleep(1.1)  # names are cached for 1 s
        self.assertErrno(errno.ENOENT, os.stat, L("tmp/t/n"))

    def test_rename_across_sandboxes(self):
        D.create_ready("lv2")
        try:
            write_file(L("tmp/x"), b"x")
            self.assertErrno(errno.EXDEV, os.rename, L("tmp/x"), L("tmp/x", name="lv2"))
            self.assertErrno(errno.EXDEV, os.link, L("tmp/x"), L("tmp/x", name="lv2"))
            self.assertErrno(errno.ENOENT, os.stat, L("tmp/x", name="lv2"))
            # each sandbox has its own files
            write_file(L("tmp/x", name="lv2"), b"other")
            self.assertEqual(read_file(L("tmp/x")), b"x")
            self.assertEqual(D.sh("lv2", "hostname").strip(), "lv2")
            self.assertEqual(sorted(os.listdir(os.path.join(D.mount, "live"))), [SB, "lv2"])
            os.unlink(L("tmp/x"))
        finally:
            D.destroy("lv2")
        # live/NAME is gone (names are cached for up to 1 s)
        harness.wait_for(lambda: not os.path.exists(L(name="lv2")), 3, "live/lv2 gone after the destroy")

    def test_errno(self):
        self.assertErrno(errno.ENOENT, os.stat, L("tmp/t/nope"))
        self.assertErrno(errno.ENOENT, os.open, L("tmp/t/nope"), os.O_RDONLY)
        self.assertErrno(errno.ENOENT, os.open, L("tmp/t/nodir/f"), os.O_WRONLY | os.O_CREAT)
        self.assertErrno(errno.ENOENT, os.rmdir, L("tmp/t/nope"))
        self.assertErrno(errno.EISDIR, os.open, L("tmp/t"), os.O_WRONLY)
        self.assertErrno(errno.EISDIR, os.open, L("tmp/t"), os.O_RDWR)
        os.makedirs(L("tmp/t/full/sub"))
        self.assertErrno(errno.ENOTEMPTY, os.rmdir, L("tmp/t/full"))
        self.assertErrno(errno.EISDIR, os.unlink, L("tmp/t/full"))
        write_file(L("tmp/t/f"), b"f")
        self.assertErrno(errno.ENOTDIR, os.rmdir, L("tmp/t/f"))
        self.assertErrno(errno.ENOTDIR, os.stat, L("tmp/t/f/x"))
        self.assertErrno(errno.EEXIST, os.mkdir, L("tmp/t/full"))
        self.assertErrno(errno.EEXIST, os.open, L("tmp/t/f"), os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        # EACCES: modes are the guest's, checked for a non-root host user
        write_file(L("tmp/t/secret"), b"s")
        os.chmod(L("tmp/t/secret"), 0)
        self.assertEqual(D.sh(SB, "stat -c %a /tmp/t/secret").strip(), "0")
        write_file(L("tmp/t/public"), b"p")
        os.chmod(L("tmp/t/public"), 0o644)
        self.assertEqual(as_nobody(lambda d: os.close(os.open("public", os.O_RDONLY, dir_fd=d)), L("tmp/t")), 0,
                         "a non-root user cannot open a 0644 guest file (is the mount allow_other?)")
        self.assertEqual(as_nobody(lambda d: os.open("secret", os.O_RDONLY, dir_fd=d), L("tmp/t")), errno.EACCES)
        self.assertEqual(as_nobody(lambda d: os.open("new", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=d), L("etc")),
                         errno.EACCES)  # /etc is 0755 root
        self.assertEqual(as_nobody(lambda d: os.open("root", os.O_RDONLY | os.O_DIRECTORY, dir_fd=d), L()),
                         errno.EACCES)  # /root is 0700 root
        self.assertFalse(D.exec_plain(SB, "test -e /etc/new")[1])
        # a guest FIFO never blocks the agent. (docs/interface.md says ENXIO; in fact the host kernel never
        # sends the open of a FIFO to FUSE: it opens a host-side pipe, so only a non-blocking open is safe here)
        D.sh(SB, "mkfifo /tmp/t/fifo")
        self.assertTrue(stat.S_ISFIFO(os.lstat(L("tmp/t/fifo")).st_mode))
        try:
            fd = os.open(L("tmp/t/fifo"), os.O_RDONLY | os.O_NONBLOCK)
        except OSError as e:
            self.assertEqual(e.errno, errno.ENXIO)
        else:
            os.close(fd)
        self.assertEqual(D.sh(SB, "echo alive").strip(), "alive")
        # truncate of a directory
        self.assertErrno(errno.EISDIR, os.truncate, L("tmp/t/full"), 0)

    def test_symlink_readlink(self):
        os.symlink("lnk-tgt", L("tmp/t/rel"))
        self.assertEqual(os.readlink(L("tmp/t/rel")), "lnk-tgt")
        self.assertErrno(errno.ENOENT, os.stat, L("tmp/t/rel"))  # dangling
        self.assertTrue(stat.S_ISLNK(os.lstat(L("tmp/t/rel")).st_mode))
        write_file(L("tmp/t/lnk-tgt"), b"target")
        self.assertEqual(read_file(L("tmp/t/rel")), b"target")
        # absolute targets: stored as given, shown relative so they stay inside live/NAME
        os.symlink("/etc/passwd", L("tmp/t/abs"))
        self.assertEqual(D.sh(SB, "readlink /tmp/t/abs").strip(), "/etc/passwd")
        self.assertEqual(os.readlink(L("tmp/t/abs")), "../../etc/passwd")
        self.assertEqual(read_file(L("tmp/t/abs")), read_file(L("etc/passwd")))
        self.assertTrue(read_file(L("tmp/t/abs")).startswith(b"root:x:0:0:"))
        D.sh(SB, "mkdir -p /tmp/t/a/b && ln -s / /tmp/t/a/b/top && ln -s /tmp /tmp/t/tmpl")
        self.assertEqual(os.readlink(L("tmp/t/a/b/top")), "../../../..")
        self.assertEqual(os.path.realpath(L("tmp/t/a/b/top")), L())
        self.assertEqual(os.path.realpath(L("tmp/t/tmpl")), L("tmp"))
        self.assertIn("t", os.listdir(L("tmp/t/tmpl")))
        # a hard link
        os.link(L("tmp/t/lnk-tgt"), L("tmp/t/hard"))
        self.assertEqual(os.stat(L("tmp/t/lnk-tgt")).st_nlink, 2)
        self.assertEqual(D.sh(SB, "stat -c %h /tmp/t/hard").strip(), "2")
        self.assertEqual(read_file(L("tmp/t/hard")), b"target")

    def test_mkdir_rmdir_truncate_attrs(self):
        os.mkdir(L("tmp/t/m"), 0o750)
        os.makedirs(L("tmp/t/m/a/b/c"))
        umask = os.umask(0)
        os.umask(umask)
        self.assertEqual(stat.S_IMODE(os.stat(L("tmp/t/m")).st_mode), 0o750 & ~umask)
        self.assertEqual(D.sh(SB, "find /tmp/t/m -type d | sort").split(),
                         ["/tmp/t/m", "/tmp/t/m/a", "/tmp/t/m/a/b", "/tmp/t/m/a/b/c"])
        for p in ("tmp/t/m/a/b/c", "tmp/t/m/a/b", "tmp/t/m/a"):
            os.rmdir(L(p))
        self.assertEqual(os.listdir(L("tmp/t/m")), [])
        os.rmdir(L("tmp/t/m"))
        self.assertFalse(D.exec_plain(SB, "test -e /tmp/t/m")[1])
        # truncate: shrink, grow (zeros), ftruncate, O_TRUNC
        write_file(L("tmp/t/tr"), b"0123456789" * 100)
        os.truncate(L("tmp/t/tr"), 10)
        self.assertEqual(os.stat(L("tmp/t/tr")).st_size, 10)
        self.assertEqual(read_file(L("tmp/t/tr")), b"0123456789")
        os.truncate(L("tmp/t/tr"), 5000)
        self.assertEqual(read_file(L("tmp/t/tr")), b"0123456789" + b"\0" * 4990)
        self.assertEqual(D.sh(SB, "stat -c %s /tmp/t/tr").strip(), "5000")
        fd = os.open(L("tmp/t/tr"), os.O_RDWR)
        try:
            os.ftruncate(fd, 3)
            self.assertEqual(os.pread(fd, 100, 0), b"012")
        finally:
            os.close(fd)
        os.close(os.open(L("tmp/t/tr"), os.O_WRONLY | os.O_TRUNC))
        self.assertEqual(os.stat(L("tmp/t/tr")).st_size, 0)
        # attributes are the guest's
        os.chmod(L("tmp/t/tr"), 0o640)
        os.chown(L("tmp/t/tr"), 1234, 5678)
        os.utime(L("tmp/t/tr"), ns=(1_000_000_000_123_456_789, 1_500_000_000_987_654_321))
        self.assertEqual(D.sh(SB, "stat -c '%a %u %g %Y' /tmp/t/tr").split(), ["640", "1234", "5678", "1500000000"])
        st = os.stat(L("tmp/t/tr"))
        self.assertEqual((stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns),
                         (0o640, 1234, 5678, 1_500_000_000_987_654_321))
        D.sh(SB, "chmod 604 /tmp/t/tr; touch -d '2001-02-03 04:05:06' /tmp/t/tr")
        time.sleep(1.1)  # attributes are cached for 1 s
        st = os.stat(L("tmp/t/tr"))
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o604)
        self.assertEqual(time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(st.st_mtime)), "2001-02-03 04:05:06")
        # statfs is the guest's root filesystem
        sv = os.statvfs(L())
        df = D.sh(SB, "stat -f -c '%b %S' /").split()
        self.assertEqual((sv.f_blocks, sv.f_frsize), (int(df[0]), int(df[1])))
        # readdir of a big directory (more than one agent reply of 1024 entries)
        D.sh(SB, "mkdir /tmp/t/many; cd /tmp/t/many; i=0; while [ $i -lt 1500 ]; do : > f$i; i=$((i+1)); done")
        names = os.listdir(L("tmp/t/many"))
        self.assertEqual(sorted(names), sorted("f%d" % i for i in range(1500)))

    def test_root_link_and_rm_rf(self):
        name = "gone"
        D.create_ready(name)
        sbdir = D.sb(name)
        self.assertEqual(os.readlink(os.path.join(sbdir, "root")), "../../../../live/" + name)
        self.assertTrue(os.path.islink(os.path.join(sbdir, "root")))
        self.assertEqual(os.path.realpath(os.path.join(sbdir, "root")), L(name=name))
        write_file(os.path.join(sbdir, "root", "root", "keep"), b"k")
        D.sh(name, "mkdir -p /root/deep/er; echo x > /root/deep/er/f; echo y > /tmp/y")
        os.mkdir(os.path.join(sbdir, "procs", "run"))
        harness.write_file(os.path.join(sbdir, "procs", "run", "cmd"), "sleep 1000\n")
        t0 = time.monotonic()
        p = subprocess.run(["rm", "-rf", sbdir], capture_output=True, timeout=120)
        self.assertEqual((p.returncode, p.stderr), (0, b""))
        self.assertLess(time.monotonic() - t0, 30)
        self.assertNotIn(name, D.sandboxes())
        self.assertNotIn(name, os.listdir(os.path.join(D.mount, "live")))
        # the other sandbox's guest is untouched
        self.assertEqual(D.sh(SB, "ls / | wc -l").strip(), str(len(os.listdir(L()))))

    def test_paused_hibernated_stopped(self):
        name = "sl"
        D.create_ready(name)
        try:
            D.sh(name, "echo mem > /tmp/m")
            harness.write_file(D.sb(name, "ctl"), "pause")
            # listing live/ and stat of live/NAME need no guest
            self.assertIn(name, os.listdir(os.path.join(D.mount, "live")))
            self.assertTrue(stat.S_ISDIR(os.stat(L(name=name)).st_mode))
            self.assertEqual(D.status(name)["state"], "paused")
            # an access below it resumes it
            self.assertEqual(read_file(L("tmp/m", name=name)), b"mem\n")
            self.assertEqual(D.status(name)["state"], "ready")
            # the file is closed: nothing keeps it awake any more (close(2) returned, so hibernate must not
            # find the live file still open: EBUSY here is a bug, the FUSE release being asynchronous)
            harness.write_file(D.sb(name, "ctl"), "hibernate")
            self.assertEqual(D.status(name)["state"], "hibernated")
            self.assertIn("m", os.listdir(L("tmp", name=name)))
            self.assertEqual(D.status(name)["state"], "ready")
            # stopped: EIO, and it stays stopped
            harness.write_file(D.sb(name, "ctl"), "stop")
            self.assertErrno(errno.EIO, os.listdir, L("tmp", name=name))
            self.assertErrno(errno.EIO, os.stat, L("root", "never", name=name))
            self.assertEqual(D.status(name)["state"], "stopped")
        finally:
            D.destroy(name)

    def test_shell_tools(self):
        src = "/tmp/eflive-src-%d" % os.getpid()
        os.mkdir(src)
        try:
            with open(os.path.join(src, "blob"), "wb") as f:
                f.write(os.urandom(3 * 1024 * 1024 + 99))
            script = r"""
set -e
cd "$LV/tmp/t"
echo hello > a
printf 'no newline' > b
cat a b; echo
cp "$SRC/blob" blob
cmp "$SRC/blob" blob
mkdir -p tree/x/y
echo 1 > tree/x/one; echo 2 > tree/x/y/two
cp -r tree tree2
mv tree2 tree3
mv a tree3/x/
find tree3 | sort
ls tree3/x | tr '\n' ' '; echo
rm b
rm -r tree3
ls | sort | tr '\n' ' '; echo
cp blob "$SRC/back"
cmp "$SRC/blob" "$SRC/back"
"""
            p = subprocess.run(["bash", "-c", script], capture_output=True, timeout=120,
                               env=dict(os.environ, LV=L(), SRC=src))
            self.assertEqual(p.returncode, 0, "script failed: %r %r" % (p.stdout, p.stderr))
            self.assertEqual(p.stdout.decode(), "hello\nno newline\n"
                             "tree3\ntree3/x\ntree3/x/a\ntree3/x/one\ntree3/x/y\ntree3/x/y/two\n"
                             "a one y \n"
                             "blob tree \n")
            self.assertEqual(D.sh(SB, "find /tmp/t | sort").split(),
                             ["/tmp/t", "/tmp/t/blob", "/tmp/t/tree", "/tmp/t/tree/x", "/tmp/t/tree/x/one",
                              "/tmp/t/tree/x/y", "/tmp/t/tree/x/y/two"])
        finally:
            subprocess.run(["rm", "-rf", src])


class Events(harness.TestCase):
    def test_events_stream(self):
        fd = os.open(os.path.join(D.mount, "events"), os.O_RDONLY)
        try:
            p = select.poll()
            p.register(fd, select.POLLIN)
            self.assertEqual(p.poll(300), [], "events readable with nothing new")
            # a blocked read wakes up for the next event
            got = []
            th = threading.Thread(target=lambda: got.append(os.read(fd, 1 << 16)))
            th.start()
            time.sleep(0.3)
            self.assertTrue(th.is_alive(), "a read of events returned with nothing to say")
            D.create("ev")
            th.join(30)
            self.assertFalse(th.is_alive(), "the blocked read did not wake on create")
            D.wait_ready("ev")
            harness.write_file(D.sb("ev", "ctl"), "pause")
            harness.write_file(D.sb("ev", "ctl"), "resume")
            D.destroy("ev")
            buf = got[0]
            deadline = time.monotonic() + 15
            while b'"destroyed"' not in buf and time.monotonic() < deadline:
                if p.poll(1000):
                    buf += os.read(fd, 1 << 16)
            self.assertTrue(buf.endswith(b"\n"), buf)
            evs = [json.loads(line) for line in buf.decode().splitlines()]
            mine = [e for e in evs if e.get("type") == "sandbox" and e.get("name") == "ev"]
            states = [e["state"] for e in mine]
            self.assertEqual(states, ["creating", "ready", "paused", "ready", "destroying", "destroyed"], mine)
            for e in mine:
                self.assertEqual(e["template"], "default")
                for k in ("time", "type", "template", "name", "state"):
                    self.assertIn(k, e)
            self.assertIn("path", mine[1])
            self.assertEqual(mine[1]["path"], "restore")
            self.assertEqual(p.poll(0), [])
        finally:
            os.close(fd)
        # each open sees events from then on only
        fd = os.open(os.path.join(D.mount, "events"), os.O_RDONLY)
        try:
            self.assertEqual(select.select([fd], [], [], 0.3)[0], [])
        finally:
            os.close(fd)

    def test_poll_status(self):
        D.create_ready("ps")
        fd = os.open(D.sb("ps", "status"), os.O_RDONLY)
        try:
            self.assertEqual(json.loads(os.read(fd, 1 << 16))["state"], "ready")
            p = select.poll()
            p.register(fd, select.POLLIN | select.POLLPRI)
            self.assertEqual(p.poll(300), [])
            done = []
            th = threading.Thread(target=lambda: done.append(p.poll(20000)))
            th.start()
            time.sleep(0.3)
            harness.write_file(D.sb("ps", "ctl"), "pause")
            th.join(25)
            self.assertTrue(done and done[0], "poll on status did not wake on pause")
            self.assertTrue(done[0][0][1] & (select.POLLIN | select.POLLPRI))
            self.assertTrue(p.poll(0), "no longer readable before it was read again")
            os.lseek(fd, 0, os.SEEK_SET)
            self.assertEqual(json.loads(os.read(fd, 1 << 16))["state"], "paused")
            self.assertEqual(p.poll(200), [])  # re-armed
            r, _, x = select.select([fd], [], [fd], 0.2)
            self.assertEqual((r, x), ([], []))
            harness.write_file(D.sb("ps", "ctl"), "resume")
            r, _, x = select.select([fd], [], [fd], 10)
            self.assertTrue(r or x, "select did not wake on resume")
            os.lseek(fd, 0, os.SEEK_SET)
            self.assertEqual(json.loads(os.read(fd, 1 << 16))["state"], "ready")
        finally:
            os.close(fd)
            D.destroy("ps")


if __name__ == "__main__":
    harness.main()
