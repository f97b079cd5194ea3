#!/usr/bin/env python3
"""
emberfs-e2b (docs/e2b.md) against a real daemon and real guests.

One daemon (with --net where the host can: the SDK's network allow/deny
flow needs it), the python template (contrib/build-python-image.sh's image,
cached machine-wide: it has /bin/bash, which the SDK runs every command
with; the test skips with the script's reason when it cannot be built) with
a pool of 2 warm slots, and build/e2b/emberfs-e2b (EMBERFS_E2B_BIN) on a free
loopback port with a key file of its own.

- The SDK: tests/e2b/sdk.test.mjs under `node --test`, with the pinned `e2b`
  package (contrib/e2b-sdk.sh: npm ci from tests/e2b/package-lock.json) and
  E2B_API_KEY, E2B_API_URL, E2B_SANDBOX_URL set as a user sets them. Any
  failing flow fails this test, with node's report.
- Bad input, over plain HTTP (http.client, no SDK): malformed JSON and a
  field that is not implemented are 400 with E2B's body {code, message};
  an unknown template is 404 as E2B answers; an oversized body (with a
  Content-Length and chunked) is 413; a truncated Connect envelope is a
  Connect error and starts nothing.
- A client that vanishes mid-stream (a Start stream of `sleep 5; ...`,
  its socket closed after the start event): the process runs on and
  finishes (seen through the mount's procs/ and live/), and the server
  keeps serving.
- 200 concurrent Start streams of a short command, then 200 concurrent
  Connect streams to one running process: all answered in full (start,
  output byte-exact, end with exit 0); afterwards no procs/ slot and no
  guest process of theirs is left and emberfs-e2b's thread count is back
  down.
- emberfs-e2b stops on SIGTERM with exit 0; then the daemon's leak
  inventory is back to its baseline and the daemon stops clean.
"""
import base64
import json
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import e2bhelp  # noqa: E402
from test_net import have_net  # noqa: E402

T = "python"
POOL = 2
NODE_TIMEOUT = 600

D = BASE = API = None
NET = False
SDK_VERSION = None


def setUpModule():
    global D, BASE, API, NET, SDK_VERSION
    ref = e2bhelp.skip_if_unavailable(e2bhelp.python_image_ref)
    SDK_VERSION = e2bhelp.skip_if_unavailable(e2bhelp.sdk_ready)
    NET = have_net()
    args = ["--net", "--net-range", e2bhelp.NET_RANGE, "--net-pool", "2"] if NET else []
    D = harness.Daemon(extra_args=args).start()
    BASE = D.core(D.wait_inventory({**D.inventory(), "qemu": [], "run": [], "zombies": []}))
    try:
        cfg = {"image": ref, "mem_mib": 512}
        if NET:
            cfg["net"] = True
        e2bhelp.bake_template(D, T, cfg)
        D.set_pool(POOL, t=T)
        API = e2bhelp.Api(D.mount).start()
        D.wait_pool(POOL, t=T, timeout=120)
    except BaseException:
        teardown()
        raise


def teardown():
    global API
    problems = []
    if API is not None:
        if API.alive():
            API.stop()
        API.cleanup()
        API = None
    if D is None:
        return
    try:
        if os.path.isdir(D.tpl(T)):
            for n in D.sandboxes(t=T):
                problems.append("sandbox %s/%s left behind" % (T, n))
                D.destroy(n, t=T)
            D.set_pool(0, t=T)
            os.rmdir(D.tpl(T))
        D.assert_inventory(BASE, timeout=30)
    finally:
        D.stop()
    if problems:
        raise AssertionError("; ".join(problems))


def tearDownModule():
    teardown()


# ---------------------------------------------------------------------------
# Connect over plain HTTP

SANDBOX_PORT = "49983"


def envelope(obj, flag=0):
    j = json.dumps(obj).encode() if not isinstance(obj, bytes) else obj
    return bytes([flag]) + struct.pack(">I", len(j)) + j


def frames(data):
    """[(flag, message)] of a whole Connect stream body; AssertionError when it is cut."""
    out, i = [], 0
    while i < len(data):
        if len(data) - i < 5:
            raise AssertionError("a Connect envelope header cut at %d of %d bytes: %r" % (i, len(data), data[-40:]))
        flag, n = data[i], struct.unpack(">I", data[i + 1:i + 5])[0]
        if len(data) - i - 5 < n:
            raise AssertionError("a Connect envelope of %d bytes cut at %d" % (n, len(data) - i - 5))
        out.append((flag, json.loads(data[i + 5:i + 5 + n] or b"{}")))
        i += 5 + n
    return out


