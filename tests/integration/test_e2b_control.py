#!/usr/bin/env python3
"""
emberfs-e2b's control plane (docs/e2b.md, "Control plane (REST)") against a
real daemon (--net) and real guests, over plain HTTP as the E2B SDKs speak
it, each answer checked against the mount:

- create (v2 and v1): 201 with the Sandbox fields, the sandbox ready in the
  mount with its timeout, metadata, env and egress; what is not implemented
  is a 400 naming every such field; an unknown template 404; bad JSON 400;
  no or a wrong API key 401.
- info, list (state, metadata filter encoded as the SDKs encode it, template,
  order, limit and X-Next-Token paging), timeout (the action at the deadline
  kept), pause (hibernate; 409 when paused; the deadline cleared), connect
  (201 resumed, 200 running, TTL only extended), pause without memory
  (stop) and its connect (start), fork (count children with the parent's
  settings and their own timeout; 409 when paused), metrics, network
  update, kill (204, then 404, gone from the mount).
"""
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2bhelp  # noqa: E402
import harness  # noqa: E402
from test_net import have_net  # noqa: E402

D = API = None


def setUpModule():
    global D, API
    if not have_net():
        raise __import__("unittest").SkipTest("no /dev/net/tun or nft here")
    D = harness.Daemon(extra_args=["--net", "--net-range", "10.241.0.0/16", "--net-pool", "2"], pool=1).start()
    API = e2bhelp.Api(D.mount, args=["--log-level", "warn"]).start()


def tearDownModule():
    e2bhelp.stop_all(API, D)


def call(method, path, body=None, key=True, raw=None, query=None):
    """(status, parsed JSON or None, headers); key: True for the API's, None for none, else that one."""
    url = API.url + path + ("?" + urllib.parse.urlencode(query) if query else "")
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method)
    if key:
        req.add_header("X-API-KEY", API.key if key is True else key)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            text = r.read()
            return r.status, json.loads(text) if text else None, r.headers
    except urllib.error.HTTPError as e:
        text = e.read()
        return e.code, json.loads(text) if text else None, e.headers


def create(**body):
    st, o, _ = call("POST", "/v2/sandboxes", {"templateID": "default", **body})
    assert st == 201, (st, o)
    return o["sandboxID"]


def metadata_query(pairs):
    """What the JS SDK sends: each key and value encoded, then a form string (encoded again on the wire)."""
    return urllib.parse.urlencode({urllib.parse.quote(k, safe=""): urllib.parse.quote(v, safe="")
                                   for k, v in pairs.items()})


class Create(harness.TestCase):
    def test_create_v2_settings_in_the_mount(self):
        st, o, _ = call("POST", "/v2/sandboxes", {
            "templateID": "default", "timeout": 120, "autoPause": True,
            "metadata": {"team": "ml", "a b": "c&d"}, "envVars": {"FOO": "bar"},
            "network": {"allowOut": ["1.1.1.1"], "denyOut": ["10.0.0.0/8"]}, "allow_internet_access": False})
        self.assertEqual(st, 201, o)
        sid = o["sandboxID"]
        self.assertRegex(sid, r"^i[a-z0-9]{19}$")
        self.assertEqual((o["templateID"], o["clientID"], o["envdVersion"], o["domain"]),
                         ("default", "emberfs", "0.5.7", "localhost"))
        self.assertRegex(o["envdAccessToken"], r"^[0-9a-f]{64}$")
        self.assertEqual(D.status(sid)["state"], "ready")  # answered once ready
        t = harness.read_json(D.sb(sid, "timeout"))
        self.assertEqual((t["timeout_s"], t["on_timeout"]), (120, "hibernate"))
        self.assertEqual(harness.read_json(D.sb(sid, "metadata")), {"team": "ml", "a b": "c&d"})
        self.assertEqual(harness.read_text(D.sb(sid, "env")).strip(), "FOO=bar")
        self.assertEqual(harness.read_text(D.sb(sid, "egress")),
                         "default allow\nallow 1.1.1.1/32\ndeny 10.0.0.0/8\ndeny 0.0.0.0/0\n")
        self.assertEqual(call("DELETE", "/sandboxes/" + sid)[0], 204)

    def test_create_defaults(self):
        # Sandbox.create('default') of SDK 2.51 sends only the template: 300 s on /v2, 15 s on /sandboxes
        sid = create()
        self.assertEqual(harness.read_json(D.sb(sid, "timeout"))["timeout_s"], 300)
        st, o, _ = call("POST", "/sandboxes", {"templateID": "default", "secure": True})
        self.assertEqual(st, 201, o)
        self.assertEqual(harness.read_json(D.sb(o["sandboxID"], "timeout"))["timeout_s"], 15)
        for s in (sid, o["sandboxID"]):
            self.assertEqual(call("DELETE", "/sandboxes/" + s)[0], 204)

    def test_refusals(self):
        before = set(D.sandboxes())
        st, o, _ = call("POST", "/v2/sandboxes", {
            "templateID": "default", "mcp": {"x": {}}, "volumeMounts": [{"name": "v", "path": "/v"}],
            "futureField": 1, "network": {"maskRequestHost": "h", "allowPublicTraffic": False}})
        self.assertEqual(st, 400)
        self.assertEqual(o["code"], 400)
        for w in ("mcp", "volumeMounts", "futureField", "network.maskRequestHost", "network.allowPublicTraffic"):
            self.assertIn(w, o["message"])
        st, o, _ = call("POST", "/v2/sandboxes", {"templateID": "nope"})
        self.assertEqual((st, o), (404, {"code": 404, "message": 'template "nope" not found'}))
        self.assertEqual(call("POST", "/v2/sandboxes", raw=b'{"templateID": "default"')[0], 400)
        self.assertEqual(call("POST", "/v2/sandboxes", {"templateID": "default", "timeout": 0})[0], 400)
        st, o, _ = call("POST", "/v2/sandboxes", {"templateID": "default", "metadata": {"k%d" % i: "v" for i in range(65)}})
        self.assertEqual(st, 400)
        self.assertIn("more than 64 keys", o["message"])  # the mount's own reason
        st, o, _ = call("POST", "/v2/sandboxes", {"templateID": "default"}, key=None)
        self.assertEqual((st, o["code"]), (401, 401))
        self.assertEqual(call("POST", "/v2/sandboxes", {"templateID": "default"}, key="e2b_00")[0], 401)
        self.assertEqual(set(D.sandboxes()), before)  # nothing made by a refusal


