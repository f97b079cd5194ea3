#!/usr/bin/env python3
"""
emberfs-e2b's files (docs/e2b.md, "Files"): envd's filesystem.Filesystem
Connect calls and /files over plain HTTP as the E2B SDK speaks them,
against a real daemon and a real guest, each answer checked against the
mount's live/ID tree:

- Stat, ListDir (depth, order, symlinks), MakeDir, Move, Remove with envd's
  answers and error codes; paths relative to the user's home, never above
  the guest's /; unknown fields, users and another user's home refused;
  WatchDir streams what changed (polled); the other watchers answer
  unimplemented.
- GET /files bytes (SHA-256), 404/400 bodies, an empty file; POST /files
  raw and multipart (several parts, paths from the filenames), parents made.
- As the user: what is written belongs to it, its supplementary groups
  count, what it may not write is 403; a failed or truncated upload leaves
  the old file and no temporary file.
"""
import hashlib
import http.client
import json
import os
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2bhelp  # noqa: E402
import harness  # noqa: E402

SID = "files1"
D = API = PORT = TOKEN = None


def setUpModule():
    global D, API, PORT, TOKEN
    D = harness.Daemon(pool=1).start()
    API = e2bhelp.Api(D.mount, args=["--log-level", "warn"]).start()
    PORT = API.port
    D.create_ready(SID)
    TOKEN = API.token(SID)
    # a user and a group of the guest's own, as a template image would have them
    with open(live("etc/passwd"), "a") as f:
        f.write("user:x:1000:1000::/home/user:/bin/sh\n")
    with open(live("etc/group"), "a") as f:
        f.write("user:x:1000:\nstaff:x:50:user\n")
    os.makedirs(live("home/user"))
    os.chown(live("home/user"), 1000, 1000)
    os.makedirs(live("srv/staff"))
    os.chown(live("srv/staff"), 0, 50)
    os.chmod(live("srv/staff"), 0o2770)


def tearDownModule():
    e2bhelp.stop_all(API, D)


def live(p=""):
    return os.path.join(D.mount, "live", SID, p.lstrip("/"))


def request(method, path, body=None, headers=None):
    """(status, headers, body bytes) of one request to the sandbox's envd routes."""
    c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=120)
    h = {"E2b-Sandbox-Id": SID, "E2b-Sandbox-Port": "49983", "X-Access-Token": TOKEN, **(headers or {})}
    c.request(method, path, body=body, headers=h)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, r.headers, data


def rpc(method, msg, user=None):
    h = {"Content-Type": "application/json", "Connect-Protocol-Version": "1"}
    if user is not None:
        import base64
        h["Authorization"] = "Basic " + base64.b64encode((user + ":").encode()).decode()
    st, _, data = request("POST", "/filesystem.Filesystem/" + method, json.dumps(msg).encode(), h)
    return st, json.loads(data)


def files_url(**q):
    import urllib.parse
    return "/files?" + urllib.parse.urlencode(q)


def multipart(parts, boundary="----emberfsTestBoundary7MA4YWxk"):
    """parts: [(filename, bytes)] as the SDK's FormData sends them (field "file")."""
    out = b""
    for name, data in parts:
        out += (b"--" + boundary.encode() + b"\r\nContent-Disposition: form-data; name=\"file\"; filename=\""
                + name.encode() + b"\"\r\nContent-Type: application/octet-stream\r\n\r\n" + data + b"\r\n")
    out += b"--" + boundary.encode() + b"--\r\n"
    return out, {"Content-Type": "multipart/form-data; boundary=" + boundary}


def no_temp_files(d):
    return [n for n in os.listdir(d) if n.startswith(".e2b-upload-")] == []


