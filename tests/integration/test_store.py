#!/usr/bin/env python3
"""
The chunk store (issue 21: --store URL, --cache-mib N) against real daemons,
real guests and a real HTTP store: Debian's nginx with WebDAV in a network
namespace of its own (storehelp.py), reached over a veth pair.

- Publish (daemon A, set up once for the module): a template baked with
  --store bakes locally (bake.source "local") and publishes
  (store.published true): the store holds bakes/IDENTITY.json and one file
  per non-zero chunk of the snapshot's memory and disk (256 KiB by default;
  the size the record's store.mem.chunk says), each named by
  its SHA-256 (checked against its bytes), none all zeros, every one named
  by the bake record, every non-zero chunk of A's local memory and disk
  files among them; A fetched no chunk. cache/status and the cache metrics.
- No store: without --store, cache/status says "store": null (and, if it
  has counters, they are 0); bakes are local.
- Install (daemon B, empty cache): the template is installed from the store
  (bake.source "store", the same snapshot digest as A's); a sandbox restores
  and runs (`echo hi`, and a digest of /proc/kallsyms equal to one of A's
  sandboxes: the guest runs on A's memory); it fetched something, less than
  half the guest's memory and disk; the store's access log agrees with
  cache/status; the metrics agree with cache/status; a second sandbox
  hits the cache and fetches little. Restarted on the same state dir: the
  cache's chunks and used_bytes survive, the template is still the store's,
  and a new sandbox fetches (almost) nothing.
- A corrupt chunk (one that B's install fetched; every chunk when B did not
  run) before a fresh daemon installs: the install falls back to a local cold
  bake, store.error names a digest mismatch and the chunk; sandboxes work.
  The same with a missing chunk (the reason names the chunk).
- The store down (nginx stopped): a fresh daemon bakes locally and
  store.error names the connection failure; sandboxes work.
- A chunk that fails its digest during a restore (a fresh daemon with
  --no-prefetch, so its install takes no memory chunk: less than
  LAZY_MAX_FRACTION of the store; every store chunk not yet in its cache
  corrupted between the install and the first mkdir):
  the create fails with a reason, or (if its guest got ready) the store
  served no corrupt chunk to it: never a guest on wrong memory. With the
  chunks repaired the next create works: nothing bad was cached.
- The store stopped between an install (--no-prefetch) and a restore: the
  create fails with the reason (the store's connection error), and once the
  store is back the next one works.
- Memory that becomes the sandbox's own (daemon G): a sandbox restored from
  the store writes to its RAM (/tmp, a tmpfs), is forked (the child sees the
  write, the two diverge), hibernated and woken (its write kept, the guest
  still A's); with the whole memory then in the cache, a restore maps a
  base built from it; after a kill -9 of the daemon and a restart, the
  woken one, the fork child (their memory their own files) and the one on
  the base are re-adopted ready, while the first (on the lazily served
  memory) is failed with the reason.
- Eviction: --cache-mib 8: the install and a restore still work (a small
  cache costs fetches, not correctness); the cache holds at most 8 MiB
  (what cache/status says and what its directory holds), evictions > 0,
  more was fetched than fits.

After every daemon's stop: the harness's leak inventory (mounts under the
state dir included), no STATE/lazy mount in our mount table nor any
fuse mount of the state dir left, no temporary or misnamed file in
STATE/cache/chunks, and every cached chunk's bytes match its name.

Each scenario restores the store to what A published first (a copy is kept),
so the tests do not depend on each other, except that the corrupt and
missing chunk tests use the chunks B's install fetched when B ran first.
"""
import errno
import hashlib
import json
import os
import re
import shutil
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import storehelp  # noqa: E402

MiB = 1 << 20
CHUNK = 256 << 10  # the daemon's default (--store-chunk-kib); the record's store.mem.chunk decides
DEFAULT_CACHE_MIB = 4096
# an install without prefetch (device state and disk) takes less than this share of what the store holds:
# the memory stays there until a guest reads it (a restored guest reads most of its non-zero memory, ~85%
# here, so what a first restore fetched with the hot list says little about laziness)
LAZY_MAX_FRACTION = 0.5
# a second sandbox (or one after a restart) of the same template fetches at most this much more
REFETCH_SLACK = 8 * MiB
REFETCH_SHARE = 0.25
# the guest's memory, checked against a sandbox on A: kernel data (kallsyms) and a directory listing
REF_CMD = "sha256sum /proc/kallsyms | cut -c1-64; cat /proc/version; ls /"
# the template status's store object: {"published": .., "error": ..} (issue 21 says "store", which the
# store method's string already is; the daemon names it "snapshot_store": the first object found counts)
STORE_KEYS = ("snapshot_store", "store")
HEX64 = re.compile(r"^[0-9a-f]{64}$")

STORE = None  # the StoreServer
SAVED = None  # a copy of the store as A published it
A = {}  # what the module setup recorded of daemon A (it is stopped by then)
INSTALL_FETCHED = []  # chunk digests B's install fetched (before its first mkdir)


# ---------------------------------------------------------------------------
# helpers

def cache_status(d):
    return harness.read_json(os.path.join(d.mount, "cache", "status"))


def store_info(st):
    """The template status's store object ({url, state, published, error}); fails clearly when there is none."""
    for k in STORE_KEYS:
        if isinstance(st.get(k), dict):
            return st[k]
    raise AssertionError("templates/T/status has no store object (under %s); status: %s" % (
        " or ".join(STORE_KEYS), json.dumps(st)[:1500]))


