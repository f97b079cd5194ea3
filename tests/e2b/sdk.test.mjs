// emberfs-e2b driven by the published E2B JavaScript SDK (npm `e2b`, the
// version pinned in package.json), against real guests: every flow of issue 19.
//
// tests/integration/test_e2b.py starts the daemon, a template whose image has
// /bin/bash (the SDK runs `/bin/bash -l -c CMD`) and emberfs-e2b, then runs
//   node --test tests/e2b/sdk.test.mjs
// with:
//   E2B_API_KEY, E2B_API_URL, E2B_SANDBOX_URL   as a user would set them
//   E2B_TEMPLATE     the emberfs template to create sandboxes of (default python)
//   EMBERFS_MOUNT    the emberfs mount: the test checks what the SDK did there
//   E2B_TEST_NET=1   the daemon runs with --net: the network allow/deny flow runs
//
// The tests run in order (node:test runs a describe's tests one after the
// other) and share one sandbox, S, made in before(); a test that needs a
// sandbox of its own makes it and kills it.
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import crypto from 'node:crypto'
import fs from 'node:fs'
import {
  Sandbox,
  CommandExitError,
  AuthenticationError,
  NotFoundError,
  SandboxNotFoundError,
} from 'e2b'

const T = process.env.E2B_TEMPLATE || 'python'
const MOUNT = process.env.EMBERFS_MOUNT
const NET = process.env.E2B_TEST_NET === '1'
// a label of this run: Sandbox.list filters on it, so sandboxes of anyone else never count
const RUN = `run${process.pid}x${Date.now() % 1000000}`
const SB_TIMEOUT_MS = 300_000

assert.ok(MOUNT, 'EMBERFS_MOUNT must name the emberfs mount')
assert.ok(process.env.E2B_API_KEY, 'E2B_API_KEY must be set')

// ---- helpers

const sbDir = (id) => `${MOUNT}/templates/${T}/sandboxes/${id}`
const mountText = (p) => fs.readFileSync(p, 'utf8')
const mountJson = (p) => JSON.parse(mountText(p))
const sha256 = (b) => crypto.createHash('sha256').update(b).digest('hex')
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

async function waitFor(what, pred, ms = 15_000, every = 100) {
  const deadline = Date.now() + ms
  for (;;) {
    const v = await pred()
    if (v) return v
    if (Date.now() > deadline) assert.fail(`not within ${ms} ms: ${what}`)
    await sleep(every)
  }
}

const gone = (p) => !fs.existsSync(p)

// Every sandbox a test made, killed in after() if the test did not get to it.
const made = new Set()
async function create(opts = {}) {
  const s = await Sandbox.create(T, { timeoutMs: SB_TIMEOUT_MS, ...opts, metadata: { suite: RUN, ...(opts.metadata || {}) } })
  made.add(s.sandboxId)
  return s
}
async function kill(s) {
  const ok = await s.kill()
  made.delete(s.sandboxId)
  return ok
}

// The flows after the create test use its sandbox: without one they fail at once, saying why.
const needS = () => assert.ok(S, 'no sandbox: the Sandbox.create test failed')

// The error an async call rejects with (fails if it resolves).
async function rejection(p) {
  try {
    const v = await p
    assert.fail(`expected a rejection, got ${JSON.stringify(v)}`)
  } catch (e) {
    if (e instanceof assert.AssertionError) throw e
    return e
  }
}

// ---- the flows

let S // the shared sandbox
const ENVS = { E2B_T_FOO: 'bar with spaces', E2B_T_EMPTYISH: '=x=' }
const META = { role: 'main', owner: 'team-α' }

