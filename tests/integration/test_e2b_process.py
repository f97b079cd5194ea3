#!/usr/bin/env python3
"""
emberfs-e2b's process.Process service (docs/e2b.md, "Processes") against a
real daemon and real guests, over plain HTTP/1.1 as the E2B SDK speaks it
(Connect RPC, JSON; streams in envelopes), each answer checked against the
mount:

- Start: the start event with the guest pid, stdout and stderr as base64
  data events, the end event as envd's (exit status N, signal: killed), the
  end-stream envelope; the slot removed afterwards.
- Bad requests: a cut envelope, a length past the body, an oversized length,
  the compressed flag, unknown fields, pty, Update and StreamInput: the
  Connect error in the end-stream envelope (HTTP 200) or as a unary error;
  nothing left in procs/.
- stdin (SendInput, CloseStdin; stdin false is EOF at once), SendSignal,
  List (config and tag), a client that vanishes (the process runs on) and
  Connect by pid and by tag, a slot started through the mount, a child left
  in the background (the stream ends at the exit), Connect-Timeout-Ms,
  keepalives, 200 streams on one process at once.
"""
import base64
import http.client
import json
import os
import socket
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2bhelp  # noqa: E402
import harness  # noqa: E402

D = API = PORT = None
SID = TOKEN = None


def setUpModule():
    global D, API, PORT, SID, TOKEN
    D = harness.Daemon(pool=1).start()
    API = e2bhelp.Api(D.mount, args=["--log-level", "warn"]).start()
    PORT = API.port
    st, _, body = API.request("POST", "/v2/sandboxes", {"templateID": "default", "timeout": 600})
    assert st == 201, (st, body)
    o = json.loads(body)
    SID, TOKEN = o["sandboxID"], o["envdAccessToken"]


def tearDownModule():
    e2bhelp.stop_all(API, D)


def envelope(msg, flags=0):
    b = json.dumps(msg).encode() if not isinstance(msg, bytes) else msg
    return bytes([flags]) + struct.pack(">I", len(b)) + b


def headers(extra=None, stream=True):
    h = {"E2b-Sandbox-Id": SID, "E2b-Sandbox-Port": "49983", "X-Access-Token": TOKEN,
         "Connect-Protocol-Version": "1",
         "Content-Type": "application/connect+json" if stream else "application/json"}
    h.update(extra or {})
    return h


class Stream:
    """A server-streaming call: messages one by one, (flags, object)."""

    def __init__(self, method, body, extra=None, timeout=60):
        self.conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=timeout)
        self.conn.request("POST", "/process.Process/" + method,
                          body=body if isinstance(body, bytes) else envelope(body), headers=headers(extra))
        self.resp = self.conn.getresponse()
        assert self.resp.status == 200, self.resp.status
        assert self.resp.getheader("Content-Type") == "application/connect+json"

    def next(self):
        h = self.resp.read(5)
        if len(h) == 0:
            return None
        assert len(h) == 5, h
        n = struct.unpack(">I", h[1:])[0]
        b = self.resp.read(n)
        assert len(b) == n
        return h[0], json.loads(b)

    def all(self):
        out = []
        while True:
            m = self.next()
            if m is None:
                return out
            out.append(m)

    def close(self):
        self.conn.sock.shutdown(socket.SHUT_RDWR)
        self.conn.close()


def unary(method, body, raw=None):
    c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=60)
    c.request("POST", "/process.Process/" + method, body=raw if raw is not None else json.dumps(body).encode(),
              headers=headers(stream=False))
    r = c.getresponse()
    text = r.read()
    c.close()
    return r.status, json.loads(text) if text else None


def events(msgs):
    """The messages as (kind, value) with data decoded; the last must be the end-stream envelope."""
    out = []
    for flags, o in msgs:
        if flags == 2:
            out.append(("END-STREAM", o))
            continue
        assert flags == 0
        (kind, v), = o["event"].items()
        if kind == "data":
            (which, b64), = v.items()
            v = (which, base64.b64decode(b64))
        out.append((kind, v))
    return out


def output(evs, which="stdout"):
    return b"".join(v[1] for k, v in evs if k == "data" and v[0] == which)


def start(cmd, args=(), stdin=False, envs=None, cwd=None, **kw):
    """A StartRequest as the SDK sends it (kw: tag)."""
    body = {"process": {"cmd": cmd, "args": list(args), "envs": envs or {}}, "stdin": stdin}
    if cwd:
        body["process"]["cwd"] = cwd
    body.update(kw)
    return body


def procs():
    return sorted(os.listdir(D.sb(SID, "procs")))


def wait_no_procs(timeout=15):
    harness.wait_for(lambda: procs() == [], timeout, "procs/ of %s empty (it has %s)" % (SID, procs()))