def read_frame(resp):
    """One envelope from a streaming response: (flag, message), or None at the end of the body."""
    head = resp.read(5)
    if not head:
        return None
    if len(head) < 5:
        raise AssertionError("cut Connect envelope header: %r" % head)
    n = struct.unpack(">I", head[1:5])[0]
    body = resp.read(n) if n else b""
    if len(body) < n:
        raise AssertionError("cut Connect envelope: %d of %d bytes" % (len(body), n))
    return head[0], json.loads(body or b"{}")


def start_body(cmd, args):
    return envelope({"process": {"cmd": cmd, "args": args, "envs": {}}, "stdin": False})


class Sbx:
    """A sandbox made over plain HTTP (POST /v2/sandboxes), for the tests without the SDK."""

    def __init__(self, sid, token):
        self.id, self.token = sid, token

    def headers(self, stream=True, token=None):
        return {"E2b-Sandbox-Id": self.id, "E2b-Sandbox-Port": SANDBOX_PORT,
                "X-Access-Token": token if token is not None else self.token,
                "Connect-Protocol-Version": "1",
                "Content-Type": "application/connect+json" if stream else "application/json"}

    def dir(self, *rest):
        return D.sb(self.id, *rest, t=T)

    def procs(self):
        """{slot: status} of its procs/ slots."""
        out = {}
        for n in harness._listdir(self.dir("procs")):
            try:
                out[n] = harness.read_json(self.dir("procs", n, "status"))
            except (OSError, ValueError):
                pass
        return out

    def start_stream(self, cmd, args, timeout=120):
        """(connection, response) of an open Start stream."""
        c = API.conn(timeout)
        c.request("POST", "/process.Process/Start", body=start_body(cmd, args), headers=self.headers())
        return c, c.getresponse()


def make_sandbox(timeout_s=600):
    st, _, body = API.request("POST", "/v2/sandboxes", {"templateID": T, "timeout": timeout_s})
    if st != 201:
        raise AssertionError("create: %d %r" % (st, body[:500]))
    o = json.loads(body)
    return Sbx(o["sandboxID"], o.get("envdAccessToken") or "")


def kill_sandbox(s):
    st, _, body = API.request("DELETE", "/sandboxes/%s" % s.id)
    if st != 204:
        raise AssertionError("kill %s: %d %r" % (s.id, st, body[:300]))


def guest_count(s, comm):
    """Processes named comm in the guest (through the mount's exec)."""
    out = D.sh(s.id, "ps -e -o comm=", t=T)
    return sum(1 for line in out.split() if line == comm)


# ---------------------------------------------------------------------------

