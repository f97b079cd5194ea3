#!/usr/bin/env python3
"""Protocol test of the guest agent (docs/protocol.md, version 3).

Boots the image's guest under QEMU (TCG, -M microvm, as engine/qemu.c does),
talks to the agent over the virtio-serial chardev socket and exercises every
op.  Standard library only.

Usage: python3 tests/agent/agent_proto_test.py IMAGE_DIR
(IMAGE_DIR holds vmlinux, initrd.cpio, rootfs.ext4 and manifest.json, as
printed last by contrib/build-image.sh).  Exits non-zero on failure.
"""
import base64
import errno
import hashlib
import json
import os
import queue
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback

O_RDONLY, O_WRONLY, O_RDWR = 0, 1, 2
O_CREAT, O_EXCL, O_TRUNC, O_APPEND = 0o100, 0o200, 0o1000, 0o2000
O_DIRECTORY, O_NOFOLLOW, O_SYNC, O_DIRECT = 0o200000, 0o400000, 0o4010000, 0o40000
MIB = 1 << 20

FIGURES = {}


class AgentError(Exception):
    def __init__(self, reply):
        super().__init__("%s: %s" % (errno.errorcode.get(reply.get("errno"), reply.get("errno")),
                                     reply.get("error")))
        self.errno = reply.get("errno")
        self.reply = reply


class Conn:
    """One host connection: a reader thread splits lines and payloads."""

    def __init__(self, path, expect_ready=False):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.lock = threading.Lock()
        self.next_id = 1
        self.waiters = {}
        self.events = queue.Queue()
        self.changes = queue.Queue()  # {"event":"changed"} for the files this connection has open
        self.closed = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        if expect_ready:
            ev = self.events.get(timeout=60)
            assert ev.get("event") == "ready", ev
            self.ready = ev

    def _read(self):
        buf = bytearray()
        try:
            while True:
                nl = buf.find(b"\n")
                while nl < 0:
                    d = self.sock.recv(1 << 20)
                    if not d:
                        raise EOFError
                    buf += d
                    nl = buf.find(b"\n")
                msg = json.loads(buf[:nl])
                del buf[:nl + 1]
                data = None
                if "bin" in msg:
                    n = msg["bin"]
                    while len(buf) < n:
                        d = self.sock.recv(1 << 20)
                        if not d:
                            raise EOFError
                        buf += d
                    data = bytes(buf[:n])
                    del buf[:n]
                if "id" in msg and msg["id"] in self.waiters:
                    self.waiters.pop(msg["id"]).put((msg, data))
                elif msg.get("event") == "changed":
                    self.changes.put(msg)
                else:
                    self.events.put(msg)
        except (EOFError, OSError):
            pass
        finally:
            self.closed.set()
            for q in list(self.waiters.values()):
                q.put((None, None))

    def send_raw(self, req, payload=b""):
        """A request exactly as given (its "bin" included), then @payload."""
        q = queue.Queue()
        with self.lock:
            rid = self.next_id
            self.next_id += 1
            self.waiters[rid] = q
            self.sock.sendall(json.dumps(dict(req, id=rid)).encode() + b"\n" + payload)
        q.rid = rid
        return q

    def send(self, op, bin=None, **fields):
        """Sends a request; returns a queue that gets (reply, data)."""
        q = queue.Queue()
        with self.lock:
            rid = self.next_id
            self.next_id += 1
            self.waiters[rid] = q
            req = dict(id=rid, op=op, **fields)
            if bin is not None:
                req["bin"] = len(bin)
            line = json.dumps(req).encode() + b"\n"
            self.sock.sendall(line + (bin or b""))
        q.rid = rid
        return q

    @staticmethod
    def result(q, timeout=120, data=False):
        try:
            msg, payload = q.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("no reply to request %d in %ds" % (q.rid, timeout))
        if msg is None:
            raise AssertionError("connection closed before the reply to %d" % q.rid)
        assert msg["id"] == q.rid, msg
        if not msg["ok"]:
            raise AgentError(msg)
        return (msg, payload) if data else msg

    def call(self, op, bin=None, timeout=120, data=False, **fields):
        return self.result(self.send(op, bin=bin, **fields), timeout, data)

    def error(self, op, bin=None, **fields):
        """The errno of a request that must fail."""
        try:
            r = self.call(op, bin=bin, **fields)
        except AgentError as e:
            return e.errno
        raise AssertionError("%s %s succeeded: %s" % (op, fields, r))

    def exec(self, sh, **kw):
        r = self.call("exec", sh=sh, **kw)
        r["out"] = base64.b64decode(r["stdout"])
        r["err"] = base64.b64decode(r["stderr"])
        return r

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.closed.wait(5)


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


def expect_errno(got, want, what):
    expect(got == want, "%s: errno %s, want %s" % (what, errno.errorcode.get(got, got),
                                                    errno.errorcode[want]))