class Start(harness.TestCase):
    def test_run_outputs_and_exit(self):
        evs = events(Stream("Start", start("/bin/sh", ["-c", "echo out; echo err >&2; printf 'x%.0s' $(seq 1 100000); exit 3"])).all())
        self.assertEqual(evs[0][0], "start")
        self.assertGreater(evs[0][1]["pid"], 0)
        self.assertEqual(output(evs), b"out\n" + b"x" * 100000)
        self.assertEqual(output(evs, "stderr"), b"err\n")
        self.assertEqual(evs[-2], ("end", {"exitCode": 3, "exited": True, "status": "exit status 3",
                                           "error": "exit status 3"}))
        self.assertEqual(evs[-1], ("END-STREAM", {}))
        evs = events(Stream("Start", start("/bin/true", envs={"A": "1"}, cwd="/tmp")).all())
        self.assertEqual(evs[-2], ("end", {"exitCode": 0, "exited": True, "status": "exit status 0"}))
        wait_no_procs()

    def test_env_cwd_user(self):
        evs = events(Stream("Start", start("/bin/sh", ["-c", "echo $FOO; pwd; id -u"], envs={"FOO": "bar"},
                                           cwd="/tmp"),
                            extra={"Authorization": "Basic " + base64.b64encode(b"root:").decode()}).all())
        self.assertEqual(output(evs), b"bar\n/tmp\n0\n")
        evs = events(Stream("Start", start("/bin/true", cwd="/nonexistent")).all())
        self.assertEqual(evs[0][0], "END-STREAM")
        self.assertEqual(evs[0][1]["error"]["code"], "invalid_argument")
        self.assertIn("/nonexistent", evs[0][1]["error"]["message"])
        wait_no_procs()

    def test_bad_requests(self):
        def err(body, extra=None):
            evs = events(Stream("Start", body, extra).all())
            self.assertEqual(len(evs), 1, evs)
            self.assertEqual(evs[0][0], "END-STREAM")
            return evs[0][1]["error"]["code"], evs[0][1]["error"]["message"]

        ok = envelope(start("/bin/true"))
        self.assertEqual(err(ok[:3])[0], "invalid_argument")
        self.assertEqual(err(ok[:-1]), ("invalid_argument", "truncated Connect envelope: %d of %d message bytes"
                                        % (len(ok) - 6, len(ok) - 5)))
        self.assertEqual(err(ok + ok)[0], "invalid_argument")
        self.assertEqual(err(b"\x00\x7f\xff\xff\xff{}")[0], "resource_exhausted")
        self.assertEqual(err(b"\x01" + ok[1:])[0], "unimplemented")
        self.assertEqual(err(b"\x02" + ok[1:])[0], "invalid_argument")
        self.assertEqual(err(envelope(b"{not json"))[0], "invalid_argument")
        code, msg = err(envelope({"process": {"cmd": "/bin/true", "bogus": 1}}))
        self.assertEqual((code, msg), ("invalid_argument", "process.bogus: unknown field of ProcessConfig"))
        self.assertEqual(err(envelope({"process": {"cmd": "/bin/true"}, "extra": 1}))[0], "invalid_argument")
        self.assertEqual(err(envelope({"process": {"cmd": "/bin/true"}, "pty": {"size": {"cols": 80, "rows": 24}}}))[0],
                         "unimplemented")
        self.assertEqual(err(envelope({"process": {"cmd": ""}}))[0], "invalid_argument")
        st, o = unary("Update", {"process": {"pid": 1}, "pty": {"size": {"cols": 1, "rows": 1}}})
        self.assertEqual((st, o["code"]), (501, "unimplemented"))
        self.assertEqual(events(Stream("StreamInput", envelope({})).all())[0][1]["error"]["code"], "unimplemented")
        st, o = unary("List", None, raw=b"{")
        self.assertEqual((st, o["code"]), (400, "invalid_argument"))
        st, o = unary("SendSignal", {"process": {"pid": 1}, "signal": "SIGNAL_UNSPECIFIED"})
        self.assertEqual((st, o["code"]), (501, "unimplemented"))
        self.assertEqual(procs(), [])