class Lifecycle(harness.TestCase):
    def test_info_timeout_pause_connect_kill(self):
        sid = create(timeout=60, metadata={"who": "lifecycle"})
        st, o, _ = call("GET", "/sandboxes/" + sid)
        self.assertEqual(st, 200)
        self.assertEqual((o["state"], o["cpuCount"], o["memoryMB"], o["metadata"]), ("running", 1, 256, {"who": "lifecycle"}))
        created = D.status(sid)["created_at_unix_ms"]
        self.assertEqual(o["startedAt"], time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created // 1000))
                         + ".%03dZ" % (created % 1000))
        self.assertEqual(o["lifecycle"], {"onTimeout": "kill", "autoResume": True})

        self.assertEqual(call("POST", "/sandboxes/%s/timeout" % sid, {"timeout": 600})[0], 204)
        t = harness.read_json(D.sb(sid, "timeout"))
        self.assertEqual((t["timeout_s"], t["on_timeout"]), (600, "destroy"))

        self.assertEqual(call("POST", "/sandboxes/%s/pause" % sid, {})[0], 204)
        self.assertEqual(D.status(sid)["state"], "hibernated")
        self.assertIsNone(harness.read_json(D.sb(sid, "timeout"))["deadline_unix_ms"])  # a paused one waits
        st, o, _ = call("POST", "/sandboxes/%s/pause" % sid, {})
        self.assertEqual((st, o["code"]), (409, 409))
        self.assertEqual(call("GET", "/sandboxes/" + sid)[1]["state"], "paused")

        st, o, _ = call("POST", "/v2/sandboxes/%s/connect" % sid, {"timeout": 300})
        self.assertEqual((st, o["sandboxID"]), (201, sid))
        self.assertEqual(D.status(sid)["state"], "ready")
        self.assertEqual(harness.read_json(D.sb(sid, "timeout"))["timeout_s"], 300)
        # running: 200, and the deadline only moves later
        self.assertEqual(call("POST", "/v2/sandboxes/%s/connect" % sid, {"timeout": 30})[0], 200)
        self.assertEqual(harness.read_json(D.sb(sid, "timeout"))["timeout_s"], 300)
        self.assertEqual(call("POST", "/v2/sandboxes/%s/connect" % sid, {"timeout": 900})[0], 200)
        self.assertEqual(harness.read_json(D.sb(sid, "timeout"))["timeout_s"], 900)

        # without memory: stop, and the connect cold-boots it
        self.assertEqual(call("POST", "/sandboxes/%s/pause" % sid, {"memory": False})[0], 204)
        self.assertEqual(D.status(sid)["state"], "stopped")
        self.assertEqual(call("POST", "/sandboxes/%s/connect" % sid, {"timeout": 60})[0], 201)
        self.assertEqual(D.status(sid)["state"], "ready")

        st, o, _ = call("GET", "/sandboxes/%s/metrics" % sid)
        self.assertEqual(st, 200)
        self.assertEqual(len(o), 1)
        self.assertGreater(o[0]["memTotal"], 0)
        self.assertEqual(o[0]["cpuCount"], 1)

        self.assertEqual(call("DELETE", "/sandboxes/" + sid)[0], 204)
        self.assertFalse(os.path.exists(D.sb(sid)))
        for m, p in (("DELETE", ""), ("GET", ""), ("POST", "/pause"), ("GET", "/metrics")):
            st, o, _ = call(m, "/sandboxes/" + sid + p, {} if m == "POST" else None)
            self.assertEqual((st, o), (404, {"code": 404, "message": 'sandbox "%s" not found' % sid}), (m, p))
        self.assertEqual(call("POST", "/v2/sandboxes/%s/connect" % sid, {})[0], 404)

    def test_fork(self):
        sid = create(metadata={"who": "parent"})
        st, o, _ = call("POST", "/sandboxes/%s/fork" % sid, {"count": 2, "timeout": 45})
        self.assertEqual(st, 201, o)
        self.assertEqual(len(o), 2)
        kids = [e["sandbox"]["sandboxID"] for e in o]
        self.assertEqual(len(set(kids) | {sid}), 3)
        for k in kids:
            self.assertEqual(D.status(k)["path"], "fork")
            self.assertEqual(D.status(k)["state"], "ready")
            self.assertEqual(harness.read_json(D.sb(k, "metadata")), {"who": "parent"})  # the mount copies settings
            self.assertEqual(harness.read_json(D.sb(k, "timeout"))["timeout_s"], 45)
        self.assertEqual(D.status(sid)["state"], "ready")  # the parent runs on
        self.assertEqual(call("POST", "/sandboxes/%s/fork" % sid, {"count": 0})[0], 400)
        self.assertEqual(call("POST", "/sandboxes/%s/pause" % sid, {})[0], 204)
        self.assertEqual(call("POST", "/sandboxes/%s/fork" % sid, {})[0], 409)
        for k in kids + [sid]:
            self.assertEqual(call("DELETE", "/sandboxes/" + k)[0], 204)
        self.assertEqual(call("POST", "/sandboxes/%s/fork" % sid, {})[0], 404)

    def test_network_update(self):
        sid = create()
        self.assertEqual(call("PUT", "/sandboxes/%s/network" % sid, {"allowOut": ["8.8.8.8"], "allow_internet_access": False})[0], 204)
        self.assertEqual(harness.read_text(D.sb(sid, "egress")), "default allow\nallow 8.8.8.8/32\ndeny 0.0.0.0/0\n")
        st, o, _ = call("PUT", "/sandboxes/%s/network" % sid, {"allowOut": ["300.1.1.1"]})
        self.assertEqual(st, 400)
        self.assertIn("line 1", o["message"])
        self.assertEqual(call("PUT", "/sandboxes/%s/network" % sid, {"egressProxy": {"address": "p:1"}})[0], 400)
        self.assertEqual(call("PUT", "/sandboxes/%s/network" % sid, {})[0], 204)
        self.assertIn("# the template's default", harness.read_text(D.sb(sid, "egress")))
        self.assertEqual(call("DELETE", "/sandboxes/" + sid)[0], 204)


