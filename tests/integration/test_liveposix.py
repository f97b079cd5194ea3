#!/usr/bin/env python3
"""
POSIX semantics of live/NAME, checked differentially: one table of
operations is run by fsops (tests/integration/fsops.c) inside the guest on a
scratch directory (/tmp/pa-N on tmpfs, /root/pa-N on ext4) and on the host
through MOUNT/live/NAME on a twin scratch directory (/tmp/pb-N, /root/pb-N),
each side from an identical empty directory, and every result line must be
the same (docs/interface.md "The guest's files"). The daemon runs with
--allow-other, so unprivileged host users reach the mount and the guest's
modes decide.

The table runs in segments, each a fresh fsops process: as root, and as uid
1000 (groups 1000, 2000) and uid 1001 (groups 1001, 2001), with umask 022
unless an op changes it:
- open flags and modes: O_CREAT|O_EXCL, O_TRUNC, O_APPEND (pwrite appends
  too), O_NOFOLLOW on a symlink (ELOOP), O_DIRECTORY on a file (ENOTDIR),
  O_WRONLY/O_RDWR/O_CREAT on a directory (EISDIR), creation through a dangling
  link, umask effects on files, directories (sticky bit kept) and FIFOs;
- ownership of files and directories a non-root user creates (the user's, or
  a setgid directory's group, S_ISGID inherited by directories and stripped
  from a new file of a user outside that group);
- chmod/chown rules: a non-owner's chmod/chown EPERM, chown to another user
  EPERM, chgrp to one of the user's groups allowed, to another EPERM, chmod
  g+s by a user outside the file's group (bit dropped), root's chown
  clearing S_ISUID/S_ISGID;
- S_ISUID/S_ISGID cleared by a write and a truncate, by the owner and by a
  non-owner, kept on root's write and on a setgid file without group exec;
- link counts (same inode token for both names, nlink 2 then 1), EEXIST,
  EPERM (a directory), inode token kept across rename;
- rename: over a file, over an empty directory, onto a non-empty directory
  (ENOTEMPTY), file over directory (EISDIR), directory over file (ENOTDIR),
  directory into its own subdirectory (EINVAL), RENAME_NOREPLACE (EEXIST),
  RENAME_EXCHANGE of a file and a directory, onto itself and onto another
  name of the same inode (no-op);
- truncate/ftruncate (shrink, grow, across 4 KiB, on a read-only handle,
  a directory, a negative size), utimensat with explicit times, UTIME_NOW,
  UTIME_OMIT and NULL as owner and non-owner (EPERM/EACCES), on a symlink
  with AT_SYMLINK_NOFOLLOW;
- permission checks as a non-root user: a 0600 file of another user
  (EACCES), O_TRUNC/truncate without write permission, creation in a 0555
  and in another user's directory (EACCES), unlink and rename of another's
  file in a sticky directory (EPERM);
- ENAMETOOLONG (256-byte names), ELOOP (a loop, a self link, a chain of 41
  links while 40 resolve), mkfifo, mknod (character and block devices as
  root, EPERM as non-root, regular files), a unix socket bound, connected to
  (on the same side), refused once closed, EADDRINUSE;
- paths past PATH_MAX: a chain of directories whose absolute path is longer
  than 4096 bytes, entered step by step with chdir, as root and as uid 1000;
  files made, read, linked, renamed, truncated, chmod-ed there.
Results are equal except the documented differences in DIFFS.

Also, directly on the host: stat of two hard-linked names shows one st_ino
and st_nlink 2 (then 1 after an unlink), a rename keeps st_ino, and two
sandboxes never show one st_ino for different files (so du, cp -a and tar
never take files of two sandboxes for hard links).
"""
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import livehelp  # noqa: E402

D = BASE = None
SB, SB2 = "lp", "lp2"
USERS = {"root": None, "u1000": "1000 1000 1000,2000", "u1001": "1001 1001 1001,2001"}

# Documented differences between the guest's own results and the host's through live/:
# {"SEGMENT: op as in the table": "reason"}. None is known: every difference this table found on the
# implementation of 2026-12 (mknod/mkfifo/bind ENOSYS, root-owned files made by users, one st_ino per
# name, stale nlink, set-id bits kept, paths past PATH_MAX) is a bug of it, not a limit of FUSE. A
# difference that is an implementation bug is never listed here. Left out of the table on purpose,
# because the host kernel decides them without the guest: opening a FIFO (a host-side pipe) or a
# device (the mount is nodev), and a connect() across the boundary (a socket bound on one side is
# that side's).
DIFFS = {
}