def _settled(st):
    v = next((st[k] for k in STORE_KEYS if isinstance(st.get(k), dict)), None)
    if v is None or st.get("phase") == "publish" or v.get("state") in ("publishing", "fetching"):
        return False
    # "baking here": the install did not happen (install_error says why), the local bake and its publish follow
    return v.get("state") in ("published", "failed", "installed")


def wait_store_settled(d, t="default", timeout=harness.BAKE_TIMEOUT, stable_s=1.5):
    """Waits until the template is ready and its store object says published or an error, unchanged
    for stable_s (a local bake publishes once the template is ready: a failed install's error must not
    be taken for the publication's outcome); returns the status."""
    deadline = time.monotonic() + timeout
    last, since = None, None
    while True:
        st = d.wait_template_ready(t)
        if _settled(st):
            key = json.dumps(store_info(st), sort_keys=True)
            if key != last:
                last, since = key, time.monotonic()
            elif time.monotonic() - since >= stable_s:
                return st
        else:
            last = None
        if time.monotonic() > deadline:
            raise AssertionError("template %s: store state not settled after %.0f s: %s" % (
                t, timeout, json.dumps(st)[:1500]))
        time.sleep(0.1)


def daemon(*extra, **kw):
    return harness.Daemon(extra_args=["--store", STORE.url] + list(extra), **kw)


def lazy_mounted(d):
    """Mounts at STATE/lazy: in our mount table or in the daemon's (a private mount lives there)."""
    path = os.path.join(d.state, "lazy")
    out = [m for m in harness.mounts() if m[0] == path]
    if d.alive():
        try:
            with open("/proc/%d/mountinfo" % d.pid) as f:
                for line in f:
                    left, _, right = line.partition(" - ")
                    if harness._unescape_mountinfo(left.split()[4]) == path:
                        out.append((path, right.split()[0], "daemon's namespace"))
        except OSError:
            pass
    return out


def cache_files(d):
    """{name: size} of STATE/cache/chunks/*."""
    p = os.path.join(d.state, "cache", "chunks")
    out = {}
    for n in harness._listdir(p):
        try:
            out[n] = os.path.getsize(os.path.join(p, n))
        except OSError:
            pass
    return out


def cache_problems(d):
    """Temporary or misnamed files in the cache, and cached chunks whose bytes do not match their name."""
    p = os.path.join(d.state, "cache", "chunks")
    out = []
    for n in harness._listdir(p):
        f = os.path.join(p, n)
        if not HEX64.match(n):
            out.append("cache/chunks/%s: not a chunk name (a temporary file left?)" % n)
            continue
        try:
            if storehelp.StoreServer.sha256_file(f) != n:
                out.append("cache/chunks/%s: its bytes do not match its name" % n)
        except OSError as e:
            out.append("cache/chunks/%s: %s" % (n, e))
    return out


def stop_checked(d, keep_dirs=False):
    """d.stop() (exit 0, the leak inventory empty, no unexpected error lines), then: no STATE/lazy
    mount, nothing of the state dir mounted, the cache clean. keep_dirs: the state dir stays for a
    Daemon(reuse=d); otherwise it is removed as the harness would."""
    owned = d.owns_dirs
    d.owns_dirs = False  # the harness would remove the state dir at once: look at the cache first
    problems = []
    try:
        d.stop()
    except AssertionError as e:
        problems.append(str(e))
    lazy = os.path.join(d.state, "lazy")
    problems += ["%s mounted after the daemon's exit (%s)" % (mp, fs) for mp, fs, _ in harness.mounts()
                 if harness._under(mp, lazy)]
    problems += ["%s (%s) mounted after the daemon's exit" % (mp, fs) for mp, fs, _ in harness.mounts()
                 if harness._under(mp, d.state) and not harness._under(mp, lazy)]
    problems += cache_problems(d)
    if owned and not keep_dirs and not (problems and os.environ.get("EMBERFS_KEEP") == "1"):
        if not any(harness._under(mp, d.state) or harness._under(mp, d.mount) for mp, _, _ in harness.mounts()):
            shutil.rmtree(d.state, ignore_errors=True)
            try:
                os.rmdir(d.mount)
            except OSError:
                pass
        harness._logs.add(d.log_path)
    elif owned and keep_dirs:
        d.owns_dirs = True  # handed on to the Daemon(reuse=d) that follows
    if problems:
        raise AssertionError("stop of the daemon on %s:\n%s" % (d.state, "\n".join(problems)))


def guest_mem_bytes(d):
    return harness.read_json(d.tpl("default", "config"))["mem_mib"] * MiB


def guest_disk_bytes(d):
    cfg = harness.read_json(d.tpl("default", "config"))
    if cfg.get("disk_mib"):
        return cfg["disk_mib"] * MiB
    return os.path.getsize(os.path.join(harness.IMAGE_DIR, "rootfs.ext4"))


def record_chunk_size(rec):
    """The bytes per chunk of the memory in a bake record (its store.mem.chunk), else CHUNK."""
    try:
        v = rec["store"]["mem"]["chunk"]
        return v if isinstance(v, int) and v > 0 else CHUNK
    except (KeyError, TypeError):
        return CHUNK


