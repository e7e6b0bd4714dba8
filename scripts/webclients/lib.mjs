// Shared helpers for the web-client drivers: find the packages setup.sh installed under
// target/tools/node (not next to these scripts, so Node's own resolution can't see them),
// parse flags, print the one-line JSON result.
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'

export const HERE = path.dirname(fileURLToPath(import.meta.url))
export const ROOT = path.resolve(HERE, '../..')
export const TOOLS = process.env.WEBCLIENTS_TOOLS || path.join(ROOT, 'target/tools')
export const NODE_MODULES = path.join(TOOLS, 'node/node_modules')

// Entry file of an installed package for Node's ESM loader ("node"/"import"/"default" conditions).
export function entryOf(pkg) {
  const dir = path.join(NODE_MODULES, pkg)
  const pjPath = path.join(dir, 'package.json')
  if (!fs.existsSync(pjPath)) {
    throw new Error(`${pkg} is not installed under ${NODE_MODULES}; run scripts/webclients/setup.sh install`)
  }
  const pj = JSON.parse(fs.readFileSync(pjPath, 'utf8'))
  const pick = (e) => {
    if (typeof e === 'string') return e
    if (Array.isArray(e)) return pick(e[0])
    if (e && typeof e === 'object') {
      for (const c of ['node', 'import', 'default']) if (c in e) { const r = pick(e[c]); if (r) return r }
    }
    return null
  }
  let rel = null
  if (pj.exports) rel = pick(typeof pj.exports === 'object' && '.' in pj.exports ? pj.exports['.'] : pj.exports)
  rel ||= pj.module || pj.main || 'index.js'
  return path.join(dir, rel)
}

export async function load(pkg) {
  return import(pathToFileURL(entryOf(pkg)).href)
}

export function version(pkg) {
  return JSON.parse(fs.readFileSync(path.join(NODE_MODULES, pkg, 'package.json'), 'utf8')).version
}

// --flag value / --flag (boolean) parser. spec: { name: 'string'|'number'|'bool' }
export function parseArgs(argv, spec, usage) {
  const out = {}
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    if (a === '-h' || a === '--help') { console.error(usage); process.exit(0) }
    if (!a.startsWith('--')) fail(`unexpected argument ${a}\n${usage}`, 2)
    const name = a.slice(2)
    const kind = spec[name]
    if (!kind) fail(`unknown flag ${a}\n${usage}`, 2)
    if (kind === 'bool') { out[name] = true; continue }
    if (i + 1 >= argv.length) fail(`${a} needs a value`, 2)
    const v = argv[++i]
    out[name] = kind === 'number' ? Number(v) : v
    if (kind === 'number' && !Number.isFinite(out[name])) fail(`${a} needs a number, got ${v}`, 2)
  }
  return out
}

// Print exactly one JSON line on stdout and exit (synchronous write, so nothing is lost).
export function emit(obj, code = obj.ok ? 0 : 1) {
  fs.writeSync(1, JSON.stringify(obj) + '\n')
  process.exit(code)
}

export function fail(msg, code = 1, extra = {}) {
  emit({ ok: false, error: String(msg), ...extra }, code)
}

// Kill the whole process after ms, with a JSON failure line (every wait is bounded).
export function watchdog(ms, what, extra = () => ({})) {
  const t = setTimeout(() => {
    emit({ ...extra(), ok: false, error: `timeout after ${ms / 1000}s: ${what}` }, 124)
  }, ms)
  t.unref()
  return t
}

// Chromium flags for a test server whose certificate a throwaway CA signed: trust exactly that
// certificate's key (base64 SHA-256 of its SubjectPublicKeyInfo), as a real CA would be trusted.
export function spkiFlags(spki) {
  return spki ? [`--ignore-certificate-errors-spki-list=${spki}`] : []
}

// { requests, protocols: { h2: n, ... }, max_in_flight } of requests given as { protocol, start,
// end } (Resource Timing entries, or what recordRequests saw).
export function timingStats(all) {
  const protocols = {}
  for (const r of all) protocols[r.protocol || 'none'] = (protocols[r.protocol || 'none'] || 0) + 1
  const edges = all.flatMap((r) => [[r.start, 1], [r.end ?? Infinity, -1]]).sort((a, b) => a[0] - b[0] || a[1] - b[1])
  let now = 0
  let max = 0
  for (const [, d] of edges) { now += d; max = Math.max(max, now) }
  return { requests: all.length, protocols, max_in_flight: max }
}

// Records, through the DevTools protocol, the requests `match(request)` selects: the protocol
// and the connection each went over, and when it was in flight (sent until its answer ended).
// stats() -> { requests, protocols: { h2: n, ... }, connections, max_in_flight }.
export async function recordRequests(ctx, page, match) {
  const cdp = await ctx.newCDPSession(page)
  await cdp.send('Network.enable')
  const reqs = new Map()
  cdp.on('Network.requestWillBeSent', (e) => { if (match(e.request)) reqs.set(e.requestId, { start: e.timestamp }) })
  cdp.on('Network.responseReceived', (e) => {
    const r = reqs.get(e.requestId)
    if (r) Object.assign(r, { protocol: e.response.protocol, connection: e.response.connectionId })
  })
  const end = (e) => { const r = reqs.get(e.requestId); if (r && r.end === undefined) r.end = e.timestamp }
  cdp.on('Network.loadingFinished', end)
  cdp.on('Network.loadingFailed', end)
  return {
    stats () {
      const all = [...reqs.values()]
      return { ...timingStats(all), connections: new Set(all.map((r) => r.connection).filter((c) => c !== undefined)).size }
    },
  }
}