class Rpc(harness.TestCase):
    def test_stat_and_paths(self):
        st, o = rpc("Stat", {"path": "/etc/passwd"})
        self.assertEqual(st, 200, o)
        e = o["entry"]
        s = os.lstat(live("etc/passwd"))
        self.assertEqual((e["name"], e["type"], e["path"], e["size"], e["mode"], e["permissions"], e["owner"], e["group"]),
                         ("passwd", "FILE_TYPE_FILE", "/etc/passwd", str(s.st_size), 0o644, "-rw-r--r--", "root", "root"))
        self.assertRegex(e["modifiedTime"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3}|\.\d{6}|\.\d{9})?Z$")
        # relative to the home of root (no user named: the image's user, else root); never above /
        self.assertEqual(rpc("Stat", {"path": "../../../../etc/hostname"})[1]["entry"]["path"], "/etc/hostname")
        self.assertEqual(rpc("Stat", {"path": ""})[1]["entry"]["path"], "/root")
        self.assertEqual(rpc("Stat", {"path": "~"}, user="user")[1]["entry"]["path"], "/home/user")
        st, o = rpc("Stat", {"path": "/nope"})
        self.assertEqual((st, o["code"]), (404, "not_found"))
        st, o = rpc("Stat", {"path": "~bob/x"})
        self.assertEqual((st, o["code"]), (400, "invalid_argument"))
        st, o = rpc("Stat", {"path": "/", "recursive": True})
        self.assertEqual((st, o["code"]), (400, "invalid_argument"))
        self.assertIn("recursive", o["message"])
        st, o = rpc("Stat", {"path": "/"}, user="nobodyhere")
        self.assertEqual((st, o["code"]), (400, "invalid_argument"))
        self.assertIn("nobodyhere", o["message"])

    def test_list_make_move_remove(self):
        st, o = rpc("MakeDir", {"path": "/root/t/a/b"})
        self.assertEqual((st, o["entry"]["type"], o["entry"]["path"]), (200, "FILE_TYPE_DIRECTORY", "/root/t/a/b"))
        self.assertTrue(os.path.isdir(live("root/t/a/b")))
        self.assertEqual(rpc("MakeDir", {"path": "/root/t/a/b"})[1]["code"], "already_exists")
        with open(live("root/t/Z.txt"), "w") as f:
            f.write("z")
        with open(live("root/t/a/x.txt"), "w") as f:
            f.write("xx")
        os.symlink("/etc", live("root/t/link"))
        os.symlink("/missing", live("root/t/dangling"))
        self.assertEqual(rpc("MakeDir", {"path": "/root/t/Z.txt"})[1]["code"], "invalid_argument")

        st, o = rpc("ListDir", {"path": "/root/t"})
        self.assertEqual(st, 200, o)
        got = [(e["name"], e["type"]) for e in o["entries"]]
        self.assertEqual(got, [("Z.txt", "FILE_TYPE_FILE"), ("a", "FILE_TYPE_DIRECTORY"),
                               ("dangling", "FILE_TYPE_UNSPECIFIED"), ("link", "FILE_TYPE_DIRECTORY")])
        link = o["entries"][3]
        self.assertEqual((link["symlinkTarget"], link["permissions"]), ("/etc", "Lrwxrwxrwx"))
        st, o = rpc("ListDir", {"path": "/root/t", "depth": 3})
        self.assertEqual([e["path"] for e in o["entries"]],
                         ["/root/t/Z.txt", "/root/t/a", "/root/t/a/b", "/root/t/a/x.txt", "/root/t/dangling", "/root/t/link"])
        st, o = rpc("ListDir", {"path": "/root/t/link"})  # through the link, paths as asked
        self.assertIn("/root/t/link/passwd", [e["path"] for e in o["entries"]])
        self.assertEqual(rpc("ListDir", {"path": "/root/t/Z.txt"})[1]["code"], "invalid_argument")
        self.assertEqual(rpc("ListDir", {"path": "/root/none"})[1]["code"], "not_found")

        st, o = rpc("Move", {"source": "/root/t/Z.txt", "destination": "/root/t/new/dir/Z2.txt"})
        self.assertEqual((st, o["entry"]["path"], o["entry"]["size"]), (200, "/root/t/new/dir/Z2.txt", "1"))
        self.assertFalse(os.path.exists(live("root/t/Z.txt")))
        self.assertEqual(rpc("Move", {"source": "/root/t/Z.txt", "destination": "/root/y"})[1]["code"], "not_found")
        self.assertEqual(rpc("Move", {"source": "/", "destination": "/root/y"})[1]["code"], "invalid_argument")

        self.assertEqual(rpc("Remove", {"path": "/root/t"}), (200, {}))
        self.assertFalse(os.path.lexists(live("root/t")))
        self.assertEqual(rpc("Remove", {"path": "/root/t"}), (200, {}))  # already gone: success
        self.assertEqual(rpc("Remove", {"path": "/"})[1]["code"], "invalid_argument")
        self.assertTrue(os.path.isdir(live("etc")))

    def test_watchers(self):
        for m in ("CreateWatcher", "GetWatcherEvents", "RemoveWatcher"):
            st, o = rpc(m, {})
            self.assertEqual((st, o["code"]), (501, "unimplemented"), m)
        os.makedirs(live("root/w/sub"))
        with open(live("root/w/old.txt"), "w") as f:
            f.write("o")
        # WatchDir streams: start, then what changed (polled), to the end message at Connect-Timeout-Ms
        msg = json.dumps({"path": "/root/w", "recursive": True}).encode()
        c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=60)
        c.request("POST", "/filesystem.Filesystem/WatchDir", len(msg).to_bytes(5, "big") + msg,
                  {"E2b-Sandbox-Id": SID, "X-Access-Token": TOKEN, "Content-Type": "application/connect+json",
                   "Connect-Protocol-Version": "1", "Connect-Timeout-Ms": "4000"})
        r = c.getresponse()
        self.assertEqual(r.status, 200)

        def message():
            head = r.read(5)
            return head[0], json.loads(r.read(int.from_bytes(head[1:], "big")))

        self.assertEqual(message(), (0, {"start": {}}))
        with open(live("root/w/sub/new.txt"), "w") as f:
            f.write("n")
        os.unlink(live("root/w/old.txt"))
        got = set()
        while True:
            flags, m = message()
            if flags == 2:
                self.assertEqual(m["error"]["code"], "deadline_exceeded")
                break
            if "filesystem" in m:
                got.add((m["filesystem"]["type"], m["filesystem"]["name"]))
        c.close()
        self.assertEqual(got, {("EVENT_TYPE_CREATE", "sub/new.txt"), ("EVENT_TYPE_REMOVE", "old.txt")})
        msg = b'{"path":"/nowhere"}'
        st, h, data = request("POST", "/filesystem.Filesystem/WatchDir", len(msg).to_bytes(5, "big") + msg,
                              {"Content-Type": "application/connect+json", "Connect-Protocol-Version": "1"})
        self.assertEqual((st, data[0], json.loads(data[5:])["error"]["code"]), (200, 2, "not_found"))