def nonzero_chunk_digests(path, chunk):
    """SHA-256 of each chunk of a file that is not all zeros."""
    out = set()
    zero = bytes(chunk)
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                return out
            if b != zero[:len(b)]:
                out.add(hashlib.sha256(b).hexdigest())


def hex_strings(v, out=None):
    """Every 64-hex-digit string anywhere in a JSON value."""
    out = set() if out is None else out
    if isinstance(v, str):
        if HEX64.match(v):
            out.add(v)
    elif isinstance(v, dict):
        for k, x in v.items():
            hex_strings(k, out)
            hex_strings(x, out)
    elif isinstance(v, list):
        for x in v:
            hex_strings(x, out)
    return out


METRICS = ("emberfs_cache_hits_total", "emberfs_cache_misses_total", "emberfs_cache_fetched_bytes_total",
           "emberfs_cache_evictions_total", "emberfs_cache_used_bytes")
METRIC_FIELD = {"emberfs_cache_hits_total": "hits", "emberfs_cache_misses_total": "misses",
                "emberfs_cache_fetched_bytes_total": "fetched_bytes", "emberfs_cache_evictions_total": "evictions",
                "emberfs_cache_used_bytes": "used_bytes"}


def cache_metrics(d):
    """{metric name: value} of the cache's metrics (unlabelled samples, or the sum over labels)."""
    text = harness.read_text(os.path.join(d.mount, "metrics"))
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(emberfs_cache_\w+)(\{[^}]*\})? (\S+)", line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0) + float(m.group(3))
    return out


def run_ref(d, name):
    return d.sh(name, REF_CMD)


def served_chunk_names(since):
    """Chunk digests GET from the store (answered 200/206) from mark `since` on, in order."""
    return [uri.rsplit("/", 1)[1] for method, uri, status, _, _, _ in STORE.requests(since)
            if method == "GET" and status in (200, 206) and uri.startswith("/store/chunks/")]


def reset_store():
    """The store as A published it (later daemons may have published, or a test changed files)."""
    if not STORE.running():
        STORE.start()
    for sub in ("chunks", "bakes"):
        shutil.rmtree(os.path.join(STORE.store_dir, sub), ignore_errors=True)
        shutil.copytree(os.path.join(SAVED, sub), os.path.join(STORE.store_dir, sub))


# ---------------------------------------------------------------------------
# the module: the store, and daemon A's bake and publication

def setUpModule():
    global STORE, SAVED
    reason = storehelp.missing_capability()
    if reason:
        raise unittest.SkipTest(reason)
    STORE = storehelp.StoreServer().start()
    d = daemon()
    try:
        m0 = STORE.mark()
        d.start()
        st = wait_store_settled(d)
        A["status"] = st
        A["identity"] = harness.read_text(d.tpl("default", "identity")).strip()
        A["served"] = STORE.served(m0)
        A["cache"] = cache_status(d)
        A["metrics"] = cache_metrics(d)
        A["chunk"] = record_chunk_size(STORE.bake_record(A["identity"]))
        snap = os.path.join(d.state, "store", "templates", "default", "snapshot")
        A["local_chunks"] = {}
        for f in ("mem", "disk.img"):
            if os.path.isfile(os.path.join(snap, f)):
                A["local_chunks"][f] = nonzero_chunk_digests(os.path.join(snap, f), A["chunk"])
        A["mem_bytes"] = guest_mem_bytes(d)
        A["disk_bytes"] = guest_disk_bytes(d)
        d.create_ready("ref")
        A["ref"] = run_ref(d, "ref")
        A["ref_status"] = d.status("ref")
        d.destroy("ref")
        A["served_after_sandbox"] = STORE.served(m0)
        stop_checked(d)
    except BaseException:
        d.force_cleanup()
        raise
    SAVED = os.path.join(STORE.tmp, "saved")
    shutil.copytree(STORE.store_dir, SAVED, ignore=shutil.ignore_patterns(".tmp"))


def tearDownModule():
    if STORE is not None:
        STORE.teardown()  # raises if anything of it is left
        left = [n for n in storehelp.netns_names() if storehelp._ns_owner(n) == os.getpid()]
        if left:
            raise AssertionError("network namespaces left: %s" % left)