class Control(harness.TestCase):
    def test_stdin(self):
        s = Stream("Start", start("/bin/sh", ["-c", "read a; echo got:$a; cat"], stdin=True))
        kind, v = events([s.next()])[0]
        pid = v["pid"]
        for chunk in (b"hello\n", b"more\x00bytes\n"):
            self.assertEqual(unary("SendInput", {"process": {"pid": pid},
                                                 "input": {"stdin": base64.b64encode(chunk).decode()}}), (200, {}))
        self.assertEqual(unary("CloseStdin", {"process": {"pid": pid}}), (200, {}))
        evs = events(s.all())
        self.assertEqual(output(evs), b"got:hello\nmore\x00bytes\n")
        self.assertEqual(evs[-2][1]["exitCode"], 0)
        st, o = unary("SendInput", {"process": {"pid": pid}, "input": {"stdin": "eA=="}})
        self.assertEqual((st, o["code"]), (404, "not_found"))
        # stdin false: EOF at once
        evs = events(Stream("Start", start("/bin/sh", ["-c", "cat; echo eof"], stdin=False)).all())
        self.assertEqual(output(evs), b"eof\n")
        wait_no_procs()

    def test_kill_list_connect(self):
        s = Stream("Start", start("/bin/sh", ["-c", "echo up; sleep 100"], tag="job"))
        pid = events([s.next()])[0][1]["pid"]
        st, o = unary("List", {})
        self.assertEqual(st, 200)
        self.assertEqual(o["processes"], [{"config": {"cmd": "/bin/sh", "args": ["-c", "echo up; sleep 100"], "envs": {}},
                                           "tag": "job", "pid": pid}])
        c = Stream("Connect", {"process": {"tag": "job"}})
        self.assertEqual(events([c.next()])[0], ("start", {"pid": pid}))
        self.assertEqual(unary("SendSignal", {"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"}), (200, {}))
        end = ("end", {"exitCode": -1, "exited": False, "status": "signal: killed", "error": "signal: killed"})
        for st_ in (s, c):
            evs = events(st_.all())
            self.assertEqual(evs[-2:], [end, ("END-STREAM", {})])
        self.assertEqual(unary("SendSignal", {"process": {"pid": pid}, "signal": "SIGNAL_SIGTERM"})[0], 404)
        self.assertEqual(events(Stream("Connect", {"process": {"pid": pid}}).all())[0][1]["error"]["code"], "not_found")
        self.assertEqual(unary("List", {}), (200, {"processes": []}))
        wait_no_procs()

    def test_client_vanishes(self):
        s = Stream("Start", start("/bin/sh", ["-c", "for i in 1 2 3 4 5 6; do echo t$i; sleep 0.5; done"]))
        pid = events([s.next()])[0][1]["pid"]
        s.close()  # the client goes: the process runs on
        time.sleep(1.2)
        self.assertEqual(unary("List", {})[1]["processes"][0]["pid"], pid)
        evs = events(Stream("Connect", {"process": {"pid": pid}}).all())
        self.assertEqual(evs[0], ("start", {"pid": pid}))
        self.assertIn(b"t6\n", output(evs))
        self.assertNotIn(b"t1\n", output(evs))  # what came while nobody followed is not replayed
        self.assertEqual(evs[-2][1]["exitCode"], 0)
        wait_no_procs()

    def test_slot_of_the_mount(self):
        d = D.sb(SID, "procs", "mine")
        os.mkdir(d)
        harness.write_file(os.path.join(d, "cmd"), "sleep 1.5; echo from-mount\n")
        pid = harness.read_json(os.path.join(d, "status"))["pid"]
        st, o = unary("List", {})
        self.assertEqual(o["processes"], [{"config": {"cmd": "/bin/sh", "args": ["-c", "sleep 1.5; echo from-mount"],
                                                      "envs": {}}, "pid": pid}])
        evs = events(Stream("Connect", {"process": {"pid": pid}}).all())
        self.assertEqual(output(evs), b"from-mount\n")
        time.sleep(0.5)
        self.assertEqual(procs(), ["mine"])  # not ours: left as it is
        os.rmdir(d)


class Lifetime(harness.TestCase):
    def test_background_child(self):
        t0 = time.monotonic()
        evs = events(Stream("Start", start("/bin/sh", ["-c", "echo a; (sleep 3; echo late) & echo b"])).all())
        self.assertLess(time.monotonic() - t0, 2.5)  # the end at the shell's exit, as envd
        self.assertEqual(output(evs), b"a\nb\n")
        self.assertEqual(evs[-2][1]["exitCode"], 0)
        wait_no_procs()  # once the child closed the outputs

    def test_timeout_and_keepalive(self):
        t0 = time.monotonic()
        evs = events(Stream("Start", start("/bin/sh", ["-c", "sleep 30"]),
                            extra={"Connect-Timeout-Ms": "2500", "Keepalive-Ping-Interval": "1"}).all())
        self.assertLess(time.monotonic() - t0, 10)
        self.assertGreaterEqual([k for k, _ in evs].count("keepalive"), 1)
        self.assertEqual(evs[-2][1]["status"], "signal: killed")

    def test_200_streams(self):
        s = Stream("Start", start("/bin/sh", ["-c", "sleep 4; echo tick; sleep 1; echo tock"]))
        pid = events([s.next()])[0][1]["pid"]
        got = {}

        def follow(i):
            try:
                got[i] = events(Stream("Connect", {"process": {"pid": pid}}).all())
            except Exception as e:  # noqa: BLE001
                got[i] = e

        ts = [threading.Thread(target=follow, args=(i,)) for i in range(200)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        self.assertEqual(output(events(s.all())), b"tick\ntock\n")
        bad = {i: g for i, g in got.items() if isinstance(g, Exception) or output(g) != b"tick\ntock\n"
               or g[-2][1]["exitCode"] != 0}
        self.assertEqual((len(got), bad), (200, {}))
        wait_no_procs()


if __name__ == "__main__":
    harness.main()