class Files(harness.TestCase):
    def test_raw_upload_and_download(self):
        blob = os.urandom(3 * 1024 * 1024 + 17)
        st, _, data = request("POST", files_url(path="up/raw.bin"), blob, {"Content-Type": "application/octet-stream"})
        self.assertEqual((st, json.loads(data)), (200, [{"name": "raw.bin", "type": "file", "path": "/root/up/raw.bin"}]))
        with open(live("root/up/raw.bin"), "rb") as f:
            self.assertEqual(hashlib.sha256(f.read()).hexdigest(), hashlib.sha256(blob).hexdigest())
        st, h, data = request("GET", files_url(path="/root/up/raw.bin"))
        self.assertEqual(st, 200)
        self.assertEqual(hashlib.sha256(data).hexdigest(), hashlib.sha256(blob).hexdigest())
        open(live("root/up/empty"), "w").close()
        st, h, data = request("GET", files_url(path="/root/up/empty"))
        self.assertEqual((st, h["Content-Length"], data), (200, "0", b""))
        st, _, data = request("GET", files_url(path="/root/up/none"))
        self.assertEqual((st, json.loads(data)), (404, {"code": 404, "message": "path '/root/up/none' does not exist"}))
        st, _, data = request("GET", files_url(path="/root/up"))
        self.assertEqual((st, json.loads(data)["code"]), (400, 400))
        st, _, data = request("POST", files_url(path="x"), b"x", {"Content-Type": "text/plain"})
        self.assertEqual(st, 400)
        st, _, data = request("GET", files_url(path="/etc/passwd", signature="v1_x"))
        self.assertEqual(st, 400)
        self.assertTrue(no_temp_files(live("root/up")))

    def test_multipart_several(self):
        body, h = multipart([("mp/one.txt", b"one"), ("/tmp/mp/two.bin", bytes(range(256)) * 100), ("mp/empty", b"")])
        st, _, data = request("POST", "/files", body, h)
        self.assertEqual(st, 200, data)
        self.assertEqual([e["path"] for e in json.loads(data)], ["/root/mp/one.txt", "/tmp/mp/two.bin", "/root/mp/empty"])
        for p, want in (("root/mp/one.txt", b"one"), ("tmp/mp/two.bin", bytes(range(256)) * 100), ("root/mp/empty", b"")):
            with open(live(p), "rb") as f:
                self.assertEqual(f.read(), want, p)
        # two parts for one path: 400, as envd
        body, h = multipart([("mp/dup", b"1"), ("mp/dup", b"2")])
        self.assertEqual(request("POST", "/files", body, h)[0], 400)

    def test_failed_uploads_leave_the_old_file(self):
        with open(live("root/keep.txt"), "w") as f:
            f.write("old")
        body, h = multipart([("/root/keep.txt", b"new" * 1000)])
        st, _, data = request("POST", "/files", body[:-40], h)  # cut before the closing boundary
        self.assertEqual(st, 400, data)
        with open(live("root/keep.txt")) as f:
            self.assertEqual(f.read(), "old")
        self.assertTrue(no_temp_files(live("root")))
        # a client that vanishes mid-body
        c = socket.create_connection(("127.0.0.1", PORT))
        c.sendall(("POST %s HTTP/1.1\r\nHost: x\r\nE2b-Sandbox-Id: %s\r\nX-Access-Token: %s\r\n"
                   "Content-Type: application/octet-stream\r\nContent-Length: 10000000\r\n\r\n"
                   % (files_url(path="/root/keep.txt"), SID, TOKEN)).encode() + b"n" * 100000)
        c.close()
        harness.wait_for(lambda: no_temp_files(live("root")), 10, "the temporary file removed")
        with open(live("root/keep.txt")) as f:
            self.assertEqual(f.read(), "old")