TOKEN = re.compile(r"ino=(i\d+)")
N256 = "n" * 256
N255 = "m" * 255
DEEP = ["D%02d" % i + "d" * 197 for i in range(22)]  # 22 levels of 201 bytes: deeper than PATH_MAX


def L(*rest, name=SB):
    return os.path.join(D.mount, "live", name, *rest)


def setUpModule():
    global D, BASE
    livehelp.check_fsops()
    D = harness.Daemon(extra_args=["--allow-other"]).start()
    BASE = D.core(D.wait_inventory({**D.inventory(), "qemu": [], "run": [], "zombies": []}))
    D.create_ready(SB)
    livehelp.install(D, SB)


def tearDownModule():
    harness.stop_shared(D, BASE)


def segments():
    """[(segment name, user, [op, ...])], run in order, each by a fresh fsops process."""
    segs = []

    def seg(name, user, text):
        ops = [l.strip() for l in text.strip().splitlines() if l.strip() and not l.strip().startswith("#")]
        segs.append((name, user, ops))

    seg("setup", "root", """
        mkdir shared 0777
        chmod shared 01777
        mkdir u1 0755
        chown u1 1000 1000
        mkdir u2 0755
        chown u2 1001 1001
        mkdir ro 0555
        chown ro 1000 1000
        chmod ro 0555
        mkdir sgid 0775
        chown sgid 0 2000
        chmod sgid 02775
        mkdir sgidw 0777
        chown sgidw 0 2000
        chmod sgidw 02777
        put secret s 0600
        chown secret 1001 1001
        chmod secret 0600
        put pub p 0644
        mkdir rt 0755
        stat shared
        stat sgid
        stat secret
    """)
    seg("open", "root", """
        open rt/f O_WRONLY|O_CREAT|O_EXCL 0644
        pwrite h0 0 hello
        close h0
        open rt/f O_WRONLY|O_CREAT|O_EXCL 0644
        stat rt/f
        open rt/f O_RDWR|O_TRUNC
        fstat h0
        write h0 abc
        close h0
        open rt/f O_WRONLY|O_APPEND
        write h0 def
        pwrite h0 0 XY
        fstat h0
        lseek h0 0 CUR
        close h0
        read rt/f
        open rt/f O_RDWR
        lseek h0 0 END
        write h0 end
        pread h0 0 100
        close h0
        symlink f rt/lnk
        open rt/lnk O_RDONLY|O_NOFOLLOW
        open rt/lnk O_RDONLY
        close h0
        open rt/f O_RDONLY|O_DIRECTORY
        open rt O_RDONLY|O_DIRECTORY
        close h0
        open rt O_WRONLY
        open rt O_RDWR
        open rt O_RDONLY|O_CREAT
        open rt/lnk O_WRONLY|O_CREAT|O_EXCL
        open rt/nodir/x O_WRONLY|O_CREAT
        open rt/f/x O_RDONLY
        open rt/f/ O_RDONLY
        symlink nowhere rt/dangling
        open rt/dangling O_WRONLY|O_CREAT|O_EXCL 0600
        open rt/dangling O_WRONLY|O_CREAT 0600
        close h0
        stat rt/nowhere
        umask 027
        open rt/um O_WRONLY|O_CREAT 0666
        close h0
        stat rt/um
        mkdir rt/umd 0777
        stat rt/umd
        mkfifo rt/umf 0666
        stat rt/umf
        umask 0
        open rt/um0 O_WRONLY|O_CREAT 0666
        close h0
        stat rt/um0
        mkdir rt/um0d 01777
        stat rt/um0d
        umask 022
        mkdir rt/um0d/sub 0777
        stat rt/um0d/sub
        readdir rt
    """)
    seg("links", "root", """
        put rt/a A
        link rt/a rt/b
        stat rt/a
        stat rt/b
        link rt/a rt/b
        link rt rt/dirlink
        link rt/missing rt/c
        link rt/lnk rt/lnk2
        lstat rt/lnk
        lstat rt/lnk2
        unlink rt/a
        stat rt/b
        stat rt/a
        stat rt/b
        rename rt/b rt/b2
        stat rt/b2
        stat rt/b
        put rt/r1 one
        put rt/r2 two
        stat rt/r1
        stat rt/r2
        rename rt/r1 rt/r2
        stat rt/r2
        read rt/r2
        stat rt/r1
        mkdir rt/d1 0755
        mkdir rt/d2 0755
        put rt/d1/x x
        stat rt/d1
        rename rt/d1 rt/d2
        stat rt/d2
        stat rt/d2/x
        stat rt/d1
        mkdir rt/d3 0755
        put rt/d3/y y
        rename rt/d2 rt/d3
        put rt/ff f
        rename rt/ff rt/d3
        rename rt/d3 rt/ff
        mkdir rt/d3/sub 0755
        rename rt/d3 rt/d3/sub/in
        rename rt/d3 rt/d3/sub
        rename rt/ff rt/r2 NOREPLACE
        rename rt/ff rt/ffn NOREPLACE
        stat rt/ffn
        rename rt/ffn rt/d3 EXCHANGE
        stat rt/ffn
        stat rt/d3
        stat rt/ffn/y
        read rt/d3
        rename rt/ffn rt/none EXCHANGE
        rename rt/r2 rt/r2
        stat rt/r2
        link rt/r2 rt/r2h
        rename rt/r2 rt/r2h
        stat rt/r2
        stat rt/r2h
        rename rt/d3 rt/d3x/
        rename rt/none rt/none2
        rmdir rt/ffn
        rmdir rt/d3
        unlink rt/ffn
        rmdir rt/ffn/.
        rmdir rt/ffn/sub
        stat rt/ffn
        mkdir rt/ffn 0755
        readdir rt
    """)
    seg("trunc", "root", """
        put rt/t 0123456789
        truncate rt/t 4
        read rt/t
        truncate rt/t 10000
        read rt/t
        stat rt/t
        open rt/t O_RDWR
        ftruncate h0 3
        pread h0 0 100
        fstat h0
        ftruncate h0 5000
        pread h0 4090 20
        pfill h0 4090 20 5
        pread h0 4085 40
        fstat h0
        ftruncate h0 4096
        pread h0 4080 40
        close h0
        truncate rt -1
        truncate rt 0
        truncate rt/t -1
        open rt/t O_RDONLY
        ftruncate h0 1
        close h0
        open rt/t O_WRONLY|O_TRUNC
        fstat h0
        close h0
        read rt/t
    """)
    seg("times", "root", """
        put rt/u u
        utimensat rt/u 1000000000.123456789 1500000000.987654321
        times rt/u
        utimensat rt/u OMIT 1600000000.5
        times rt/u
        utimensat rt/u NOW OMIT
        times rt/u
        utimensat rt/u 1000000000.1 1000000000.2
        utimensat rt/u OMIT NOW
        times rt/u
        utimensat rt/u 1000000000.1 1000000000.2
        utimensat rt/u NULL
        times rt/u
        symlink u rt/ul
        utimensat rt/ul 1200000000.0 1300000000.0 NOFOLLOW
        times rt/ul NOFOLLOW
        times rt/u
        utimensat rt/nope NOW NOW
        put shared/o1000 x 0644
        chown shared/o1000 1000 1000
        utimensat shared/o1000 1000000000.0 1000000000.0
        put shared/w1001 x 0666
        chown shared/w1001 1001 1001
        chmod shared/w1001 0666
        utimensat shared/w1001 1000000000.0 1000000000.0
        utimensat pub 1000000000.0 1000000000.0
    """)
    seg("nodes", "root", """
        mkfifo rt/fifo 0644
        stat rt/fifo
        mkfifo rt/fifo 0644
        mknod rt/cdev c 0644 1 3
        stat rt/cdev
        mknod rt/bdev b 0600 7 0
        stat rt/bdev
        mknod rt/regn f 0640
        stat rt/regn
        read rt/regn
        mknod rt/pn p 0600
        stat rt/pn
        bind-unix rt/sock
        stat rt/sock
        connect-unix rt/sock
        bind-unix rt/sock
        close h0
        connect-unix rt/sock
        unlink rt/sock
        bind-unix rt/sock
        connect-unix rt/sock
        close h0
        open rt/%s O_WRONLY|O_CREAT
        open rt/%s O_WRONLY|O_CREAT
        close h0
        stat rt/%s
        mkdir rt/%s 0755
        symlink x rt/%s
        stat rt/%s
        symlink %s rt/longtarget
        readlink rt/longtarget
        symlink l2 rt/l1
        symlink l1 rt/l2
        stat rt/l1
        lstat rt/l1
        open rt/l1 O_WRONLY|O_CREAT
        symlink self rt/self
        stat rt/self
        readdir rt
    """ % (N256, N255, N255, N256, N256, N256, "x" * 4000))
    # a chain of 41 links: 40 are followed (MAXSYMLINKS), the 41st is one too many
    chain = ["put rt/c0 end"] + ["symlink c%d rt/c%d" % (i, i + 1) for i in range(41)] + \
        ["stat rt/c40", "read rt/c40", "stat rt/c41", "read rt/c41"]
    segs.append(("chain", "root", chain))
    seg("attrs", "root", """
        put rt/p p
        chmod rt/lnk 0600
        stat rt/f
        chown rt/p 1234 5678
        stat rt/p
        lchown rt/lnk 1000 1000
        lstat rt/lnk
        stat rt/lnk
        chown rt/p -1 42
        stat rt/p
        chown rt/p 43 -1
        stat rt/p
        chmod rt/p 07777
        stat rt/p
        chown rt/p 0 0
        stat rt/p
        chmod rt/p 06744
        chown rt/p 1 1
        stat rt/p
        chmod rt 0755
        chmod rt/nope 0755
        chown rt/nope 0 0
        put shared/suid1 data 0644
        chown shared/suid1 1000 1000
        chmod shared/suid1 06755
        put shared/suid2 data 0644
        chown shared/suid2 1000 1000
        chmod shared/suid2 06777
        put shared/suid3 data 0644
        chown shared/suid3 1000 1000
        chmod shared/suid3 06755
        put shared/suid4 data 0644
        chown shared/suid4 1000 1000
        chmod shared/suid4 06777
        put shared/suid5 data 0644
        chown shared/suid5 1000 1000
        chmod shared/suid5 06755
        open shared/suid5 O_WRONLY
        pwrite h0 0 R
        close h0
        stat shared/suid5
        truncate shared/suid5 1
        stat shared/suid5
        put shared/sgnx data 0644
        chown shared/sgnx 1000 1000
        chmod shared/sgnx 02644
        put shared/sgx data 0644
        chown shared/sgx 1000 2001
        put shared/mine1000 m 0644
        chown shared/mine1000 1000 1000
        put shared/o1000 x 0644
        chown shared/o1000 1000 1000
        put shared/w1001 x 0666
        chown shared/w1001 1001 1001
        chmod shared/w1001 0666
        readdir shared
    """)
    seg("user1000", "u1000", """
        id
        put u1/f1 hello
        stat u1/f1
        mkdir u1/d1 0777
        stat u1/d1
        put sgid/f2 x
        stat sgid/f2
        mkdir sgid/d2 0755
        stat sgid/d2
        open sgid/f3 O_WRONLY|O_CREAT 02755
        close h0
        stat sgid/f3
        put u2/x x
        put ro/x x
        mkdir ro/x 0755
        put x x
        read secret
        open secret O_RDONLY
        access secret r
        access pub r
        access pub w
        read pub
        open pub O_WRONLY
        open pub O_RDONLY|O_TRUNC
        truncate pub 0
        chmod pub 0777
        chown pub 1000 1000
        chmod u1/f1 0600
        stat u1/f1
        chown u1/f1 1001 1000
        chown u1/f1 -1 2000
        stat u1/f1
        chown u1/f1 -1 2001
        chown u1/f1 1000 -1
        chown u1/f1 -1 -1
        chmod u1/f1 02750
        stat u1/f1
        chown u1/f1 -1 1000
        stat u1/f1
        chmod shared/sgx 02755
        stat shared/sgx
        utimensat shared/o1000 1000000001.0 1000000002.0
        times shared/o1000
        utimensat shared/o1000 OMIT NOW
        times shared/o1000
        utimensat pub 5.0 5.0
        utimensat pub NOW NOW
        utimensat pub NULL
        utimensat pub OMIT OMIT
        utimensat pub NOW OMIT
        utimensat shared/w1001 NOW NOW
        utimensat shared/w1001 NULL
        utimensat shared/w1001 7.0 7.0
        utimensat shared/w1001 OMIT NOW
        times shared/w1001
        open shared/suid1 O_WRONLY
        pwrite h0 0 Z
        close h0
        stat shared/suid1
        truncate shared/suid3 1
        stat shared/suid3
        open shared/sgnx O_WRONLY
        pwrite h0 0 W
        close h0
        stat shared/sgnx
        link u1/f1 u1/f1h
        stat u1/f1
        stat u1/f1h
        rename u1/f1h u1/f1r
        stat u1/f1r
        unlink u1/f1r
        stat u1/f1
        mkfifo u1/fifo 0644
        stat u1/fifo
        mknod u1/cdev c 0644 1 3
        mknod u1/bdev b 0644 7 0
        mknod u1/reg f 0644
        stat u1/reg
        bind-unix u1/sock
        stat u1/sock
        connect-unix u1/sock
        close h0
        symlink x u1/sl
        lstat u1/sl
        lchown u1/sl -1 2000
        lstat u1/sl
        rmdir u1/d1
        mkdir u1/d1 0700
        put u1/d1/in x
        put shared/mine1000b b
        stat shared/mine1000b
        readdir u1
        readdir sgid
    """)
    seg("user1001", "u1001", """
        id
        open shared/suid2 O_WRONLY
        pwrite h0 0 N
        close h0
        stat shared/suid2
        open shared/suid4 O_WRONLY
        ftruncate h0 1
        close h0
        stat shared/suid4
        unlink shared/mine1000
        rename shared/mine1000 shared/stolen
        rename shared/mine1000b u2/stolen
        put shared/mine1001 x
        unlink shared/mine1001
        read u1/f1
        stat u1/d1/in
        readdir u1/d1
        chmod u1/d1 0777
        chown u1/d1 1001 1001
        utimensat shared/o1000 NOW NOW
        utimensat shared/o1000 1.0 1.0
        utimensat shared/w1001 7.0 7.0
        times shared/w1001
        open sgidw/f O_WRONLY|O_CREAT 02755
        close h0
        stat sgidw/f
        mkdir sgidw/d 02755
        stat sgidw/d
        put sgid/x x
        put u1/x x
        readdir shared
    """)
    deep = []
    for i, n in enumerate(DEEP):
        deep += ["mkdir %s 0755" % n, "chdir %s" % n]
    tail = """
        put f deepdata
        stat f
        read f
        mkdir sub 0755
        put sub/g g
        stat sub/g
        rename f f2
        stat f
        readdir .
        symlink f2 l
        read l
        link f2 f3
        stat f3
        stat f2
        unlink f3
        truncate f2 3
        read f2
        chmod f2 0600
        stat f2
        utimensat f2 100.0 200.0
        times f2
        open f2 O_RDWR
        pwrite h0 1 XYZ
        pread h0 0 10
        close h0
        mkfifo p 0600
        stat p
        rmdir sub
        unlink sub/g
        rmdir sub
        readdir .
    """
    tail = [l.strip() for l in tail.strip().splitlines()]
    segs.append(("deep-root", "root", ["mkdir rt/deep 0755", "chdir rt/deep"] + deep + tail))
    segs.append(("deep-1000", "u1000", ["mkdir u1/deep 0755", "chdir u1/deep"] + deep + tail))
    seg("final", "root", """
        readdir .
        readdir rt
        readdir shared
        stat shared/suid1
        stat shared/suid2
        stat shared/suid3
        stat shared/suid4
        stat shared/suid5
        stat shared/sgnx
        stat shared/mine1000
        stat shared/mine1000b
        stat sgidw/f
        stat sgidw/d
    """)
    return segs