describe('emberfs-e2b through the e2b SDK', { concurrency: false }, () => {
  after(async () => {
    for (const id of made) {
      try {
        await Sandbox.kill(id)
      } catch (e) {
        console.error(`after: kill of ${id}: ${e}`)
      }
    }
  })

  // -- auth (no sandbox needed)

  it('a wrong API key is AuthenticationError (401), and creates nothing', async () => {
    const before = fs.readdirSync(`${MOUNT}/templates/${T}/sandboxes`).length
    const bad = 'e2b_' + '0123456789abcdef'.repeat(2)
    const e = await rejection(Sandbox.create(T, { apiKey: bad }))
    assert.ok(e instanceof AuthenticationError, `${e?.constructor?.name}: ${e}`)
    const e2 = await rejection(Sandbox.list({ apiKey: bad }).nextItems())
    assert.ok(e2 instanceof AuthenticationError, `${e2}`)
    const e3 = await rejection(Sandbox.create(T, { apiKey: 'not-a-key' }))
    assert.ok(e3 instanceof AuthenticationError, `${e3}`)
    assert.equal(fs.readdirSync(`${MOUNT}/templates/${T}/sandboxes`).length, before)
  })

  it('a missing API key: the SDK refuses, and the server answers 401 with E2B\'s error body', async () => {
    const saved = process.env.E2B_API_KEY
    delete process.env.E2B_API_KEY
    try {
      const e = await rejection(Sandbox.create(T, { apiKey: undefined }))
      assert.ok(e instanceof AuthenticationError, `${e}`)
    } finally {
      process.env.E2B_API_KEY = saved
    }
    const res = await fetch(`${process.env.E2B_API_URL}/v2/sandboxes`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ templateID: T }),
    })
    assert.equal(res.status, 401)
    const body = await res.json()
    assert.equal(body.code, 401)
    assert.equal(typeof body.message, 'string')
  })

  // -- create

  it('Sandbox.create(template, {timeoutMs, metadata, envs}): in the mount with its timeout, metadata and env', async () => {
    S = await create({ metadata: META, envs: ENVS })
    assert.match(S.sandboxId, /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/)
    const st = mountJson(`${sbDir(S.sandboxId)}/status`)
    assert.equal(st.template, T)
    assert.equal(st.state, 'ready')
    const to = mountJson(`${sbDir(S.sandboxId)}/timeout`)
    assert.equal(to.timeout_s, SB_TIMEOUT_MS / 1000)
    assert.ok(to.left_ms > 0 && to.left_ms <= SB_TIMEOUT_MS, JSON.stringify(to))
    assert.deepEqual(mountJson(`${sbDir(S.sandboxId)}/metadata`), { suite: RUN, ...META })
    const env = mountText(`${sbDir(S.sandboxId)}/env`)
    for (const [k, v] of Object.entries(ENVS)) assert.ok(env.split('\n').includes(`${k}=${v}`), env)
    assert.ok(fs.existsSync(`${MOUNT}/live/${S.sandboxId}`))
  })

  it('create: envVars are in the environment of commands; a command\'s envs win', async () => {
    needS()
    const r = await S.commands.run('printf "%s|%s" "$E2B_T_FOO" "$E2B_T_EMPTYISH"')
    assert.equal(r.stdout, 'bar with spaces|=x=')
    const r2 = await S.commands.run('printf "%s" "$E2B_T_FOO"', { envs: { E2B_T_FOO: 'mine' } })
    assert.equal(r2.stdout, 'mine')
  })

  it('create: network allowOut/denyOut become the sandbox\'s egress policy', { skip: !NET && 'the daemon runs without --net' }, async () => {
    // E2B: allowOut wins over denyOut. 10.9.9.1 allowed, the rest of 10.9.9.0/24 denied, anything else allowed.
    const n = await create({ network: { allowOut: ['10.9.9.1'], denyOut: ['10.9.9.0/24'] } })
    try {
      const pol = mountText(`${sbDir(n.sandboxId)}/egress`)
      const lines = pol.split('\n').filter((l) => l && !l.startsWith('#'))
      const a = lines.findIndex((l) => /^allow 10\.9\.9\.1\/32$/.test(l))
      const d = lines.findIndex((l) => /^deny 10\.9\.9\.0\/24$/.test(l))
      assert.ok(a >= 0 && d >= 0 && a < d, `egress policy:\n${pol}`)
      assert.ok(!lines.includes('default deny'), pol)
      // a denied TCP connect is refused at once (a reset), not left to time out
      const r = await n.commands.run('timeout 10 bash -c "echo > /dev/tcp/10.9.9.2/80" 2>&1; echo rc=$?', { timeoutMs: 30_000 })
      assert.match(r.stdout, /Connection refused/)
    } finally {
      await kill(n)
    }
    // denyOut everything but one address: the allow first, then everything denied
    // (as "default deny" or as a last rule "deny 0.0.0.0/0")
    const m = await create({ network: { denyOut: ['0.0.0.0/0'], allowOut: ['10.9.9.1'] } })
    try {
      const lines = mountText(`${sbDir(m.sandboxId)}/egress`).split('\n').filter((l) => l && !l.startsWith('#'))
      const rules = lines.filter((l) => !l.startsWith('default '))
      assert.equal(rules[0], 'allow 10.9.9.1/32', lines.join('\n'))
      assert.ok(lines.includes('default deny') || rules[rules.length - 1] === 'deny 0.0.0.0/0', lines.join('\n'))
      const r = await m.commands.run('timeout 10 bash -c "echo > /dev/tcp/10.9.9.2/80" 2>&1; echo rc=$?', { timeoutMs: 30_000 })
      assert.match(r.stdout, /Connection refused/)
    } finally {
      await kill(m)
    }
  })

  // -- commands

  it('commands.run foreground: stdout byte-exact, exit code 0', async () => {
    needS()
    const r = await S.commands.run('echo hi')
    assert.equal(r.exitCode, 0)
    assert.equal(r.stdout, 'hi\n')
    assert.equal(r.stderr, '')
    const r2 = await S.commands.run('printf "a\\tb\\r\\nü€\\0z"; printf "to err\\n" >&2')
    assert.equal(r2.stdout, 'a\tb\r\nü€\0z')
    assert.equal(r2.stderr, 'to err\n')
  })

  it('commands.run: a failing command raises CommandExitError with its exit code', async () => {
    needS()
    const e = await rejection(S.commands.run('echo out; echo err >&2; exit 3'))
    assert.ok(e instanceof CommandExitError, `${e?.constructor?.name}: ${e}`)
    assert.equal(e.exitCode, 3)
    assert.equal(e.stdout, 'out\n')
    assert.equal(e.stderr, 'err\n')
    const e2 = await rejection(S.commands.run('no-such-program-here'))
    assert.ok(e2 instanceof CommandExitError, `${e2}`)
    assert.equal(e2.exitCode, 127)
  })

  it('commands.run background: onStdout/onStderr get the output as it comes', async () => {
    needS()
    const out = []
    const err = []
    const h = await S.commands.run('for i in 1 2 3; do echo o$i; echo e$i >&2; sleep 0.2; done', {
      background: true,
      onStdout: (d) => out.push(d),
      onStderr: (d) => err.push(d),
    })
    assert.ok(Number.isInteger(h.pid) && h.pid > 0, `pid ${h.pid}`)
    const r = await h.wait()
    assert.equal(r.exitCode, 0)
    assert.equal(out.join(''), 'o1\no2\no3\n')
    assert.equal(err.join(''), 'e1\ne2\ne3\n')
    assert.equal(r.stdout, 'o1\no2\no3\n')
    assert.equal(r.stderr, 'e1\ne2\ne3\n')
  })

  it('commands: stdin with stdin:true (sendStdin, closeStdin)', async () => {
    needS()
    const h = await S.commands.run('head -n 1', { background: true, stdin: true })
    await S.commands.sendStdin(h.pid, 'hello stdin\n')
    const r = await h.wait()
    assert.equal(r.stdout, 'hello stdin\n')
    // bytes, then EOF
    const h2 = await S.commands.run('wc -c', { background: true, stdin: true })
    await h2.sendStdin(new Uint8Array([0, 1, 2, 255]))
    await S.commands.sendStdin(h2.pid, 'abc')
    await S.commands.closeStdin(h2.pid)
    const r2 = await h2.wait()
    assert.equal(r2.stdout.trim(), '7')
  })

  it('commands.kill of a background command; commands.list', async () => {
    needS()
    const h = await S.commands.run('sleep 120', { background: true })
    const h2 = await S.commands.run('sleep 121', { background: true })
    const list = await S.commands.list()
    const mine = list.find((p) => p.pid === h.pid)
    assert.ok(mine, `pid ${h.pid} not in ${JSON.stringify(list)}`)
    assert.ok([mine.cmd, ...mine.args].join(' ').includes('sleep 120'), JSON.stringify(mine))
    assert.ok(list.find((p) => p.pid === h2.pid))
    assert.equal(await S.commands.kill(h.pid), true)
    const e = await rejection(h.wait())
    assert.ok(e instanceof CommandExitError, `${e}`)
    assert.notEqual(e.exitCode, 0)
    assert.equal(await h2.kill(), true)
    await rejection(h2.wait())
    await waitFor('the killed commands leave commands.list', async () => {
      const l = await S.commands.list()
      return !l.some((p) => p.pid === h.pid || p.pid === h2.pid)
    })
    assert.equal(await S.commands.kill(h.pid), false)
  })

  it('commands.connect(pid) from a second client after the first disconnected: the command kept running', async () => {
    needS()
    const first = []
    const h = await S.commands.run('for i in 1 2 3 4 5 6 7 8; do echo line$i; sleep 0.4; done; exit 4', {
      background: true,
      onStdout: (d) => first.push(d),
    })
    await waitFor('the first line', () => first.join('').includes('line1'), 20_000, 20)
    await h.disconnect()
    const S2 = await Sandbox.connect(S.sandboxId) // a second client object
    assert.equal(S2.sandboxId, S.sandboxId)
    const seen = []
    const h2 = await S2.commands.connect(h.pid, { onStdout: (d) => seen.push(d) })
    assert.equal(h2.pid, h.pid)
    const e = await rejection(h2.wait())
    assert.ok(e instanceof CommandExitError, `${e}`)
    assert.equal(e.exitCode, 4)
    assert.ok(seen.join('').includes('line8\n'), `after reconnecting: ${JSON.stringify(seen.join(''))}`)
    assert.ok(!first.join('').includes('line8'), 'the first client got output after it disconnected')
  })

  // -- files

  it('files.write/read text', async () => {
    needS()
    const text = 'hello ✓\nsecond line\n'
    const w = await S.files.write('/tmp/e2b/hello.txt', text)
    assert.equal(w.path, '/tmp/e2b/hello.txt')
    assert.equal(w.name, 'hello.txt')
    assert.equal(await S.files.read('/tmp/e2b/hello.txt'), text)
    assert.equal((await S.commands.run('cat /tmp/e2b/hello.txt')).stdout, text)
    // the same bytes through the mount's view of the guest
    assert.equal(fs.readFileSync(`${MOUNT}/live/${S.sandboxId}/tmp/e2b/hello.txt`, 'utf8'), text)
    // an empty file
    await S.files.write('/tmp/e2b/empty', '')
    assert.equal(await S.files.read('/tmp/e2b/empty'), '')
  })

  it('files.write/read binary (SHA-256)', async () => {
    needS()
    const data = crypto.randomBytes(300_001)
    data[0] = 0
    data[1] = 0xff
    const ab = data.buffer.slice(data.byteOffset, data.byteOffset + data.length)
    await S.files.write('/tmp/e2b/bin.dat', ab)
    const back = await S.files.read('/tmp/e2b/bin.dat', { format: 'bytes' })
    assert.equal(back.length, data.length)
    assert.equal(sha256(back), sha256(data))
    const g = await S.commands.run('sha256sum /tmp/e2b/bin.dat')
    assert.equal(g.stdout.split(' ')[0], sha256(data))
    assert.equal(sha256(fs.readFileSync(`${MOUNT}/live/${S.sandboxId}/tmp/e2b/bin.dat`)), sha256(data))
    const blob = await S.files.read('/tmp/e2b/bin.dat', { format: 'blob' })
    assert.equal(sha256(Buffer.from(await blob.arrayBuffer())), sha256(data))
  })

  it('files: a 32 MiB file streamed both ways (SHA-256)', { timeout: 300_000 }, async () => {
    needS()
    const MIB = 32
    const chunk = crypto.randomBytes(1 << 20)
    const h = crypto.createHash('sha256')
    let i = 0
    const stream = new ReadableStream({
      pull(c) {
        if (i === MIB) return c.close()
        const b = Buffer.concat([chunk.subarray(i * 7919 % chunk.length), chunk.subarray(0, i * 7919 % chunk.length)])
        h.update(b)
        c.enqueue(new Uint8Array(b))
        i++
      },
    })
    await S.files.write('/tmp/e2b/big.bin', stream, { requestTimeoutMs: 240_000 })
    const want = h.digest('hex')
    const rs = await S.files.read('/tmp/e2b/big.bin', { format: 'stream', requestTimeoutMs: 240_000 })
    const h2 = crypto.createHash('sha256')
    let n = 0
    for await (const b of rs) {
      h2.update(b)
      n += b.length
    }
    assert.equal(n, MIB << 20)
    assert.equal(h2.digest('hex'), want)
    const g = await S.commands.run('sha256sum /tmp/e2b/big.bin')
    assert.equal(g.stdout.split(' ')[0], want)
    await S.files.remove('/tmp/e2b/big.bin')
  })

  it('files.list/exists/makeDir/rename/remove', async () => {
    needS()
    assert.equal(await S.files.makeDir('/tmp/e2b/d1/d2'), true)
    assert.equal(await S.files.makeDir('/tmp/e2b/d1/d2'), false)
    await S.files.write('/tmp/e2b/d1/f.txt', '12345')
    const l = await S.files.list('/tmp/e2b/d1')
    const byName = Object.fromEntries(l.map((e) => [e.name, e]))
    assert.deepEqual(Object.keys(byName).sort(), ['d2', 'f.txt'])
    assert.equal(byName['d2'].type, 'dir')
    assert.equal(byName['f.txt'].type, 'file')
    assert.equal(byName['f.txt'].size, 5)
    assert.equal(byName['f.txt'].path, '/tmp/e2b/d1/f.txt')
    assert.equal(await S.files.exists('/tmp/e2b/d1/f.txt'), true)
    assert.equal(await S.files.exists('/tmp/e2b/d1/d2'), true)
    assert.equal(await S.files.exists('/tmp/e2b/d1/nope'), false)
    const info = await S.files.getInfo('/tmp/e2b/d1/f.txt')
    assert.equal(info.size, 5)
    const r = await S.files.rename('/tmp/e2b/d1/f.txt', '/tmp/e2b/d1/d2/g.txt')
    assert.equal(r.path, '/tmp/e2b/d1/d2/g.txt')
    assert.equal(await S.files.exists('/tmp/e2b/d1/f.txt'), false)
    assert.equal(await S.files.read('/tmp/e2b/d1/d2/g.txt'), '12345')
    await S.files.remove('/tmp/e2b/d1/d2/g.txt')
    assert.equal(await S.files.exists('/tmp/e2b/d1/d2/g.txt'), false)
    await S.files.remove('/tmp/e2b/d1') // a directory with what is in it
    assert.equal(await S.files.exists('/tmp/e2b/d1'), false)
    const e = await rejection(S.files.read('/tmp/e2b/no-such-file'))
    assert.ok(e instanceof NotFoundError, `${e?.constructor?.name}: ${e}`)
  })

  // -- the control plane

  it('Sandbox.getInfo', async () => {
    needS()
    const info = await Sandbox.getInfo(S.sandboxId)
    assert.equal(info.sandboxId, S.sandboxId)
    assert.equal(info.templateId, T)
    assert.equal(info.state, 'running')
    assert.deepEqual(info.metadata, { suite: RUN, ...META })
    assert.ok(info.startedAt instanceof Date && !isNaN(info.startedAt))
    assert.ok(info.startedAt.getTime() <= Date.now() + 1000)
    const left = info.endAt.getTime() - Date.now()
    assert.ok(left > 0 && left <= SB_TIMEOUT_MS + 2000, `endAt ${info.endAt.toISOString()}`)
    assert.ok(info.cpuCount >= 1)
    assert.ok(info.memoryMB >= 32)
    assert.match(info.envdVersion, /^\d+\.\d+\.\d+/)
    const same = await S.getInfo()
    assert.equal(same.sandboxId, S.sandboxId)
  })

  it('setTimeout moves the deadline (mount timeout file, getInfo endAt)', async () => {
    needS()
    await S.setTimeout(120_000)
    const to = mountJson(`${sbDir(S.sandboxId)}/timeout`)
    assert.equal(to.timeout_s, 120)
    const info = await S.getInfo()
    const left = info.endAt.getTime() - Date.now()
    assert.ok(left > 100_000 && left <= 122_000, `endAt ${info.endAt.toISOString()}`)
    await S.setTimeout(SB_TIMEOUT_MS)
  })

  it('getMetrics', async () => {
    needS()
    const m = await S.getMetrics()
    assert.ok(Array.isArray(m) && m.length >= 1, JSON.stringify(m))
    const x = m[m.length - 1]
    assert.ok(x.timestamp instanceof Date && !isNaN(x.timestamp))
    for (const k of ['cpuUsedPct', 'cpuCount', 'memUsed', 'memTotal', 'diskUsed', 'diskTotal'])
      assert.equal(typeof x[k], 'number', `${k}: ${JSON.stringify(x)}`)
    assert.ok(x.memTotal > 0 && x.memUsed > 0 && x.memUsed <= x.memTotal, JSON.stringify(x))
    assert.ok(x.cpuCount >= 1)
  })

  it('Sandbox.list: metadata filter and paging (limit, nextToken)', async () => {
    needS()
    const more = [await create({ metadata: { role: 'list', idx: '1' } }), await create({ metadata: { role: 'list', idx: '2' } })]
    const all = new Set([S.sandboxId, ...more.map((s) => s.sandboxId)])
    const p = Sandbox.list({ query: { metadata: { suite: RUN } }, limit: 2 })
    const page1 = await p.nextItems()
    assert.equal(page1.length, 2)
    assert.equal(p.hasNext, true)
    assert.ok(p.nextToken)
    // a new paginator from the token gets the rest
    const p2 = Sandbox.list({ query: { metadata: { suite: RUN } }, limit: 2, nextToken: p.nextToken })
    const page2 = await p2.nextItems()
    assert.equal(page2.length, 1)
    assert.equal(p2.hasNext, false)
    const got = [...page1, ...page2].map((x) => x.sandboxId)
    assert.deepEqual(new Set(got), all)
    assert.equal(got.length, 3)
    for (const x of [...page1, ...page2]) {
      assert.equal(x.templateId, T)
      assert.equal(x.state, 'running')
      assert.equal(x.metadata.suite, RUN)
    }
    // two keys: AND
    const one = await Sandbox.list({ query: { metadata: { suite: RUN, idx: '2' } } }).nextItems()
    assert.deepEqual(one.map((x) => x.sandboxId), [more[1].sandboxId])
    const none = await Sandbox.list({ query: { metadata: { suite: RUN, idx: 'nope' } } }).nextItems()
    assert.deepEqual(none, [])
    // the timeout applies: one of them gets 3 s and is gone from the mount after it
    await more[0].setTimeout(3_000)
    await waitFor(`${more[0].sandboxId} gone after its timeout`, () => gone(sbDir(more[0].sandboxId)), 20_000)
    made.delete(more[0].sandboxId)
    const e = await rejection(Sandbox.getInfo(more[0].sandboxId))
    assert.ok(e instanceof NotFoundError, `${e}`)
    assert.equal(await kill(more[1]), true)
  })

  it('pause() then Sandbox.connect(id) resumes it; files and processes survived', async () => {
    needS()
    await S.files.write('/tmp/e2b/before-pause.txt', 'still here\n')
    const bg = await S.commands.run('sleep 600', { background: true })
    await bg.disconnect()
    assert.equal(await S.pause(), true)
    assert.equal((await Sandbox.getInfo(S.sandboxId)).state, 'paused')
    const st = mountJson(`${sbDir(S.sandboxId)}/status`)
    assert.ok(['paused', 'hibernated'].includes(st.state), `mount state ${st.state}`)
    assert.equal(await S.pause(), false) // already paused
    const listed = await Sandbox.list({ query: { metadata: { suite: RUN }, state: ['paused'] } }).nextItems()
    assert.deepEqual(listed.map((x) => x.sandboxId), [S.sandboxId])
    const R = await Sandbox.connect(S.sandboxId)
    assert.equal((await Sandbox.getInfo(S.sandboxId)).state, 'running')
    assert.equal(mountJson(`${sbDir(S.sandboxId)}/status`).state, 'ready')
    assert.equal(await R.files.read('/tmp/e2b/before-pause.txt'), 'still here\n')
    assert.ok((await R.commands.list()).some((p) => p.pid === bg.pid), 'the background command did not survive the pause')
    assert.equal(await R.commands.kill(bg.pid), true)
    assert.equal((await R.commands.run('echo back')).stdout, 'back\n')
  })

  it('kill(): the sandbox is gone, from the API and from the mount', async () => {
    needS()
    const id = S.sandboxId
    assert.equal(await kill(S), true)
    await waitFor(`${sbDir(id)} gone from the mount`, () => gone(sbDir(id)))
    await waitFor(`${MOUNT}/live/${id} gone from the mount`, () => gone(`${MOUNT}/live/${id}`))
    assert.equal(await Sandbox.kill(id), false)
    const e = await rejection(Sandbox.getInfo(id))
    assert.ok(e instanceof NotFoundError, `${e}`)
    assert.equal(await S.isRunning(), false)
    const e2 = await rejection(Sandbox.connect(id))
    assert.ok(e2 instanceof SandboxNotFoundError || e2 instanceof NotFoundError, `${e2}`)
    const left = await Sandbox.list({ query: { metadata: { suite: RUN } } }).nextItems()
    assert.deepEqual(left, [])
  })

  it('a wrong access token is refused on the sandbox routes', async () => {
    const s = await create()
    try {
      const info = await s.getInfo()
      const forged = new Sandbox({ sandboxId: s.sandboxId, envdVersion: info.envdVersion, envdAccessToken: 'f'.repeat(64) })
      const e = await rejection(forged.commands.run('echo should-not-run'))
      assert.ok(e instanceof AuthenticationError, `${e?.constructor?.name}: ${e}`)
      const e2 = await rejection(forged.files.read('/etc/hostname'))
      assert.ok(e2 instanceof AuthenticationError || /401|unauth/i.test(String(e2)), `${e2?.constructor?.name}: ${e2}`)
      const none = new Sandbox({ sandboxId: s.sandboxId, envdVersion: info.envdVersion })
      const e3 = await rejection(none.commands.run('echo should-not-run'))
      assert.ok(e3 instanceof AuthenticationError, `${e3?.constructor?.name}: ${e3}`)
      // the right one still works
      assert.equal((await s.commands.run('echo ok')).stdout, 'ok\n')
    } finally {
      await kill(s)
    }
  })
})