class Lists(harness.TestCase):
    def test_filters_and_paging(self):
        a = create(metadata={"suite": "lists", "k/x": "v&1 +"})
        b = create(metadata={"suite": "lists"})
        c = create(metadata={"suite": "other"})
        self.assertEqual(call("POST", "/sandboxes/%s/pause" % c, {})[0], 204)
        mine = {a, b, c}

        st, o, h = call("GET", "/v2/sandboxes")
        self.assertEqual(st, 200)
        self.assertTrue(mine <= {x["sandboxID"] for x in o})
        self.assertIsNone(h.get("X-Next-Token"))
        st, o, _ = call("GET", "/v2/sandboxes", query={"metadata": metadata_query({"k/x": "v&1 +"})})
        self.assertEqual([x["sandboxID"] for x in o], [a])
        st, o, _ = call("GET", "/v2/sandboxes", query={"metadata": metadata_query({"suite": "lists"})})
        self.assertEqual({x["sandboxID"] for x in o}, {a, b})
        st, o, _ = call("GET", "/v2/sandboxes", query={"metadata": "suite=lists&nokey=x"})
        self.assertEqual(o, [])
        st, o, _ = call("GET", "/v2/sandboxes", query={"state": "paused", "metadata": "suite=other"})
        self.assertEqual([(x["sandboxID"], x["state"]) for x in o], [(c, "paused")])
        st, o, _ = call("GET", "/sandboxes", query={"metadata": "suite=other"})  # v1: running only
        self.assertEqual((st, o), (200, []))

        # one at a time, newest first, then oldest first: every one once, in start order
        for order in ("desc", "asc"):
            seen, token = [], None
            while True:
                q = {"limit": 1, "order": order, **({"nextToken": token} if token else {})}
                st, o, h = call("GET", "/v2/sandboxes", query=q)
                self.assertEqual(st, 200)
                seen += [(x["startedAt"], x["sandboxID"]) for x in o]
                token = h.get("X-Next-Token")
                if not token:
                    break
            self.assertEqual(len(seen), len(set(seen)))
            self.assertEqual(seen, sorted(seen, reverse=order == "desc"))
            self.assertTrue(mine <= {s for _, s in seen})

        for q in ({"limit": 0}, {"limit": 101}, {"state": "dead"}, {"order": "up"}, {"nextToken": "zz"},
                  {"startedAfter": "yesterday"}, {"metadata": "novalue"}):
            st, o, _ = call("GET", "/v2/sandboxes", query=q)
            self.assertEqual((st, o["code"]), (400, 400), q)
        for s in mine:
            self.assertEqual(call("DELETE", "/sandboxes/" + s)[0], 204)


if __name__ == "__main__":
    harness.main()
