// emberfs-e2b measured from the E2B SDK (contrib/bench.sh e2b runs it through
// contrib/bench_e2b.py, which starts the daemon, the template and emberfs-e2b).
//
// Environment: E2B_API_KEY, E2B_API_URL, E2B_SANDBOX_URL (as for the tests);
// E2B_TEMPLATE (default python); EMBERFS_MOUNT (the mount: before each create
// sample the bench waits, untimed, until the template's pool is full again,
// so every sample claims a warm slot); BENCH_E2B_POOL (the pool depth to wait
// for, default 4); BENCH_E2B_N (samples per metric, default 30; 10 warm-up
// runs are not counted for run and files).
//
// Measured:
//   create      Sandbox.create(TEMPLATE) until it resolved (the sandbox is
//               killed afterwards, not timed)
//   run         commands.run('true') round trip in one sandbox
//   files_1mib  files.write of 1 MiB of random bytes + files.read of it back
//               (format bytes, compared), in one sandbox
// Output: a table on stderr; JSON lines on stdout:
//   {"bench":"e2b","metric":"create","n":..,"p50_ms":..,"p99_ms":..,"mean_ms":..,"pool":..}
//   {"bench":"e2b","metric":"run","n":..,"p50_ms":..,"p99_ms":..,"mean_ms":..}
//   {"bench":"e2b","metric":"files_1mib","n":..,"p50_ms":..,"p99_ms":..,"write_p50_ms":..,"read_p50_ms":..}
// Percentiles: nearest rank (the ceil(p/100 * n)-th smallest sample).
import crypto from 'node:crypto'
import fs from 'node:fs'
import { performance } from 'node:perf_hooks'
import { Sandbox } from 'e2b'

const T = process.env.E2B_TEMPLATE || 'python'
const MOUNT = process.env.EMBERFS_MOUNT
const POOL = Number(process.env.BENCH_E2B_POOL || 4)
const N = Number(process.env.BENCH_E2B_N || 30)
const WARMUP = 10

const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
const log = (s) => process.stderr.write(`bench: e2b: ${s}\n`)

function pct(v, p) {
  const s = [...v].sort((a, b) => a - b)
  return s[Math.max(0, Math.ceil((p / 100) * s.length) - 1)]
}
const mean = (v) => v.reduce((a, b) => a + b, 0) / v.length
const r3 = (x) => Math.round(x * 1000) / 1000

async function poolFull(timeoutMs = 120_000) {
  if (!MOUNT) return
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const p = JSON.parse(fs.readFileSync(`${MOUNT}/templates/${T}/status`, 'utf8')).pool
    if (p.warm >= POOL && p.preparing === 0) return
    if (Date.now() > deadline) throw new Error(`pool of ${T} not at ${POOL} after ${timeoutMs} ms: ${JSON.stringify(p)}`)
    await sleep(50)
  }
}

async function timed(fn) {
  const t0 = performance.now()
  const v = await fn()
  return [performance.now() - t0, v]
}

async function benchCreate() {
  const v = []
  const paths = {}
  for (let i = 0; i < N + 2; i++) {
    await poolFull()
    await sleep(200) // a quiet daemon: the last kill's destroy is done
    const [ms, s] = await timed(() => Sandbox.create(T, { timeoutMs: 600_000 }))
    try {
      const st = JSON.parse(fs.readFileSync(`${MOUNT}/templates/${T}/sandboxes/${s.sandboxId}/status`, 'utf8'))
      paths[st.path] = (paths[st.path] || 0) + 1
    } catch {
      // no mount given
    }
    await s.kill()
    if (i >= 2) v.push(ms) // 2 warm-up creates
  }
  log(`create: paths ${JSON.stringify(paths)}`)
  return { bench: 'e2b', template: T, metric: 'create', n: v.length, p50_ms: r3(pct(v, 50)), p99_ms: r3(pct(v, 99)), mean_ms: r3(mean(v)), pool: POOL }
}

async function benchRun(s) {
  for (let i = 0; i < WARMUP; i++) await s.commands.run('true')
  const v = []
  for (let i = 0; i < N * 3; i++) v.push((await timed(() => s.commands.run('true')))[0])
  return { bench: 'e2b', template: T, metric: 'run', n: v.length, p50_ms: r3(pct(v, 50)), p99_ms: r3(pct(v, 99)), mean_ms: r3(mean(v)) }
}

async function benchFiles(s) {
  const data = crypto.randomBytes(1 << 20)
  const ab = data.buffer.slice(data.byteOffset, data.byteOffset + data.length)
  const want = crypto.createHash('sha256').update(data).digest('hex')
  const both = []
  const w = []
  const r = []
  for (let i = 0; i < WARMUP + N; i++) {
    const [wms] = await timed(() => s.files.write('/tmp/bench-1mib', ab))
    const [rms, back] = await timed(() => s.files.read('/tmp/bench-1mib', { format: 'bytes' }))
    if (crypto.createHash('sha256').update(back).digest('hex') !== want) throw new Error('files: read back differs')
    if (i < WARMUP) continue
    w.push(wms)
    r.push(rms)
    both.push(wms + rms)
  }
  return {
    bench: 'e2b', template: T, metric: 'files_1mib', n: both.length, p50_ms: r3(pct(both, 50)), p99_ms: r3(pct(both, 99)),
    write_p50_ms: r3(pct(w, 50)), read_p50_ms: r3(pct(r, 50)),
  }
}

const out = []
out.push(await benchCreate())
await poolFull()
const s = await Sandbox.create(T, { timeoutMs: 600_000 })
await poolFull() // the slot this create took is refilled before the samples, not during them
try {
  out.push(await benchRun(s))
  out.push(await benchFiles(s))
} finally {
  await s.kill()
}
const c = out[0]
log(`Sandbox.create() from a full pool of ${POOL}: p50 ${c.p50_ms} ms, p99 ${c.p99_ms} ms (n=${c.n}; target p50 <= 15 ms)`)
log(`commands.run('true'): p50 ${out[1].p50_ms} ms, p99 ${out[1].p99_ms} ms (n=${out[1].n}; target p50 <= 15 ms)`)
log(`files.write + files.read of 1 MiB: p50 ${out[2].p50_ms} ms (write ${out[2].write_p50_ms}, read ${out[2].read_p50_ms}), p99 ${out[2].p99_ms} ms (n=${out[2].n})`)
for (const o of out) process.stdout.write(JSON.stringify(o) + '\n')