def run_side(side, root, segs):
    """{segment: [result, ...]} of every segment, run in order by fresh fsops processes on one side."""
    out = {}
    for name, user, ops in segs:
        pre = ["umask 022"] + (["setuid " + USERS[user]] if USERS[user] else [])
        if side == "guest":
            res = livehelp.run_guest(D, SB, root, pre + ops)
        else:
            res = livehelp.run_host(root, pre + ops)
        if any(r != "ok" for r in res[:len(pre)]):
            raise AssertionError("%s: segment %s could not start: %s" % (side, name, res[:len(pre)]))
        out[name] = res[len(pre):]
    return out


class Posix(harness.TestCase):
    _n = 0

    def compare(self, base):
        """The whole table in guest base/pa-N and host base/pb-N."""
        Posix._n += 1
        ga, hb = "%s/pa-%d" % (base, Posix._n), "%s/pb-%d" % (base, Posix._n)
        D.sh(SB, "mkdir -m 0755 %s %s" % (ga, hb))
        segs = segments()
        guest = run_side("guest", ga, segs)
        host = run_side("host", L(hb.lstrip("/")), segs)
        diffs, documented = [], []
        for name, user, ops in segs:
            g2h, h2g = {}, {}  # inode tokens: each side numbers its own; the pairing must stay one to one
            for i, (o, g, h) in enumerate(zip(ops, guest[name], host[name])):
                gt, ht = TOKEN.findall(g), TOKEN.findall(h)
                why = None
                if TOKEN.sub("ino=*", g) != TOKEN.sub("ino=*", h):
                    why = ""
                elif gt:
                    gt, ht = gt[0], ht[0]
                    pg, ph = g2h.setdefault(gt, ht), h2g.setdefault(ht, gt)
                    if pg != ht or ph != gt:
                        why = "  (inode identity differs: earlier, guest %s was host %s and host %s was guest %s)" % (
                            gt, pg, ht, ph)
                if why is None:
                    continue
                key = "%s: %s" % (name, o)
                line = "%-10s %-4d %-44s guest: %-40s host: %s%s" % (name, i, o[:44], g[:100], h[:100], why)
                (documented if key in DIFFS else diffs).append(line)
        if documented:
            sys.stderr.write("documented differences (%d):\n  %s\n" % (len(documented), "\n  ".join(documented)))
        if diffs:
            self.fail("%s: %d results differ between the guest (%s) and the host (live/%s%s):\n  %s" % (
                base, len(diffs), ga, SB, hb, "\n  ".join(diffs)))

    def test_tmpfs(self):
        self.compare("/tmp")

    def test_ext4(self):
        self.compare("/root")