class Guest:
    def __init__(self, image):
        self.image = image
        self.tmp = tempfile.mkdtemp(prefix="agent-proto-")
        self.sock = os.path.join(self.tmp, "agent.sock")
        self.console = os.path.join(self.tmp, "console.log")
        with open(os.path.join(image, "manifest.json")) as f:
            cmdline = json.load(f)["cmdline"]
        khz = tsc_khz()
        if khz:
            cmdline += " tsc_early_khz=%d" % khz
        initrd = os.path.join(image, "initrd.cpio")
        argv = ["qemu-system-x86_64", "-M", "microvm,rtc=on", "-accel", "tcg,tb-size=64",
                "-cpu", "max", "-smp", "1", "-m", "512M", "-nodefaults", "-no-reboot",
                "-no-user-config", "-display", "none",
                "-kernel", os.path.join(image, "vmlinux")]
        if os.path.exists(initrd):
            argv += ["-initrd", initrd]
        argv += ["-append", cmdline,
                 "-chardev", "file,id=con,path=%s" % self.console, "-serial", "chardev:con",
                 "-drive", "id=root,file=%s,format=raw,if=none,snapshot=on"
                 % os.path.join(image, "rootfs.ext4"),
                 "-device", "virtio-blk-device,drive=root",
                 "-device", "virtio-serial-device",
                 "-chardev", "socket,id=agent,path=%s,server=on,wait=off" % self.sock,
                 "-device", "virtserialport,chardev=agent,name=org.emberfs.agent"]
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(self.tmp, "qemu.err"), "w"))
        while not os.path.exists(self.sock):
            if self.proc.poll() is not None or time.monotonic() - self.t0 > 30:
                raise RuntimeError("QEMU did not start: %s" % self.stderr())
            time.sleep(0.01)

    def stderr(self):
        try:
            with open(os.path.join(self.tmp, "qemu.err")) as f:
                return f.read()
        except OSError:
            return ""

    def console_text(self):
        try:
            with open(self.console, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def connect(self, expect_ready=False):
        self.c = Conn(self.sock, expect_ready)
        return self.c

    def reconnect(self):
        """QEMU's socket chardev serves one client: hang up, then connect anew."""
        self.c.close()
        time.sleep(0.3)     # let the agent see the hangup before the next host
        return self.connect()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


def tsc_khz():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    return int(float(line.split(":")[1]) * 1000)
    except OSError:
        pass
    return 0


# ---------------------------------------------------------------------------

def t_basics(g, c):
    expect(c.ready["version"] == 3, "ready version %s" % c.ready)
    expect(c.call("ping")["op"] == "pong", "ping")
    r = c.exec("echo hello; echo err >&2; exit 7")
    expect(r["exit_code"] == 7 and r["out"] == b"hello\n" and r["err"] == b"err\n", "exec %s" % r)


def t_binary_roundtrip(g, c):
    c.call("mkdir", path="/tmp/t", mode=0o755)
    r = c.call("open", path="/tmp/t/f", flags=O_CREAT | O_RDWR | O_EXCL, mode=0o640)
    fh = r["fh"]
    expect(r["st"]["mode"] == 0o100640, "create mode %o" % r["st"]["mode"])
    blobs = [os.urandom(n) for n in (0, 1, 4095, 65536, 300001, MIB)]
    off = 0
    for b in blobs:
        w = c.call("write", fh=fh, off=off, bin=b)
        expect(w["written"] == len(b), "written %s" % w)
        off += len(b)
    whole = b"".join(blobs)
    expect(c.call("lstat", path="/tmp/t/f")["st"]["size"] == len(whole), "size after write")
    got = bytearray()
    while True:
        r, d = c.call("read", fh=fh, off=len(got), len=MIB, data=True)
        expect(r["bin"] == len(d), "bin length")
        if not d:
            break
        got += d
    expect(hashlib.sha256(got).digest() == hashlib.sha256(whole).digest(), "read-back checksum")
    guest_sum = c.exec("sha256sum /tmp/t/f")["out"].split()[0].decode()
    expect(guest_sum == hashlib.sha256(whole).hexdigest(), "guest checksum")
    # a read past the end is short, then empty
    r, d = c.call("read", fh=fh, off=len(whole) - 10, len=100, data=True)
    expect(d == whole[-10:], "short read at EOF")
    c.call("fsync", fh=fh)
    c.call("close", fh=fh)
    expect_errno(c.error("read", fh=fh, off=0, len=1), errno.EBADF, "read after close")
    expect_errno(c.error("close", fh=fh), errno.EBADF, "double close")
    # O_APPEND and O_TRUNC
    fh = c.call("open", path="/tmp/t/f", flags=O_WRONLY | O_TRUNC)["fh"]
    expect(c.call("lstat", path="/tmp/t/f")["st"]["size"] == 0, "O_TRUNC")
    c.call("write", fh=fh, off=0, bin=b"abc")
    c.call("close", fh=fh)
    fh = c.call("open", path="/tmp/t/f", flags=O_WRONLY | O_APPEND)["fh"]
    c.call("write", fh=fh, off=0, bin=b"def")
    c.call("close", fh=fh)
    fh = c.call("open", path="/tmp/t/f", flags=O_RDONLY)["fh"]
    expect(c.call("read", fh=fh, off=0, len=10, data=True)[1] == b"abcdef", "append")
    expect_errno(c.error("write", fh=fh, off=0, bin=b"x"), errno.EBADF, "write on O_RDONLY")
    c.call("close", fh=fh)
    # directories open; reading one is EISDIR
    r = c.call("open", path="/tmp/t", flags=O_RDONLY | O_DIRECTORY)
    expect(r["st"]["mode"] & 0o170000 == 0o040000, "dir st")
    expect_errno(c.error("read", fh=r["fh"], off=0, len=10), errno.EISDIR, "read a dir")
    c.call("fsync", fh=r["fh"])
    c.call("close", fh=r["fh"])


def t_large_read(g, c):
    size = 64 * MIB
    r = c.exec("head -c %d /dev/urandom > /tmp/big && sha256sum /tmp/big" % size)
    expect(r["exit_code"] == 0, "make big file: %s" % r["err"])
    want = r["out"].split()[0].decode()
    fh = c.call("open", path="/tmp/big", flags=O_RDONLY)["fh"]
    for inflight in (1, 4):
        h = hashlib.sha256()
        t0 = time.monotonic()
        pending = []
        off = 0
        total = 0
        while off < size or pending:
            while off < size and len(pending) < inflight:
                pending.append(c.send("read", fh=fh, off=off, len=MIB))
                off += MIB
            r, d = c.result(pending.pop(0), data=True)
            h.update(d)
            total += len(d)
        dt = time.monotonic() - t0
        expect(total == size and h.hexdigest() == want, "64 MiB read checksum (%d in flight)" % inflight)
        FIGURES["read_MiBps_%d_in_flight" % inflight] = round(size / MIB / dt, 1)
    # and the other way, 1 MiB writes, 4 in flight
    wfh = c.call("open", path="/tmp/big2", flags=O_WRONLY | O_CREAT | O_TRUNC, mode=0o644)["fh"]
    data = os.urandom(MIB)
    t0 = time.monotonic()
    pending = []
    for i in range(32):
        pending.append(c.send("write", fh=wfh, off=i * MIB, bin=data))
        if len(pending) >= 4:
            c.result(pending.pop(0))
    for q in pending:
        c.result(q)
    FIGURES["write_MiBps_4_in_flight"] = round(32 / (time.monotonic() - t0), 1)
    c.call("close", fh=wfh)
    c.call("close", fh=fh)
    c.call("unlink", path="/tmp/big")
    c.call("unlink", path="/tmp/big2")


def t_readdir(g, c):
    r = c.exec("mkdir /tmp/d && cd /tmp/d && i=0; while [ $i -lt 3000 ]; do : > f$i; i=$((i+1)); done;"
               " mkdir sub; ln -s f1 lnk")
    expect(r["exit_code"] == 0, "make 3000 files: %s" % r["err"])
    for path in ("/tmp/d", "/"):
        names, pages, cookie = [], [], 0
        while True:
            r = c.call("readdir", path=path, cookie=cookie)
            pages.append(len(r["entries"]))
            for e in r["entries"]:
                names.append(e["name"])
                if path == "/tmp/d" and e["name"] == "lnk":
                    expect(e["type"] == 10, "lnk is a symlink (DT_LNK) in readdir: %s" % e)
            cookie = r["cookie"]
            expect(len(r["entries"]) <= 1024, "page over 1024")
            if not cookie:
                break
        expect(len(names) == len(set(names)) and "." not in names and ".." not in names, "dups or dots")
        if path == "/tmp/d":
            expect(set(names) == {"f%d" % i for i in range(3000)} | {"sub", "lnk"}, "readdir names")
            expect(pages == [1024, 1024, 954], "pages %s" % pages)
        else:
            expect("tmp" in names and "proc" in names, "root listing %s" % names)
    expect_errno(c.error("readdir", path="/tmp/d/f1"), errno.ENOTDIR, "readdir a file")
    expect_errno(c.error("readdir", path="/nonexistent"), errno.ENOENT, "readdir missing")
    c.exec("rm -rf /tmp/d")


def t_errnos(g, c):
    expect_errno(c.error("lstat", path="/nonexistent"), errno.ENOENT, "lstat missing")
    expect_errno(c.error("open", path="/tmp", flags=O_WRONLY), errno.EISDIR, "open dir for write")
    c.call("mkdir", path="/tmp/e", mode=0o755)
    c.call("mkdir", path="/tmp/e/x", mode=0o700)
    expect_errno(c.error("rmdir", path="/tmp/e"), errno.ENOTEMPTY, "rmdir non-empty")
    expect_errno(c.error("mkdir", path="/tmp/e", mode=0o755), errno.EEXIST, "mkdir existing")
    expect_errno(c.error("open", path="/tmp/e/x", flags=O_CREAT | O_EXCL | O_RDWR, mode=0o644),
                 errno.EEXIST, "O_EXCL")
    expect_errno(c.error("unlink", path="/tmp/e/x"), errno.EISDIR, "unlink a dir")
    expect_errno(c.error("rmdir", path="/tmp/nonexistent"), errno.ENOENT, "rmdir missing")
    expect_errno(c.error("open", path="/dev/null", flags=O_RDWR), errno.ENXIO, "open a device")
    c.exec("mkfifo /tmp/e/fifo")
    expect_errno(c.error("open", path="/tmp/e/fifo", flags=O_RDONLY), errno.ENXIO, "open a fifo")
    expect_errno(c.error("open", path="/tmp/e/fifo", flags=O_WRONLY), errno.ENXIO, "open a fifo wr")
    expect_errno(c.error("truncate", path="/tmp/e/fifo", size=0), errno.EINVAL, "truncate a fifo")
    expect_errno(c.error("truncate", path="/tmp/e", size=0), errno.EISDIR, "truncate a dir")
    # field validation
    expect_errno(c.error("lstat", path="tmp"), errno.EINVAL, "relative path")
    expect_errno(c.error("lstat", path=""), errno.EINVAL, "empty path")
    expect_errno(c.error("lstat", path="/" + "a/" * 32768), errno.EINVAL, "65537-byte path")
    expect_errno(c.error("lstat", path="/" + "a/" * 32766 + "a"), errno.ENOENT, "65534-byte path")
    expect_errno(c.error("lstat", path="/" + "a" * 4095), errno.ENAMETOOLONG, "a 4095-byte name")
    expect_errno(c.error("lstat", path="/tmp\u0000x"), errno.EINVAL, "NUL in path")
    expect_errno(c.error("lstat", path=5), errno.EINVAL, "path not a string")
    expect_errno(c.error("lstat"), errno.EINVAL, "no path")
    expect_errno(c.error("open", path="/tmp/e/y", flags=O_DIRECT | O_RDWR), errno.EINVAL, "O_DIRECT")
    expect_errno(c.error("open", path="/tmp/e/y", flags=3), errno.EINVAL, "O_ACCMODE 3")
    expect_errno(c.error("open", path="/tmp/e/y", flags=O_CREAT | O_RDWR, mode=0o10000), errno.EINVAL,
                 "mode over 07777")
    expect_errno(c.error("open", path="/tmp/e/y", flags=-1), errno.EINVAL, "negative flags")
    fh = c.call("open", path="/tmp/e/y", flags=O_CREAT | O_RDWR, mode=0o644)["fh"]
    expect_errno(c.error("read", fh=fh, off=0, len=MIB + 1), errno.EINVAL, "read len over 1 MiB")
    expect_errno(c.error("read", fh=fh, off=-1, len=1), errno.EINVAL, "negative off")
    expect_errno(c.error("read", fh=fh, off=0, len="1"), errno.EINVAL, "len a string")
    expect_errno(c.error("write", fh=fh, off=0), errno.EINVAL, "write without bin")
    expect_errno(c.error("read", fh=99999, off=0, len=1), errno.EBADF, "unknown fh")
    expect_errno(c.error("ping", bin=b"xyz"), errno.EINVAL, "ping with a payload")
    c.call("close", fh=fh)
    expect_errno(c.error("chown", path="/tmp/e/y", uid=-2, gid=0), errno.EINVAL, "uid -2")
    expect_errno(c.error("utimens", path="/tmp/e/y", atime_ns=-3, mtime_ns=0), errno.EINVAL, "time -3")
    expect_errno(c.error("rename", **{"from": "/tmp/e/y", "to": "/tmp/e/z", "flags": 8}), errno.EINVAL,
                 "rename flags 8")
    expect_errno(c.error("lstat", path="/tmp/e/y", cred=[1000]), errno.EINVAL, "cred not [uid, gid, groups]")
    expect_errno(c.error("lstat", path="/tmp/e/y", cred=[1000, -1, []]), errno.EINVAL, "cred gid -1")
    expect_errno(c.error("lstat", path="/tmp/e/y", expect=[1]), errno.EINVAL, "expect not [dev, ino]")
    expect_errno(c.error("bogus"), errno.EINVAL, "unknown op")
    # EACCES needs a non-root caller: the agent runs as root, whom DAC does not stop.
    c.exec("rm -rf /tmp/e")


def t_files_v3(g, c):
    """Protocol 3: ops as a host user, identity checks, mknod, realpath, fstat/ftruncate, long paths,
    and the changes of open files pushed and counted."""
    U = [1000, 1000, [1000]]
    c.exec("rm -rf /tmp/v; mkdir -m 1777 /tmp/v; mkdir -m 700 /tmp/v/rootonly")
    # a user's new file is that user's; root's rules do not apply to it
    r = c.call("open", path="/tmp/v/u", flags=O_CREAT | O_WRONLY, mode=0o644, cred=U)
    expect((r["st"]["uid"], r["st"]["gid"]) == (1000, 1000), "owner of a user's file %s" % r["st"])
    c.call("close", fh=r["fh"])
    expect((c.call("mkdir", path="/tmp/v/ud", mode=0o755, cred=U)["st"]["uid"]) == 1000, "owner of a user's dir")
    # the way to a file is the host's to check (its path walk, or a working directory it holds); the
    # operation itself is the guest's: a name made in a directory the user may not write
    expect_errno(c.error("lstat", path="/tmp/v/rootonly/x", cred=U), errno.ENOENT, "lstat through a 0700 dir")
    expect_errno(c.error("mkdir", path="/tmp/v/rootonly/x", mode=0o755, cred=U), errno.EACCES, "mkdir in it")
    expect_errno(c.error("open", path="/tmp/v/rootonly", flags=O_RDONLY | O_DIRECTORY, cred=U), errno.EACCES,
                 "open a 0700 dir as a user")
    expect_errno(c.error("chown", path="/tmp/v/u", uid=0, gid=-1, cred=U), errno.EPERM, "give a file away")
    # set-id bits: a user's write clears them; a chmod that only clears them is allowed to a writer
    c.exec("echo x > /tmp/v/s; chmod 4777 /tmp/v/s")
    fh = c.call("open", path="/tmp/v/s", flags=O_WRONLY | O_APPEND, cred=U)["fh"]
    c.call("write", fh=fh, off=0, bin=b"y", cred=U)
    c.call("close", fh=fh)
    expect(c.call("lstat", path="/tmp/v/s")["st"]["mode"] & 0o7777 == 0o777, "setuid cleared by a user's write")
    c.exec("chmod 6777 /tmp/v/s")
    expect(c.call("chmod", path="/tmp/v/s", mode=0o777, cred=U)["st"]["mode"] & 0o7777 == 0o777, "clearing only")
    expect_errno(c.error("chmod", path="/tmp/v/s", mode=0o755, cred=U), errno.EPERM, "a real chmod by a non-owner")
    # identity: a path that names another file now is ESTALE
    st = c.call("lstat", path="/tmp/v/u")["st"]
    expect("dev" in st, "st has dev: %s" % st)
    c.call("lstat", path="/tmp/v/u", expect=[st["dev"], st["ino"]])
    c.exec("mv /tmp/v/u /tmp/v/u2; echo new > /tmp/v/u")
    expect_errno(c.error("lstat", path="/tmp/v/u", expect=[st["dev"], st["ino"]]), errno.ESTALE, "replaced file")
    expect_errno(c.error("open", path="/tmp/v/gone", flags=O_RDONLY, expect=[st["dev"], st["ino"]]),
                 errno.ESTALE, "vanished file")
    # mknod: a FIFO and a socket as a user, a device only as root
    expect(c.call("mknod", path="/tmp/v/fifo", mode=0o10644, cred=U)["st"]["mode"] == 0o10644, "mkfifo")
    expect(c.call("mknod", path="/tmp/v/sock", mode=0o140644)["st"]["mode"] == 0o140644, "socket node")
    expect_errno(c.error("mknod", path="/tmp/v/null", mode=0o20666, rdev=(1 << 8) | 3, cred=U), errno.EPERM,
                 "a device as a user")
    expect(c.call("mknod", path="/tmp/v/null", mode=0o20666, rdev=(1 << 8) | 3)["st"]["rdev"] == (1 << 8) | 3,
           "a device as root")
    # realpath: the guest's own resolution, ".." at the root staying there
    c.exec("ln -s / /tmp/v/root; ln -s .. /tmp/v/up")
    for path, want in (("/tmp/v/root/../..", "/"), ("/tmp/v/root/etc/..", "/"), ("/tmp/v/up/..", "/"),
                       ("/tmp/v/root/tmp/v/up", "/tmp"), ("/..", "/"), ("/tmp/./v//ud", "/tmp/v/ud")):
        got = c.call("realpath", path=path)["path"]
        expect(got == want, "realpath %s: %s, want %s" % (path, got, want))
    expect_errno(c.error("realpath", path="/tmp/v/missing/.."), errno.ENOENT, "realpath through nothing")
    c.exec("ln -s loop1 /tmp/v/loop2; ln -s loop2 /tmp/v/loop1")
    expect_errno(c.error("realpath", path="/tmp/v/loop1/.."), errno.ELOOP, "realpath of a loop")
    # an open file: fstat and ftruncate on the handle, its changes counted and pushed
    r = c.call("open", path="/tmp/v/w", flags=O_CREAT | O_RDWR, mode=0o666)
    fh = r["fh"]
    chg0 = r["st"]["chg"]
    c.call("write", fh=fh, off=0, bin=b"0123456789")
    expect(c.call("ftruncate", fh=fh, size=4)["st"]["size"] == 4, "ftruncate")
    expect(c.call("fstat", fh=fh)["st"]["size"] == 4, "fstat")
    while not c.changes.empty():
        c.changes.get()
    c.exec("echo guest >> /tmp/v/w")
    ev = c.changes.get(timeout=10)
    st = c.call("lstat", path="/tmp/v/w")["st"]
    expect(any(f[:2] == [st["dev"], st["ino"]] for f in ev["files"]), "pushed: %s" % ev)
    expect(st["chg"] > chg0, "chg moved: %s -> %s" % (chg0, st["chg"]))
    c.call("close", fh=fh)
    expect("chg" not in c.call("lstat", path="/tmp/v/w")["st"], "no count once closed")
    # a path longer than PATH_MAX: walked in pieces
    deep = "/tmp/v/" + "/".join(["d" * 200] * 25)
    p = "/tmp/v"
    for _ in range(25):
        p += "/" + "d" * 200
        c.call("mkdir", path=p, mode=0o755)
    r = c.call("open", path=deep + "/f", flags=O_CREAT | O_WRONLY, mode=0o644)
    c.call("write", fh=r["fh"], off=0, bin=b"deep")
    c.call("close", fh=r["fh"])
    expect(c.call("lstat", path=deep + "/f")["st"]["size"] == 4, "lstat of a %d-byte path" % len(deep))
    names = [e["name"] for e in c.call("readdir", path=deep)["entries"]]
    expect(names == ["f"], "readdir deep %s" % names)
    c.call("rename", **{"from": deep + "/f", "to": deep + "/g"})
    c.call("unlink", path=deep + "/g")
    while p != "/tmp/v":  # busybox's rm cannot: its paths would pass PATH_MAX
        c.call("rmdir", path=p)
        p = p.rsplit("/", 1)[0]
    c.exec("rm -rf /tmp/v")


def t_namespace(g, c):
    c.call("mkdir", path="/tmp/n", mode=0o755)
    for name, data in (("a", b"AAA"), ("b", b"BB")):
        fh = c.call("open", path="/tmp/n/" + name, flags=O_CREAT | O_WRONLY, mode=0o644)["fh"]
        c.call("write", fh=fh, off=0, bin=data)
        c.call("close", fh=fh)

    def content(p):
        fh = c.call("open", path=p, flags=O_RDONLY)["fh"]
        d = c.call("read", fh=fh, off=0, len=100, data=True)[1]
        c.call("close", fh=fh)
        return d

    expect_errno(c.error("rename", **{"from": "/tmp/n/a", "to": "/tmp/n/b", "flags": 1}), errno.EEXIST,
                 "RENAME_NOREPLACE")
    c.call("rename", **{"from": "/tmp/n/a", "to": "/tmp/n/b", "flags": 2})
    expect(content("/tmp/n/a") == b"BB" and content("/tmp/n/b") == b"AAA", "RENAME_EXCHANGE")
    c.call("rename", **{"from": "/tmp/n/a", "to": "/tmp/n/b"})
    expect(content("/tmp/n/b") == b"BB", "rename replaces")
    expect_errno(c.error("lstat", path="/tmp/n/a"), errno.ENOENT, "rename source gone")
    expect_errno(c.error("rename", **{"from": "/tmp/n/zz", "to": "/tmp/n/b"}), errno.ENOENT, "rename missing")
    # an open handle outlives unlink
    fh = c.call("open", path="/tmp/n/b", flags=O_RDWR)["fh"]
    c.call("unlink", path="/tmp/n/b")
    expect_errno(c.error("lstat", path="/tmp/n/b"), errno.ENOENT, "unlinked")
    expect(c.call("read", fh=fh, off=0, len=10, data=True)[1] == b"BB", "read after unlink")
    c.call("close", fh=fh)
    expect_errno(c.error("unlink", path="/tmp/n/b"), errno.ENOENT, "unlink twice")
    # symlink, readlink; nothing follows a final symlink (the host's kernel follows them itself)
    fh = c.call("open", path="/tmp/n/t", flags=O_CREAT | O_WRONLY, mode=0o600)["fh"]
    c.call("write", fh=fh, off=0, bin=b"target")
    c.call("close", fh=fh)
    r = c.call("symlink", target="t", path="/tmp/n/l")
    expect(r["st"]["mode"] & 0o170000 == 0o120000 and r["st"]["size"] == 1, "symlink st")
    expect(c.call("readlink", path="/tmp/n/l")["target"] == "t", "readlink")
    expect_errno(c.error("readlink", path="/tmp/n/t"), errno.EINVAL, "readlink a file")
    expect_errno(c.error("open", path="/tmp/n/l", flags=O_RDONLY), errno.ENXIO, "open of a symlink")
    expect_errno(c.error("open", path="/tmp/n/l", flags=O_RDONLY | O_NOFOLLOW), errno.ELOOP, "O_NOFOLLOW")
    expect_errno(c.error("symlink", target="x", path="/tmp/n/l"), errno.EEXIST, "symlink exists")
    # link
    r = c.call("link", **{"from": "/tmp/n/t", "to": "/tmp/n/h"})
    expect(r["st"]["nlink"] == 2, "link nlink %s" % r["st"])
    # chmod, chown, utimens, truncate
    r = c.call("chmod", path="/tmp/n/t", mode=0o4751)
    expect(r["st"]["mode"] == 0o104751, "chmod %o" % r["st"]["mode"])
    r = c.call("chown", path="/tmp/n/t", uid=1234, gid=-1)
    expect(r["st"]["uid"] == 1234 and r["st"]["gid"] == 0, "chown uid")
    r = c.call("chown", path="/tmp/n/l", uid=-1, gid=99)
    expect(r["st"]["gid"] == 99 and r["st"]["mode"] & 0o170000 == 0o120000, "lchown")
    expect(c.call("lstat", path="/tmp/n/t")["st"]["gid"] == 0, "lchown did not follow")
    r = c.call("utimens", path="/tmp/n/t", atime_ns=1000000000123456789, mtime_ns=-1)
    expect(r["st"]["atime_ns"] == 1000000000123456789, "utimens atime %s" % r["st"])
    old_m = r["st"]["mtime_ns"]
    r = c.call("utimens", path="/tmp/n/t", atime_ns=-1, mtime_ns=5 * 10**9)
    expect(r["st"]["mtime_ns"] == 5 * 10**9 and r["st"]["atime_ns"] == 1000000000123456789, "utimens keep")
    r = c.call("utimens", path="/tmp/n/t", atime_ns=-2, mtime_ns=-2)
    expect(r["st"]["mtime_ns"] > 5 * 10**9 and r["st"]["mtime_ns"] != old_m, "utimens now")
    r = c.call("utimens", path="/tmp/n/l", atime_ns=7 * 10**9, mtime_ns=7 * 10**9)
    expect(r["st"]["mtime_ns"] == 7 * 10**9, "utimens on a symlink")
    expect(c.call("lstat", path="/tmp/n/t")["st"]["mtime_ns"] != 7 * 10**9, "utimens did not follow")
    expect_errno(c.error("chmod", path="/tmp/n/l", mode=0o600), errno.EOPNOTSUPP, "chmod a symlink")
    r = c.call("truncate", path="/tmp/n/t", size=100000)
    expect(r["st"]["size"] == 100000, "truncate up")
    r = c.call("truncate", path="/tmp/n/t", size=3)
    expect(r["st"]["size"] == 3 and content("/tmp/n/t") == b"tar", "truncate down")
    expect_errno(c.error("truncate", path="/tmp/n/l", size=0), errno.EINVAL, "truncate a symlink")
    # statfs
    r = c.call("statfs", path="/tmp")
    expect(r["bsize"] > 0 and r["blocks"] > 0 and r["namemax"] == 255, "statfs %s" % r)
    r = c.call("statfs", path="/")
    expect(r["blocks"] > 0, "statfs /")
    c.exec("rm -rf /tmp/n")


def drain(c, job, stream=1, max=MIB, delay=0.0, limit=None):
    """Reads a stream to EOF; returns (bytes, number of replies, time of the first reply)."""
    out = bytearray()
    n = 0
    first = None
    while True:
        r, d = c.call("out", job=job, stream=stream, max=max, data=True)
        if first is None:
            first = time.monotonic()
        n += 1
        out += d
        expect(len(d) <= max, "out over max")
        if r["eof"]:
            return bytes(out), n, first
        expect(len(d) > 0, "an empty out before EOF")
        if limit is not None and len(out) >= limit:
            return bytes(out), n, first
        if delay:
            time.sleep(delay)


def vmrss_kib(c):
    """PID 1's resident memory: smaps_rollup walks the page tables (the VmRSS
    counters of /proc/1/status lag behind, the more so with CLONE_VM children)."""
    for path, key in (("/proc/1/smaps_rollup", "Rss:"), ("/proc/1/status", "VmRSS:")):
        for line in c.exec("cat %s" % path)["out"].decode().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def t_spawn_stream(g, c):
    t0 = time.monotonic()
    r = c.call("spawn", sh="for i in 1 2 3 4 5; do echo line$i; sleep 0.3; done; echo bye >&2; exit 3",
               env={"FOO": "bar"}, cwd="/tmp")
    job = r["job"]
    expect(r["pid"] > 1 and abs(r["start_unix_ms"] / 1000 - time.time()) < 600, "spawn reply %s" % r)
    st = c.call("status", job=job)
    expect(st["running"] and st["exit_code"] == -1 and st["signal"] == 0, "status running %s" % st)
    out, n, first = drain(c, job)
    expect(out == b"".join(b"line%d\n" % i for i in range(1, 6)), "streamed %r" % out)
    expect(first - t0 < 1.2 and n >= 3, "output streamed, not at exit (%d replies, first %.2fs)"
           % (n, first - t0))
    err, _, _ = drain(c, job, stream=2)
    expect(err == b"bye\n", "stderr %r" % err)
    w = c.call("wait", job=job)
    expect(not w["running"] and w["exit_code"] == 3 and w["signal"] == 0 and w["duration_ms"] >= 1400,
           "wait %s" % w)
    # out after EOF: empty, eof
    r, d = c.call("out", job=job, stream=1, max=10, data=True)
    expect(r["eof"] and d == b"", "out after eof")
    expect_errno(c.error("signal", job=job, sig=15), errno.ESRCH, "signal after exit")
    c.call("release", job=job)
    expect_errno(c.error("status", job=job), errno.EBADF, "status after release")
    # env and cwd
    job = c.call("spawn", argv=["sh", "-c", "echo $FOO; pwd"], env={"FOO": "bar"}, cwd="/tmp")["job"]
    expect(drain(c, job)[0] == b"bar\n/tmp\n", "env/cwd")
    c.call("release", job=job)
    expect_errno(c.error("spawn", argv=[]), errno.EINVAL, "empty argv")
    expect_errno(c.error("spawn", sh="true", cwd="/nonexistent"), errno.ENOENT, "bad cwd")
    job = c.call("spawn", argv=["/nonexistent"])["job"]
    expect(c.call("wait", job=job)["exit_code"] == 127, "exec failure 127")
    expect(b"exec /nonexistent: No such file" in drain(c, job, stream=2)[0], "exec failure message")
    c.call("release", job=job)
    # PATH search in the child's environment, and a script without #!
    r = c.exec("mkdir -p /tmp/pbin && printf 'echo script $1' > /tmp/pbin/scr && chmod +x /tmp/pbin/scr")
    job = c.call("spawn", argv=["scr", "arg"], env={"PATH": "/nowhere:/tmp/pbin"})["job"]
    expect(drain(c, job)[0] == b"script arg\n", "PATH search and #!-less script")
    c.call("release", job=job)
    r = c.call("exec", argv=["scr"], env={"PATH": "/bin"})
    expect(r["exit_code"] == 127, "not on PATH: 127")


def t_spawn_signals(g, c):
    job = c.call("spawn", sh="exec sleep 100")["job"]
    w = c.send("wait", job=job)
    w2 = c.send("wait", job=job)
    time.sleep(0.2)
    c.call("signal", job=job, sig=15)
    r = c.result(w)
    expect(r["signal"] == 15 and r["exit_code"] == -1 and not r["running"], "killed by TERM %s" % r)
    expect(c.result(w2)["signal"] == 15, "second wait")
    expect_errno(c.error("signal", job=job, sig=65), errno.EINVAL, "sig 65")
    c.call("release", job=job)
    # SIGSTOP/SIGCONT and a shell trap
    job = c.call("spawn", sh="trap 'echo got; exit 4' USR1; echo ready; while :; do sleep 0.05; done")["job"]
    expect(drain(c, job, limit=1)[0] == b"ready\n", "trap ready")
    c.call("signal", job=job, sig=10)
    expect(c.call("wait", job=job)["exit_code"] == 4, "trap exit")
    c.call("release", job=job)


def t_two_processes(g, c):
    a = c.call("spawn", sh="i=0; while [ $i -lt 200 ]; do echo a$i; i=$((i+1)); done")["job"]
    b = c.call("spawn", sh="i=0; while [ $i -lt 200 ]; do echo b$i; i=$((i+1)); done >&2")["job"]
    res = {}

    def reader(job, stream):
        res[(job, stream)] = drain(c, job, stream=stream, max=100)[0]
    ts = [threading.Thread(target=reader, args=a_) for a_ in ((a, 1), (b, 2), (a, 2), (b, 1))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    expect(res[(a, 1)] == b"".join(b"a%d\n" % i for i in range(200)), "process a")
    expect(res[(b, 2)] == b"".join(b"b%d\n" % i for i in range(200)), "process b")
    expect(res[(a, 2)] == b"" and res[(b, 1)] == b"", "other streams empty")
    for j in (a, b):
        expect(c.call("wait", job=j)["exit_code"] == 0, "exit 0")
        c.call("release", job=j)
    expect(b != a and b == a + 1, "job handles increase")


def t_stdin(g, c):
    job = c.call("spawn", argv=["cat"])["job"]
    data = os.urandom(3 * MIB + 12345)
    got = {}

    def reader():
        got["out"] = drain(c, job)[0]
    t = threading.Thread(target=reader)
    t.start()
    for i in range(0, len(data), MIB):
        chunk = data[i:i + MIB]
        r = c.call("in", job=job, bin=chunk, eof=i + MIB >= len(data))
        expect(r["written"] == len(chunk), "in written")
    t.join(120)
    expect(got.get("out") == data, "cat round trip (%d of %d bytes)" % (len(got.get("out", b"")), len(data)))
    expect(c.call("wait", job=job)["exit_code"] == 0, "cat exit")
    expect_errno(c.error("in", job=job, bin=b"x"), errno.EPIPE, "in after eof")
    c.call("release", job=job)
    # a pending in, a second one is EBUSY; nobody reads cat's output
    job = c.call("spawn", argv=["cat"])["job"]
    big = os.urandom(MIB)
    qs = [c.send("in", job=job, bin=big) for _ in range(3)]
    time.sleep(1.0)
    res = []
    for q in qs:
        try:
            res.append(q.get(timeout=0.5)[0])
        except queue.Empty:
            res.append(None)
    busy = [r for r in res if r and not r["ok"] and r["errno"] == errno.EBUSY]
    pending = [r for r in res if r is None]
    # which ones fit depends on timing (the pipes and the agent's buffer hold ~1.3 MiB)
    expect(busy and len(busy) + len(pending) >= 2, "EBUSY for a second in while one is pending: %s" % res)
    # stdin closed by the process: EPIPE
    job2 = c.call("spawn", sh="exec 0<&-; sleep 0.2")["job"]
    c.call("wait", job=job2)
    expect_errno(c.error("in", job=job2, bin=b"x" * 100), errno.EPIPE, "in to a closed stdin")
    c.call("release", job=job2)
    # release answers the pending in (ECANCELED) and kills cat
    pid = c.call("status", job=job)["pid"]
    c.call("release", job=job)
    for q, r in zip(qs, res):
        if r is None:
            m, _ = q.get(timeout=10)
            expect(not m["ok"] and m["errno"] == errno.ECANCELED, "pending in on release: %s" % m)
    time.sleep(0.2)
    expect(c.exec("test -e /proc/%d" % pid)["exit_code"] != 0, "released cat is gone")


def t_backpressure(g, c):
    rss0 = vmrss_kib(c)
    total = 100 * MIB
    job = c.call("spawn", sh="dd if=/dev/zero bs=1M count=100 2>/dev/null; true")["job"]
    # slow reader: 64 KiB every 20 ms for ~2 s
    got = 0
    t_end = time.monotonic() + 2
    while time.monotonic() < t_end:
        r, d = c.call("out", job=job, stream=1, max=65536, data=True)
        got += len(d)
        time.sleep(0.02)
    # stderr stays empty: its out is deferred, a second one is EBUSY
    q_err = c.send("out", job=job, stream=2, max=1)
    expect_errno(c.error("out", job=job, stream=2, max=1), errno.EBUSY, "second out on a stream")
    st = c.call("status", job=job)
    expect(st["running"], "writer blocked, still running")
    rss1 = vmrss_kib(c)
    FIGURES["agent_VmRSS_KiB_idle"] = rss0
    FIGURES["agent_VmRSS_KiB_while_writer_blocked"] = rss1
    expect(rss1 - rss0 < 8 * 1024, "agent RSS grew by %d KiB" % (rss1 - rss0))
    t0 = time.monotonic()
    rest, n, _ = drain(c, job)
    got += len(rest)
    expect(not rest.strip(b"\0"), "zeros")
    FIGURES["spawn_stdout_MiBps"] = round((total - got + len(rest)) / MIB / (time.monotonic() - t0), 1)
    expect(got == total, "100 MiB through: %d" % got)
    expect(c.call("wait", job=job)["exit_code"] == 0, "dd exit")
    r, d = c.result(q_err, data=True)
    expect(r["eof"] and d == b"", "deferred stderr out answered at EOF: %s" % r)
    rss2 = vmrss_kib(c)
    FIGURES["agent_VmRSS_KiB_after_100MiB"] = rss2
    c.call("release", job=job)


def t_exec_latency(g, c, n=int(os.environ.get("AGENT_EXEC_N", "50"))):
    c.exec("true")
    ts = []
    for _ in range(n):
        t0 = time.monotonic()
        c.call("exec", argv=["/bin/true"])
        ts.append((time.monotonic() - t0) * 1000)
    ts.sort()
    FIGURES["exec_true_ms_p50"] = round(statistics.median(ts), 2)
    FIGURES["exec_true_ms_p90"] = round(ts[int(n * 0.9)], 2)
    ts = []
    for _ in range(20):
        t0 = time.monotonic()
        c.call("ping")
        ts.append((time.monotonic() - t0) * 1000)
    FIGURES["ping_ms_p50"] = round(statistics.median(ts), 2)


def t_malformed(g, c):
    c.sock.sendall(b"this is not json\n")
    m = c.events.get(timeout=10)
    expect(m["id"] == 0 and m["errno"] == errno.EBADMSG, "EBADMSG %s" % m)
    c.sock.sendall(b"[1,2]\n")
    m = c.events.get(timeout=10)
    expect(m["errno"] == errno.EBADMSG, "array: %s" % m)
    # an oversized line: EMSGSIZE, and the connection goes on
    q = c.waiters.setdefault(424242, queue.Queue())
    c.sock.sendall(b'{"id":424242,"op":"ping","pad":"' + b"x" * (MIB + 10) + b'"}\n')
    m, _ = q.get(timeout=30)
    expect(m["errno"] == errno.EMSGSIZE, "oversized line %s" % m)
    expect(c.call("ping")["op"] == "pong", "ping after an oversized line")
    # a payload split over many writes, with a zero-length one and a request right behind
    fh = c.call("open", path="/tmp/split", flags=O_CREAT | O_RDWR, mode=0o644)["fh"]
    data = os.urandom(200000)
    with c.lock:
        rid = c.next_id
        c.next_id += 3
        qs = [c.waiters.setdefault(rid + i, queue.Queue()) for i in range(3)]
        buf = (json.dumps({"id": rid, "op": "write", "fh": fh, "off": 0, "bin": len(data)}).encode() + b"\n" +
               data + json.dumps({"id": rid + 1, "op": "write", "fh": fh, "off": 0, "bin": 0}).encode() +
               b"\n" + json.dumps({"id": rid + 2, "op": "ping"}).encode() + b"\n")
        for i in range(0, len(buf), 777):
            c.sock.sendall(buf[i:i + 777])
    expect(qs[0].get(timeout=30)[0]["written"] == len(data), "split write")
    expect(qs[1].get(timeout=30)[0]["written"] == 0, "zero-length write")
    expect(qs[2].get(timeout=30)[0]["op"] == "pong", "ping after payloads")
    expect(c.call("read", fh=fh, off=0, len=MIB, data=True)[1] == data, "split write content")
    c.call("close", fh=fh)
    # a bin out of range: EMSGSIZE, then the agent ignores the connection until hangup
    for bad in (MIB + 1, -1, "12", 1.5):
        c2 = g.reconnect()
        fh = c2.call("open", path="/tmp/split", flags=O_RDONLY)["fh"]
        q = c2.send_raw({"op": "write", "fh": fh, "off": 0, "bin": bad}, b"x" * 100)
        m, _ = q.get(timeout=30)
        expect(m and m["errno"] == errno.EMSGSIZE, "bad bin %r: %s" % (bad, m))
        q = c2.send("ping")
        try:
            m = q.get(timeout=1.0)[0]
        except queue.Empty:
            m = None
        expect(m is None, "a broken connection still answers: %s" % m)
        c3 = g.reconnect()
        expect(c3.call("ping")["op"] == "pong", "a new connection works after a broken one")
        expect_errno(c3.error("read", fh=fh, off=0, len=1), errno.EBADF, "handles gone after hangup")


def poll_until(pred, timeout=5.0):
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


def t_hangup(g, c):
    c2 = g.reconnect()
    fhs = [c2.call("open", path="/tmp", flags=O_RDONLY | O_DIRECTORY)["fh"] for _ in range(5)]
    r = c2.call("spawn", sh="exec sleep 1000")
    r2 = c2.call("spawn", sh="sleep 1000 & sleep 1000 & wait")
    r3 = c2.call("spawn", sh="sleep 1; echo detached; exit 3")
    time.sleep(0.3)
    c2.send("wait", job=r["job"])
    c2.send("out", job=r3["job"], stream=1, max=100)
    c3 = g.reconnect()
    # the processes run on; the jobs are no longer this (new) connection's
    for p in (r["pid"], r2["pid"]):
        expect(c3.exec("test -e /proc/%d" % p)["exit_code"] == 0, "spawned process %d runs on after a hangup" % p)
    expect_errno(c3.error("status", job=r["job"]), errno.EBADF, "a job of an earlier connection")
    expect_errno(c3.error("close", fh=fhs[0]), errno.EBADF, "fh gone after hangup")
    time.sleep(1.0)
    # an attach keeps the jobs it names, releases the others an earlier host left
    kept = {j["job"]: j for j in c3.call("attach", jobs=[r["job"], r3["job"], 999999])["jobs"]}
    expect(sorted(kept) == sorted([r["job"], r3["job"]]), "kept %s" % kept)
    expect(kept[r["job"]]["running"] and kept[r["job"]]["pid"] == r["pid"], "still running %s" % kept)
    expect(not kept[r3["job"]]["running"] and kept[r3["job"]]["exit_code"] == 3, "exited detached %s" % kept)
    # (SIGKILLed processes are gone once the agent reaped them)
    expect(poll_until(lambda: c3.exec("test -e /proc/%d" % r2["pid"])["exit_code"] != 0), "an unnamed job released")
    left = lambda: c3.exec("pidof sleep || true")["out"].split()
    expect(poll_until(lambda: left() == [b"%d" % r["pid"]]), "only the kept job's sleep left: %r" % left())
    out = drain(c3, r3["job"])[0]
    expect(out == b"detached\n", "output kept over the hangup: %r" % out)
    expect(c3.call("status", job=r["job"])["running"], "a kept job is this connection's")
    # a new host that names none: everything of the earlier one goes
    c4 = g.reconnect()
    expect(c4.call("attach")["jobs"] == [], "nothing kept")
    expect(poll_until(lambda: c4.exec("pidof sleep || true")["out"] == b""), "no sleep left: its group was killed")
    expect_errno(c4.error("status", job=r["job"]), errno.EBADF, "job gone after an attach without it")
    # a session new to the agent is a new host even without a hangup (a
    # restored snapshot, a fork): what it does not name goes; the same
    # session attaching again (a resume) keeps its own jobs
    x = c4.call("spawn", argv=["sleep", "1004"])
    c4.call("attach", session=11, jobs=[])
    expect_errno(c4.error("status", job=x["job"]), errno.EBADF, "a new session releases what it does not name")
    y = c4.call("spawn", argv=["sleep", "1005"])
    expect(c4.call("attach", session=11, jobs=[])["jobs"] == [], "nothing named")
    expect(c4.call("status", job=y["job"])["running"], "the same session keeps its connection's jobs")
    c4.call("release", job=y["job"])
    c3 = c4
    expect_errno(c3.error("attach", session=-1), errno.EINVAL, "a negative session")
    expect_errno(c3.error("attach", jobs="1"), errno.EINVAL, "jobs not an array")
    expect_errno(c3.error("attach", jobs=[-1]), errno.EINVAL, "a negative job")
    expect_errno(c3.error("attach", jobs=list(range(257))), errno.EINVAL, "too many jobs")
    # handles cap
    fhs = []
    try:
        for _ in range(1025):
            fhs.append(c3.call("open", path="/tmp", flags=O_RDONLY)["fh"])
        raise AssertionError("1025 handles")
    except AgentError as e:
        expect_errno(e.errno, errno.EMFILE, "handle cap")
    expect(len(fhs) == 1024, "1024 handles")
    c4 = g.reconnect()
    # job cap: 256 spawned per connection
    jobs = []
    try:
        for _ in range(257):
            jobs.append(c4.call("spawn", argv=["sleep", "100"])["job"])
        raise AssertionError("257 jobs")
    except AgentError as e:
        expect_errno(e.errno, errno.EAGAIN, "job cap")
    expect(len(jobs) == 256, "256 jobs")
    c4.call("release", job=jobs[0])
    j = c4.call("spawn", argv=["true"])["job"]
    expect(j == jobs[-1] + 1, "handles not reused")
    g.reconnect()


def t_users(g, c):
    """exec and spawn as another user: by name (passwd, group membership, HOME), by number, refusals."""
    r = c.exec("grep -q '^tuser:' /etc/passwd || { echo 'tuser:x:1500:1600:t:/home/t:/bin/sh' >> /etc/passwd;"
               " echo 'tg:x:1600:' >> /etc/group; echo 'extra:x:1700:root,tuser' >> /etc/group; };"
               " mkdir -p /home/t && chown 1500:1600 /home/t")
    expect(r["exit_code"] == 0, "setup %s" % r)
    r = c.exec("id -u; id -g; id -G; echo $HOME; touch /home/t/mine && stat -c %u:%g /home/t/mine", user="tuser")
    expect(r["out"] == b"1500\n1600\n1600 1700\n/home/t\n1500:1600\n", "as tuser: %r" % r["out"])
    r = c.exec("id -u; id -g; id -G; echo $HOME", user="4242")
    expect(r["out"] == b"4242\n4242\n4242\n/\n",
           "a uid without an entry: its own group, no others, HOME=/ (Docker's rule): %r" % r["out"])
    r = c.exec("id -u; id -g", user="tuser:0")
    expect(r["out"] == b"1500\n0\n", "user:gid %r" % r["out"])
    r = c.exec("cat /etc/shadow 2>/dev/null || echo denied; touch /root/x 2>/dev/null || echo denied2", user="tuser")
    expect(r["out"] == b"denied\ndenied2\n", "no privilege as tuser: %r" % r["out"])
    job = c.call("spawn", sh="id -u; echo $HOME", user="tuser")["job"]
    expect(drain(c, job)[0] == b"1500\n/home/t\n", "spawn as tuser")
    c.call("release", job=job)
    for bad, what in (("nosuch", "/etc/passwd"), ("tuser:nogroup", "/etc/group")):
        try:
            c.call("exec", sh="true", user=bad)
            raise AssertionError("user %s accepted" % bad)
        except AgentError as e:
            expect(e.errno == errno.EINVAL and what in str(e), "user %s: %s" % (bad, e))
    expect_errno(c.error("exec", sh="true", user=5), errno.EINVAL, "user not a string")


def t_configure(g, c):
    """configure: the defaults of every later exec and spawn (an image's ENV, WORKDIR, USER)."""
    c.exec("grep -q '^tuser:' /etc/passwd || echo 'tuser:x:1500:1600:t:/home/t:/bin/sh' >> /etc/passwd;"
           " mkdir -p /home/t /srv/app")
    try:
        c.call("configure", env={"IMG": "1", "BOTH": "image"}, cwd="/srv/app", user="tuser")
        r = c.exec("pwd; echo $IMG $BOTH; id -u; echo $HOME")
        expect(r["out"] == b"/srv/app\n1 image\n1500\n/home/t\n", "defaults: %r" % r["out"])
        r = c.exec("pwd; echo $IMG $BOTH; id -u", env={"BOTH": "request"}, cwd="/", user="0")
        expect(r["out"] == b"/\n1 request\n0\n", "a request's own values win: %r" % r["out"])
        job = c.call("spawn", sh="pwd; echo $IMG; id -u")["job"]
        expect(drain(c, job)[0] == b"/srv/app\n1\n1500\n", "spawn gets the defaults")
        c.call("release", job=job)
        expect_errno(c.error("configure", cwd="relative"), errno.EINVAL, "relative cwd")
        expect_errno(c.error("configure", env={"A=B": "x"}), errno.EINVAL, "env name with =")
        expect_errno(c.error("configure", env={"": "x"}), errno.EINVAL, "empty env name")
        expect_errno(c.error("configure", env=["A=1"]), errno.EINVAL, "env not an object")
        expect_errno(c.error("configure", user=7), errno.EINVAL, "user not a string")
        r = c.exec("pwd; echo $IMG; id -u")
        expect(r["out"] == b"/srv/app\n1\n1500\n", "a refused configure changes nothing: %r" % r["out"])
        # a default user that is gone from the guest: the exec says so
        c.call("configure", user="ghost")
        try:
            c.call("exec", sh="true")
            raise AssertionError("exec as a missing default user ran")
        except AgentError as e:
            expect(e.errno == errno.EINVAL and "ghost" in str(e), "missing default user: %s" % e)
    finally:
        c.call("configure")
    r = c.exec("pwd; echo x$IMG; id -u")
    expect(r["out"] == b"/\nx\n0\n", "configure {} resets: %r" % r["out"])


def t_probe_sync(g, c):
    """probe {tcp}: a start command's readiness; sync; a shell-line exec in a guest without /bin/sh."""
    expect_errno(c.error("probe", tcp=7777), errno.ECONNREFUSED, "nothing listening")
    for bad in (0, 65536, "80", -1):
        expect_errno(c.error("probe", tcp=bad), errno.EINVAL, "probe tcp=%r" % (bad,))
    expect_errno(c.error("probe"), errno.EINVAL, "probe without tcp")
    job = c.call("spawn", argv=["nc", "-l", "-p", "7777"])["job"]
    t0 = time.monotonic()
    while True:
        try:
            c.call("probe", tcp=7777)
            break
        except AgentError as e:
            expect(e.errno == errno.ECONNREFUSED and time.monotonic() - t0 < 20, "probe: %s" % e)
            time.sleep(0.1)
    c.call("release", job=job)
    c.call("sync")
    # an image without a shell: argv still runs, a shell line fails with the cause
    c.exec("mv /bin/sh /bin/sh.away")
    try:
        r = c.call("exec", argv=["/bin/busybox", "echo", "argv ok"])
        expect(base64.b64decode(r["stdout"]) == b"argv ok\n", "argv without a shell")
        try:
            c.call("exec", sh="echo hi")
            raise AssertionError("a shell line ran without /bin/sh")
        except AgentError as e:
            expect(e.errno == errno.ENOENT and "/bin/sh" in str(e), "no shell: %s" % e)
    finally:
        c.call("exec", argv=["/bin/busybox", "mv", "/bin/sh.away", "/bin/sh"])


TESTS = [t_basics, t_binary_roundtrip, t_errnos, t_files_v3, t_namespace, t_readdir, t_spawn_stream,
         t_spawn_signals, t_two_processes, t_stdin, t_backpressure, t_large_read, t_exec_latency,
         t_malformed, t_users, t_configure, t_probe_sync, t_hangup]


def main():
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    image = sys.argv[1] if len(sys.argv) == 2 else os.environ.get(
        "EMBERFS_IMAGE_DIR", os.path.join(repo, ".image", "current"))
    if len(sys.argv) > 2:
        print(__doc__, file=sys.stderr)
        return 2
    if os.geteuid() != 0 or not shutil.which("qemu-system-x86_64") or \
            not os.path.isfile(os.path.join(image, "initrd.cpio")):
        print("agent_proto_test: SKIP: needs root, qemu-system-x86_64 and a guest image in %s" % image)
        return 77
    only = os.environ.get("AGENT_TEST_ONLY", "").split(",") if os.environ.get("AGENT_TEST_ONLY") else None
    g = Guest(image)
    failed = []
    try:
        c = g.connect(expect_ready=True)
        FIGURES["boot_ms_guest"] = c.ready["boot_ms"]
        FIGURES["boot_s_wall"] = round(time.monotonic() - g.t0, 2)
        for t in TESTS:
            if only and t.__name__ not in only:
                continue
            t0 = time.monotonic()
            try:
                t(g, g.c)
                print("ok   %-22s %6.2fs" % (t.__name__, time.monotonic() - t0), flush=True)
            except Exception:
                failed.append(t.__name__)
                print("FAIL %-22s %6.2fs" % (t.__name__, time.monotonic() - t0), flush=True)
                traceback.print_exc()
            if g.c.closed.is_set():
                print("connection lost; console:\n" + g.console_text()[-3000:], file=sys.stderr)
                break
        g.c.close()
    finally:
        if failed:
            print("guest console (tail):\n" + g.console_text()[-2000:], file=sys.stderr)
        g.stop()
    print(json.dumps(FIGURES, indent=1))
    print("FAILED: %s" % ", ".join(failed) if failed else "all passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