class E2B(harness.TestCase):
    def assertApiError(self, got, status, contains=None):
        st, hdrs, body = got
        self.assertEqual(st, status, body[:500])
        try:
            o = json.loads(body)
        except ValueError:
            self.fail("HTTP %d with a body that is not JSON: %r" % (st, body[:300]))
        self.assertEqual(o.get("code"), status, o)
        self.assertIsInstance(o.get("message"), str, o)
        if contains:
            self.assertIn(contains, o["message"])
        return o

    # -- the SDK

    def test_a_sdk(self):
        """Every flow of the SDK program passes (tests/e2b/sdk.test.mjs)."""
        signal_alarm(NODE_TIMEOUT + 60)
        env = dict(os.environ, **API.env(), E2B_TEMPLATE=T, EMBERFS_MOUNT=D.mount, E2B_TEST_NET="1" if NET else "0")
        t0 = time.monotonic()
        try:
            r = subprocess.run(["node", "--test", "--test-reporter=spec", "sdk.test.mjs"], cwd=e2bhelp.SDK_DIR,
                               env=env, capture_output=True, text=True, timeout=NODE_TIMEOUT)
        except subprocess.TimeoutExpired as e:
            self.fail("node --test did not end within %d s:\n%s\n%s" % (NODE_TIMEOUT, e.stdout, API.log_tail()))
        out = r.stdout + r.stderr
        sys.stderr.write("--- e2b %s through the SDK: node --test (%.1f s, exit %d) ---\n%s\n" % (
            SDK_VERSION, time.monotonic() - t0, r.returncode, out))
        self.assertTrue(API.alive(), "emberfs-e2b died during the SDK tests\n" + API.log_tail())
        self.assertEqual(r.returncode, 0, "the SDK flows failed (report above)\n" + API.log_tail())
        # what the SDK made is gone from the mount
        harness.wait_for(lambda: D.sandboxes(t=T) == [], 15, "no sandbox left of the SDK tests: %s" % D.sandboxes(t=T))

    # -- control plane bad input

    def test_b_malformed_json(self):
        self.assertApiError(API.request("POST", "/v2/sandboxes", '{"templateID": "%s", ' % T,
                                         headers={"Content-Type": "application/json"}), 400)
        self.assertApiError(API.request("POST", "/v2/sandboxes", '[1, 2]',
                                         headers={"Content-Type": "application/json"}), 400)
        self.assertApiError(API.request("POST", "/v2/sandboxes", b"\xff\xfe{}",
                                         headers={"Content-Type": "application/json"}), 400)
        # a field not implemented: 400 naming it, never silently ignored
        self.assertApiError(API.request("POST", "/v2/sandboxes", {"templateID": T, "frobnicate": True}), 400,
                            contains="frobnicate")
        # wrong types
        self.assertApiError(API.request("POST", "/v2/sandboxes", {"templateID": T, "timeout": "soon"}), 400)
        self.assertApiError(API.request("POST", "/v2/sandboxes", {"templateID": T, "metadata": {"k": 1}}), 400)
        self.assertApiError(API.request("POST", "/sandboxes/x/timeout", '{"timeout": ',
                                         headers={"Content-Type": "application/json"}), 400)
        self.assertEqual(D.sandboxes(t=T), [])

    def test_c_unknown_template(self):
        o = self.assertApiError(API.request("POST", "/v2/sandboxes", {"templateID": "nosuchtemplate"}), 404)
        self.assertIn("nosuchtemplate", o["message"])
        # an unknown sandbox, likewise
        self.assertApiError(API.request("GET", "/sandboxes/nosuchsandbox"), 404)
        self.assertApiError(API.request("DELETE", "/sandboxes/nosuchsandbox"), 404)
        # and the keys
        self.assertApiError(API.request("GET", "/v2/sandboxes", key=False), 401)
        self.assertApiError(API.request("GET", "/v2/sandboxes", headers={"X-API-KEY": "e2b_00ff"}), 401)

    def oversized(self, chunked):
        """Sends a 40 MiB create body (Content-Length or chunked) until the server answers; its status line."""
        n = 40 << 20
        s = socket.create_connection(("127.0.0.1", API.port), timeout=15)
        try:
            head = ("POST /v2/sandboxes HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nX-API-KEY: %s\r\n"
                    "Content-Type: application/json\r\n%s\r\n" % (
                        API.port, API.key, "Transfer-Encoding: chunked\r\n" if chunked else "Content-Length: %d\r\n" % n))
            s.sendall(head.encode())
            piece = b'{"templateID": "%s", "metadata": {"k": "' % T.encode()
            piece += b"x" * ((1 << 16) - len(piece))
            sent = 0
            while sent < n:
                r, _, _ = select.select([s], [], [], 0)
                if r:
                    break  # answered before the end of the body
                try:
                    s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                except (BrokenPipeError, ConnectionResetError):
                    break
                sent += len(piece)
                piece = b"x" * (1 << 16)
            if chunked and sent >= n:
                try:
                    s.sendall(b"0\r\n\r\n")
                except OSError:
                    pass
            data = b""
            try:
                while b"\r\n\r\n" not in data:
                    b = s.recv(65536)
                    if not b:
                        break
                    data += b
            except ConnectionResetError:
                pass
            except socket.timeout:
                return "no answer within 15 s", sent
            return data.split(b"\r\n", 1)[0].decode("latin-1"), sent
        finally:
            s.close()

    def test_d_oversized_body(self):
        got = {}
        for chunked in (False, True):
            line, sent = self.oversized(chunked)
            got["chunked" if chunked else "content-length"] = "%r after %d bytes sent" % (line, sent)
        self.assertTrue(all(" 413 " in v for v in got.values()), got)
        self.assertEqual(D.sandboxes(t=T), [])
        st, _, _ = API.request("GET", "/v2/sandboxes")
        self.assertEqual(st, 200)

    # -- the in-sandbox protocol

    def test_e_truncated_connect_envelope(self):
        s = make_sandbox()
        try:
            before = s.procs()
            whole = start_body("/bin/sh", ["-c", "echo should-not-run > /tmp/trunc"])
            for body in (whole[:5 + 10], whole[:3], whole[:5]):
                c = API.conn()
                try:
                    c.request("POST", "/process.Process/Start", body=body, headers=s.headers())
                    r = c.getresponse()
                    data = r.read()
                finally:
                    c.close()
                if r.status == 200:
                    fr = frames(data)
                    self.assertTrue(fr, "an empty stream for a truncated envelope")
                    self.assertFalse(any(m.get("event", {}).get("start") for _, m in fr), fr)
                    flag, last = fr[-1]
                    self.assertEqual(flag & 2, 2, fr)
                    err = last.get("error") or {}
                else:
                    err = json.loads(data)
                self.assertIsInstance(err.get("code"), str, (r.status, data[:300]))
                self.assertIn(err["code"], ("invalid_argument", "internal", "unknown", "data_loss"),
                              (r.status, data[:300]))
            self.assertEqual(s.procs(), before)
            self.assertFalse(os.path.exists(os.path.join(D.mount, "live", s.id, "tmp", "trunc")))
            # and a whole one works on the same server
            c, r = s.start_stream("/bin/sh", ["-c", "echo whole"])
            try:
                fr = frames(r.read())
            finally:
                c.close()
            out = b"".join(base64.b64decode(m["event"]["data"].get("stdout", ""))
                           for _, m in fr if "data" in m.get("event", {}))
            self.assertEqual(out, b"whole\n", fr)
        finally:
            kill_sandbox(s)

    def test_f_client_vanishes_mid_stream(self):
        s = make_sandbox()
        try:
            c, r = s.start_stream("/bin/bash", ["-l", "-c", "sleep 5; echo done > /tmp/vanish.done; echo done"])
            if r.status != 200:
                self.fail("Start: HTTP %d %r" % (r.status, r.read()[:300]))
            ev = read_frame(r)
            while ev is not None and "keepalive" in ev[1].get("event", {}):
                ev = read_frame(r)
            self.assertIsNotNone(ev)
            pid = ev[1]["event"]["start"]["pid"]
            t0 = time.monotonic()
            c.sock.shutdown(socket.SHUT_RDWR)  # the client vanishes
            c.close()
            # the process runs on: its procs/ slot says so
            slot = harness.wait_for(lambda: [n for n, st in s.procs().items() if st.get("pid") == pid], 5,
                                    "a procs/ slot with guest pid %d: %s" % (pid, s.procs()))[0]
            time.sleep(1)
            st = harness.read_json(s.dir("procs", slot, "status"))
            self.assertEqual(st["state"], "running", st)
            # the server keeps serving meanwhile
            self.assertEqual(API.request("GET", "/v2/sandboxes")[0], 200)
            st2, _, _ = API.request("GET", "/health", headers=s.headers(stream=False), key=False)
            self.assertIn(st2, (200, 204))
            # and it finishes: its marker file appears in the guest (seen through live/)
            marker = os.path.join(D.mount, "live", s.id, "tmp", "vanish.done")
            harness.wait_for(lambda: os.path.exists(marker), 20, "the process finished (%s)" % marker)
            self.assertGreater(time.monotonic() - t0, 3.0)
            with open(marker) as f:
                self.assertEqual(f.read(), "done\n")
            # its slot ends up exited with 0, or freed
            def ended():
                p = s.procs()
                return slot not in p or (p[slot]["state"] == "exited" and p[slot]["exit_code"] == 0) or None
            harness.wait_for(ended, 10, "slot %s exited 0 or freed: %s" % (slot, s.procs()))
        finally:
            kill_sandbox(s)

    def test_g_200_start_streams(self):
        """200 Start streams of a short command at once: each answered in full; nothing left after."""
        self.streams(int(os.environ.get("E2B_TEST_STARTS", "200")), 0)

    def test_h_200_connect_streams(self):
        """200 Connect streams to one running process at once: each answered in full; nothing left after."""
        self.streams(0, int(os.environ.get("E2B_TEST_CONNECTS", "200")))

    def streams(self, n_start, n_conn):
        n = n_start + n_conn
        s = make_sandbox()
        try:
            harness.wait_for(lambda: s.procs() == {} or None, 5, "no procs/ slot in a new sandbox: %s" % s.procs())
            threads0 = API.threads()
            sleeps0 = guest_count(s, "sleep")
            # the process the Connect streams attach to: quiet for a while (every stream is
            # attached before it speaks), then three lines, then exit 0
            tc, tr = s.start_stream("/bin/sh", ["-c", "sleep %d; for i in 1 2 3; do echo tick$i; sleep 0.3; done"
                                                % (10 if n_conn else 0)])
            if tr.status != 200:
                self.fail("Start: HTTP %d %r" % (tr.status, tr.read()[:300]))
            ev = read_frame(tr)
            while ev is not None and "keepalive" in ev[1].get("event", {}):
                ev = read_frame(tr)
            self.assertIsNotNone(ev, "the Start stream ended without a message (%s)" % tr.getheaders())
            pid = ev[1]["event"]["start"]["pid"]
            ticker = {}
            tt = threading.Thread(target=lambda: ticker.update(rest=tr.read()), daemon=True)
            tt.start()
            results = [None] * n
            peak = [threads0]
            go = threading.Barrier(n)

            def one(i):
                try:
                    go.wait(30)
                    c = API.conn(180)
                    try:
                        if i < n_start:
                            c.request("POST", "/process.Process/Start", headers=s.headers(),
                                      body=start_body("/bin/sh", ["-c", "sleep 1; echo n%d" % i]))
                        else:
                            c.request("POST", "/process.Process/Connect", headers=s.headers(),
                                      body=envelope({"process": {"pid": pid}}))
                        r = c.getresponse()
                        results[i] = (r.status, frames(r.read()))
                    finally:
                        c.close()
                except Exception as e:  # noqa: BLE001 - reported per stream below
                    results[i] = ("exception", repr(e))

            ths = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
            t0 = time.monotonic()
            for th in ths:
                th.start()
            while any(th.is_alive() for th in ths) and time.monotonic() - t0 < 180:
                peak[0] = max(peak[0], API.threads() or 0)
                time.sleep(0.1)
            for th in ths:
                th.join(1)
            tt.join(30)
            tc.close()
            wall = time.monotonic() - t0
            bad = []
            for i, res in enumerate(results):
                if res is None or res[0] != 200:
                    bad.append("%s %d: %s" % ("start" if i < n_start else "connect", i, res and str(res)[:300]))
                    continue
                fr = res[1]
                evs = [m.get("event", {}) for _, m in fr if "event" in m]
                out = b"".join(base64.b64decode(e["data"].get("stdout", "")) for e in evs if "data" in e)
                end = [e["end"] for e in evs if "end" in e]
                want = b"n%d\n" % i if i < n_start else b"tick1\ntick2\ntick3\n"
                ok = (out == want and end and end[0].get("exitCode", 0) == 0 and fr[-1][0] & 2
                      and not fr[-1][1].get("error"))
                if i < n_start:
                    ok = ok and any("start" in e for e in evs)
                if not ok:
                    bad.append("%s %d: %s" % ("start" if i < n_start else "connect", i, fr[-3:]))
            sys.stderr.write("%d Start + %d Connect streams at once: %.1f s, emberfs-e2b threads %d before, "
                             "%d at the peak\n" % (n_start, n_conn, wall, threads0, peak[0]))
            self.assertEqual(bad, [], "%d of %d streams wrong, first ones: %s" % (len(bad), n, bad[:5]))
            # nothing left: procs/ slots, guest processes, server threads
            harness.wait_for(lambda: s.procs() == {} or None, 15,
                             "the streams' procs/ slots freed: %d left" % len(s.procs()))
            harness.wait_for(lambda: guest_count(s, "sleep") <= sleeps0 or None, 10, "no sleep left in the guest")
            harness.wait_for(lambda: API.threads() <= threads0 + 2 or None, 15,
                             "emberfs-e2b's threads back down to %d (now %s)" % (threads0, API.threads()))
            self.assertEqual(API.request("GET", "/v2/sandboxes")[0], 200)
        finally:
            kill_sandbox(s)

    def test_z_sigterm(self):
        """emberfs-e2b stops on SIGTERM with exit 0 (the module's teardown then checks the daemon)."""
        self.assertTrue(API.alive(), API.log_tail())
        t0 = time.monotonic()
        rc = API.stop()
        self.assertEqual(rc, 0, "emberfs-e2b exit %s after SIGTERM\n%s" % (rc, API.log_tail()))
        self.assertLess(time.monotonic() - t0, 10)
        self.assertEqual(API.log_errors(), [], "error lines in emberfs-e2b's log (%s)" % API.log_path)
        with self.assertRaises(OSError):
            socket.create_connection(("127.0.0.1", API.port), timeout=1).close()


def signal_alarm(s):
    import signal
    signal.alarm(s)


if __name__ == "__main__":
    harness.main()