class Inodes(harness.TestCase):
    def test_hard_links_and_rename(self):
        D.sh(SB, "rm -rf /tmp/ino; mkdir /tmp/ino; echo x > /tmp/ino/a; ln /tmp/ino/a /tmp/ino/b; echo y > /tmp/ino/c")
        a, b, c = (os.stat(L("tmp/ino", n)) for n in "abc")
        self.assertEqual((a.st_ino, a.st_nlink), (b.st_ino, 2), "two names of one guest file: st_ino %d/%d" % (
            a.st_ino, b.st_ino))
        self.assertEqual(b.st_nlink, 2)
        self.assertNotEqual(a.st_ino, c.st_ino)
        os.rename(L("tmp/ino/b"), L("tmp/ino/b2"))
        self.assertEqual(os.stat(L("tmp/ino/b2")).st_ino, a.st_ino, "st_ino changed by a rename")
        os.link(L("tmp/ino/c"), L("tmp/ino/c2"))
        c2 = os.stat(L("tmp/ino/c2"))
        self.assertEqual((c2.st_ino, c2.st_nlink, os.stat(L("tmp/ino/c")).st_nlink), (c.st_ino, 2, 2))
        os.unlink(L("tmp/ino/a"))
        self.assertEqual(os.stat(L("tmp/ino/b2")).st_nlink, 1)
        # a rename inside the guest: the same inode under the new name
        D.sh(SB, "mv /tmp/ino/c2 /tmp/ino/c3")
        self.assertEqual(os.stat(L("tmp/ino/c3")).st_ino, c.st_ino)
        # a directory's too
        d = os.stat(L("tmp/ino")).st_ino
        os.rename(L("tmp/ino"), L("tmp/ino2"))
        self.assertEqual(os.stat(L("tmp/ino2")).st_ino, d)
        self.assertEqual(os.stat(L("tmp/ino2/b2")).st_ino, a.st_ino)

    def test_two_sandboxes(self):
        """Files of two sandboxes (one snapshot, so equal guest inode numbers) never share an st_ino."""
        D.create_ready(SB2)
        try:
            paths = ["", "etc", "etc/passwd", "bin", "bin/busybox", "bin/sh", "tmp", "root", "var", "var/tmp"]
            for n in (SB, SB2):
                D.sh(n, "echo %s > /tmp/own; ln -sf own /tmp/ownl" % n)
            paths += ["tmp/own", "tmp/ownl"]
            seen = {}
            bad = []
            for n in (SB, SB2):
                for p in paths:
                    st = os.lstat(L(p, name=n)) if p.endswith("l") else os.stat(L(p, name=n))
                    key = (st.st_dev, st.st_ino)
                    if key in seen and seen[key][0] != n:
                        bad.append("%s:/%s and %s:/%s both show st_ino %d" % (seen[key] + (n, p, st.st_ino)))
                    seen.setdefault(key, (n, p))
            self.assertFalse(bad, "\n".join(bad))
        finally:
            D.destroy(SB2)


if __name__ == "__main__":
    harness.main()