class Store(harness.TestCase):
    def setUp(self):
        super().setUp()
        reset_store()

    def check_accounting(self, d):
        """cache/status's chunks and used_bytes against the files in STATE/cache/chunks/ (read between two
        reads of the status: a running guest may fault a chunk in meanwhile)."""
        c_a = cache_status(d)
        files = {n: s for n, s in cache_files(d).items() if HEX64.match(n)}
        blocks = 0
        for n in files:
            try:
                blocks += os.stat(os.path.join(d.state, "cache", "chunks", n)).st_blocks * 512
            except FileNotFoundError:
                pass
        c_b = cache_status(d)
        self.assertTrue(c_a["chunks"] <= len(files) <= c_b["chunks"] or c_a["evictions"] != c_b["evictions"],
                        "cache/status chunks %d..%d, cache/chunks/ holds %d" % (c_a["chunks"], c_b["chunks"],
                                                                               len(files)))
        size = sum(files.values())
        self.assertTrue(c_a["used_bytes"] <= size <= c_b["used_bytes"] or
                        c_a["used_bytes"] <= blocks <= c_b["used_bytes"] or c_a["evictions"] != c_b["evictions"],
                        "cache/status used_bytes %d..%d; cache/chunks/ holds %d bytes (%d allocated)" % (
                            c_a["used_bytes"], c_b["used_bytes"], size, blocks))

    # ---- A: bake locally and publish ------------------------------------------------------
    def test_1_publish(self):
        st, ident = A["status"], A["identity"]
        self.assertEqual(st["identity"], ident)
        self.assertEqual(st["bake"].get("source"), "local", st["bake"])
        info = store_info(st)
        self.assertIs(info.get("published"), True, info)
        self.assertFalse(info.get("error"), info)

        bakes = STORE.bakes()
        self.assertEqual(list(bakes), [ident], "the store's bakes/: %s" % list(bakes))
        rec = STORE.bake_record(ident)
        self.assertIsInstance(rec, dict)
        chunks = STORE.chunks()
        self.assertGreater(len(chunks), 0, "no chunk published")
        self.assertEqual(STORE.stray_files(), [], "files in the store that are neither chunks nor bake records")
        for name, path in chunks.items():
            with open(path, "rb") as f:
                data = f.read()
            self.assertEqual(hashlib.sha256(data).hexdigest(), name, "chunks/%s: bytes do not match the name" % name)
            self.assertLessEqual(len(data), A["chunk"], "chunks/%s: %d bytes, more than a chunk (%d)" % (
                name, len(data), A["chunk"]))
            self.assertNotEqual(data.count(0), len(data), "chunks/%s: all zeros (never stored)" % name)
        named = hex_strings(rec)
        unnamed = sorted(set(chunks) - named)
        self.assertEqual(unnamed, [], "chunks the bake record does not name")
        # every non-zero chunk of A's snapshot memory and disk was published
        if "mem" not in A["local_chunks"]:
            sys.stderr.write("\n  note: A's snapshot has no memory file 'mem' (layout changed?): the published "
                             "chunks are not compared with it\n")
        for f, digests in A["local_chunks"].items():
            missing = sorted(digests - set(chunks))
            self.assertEqual(missing, [], "non-zero chunks of A's snapshot %s not in the store" % f)
        total = sum(os.path.getsize(p) for p in chunks.values())
        self.assertLessEqual(total, A["mem_bytes"] + A["disk_bytes"] + 4 * MiB)
        sys.stderr.write("\n  published: %d chunks of %d KiB, %.1f MiB (guest memory %d MiB, disk %d MiB)\n" % (
            len(chunks), A["chunk"] >> 10, total / MiB, A["mem_bytes"] // MiB, A["disk_bytes"] // MiB))

        sv = A["served"]
        self.assertGreaterEqual(sv["put_chunks"], 1, sv)
        self.assertEqual(sv["errors"], 0, "the store answered errors to A: %s" % STORE.requests()[-20:])
        # a local bake, and a restore of a local bake, fetch nothing
        self.assertEqual(sv["get_chunks"], 0, sv)
        self.assertEqual(A["served_after_sandbox"]["get_chunks"], 0, A["served_after_sandbox"])
        self.assertEqual(A["ref_status"]["path"], "restore", A["ref_status"])

        c = A["cache"]
        for k in ("store", "limit_bytes", "used_bytes", "chunks", "hits", "misses", "hit_rate", "fetched_bytes",
                  "fetched_chunks", "evictions", "errors", "last_error"):
            self.assertIn(k, c, "cache/status lacks %s: %s" % (k, c))
        self.assertEqual(c["store"], STORE.url)
        self.assertEqual(c["limit_bytes"], DEFAULT_CACHE_MIB * MiB)
        self.assertEqual(c["fetched_bytes"], 0, c)
        self.assertEqual(c["errors"], 0, c)
        self.assertIsNone(c["last_error"], c)
        with self.subTest("metrics"):
            for m in METRICS:
                self.assertIn(m, A["metrics"], "MOUNT/metrics lacks %s" % m)

    # ---- no store -------------------------------------------------------------------------
    def test_0_no_store(self):
        d = harness.Daemon().start()
        try:
            c = cache_status(d)
            self.assertIn("store", c, c)
            self.assertIsNone(c["store"], c)
            # issue 21 says only "store": null; whatever else is there says nothing happened
            for k in ("fetched_bytes", "fetched_chunks", "errors", "chunks", "used_bytes"):
                self.assertIn(c.get(k, 0), (0,), c)
            st = d.template_status()
            self.assertEqual(st["bake"].get("source", "local"), "local", st["bake"])
            self.assertFalse(any(isinstance(st.get(k), dict) for k in STORE_KEYS if k != "store"), st)
            d.create_ready("n1")
            self.assertEqual(d.sh("n1", "echo hi"), "hi\n")
            d.destroy("n1")
        except BaseException:
            d.force_cleanup()
            raise
        stop_checked(d)

    # ---- B: install from the store; a second sandbox; a restart ---------------------------
    def test_2_install_then_restart(self):
        m0 = STORE.mark()
        b = daemon()
        b2 = None
        try:
            b.start()
            st = b.wait_template_ready()
            self.assertEqual(st["bake"].get("source"), "store", "B baked instead of installing: %s" % (
                json.dumps(st)[:1500]))
            self.assertEqual(st["identity"], A["identity"])
            self.assertEqual(st["bake"].get("identity"), A["identity"], st["bake"])
            if "state_sha256" in A["status"]["bake"]:
                self.assertEqual(st["bake"].get("state_sha256"), A["status"]["bake"]["state_sha256"],
                                 "B's snapshot is not A's")
            self.assertFalse(store_info(st).get("error"), store_info(st))
            sv = STORE.served(m0)
            self.assertGreaterEqual(sv["get_bakes"], 1, sv)
            self.assertEqual(sv["puts"], 0, "B, which installed, put into the store: %s" % sv)
            INSTALL_FETCHED[:] = served_chunk_names(m0)
            c0 = cache_status(b)
            self.assertEqual(c0["store"], STORE.url)
            self.assertTrue(lazy_mounted(b), "no STATE/lazy mount while a daemon with a store-installed "
                                             "template runs")

            # the first sandbox: restored, runs, on A's memory
            m1 = STORE.mark()
            s1 = b.create_ready("s1")
            self.assertEqual(s1["path"], "restore", s1)
            self.assertEqual(b.sh("s1", "echo hi"), "hi\n")
            self.assertEqual(b.sh("s1", "hostname").strip(), "s1")
            self.assertEqual(run_ref(b, "s1"), A["ref"], "the guest restored from the store differs from A's")
            c1 = cache_status(b)
            fetched1 = c1["fetched_bytes"]
            stored = STORE.chunk_bytes()
            sys.stderr.write("\n  B: install fetched %.1f MiB (%d chunks); after the first sandbox %.1f MiB of "
                             "%.1f MiB stored (guest memory %d MiB); hits %d misses %d\n" % (
                                 c0["fetched_bytes"] / MiB, c0["fetched_chunks"], fetched1 / MiB, stored / MiB,
                                 A["mem_bytes"] // MiB, c1["hits"], c1["misses"]))
            met = cache_metrics(b)
            c1b = cache_status(b)
            with self.subTest("metrics"):
                for m, k in METRIC_FIELD.items():
                    self.assertIn(m, met, "MOUNT/metrics lacks %s" % m)
                    self.assertTrue(c1[k] <= met[m] <= c1b[k], "%s %s is not between cache/status's %s and %s" % (
                        m, met[m], c1[k], c1b[k]))
            self.assertGreater(fetched1, 0, "the install and first restore on an empty cache fetched nothing: %s" % c1)
            self.assertGreater(c1["fetched_chunks"], 0, c1)
            self.assertLess(fetched1, (A["mem_bytes"] + A["disk_bytes"]) / 2, c1)
            # the store's log and the daemon agree
            served = STORE.served(m0)["get_chunk_bytes"]
            self.assertGreaterEqual(served, fetched1, "cache/status counts more than the store served")
            self.assertLessEqual(served - fetched1, max(2 * MiB, served // 10),
                                 "the store served %d bytes, cache/status says %d fetched" % (served, fetched1))
            self.assertEqual(c1["errors"], 0, c1)
            self.assertIsNone(c1["last_error"], c1)
            self.check_accounting(b)
            self.assertTrue(0 <= c1["hit_rate"] <= 1, c1)
            if c1["hits"] + c1["misses"]:
                self.assertAlmostEqual(c1["hit_rate"], c1["hits"] / (c1["hits"] + c1["misses"]), places=2)

            # a second sandbox: hits, few new fetches
            s2 = b.create_ready("s2")
            self.assertEqual(s2["path"], "restore", s2)
            self.assertEqual(b.sh("s2", "echo hi"), "hi\n")
            self.assertEqual(run_ref(b, "s2"), A["ref"])
            c2 = cache_status(b)
            self.assertGreater(c2["hits"], c1b["hits"], "the second sandbox did not hit the cache: %s" % c2)
            self.assertLessEqual(c2["fetched_bytes"] - c1b["fetched_bytes"],
                                 max(REFETCH_SLACK, REFETCH_SHARE * fetched1),
                                 "the second sandbox fetched %.1f MiB more" % (
                                     (c2["fetched_bytes"] - c1b["fetched_bytes"]) / MiB))
            b.destroy("s1")
            b.destroy("s2")
            before = cache_status(b)
            before_files = {n for n in cache_files(b) if HEX64.match(n)}

            # a restart on the same state dir: the cache survives
            stop_checked(b, keep_dirs=True)
            m2 = STORE.mark()
            b2 = daemon(reuse=b)
            b2.start()
            st2 = b2.wait_template_ready()
            self.assertEqual(st2["bake"].get("source"), "store", "after a restart: %s" % st2["bake"])
            c3 = cache_status(b2)
            self.assertEqual((c3["chunks"], c3["used_bytes"]), (before["chunks"], before["used_bytes"]),
                             "the cache after a restart: %s, before: %s" % (c3, before))
            self.assertEqual({n for n in cache_files(b2) if HEX64.match(n)}, before_files)
            self.check_accounting(b2)
            s3 = b2.create_ready("s3")
            self.assertEqual(s3["path"], "restore", s3)
            self.assertEqual(b2.sh("s3", "echo hi"), "hi\n")
            self.assertEqual(run_ref(b2, "s3"), A["ref"])
            c4 = cache_status(b2)
            new = STORE.served(m2)["get_chunk_bytes"]
            sys.stderr.write("  B restarted: %d chunks cached (%.1f MiB); a new sandbox fetched %.1f MiB "
                             "(store: %.1f MiB served)\n" % (c3["chunks"], c3["used_bytes"] / MiB,
                                                             (c4["fetched_bytes"] - c3["fetched_bytes"]) / MiB,
                                                             new / MiB))
            self.assertLessEqual(new, max(REFETCH_SLACK, REFETCH_SHARE * fetched1),
                                 "after a restart a sandbox made the store serve %.1f MiB" % (new / MiB))
            self.assertGreater(c4["hits"], c3["hits"], c4)
            b2.destroy("s3")
        except BaseException:
            (b2 or b).force_cleanup()
            b.force_cleanup()
            raise
        stop_checked(b2)

    # ---- C: a corrupt or missing chunk at install -----------------------------------------
    def _install_fails(self, how):
        chunks = STORE.chunks()
        victims = [c for c in INSTALL_FETCHED if c in chunks][:1] or list(chunks)
        saved = {}
        for c in victims:
            if how == "corrupt":
                saved[c] = STORE.corrupt(chunks[c])
            else:
                STORE.remove(chunks[c])
        d = daemon()
        d.expect_log_error(r"(?i)store|chunk|digest|mismatch|fetch|install|404|not found|cache")
        try:
            d.start()
            st = wait_store_settled(d)
            self.assertEqual(st["bake"].get("source"), "local",
                             "a template whose store chunk is %s was installed: %s" % (how, json.dumps(st)[:1500]))
            # why the install failed (the local bake's publish that follows has its own "error")
            err = store_info(st).get("install_error") or ""
            sys.stderr.write("\n  %s chunk%s (%s): install_error %r\n" % (
                how, "" if len(victims) == 1 else "s (B's install list unknown: all)", victims[0][:12], err))
            with self.subTest("store.error"):
                if how == "corrupt":
                    self.assertRegex(err, r"(?i)digest|mismatch|sha-?256|checksum")
                else:
                    self.assertRegex(err, r"(?i)404|not found|missing|no such")
                self.assertTrue(any(v[:12] in err for v in victims), "store.error names no chunk of %s: %r" % (
                    [v[:12] for v in victims[:4]], err))
            d.create_ready("c1")
            self.assertEqual(d.sh("c1", "echo hi"), "hi\n")
            d.destroy("c1")
        except BaseException:
            d.force_cleanup()
            raise
        finally:
            for c in victims:
                p = os.path.join(STORE.store_dir, "chunks", c)
                if how == "corrupt":
                    STORE.restore(p, saved[c])
                elif os.path.exists(p + ".aside"):
                    STORE.restore(p)
        stop_checked(d)  # the cache holds no chunk whose bytes differ from its name

    def test_3_corrupt_chunk_at_install(self):
        self._install_fails("corrupt")

    def test_3b_missing_chunk_at_install(self):
        self._install_fails("missing")

    # ---- D: the store down ----------------------------------------------------------------
    def test_4_store_down(self):
        STORE.stop()
        d = daemon()
        d.expect_log_error(r"(?i)store|connect|refused|fetch|publish|install|cache")
        try:
            d.start()
            st = wait_store_settled(d)
            self.assertEqual(st["bake"].get("source"), "local", st["bake"])
            info = store_info(st)
            sys.stderr.write("\n  store down: store %s\n" % json.dumps(info))
            # both the install and the publish that follows the local bake failed, each saying why
            self.assertRegex(info.get("install_error") or "", r"(?i)connect|refused|unreachable", info)
            self.assertRegex(info.get("error") or "", r"(?i)connect|refused|unreachable", info)
            self.assertIsNot(info.get("published"), True, info)
            d.create_ready("d1")
            self.assertEqual(d.sh("d1", "echo hi"), "hi\n")
            d.destroy("d1")
        except BaseException:
            d.force_cleanup()
            raise
        finally:
            STORE.start()
        stop_checked(d)

    # ---- E: a chunk that fails its digest during a restore --------------------------------
    def test_5_corrupt_chunk_at_restore(self):
        # --no-prefetch: the install takes no memory chunk (the hot list would be fetched then), so the
        # first restore's memory comes from the store
        d = daemon("--no-prefetch")
        d.expect_log_error(r"(?i)store|chunk|digest|mismatch|fetch|restore|create|cache|sandbox|lazy|vmm|qemu")
        saved = {}
        try:
            d.start()
            st = d.wait_template_ready()
            self.assertEqual(st["bake"].get("source"), "store", "not installed from the store: %s" % st["bake"])
            c0 = cache_status(d)
            cached = {n for n in cache_files(d) if HEX64.match(n)}
            chunks = STORE.chunks()
            with self.subTest("lazy"):
                self.assertLess(c0["fetched_bytes"], LAZY_MAX_FRACTION * STORE.chunk_bytes(),
                                "an install without prefetch fetched %.1f of the %.1f MiB stored: the memory too?" % (
                                    c0["fetched_bytes"] / MiB, STORE.chunk_bytes() / MiB))
            for n, p in chunks.items():
                if n not in cached:
                    saved[n] = STORE.corrupt(p)
            self.assertTrue(saved, "the install cached every chunk of the store: a restore would fetch nothing")
            m = STORE.mark()
            try:
                d.create("e1")
                try:
                    answer = d.wait("e1")
                except OSError as e:
                    answer = "wait: %s" % harness.errno_name(e.errno)
            except OSError as e:
                answer = "mkdir: %s" % harness.errno_name(e.errno)
            bad_before = [n for n in served_chunk_names(m) if n in saved]
            out, ok, bad_during = None, False, []
            if answer == "ready\n":
                m2 = STORE.mark()
                try:
                    raw, ok = d.exec_plain("e1", REF_CMD)
                    out = raw.decode("utf-8", "replace")
                except OSError as e:
                    out = "exec: %s" % harness.errno_name(e.errno)
                bad_during = [n for n in served_chunk_names(m2) if n in saved]
            try:
                est = d.status("e1")
            except FileNotFoundError:
                est = None  # gone: the create failed and the sandbox was removed
            c1 = cache_status(d)
            sys.stderr.write("\n  restore with %d corrupt chunks: %r; the store served %d of them before, %d after "
                             "ready; status %s; cache errors %d, last_error %r\n" % (
                                 len(saved), answer, len(bad_before), len(bad_during),
                                 est and (est.get("state"), est.get("error")), c1["errors"], c1["last_error"]))
            if bad_before:
                # the restore fetched a corrupt chunk: the create failed, and says why
                self.assertNotEqual(answer, "ready\n", "a sandbox got ready with a chunk that failed its digest")
                self.assertTrue(est is None or est["state"] == "failed", est)
                if est is not None:
                    with self.subTest("the failed sandbox's reason"):
                        self.assertRegex(est.get("error") or "", r"(?i)digest|mismatch|sha-?256|checksum|chunk",
                                         "the failed sandbox's error does not name the chunk that failed")
            elif bad_during:
                # a chunk the guest touched later: never a guest that goes on with wrong memory
                self.assertFalse(ok and out != A["ref"], "the guest ran on wrong memory: %r" % out)
                self.assertFalse(ok, "an exec succeeded though the chunk its guest needed failed its digest")
            elif answer != "ready\n":
                self.fail("the create failed (%s) though the store served no corrupt chunk: %s" % (answer, est))
            else:
                self.assertEqual(out, A["ref"])
                self.fail("inconclusive: the first restore on an empty cache fetched none of the %d uncached "
                          "chunks (corrupted)" % len(saved))
            bad = bad_before + bad_during
            self.assertGreater(c1["errors"], c0["errors"], c1)
            self.assertRegex(c1["last_error"] or "", r"(?i)digest|mismatch|sha-?256|checksum")
            self.assertTrue(any(n[:12] in (c1["last_error"] or "") for n in bad),
                            "last_error names none of the corrupt chunks served: %r" % c1["last_error"])
            if "e1" in d.sandboxes():
                d.destroy("e1")
            # repaired: the next create works (nothing corrupt was cached)
            for n, data in saved.items():
                STORE.restore(chunks[n], data)
            saved = {}
            self.assertEqual(cache_problems(d), [])
            d.create_ready("e2")
            self.assertEqual(run_ref(d, "e2"), A["ref"])
            d.destroy("e2")
        except BaseException:
            d.force_cleanup()
            raise
        finally:
            for n, data in saved.items():
                STORE.restore(os.path.join(STORE.store_dir, "chunks", n), data)
        stop_checked(d)

    # ---- E2: the store stopped between the install and a restore -------------------------------
    def test_5b_store_stopped_at_restore(self):
        # --no-prefetch: the restore itself needs the store for the memory the guest touches
        d = daemon("--no-prefetch")
        d.expect_log_error(r"(?i)store|chunk|connect|fetch|restore|create|cache|sandbox|vmm|qemu")
        try:
            d.start()
            st = d.wait_template_ready()
            self.assertEqual(st["bake"].get("source"), "store", st["bake"])
            c0 = cache_status(d)
            STORE.stop()
            try:
                d.create("s1")
                answer = d.wait("s1")
            except OSError as e:
                answer = "failed: %s" % harness.errno_name(e.errno)
            try:
                est = d.status("s1")
            except FileNotFoundError:
                est = None
            c1 = cache_status(d)
            sys.stderr.write("\n  store stopped before a restore: %r; status %s; last_error %r\n" % (
                answer, est and (est.get("state"), est.get("error")), c1["last_error"]))
            self.assertNotEqual(answer, "ready\n", "a restore got ready with its memory's store down")
            self.assertTrue(est is None or est["state"] == "failed", est)
            if est is not None:
                self.assertRegex(est.get("error") or "", r"(?i)store", est)
            self.assertGreater(c1["errors"], c0["errors"], c1)
            self.assertRegex(c1["last_error"] or "", r"(?i)connect|refused", c1)
            if "s1" in d.sandboxes():
                d.destroy("s1")
            # the store back: restores work again, from what is cached and what is fetched now
            STORE.start()
            d.create_ready("s2")
            self.assertEqual(run_ref(d, "s2"), A["ref"])
            d.destroy("s2")
        except BaseException:
            d.force_cleanup()
            raise
        finally:
            if not STORE.running():
                STORE.start()
        stop_checked(d)

    # ---- G: a store-restored sandbox's memory becomes its own: fork, hibernate, wake, restart ----
    def test_7_own_memory(self):
        d = daemon()
        d.expect_log_error(r"(?i)not re-adopted|served from the store")
        d2 = None
        try:
            d.start()
            st = d.wait_template_ready()
            self.assertEqual(st["bake"].get("source"), "store", st["bake"])
            # the first restore here maps the lazily served memory (what it touched is all that was fetched)
            d.create_ready("g0")
            self.assertEqual(d.sh("g0", "echo hi"), "hi\n")
            d.create_ready("g1")
            self.assertEqual(d.sh("g1", "echo parent >/tmp/mark; cat /tmp/mark"), "parent\n")
            # fork: the parent's whole RAM is written out (its memory file held nothing of the base yet)
            harness.write_file(d.sb("g1", "ctl"), "fork g2")
            d.wait_ready("g2")
            self.assertEqual(d.sh("g2", "cat /tmp/mark"), "parent\n")
            d.sh("g2", "echo child >/tmp/mark")
            self.assertEqual(d.sh("g1", "cat /tmp/mark"), "parent\n", "a fork child's write reached its parent")
            self.assertEqual(d.sh("g2", "cat /tmp/mark"), "child\n")
            self.assertEqual(run_ref(d, "g2"), A["ref"])
            # hibernate and wake: the parent's own pages written again, restored from its own file
            d.sh("g1", "echo after-fork >>/tmp/mark")
            harness.write_file(d.sb("g1", "ctl"), "hibernate")
            self.assertEqual(d.status("g1")["state"], "hibernated")
            harness.write_file(d.sb("g1", "ctl"), "resume")
            self.assertEqual(d.sh("g1", "cat /tmp/mark"), "parent\nafter-fork\n")
            self.assertEqual(run_ref(d, "g1"), A["ref"])
            # the fork read all of g1's memory (and a second restore fetches the rest in the background):
            # with all of it in the cache, a restore maps a base built from it, not the lazy file
            deadline = time.monotonic() + 60
            while "a base in memory now" not in d.log_text() and time.monotonic() < deadline:
                d.create_ready("g3")
                if "a base in memory now" not in d.log_text():
                    d.destroy("g3")
                    time.sleep(0.5)
            self.assertIn("a base in memory now", d.log_text(), "no restore mapped a base built from the cache")
            self.assertEqual(store_info(d.template_status()).get("memory"), "base", store_info(d.template_status()))
            self.assertEqual(run_ref(d, "g3"), A["ref"])
            # a crash: what has its own memory (or the base) survives; the lazy one cannot and says so
            d.kill9()
            d2 = daemon(reuse=d)
            d2.expect_log_error(r"(?i)not re-adopted|served from the store")
            d2.start()
            for n in ("g1", "g2", "g3"):
                self.assertEqual(d2.status(n)["state"], "ready", d2.status(n))
            self.assertEqual(d2.sh("g1", "cat /tmp/mark"), "parent\nafter-fork\n")
            self.assertEqual(d2.sh("g2", "cat /tmp/mark"), "child\n")
            self.assertEqual(run_ref(d2, "g3"), A["ref"])
            g0 = d2.status("g0")
            self.assertEqual(g0["state"], "failed", g0)
            self.assertRegex(g0.get("error") or "", r"served from the store", g0)
            for n in ("g0", "g1", "g2", "g3"):
                d2.destroy(n)
        except BaseException:
            (d2 or d).force_cleanup()
            d.force_cleanup()
            raise
        stop_checked(d2)

    # ---- F: a cache smaller than a guest's working set ------------------------------------
    def test_6_eviction(self):
        limit = 8 * MiB
        d = daemon("--cache-mib", "8")
        try:
            d.start()
            st = d.wait_template_ready()
            self.assertEqual(st["bake"].get("source"), "store", "with --cache-mib 8: %s" % json.dumps(st)[:1500])
            s1 = d.create_ready("f1")
            self.assertEqual(s1["path"], "restore", s1)
            self.assertEqual(d.sh("f1", "echo hi"), "hi\n")
            self.assertEqual(run_ref(d, "f1"), A["ref"])
            c1 = cache_status(d)
            sys.stderr.write("\n  --cache-mib 8: used %.1f MiB in %d chunks, fetched %.1f MiB, %d evictions, "
                             "hits %d misses %d\n" % (c1["used_bytes"] / MiB, c1["chunks"], c1["fetched_bytes"] / MiB,
                                                       c1["evictions"], c1["hits"], c1["misses"]))
            self.assertEqual(c1["limit_bytes"], limit, c1)
            self.assertLessEqual(c1["used_bytes"], limit, c1)
            self.assertGreater(c1["evictions"], 0, c1)
            self.assertGreater(c1["fetched_bytes"], limit, "nothing had to be evicted: %s" % c1)
            on_disk = sum(s for n, s in cache_files(d).items() if HEX64.match(n))
            self.assertLessEqual(on_disk, limit, "cache/chunks/ holds %.1f MiB" % (on_disk / MiB))
            self.check_accounting(d)
            s2 = d.create_ready("f2")
            self.assertEqual(s2["path"], "restore", s2)
            self.assertEqual(run_ref(d, "f2"), A["ref"])
            self.assertEqual(run_ref(d, "f1"), A["ref"], "the first guest after the second one's evictions")
            c2 = cache_status(d)
            self.assertLessEqual(c2["used_bytes"], limit, c2)
            self.assertGreater(c2["misses"], c1["misses"], "a second sandbox with a cache too small: no miss? %s" % c2)
            on_disk = sum(s for n, s in cache_files(d).items() if HEX64.match(n))
            self.assertLessEqual(on_disk, limit, "cache/chunks/ holds %.1f MiB" % (on_disk / MiB))
            d.destroy("f1")
            d.destroy("f2")
        except BaseException:
            d.force_cleanup()
            raise
        stop_checked(d)


if __name__ == "__main__":
    harness.main()