class AsUser(harness.TestCase):
    def test_owner_groups_and_refusals(self):
        st, _, data = request("POST", files_url(path="u/a.txt", username="user"), b"a",
                              {"Content-Type": "application/octet-stream"})
        self.assertEqual((st, json.loads(data)[0]["path"]), (200, "/home/user/u/a.txt"))
        for p in ("home/user/u", "home/user/u/a.txt"):
            s = os.stat(live(p))
            self.assertEqual((s.st_uid, s.st_gid), (1000, 1000), p)
        st, o = rpc("Stat", {"path": "u/a.txt"}, user="user")
        self.assertEqual((o["entry"]["owner"], o["entry"]["group"]), ("user", "user"))
        # staff (a supplementary group) may write into /srv/staff, the setgid directory gives its group
        body, h = multipart([("/srv/staff/s.txt", b"s")])
        st, _, data = request("POST", files_url(username="user"), body, h)
        self.assertEqual(st, 200, data)
        self.assertEqual(os.stat(live("srv/staff/s.txt")).st_gid, 50)
        # not root: /etc and /root are closed to it
        st, _, data = request("POST", files_url(path="/etc/evil", username="user"), b"x",
                              {"Content-Type": "application/octet-stream"})
        self.assertEqual((st, json.loads(data)["code"]), (403, 403))
        self.assertFalse(os.path.exists(live("etc/evil")))
        self.assertTrue(no_temp_files(live("etc")))
        self.assertEqual(request("GET", files_url(path="/root/keep.txt", username="user"))[0], 403)
        self.assertEqual(rpc("MakeDir", {"path": "/etc/d"}, user="user")[1]["code"], "permission_denied")
        self.assertEqual(rpc("Remove", {"path": "/etc/passwd"}, user="user")[1]["code"], "permission_denied")
        self.assertTrue(os.path.exists(live("etc/passwd")))
        st, _, data = request("GET", files_url(path="/etc/passwd", username="nobodyhere"))
        self.assertEqual(st, 400)
        # the server's threads are back to root afterwards: root may still write /etc
        st, _, _ = request("POST", files_url(path="/etc/fine"), b"ok", {"Content-Type": "application/octet-stream"})
        self.assertEqual((st, os.stat(live("etc/fine")).st_uid), (200, 0))


class Health(harness.TestCase):
    def test_health(self):
        c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
        c.request("GET", "/health", headers={"E2b-Sandbox-Id": SID})
        self.assertEqual(c.getresponse().status, 204)
        c.close()


if __name__ == "__main__":
    harness.main()
