#!/usr/bin/env node
// The server's built-in upload page (GET /) in headless Chromium, driven by playwright-core.
// Prints ONE JSON line; exit 0 on success, non-zero on failure.
//
//   node page.mjs --url SERVER_URL --file PATH [--reload-at FRACTION] [--cancel] [--screenshot PATH]
//                 [--throttle MIB_PER_S] [--timeout SECONDS] [--chromium /usr/bin/chromium] [--spki HASH]
//
// Always first checks the page's incremental SHA-256 (window.uploadPage.Sha256) against known
// vectors and against crypto.subtle on random inputs fed in random pieces (`sha256_selftest`).
// Then puts the file in the page's <input type=file> and:
// - by default, waits until the page shows the upload done and reads the SHA-256 it shows;
// - --reload-at F: once the server has acknowledged at least F of the bytes (the page's
//   data-confirmed), reloads the page, chooses the same file again and waits until done. ok only if
//   the page resumed (data-resumed) the SAME upload id. `put_requests` counts chunk PUTs per session;
// - --cancel: once some bytes are sent, focuses Cancel and presses Enter (keyboard), waits for the
//   page to say cancelled, and reports the server's status code for the id (`status_after_cancel`,
//   410 expected);
// - --screenshot PATH: a screenshot of the page mid-upload (just before the reload or the cancel,
//   or at ~40% otherwise).
// Uploads on loopback are too fast to catch mid-way, so with --reload-at, --cancel or --screenshot
// the page's upload bandwidth is throttled with CDP Network.emulateNetworkConditions (--throttle,
// default 8 MiB/s; 0 = off). Every wait is on page state, bounded by --timeout (default 120 s).
// --spki HASH: trust the https server's certificate key (base64 SHA-256 of its SubjectPublicKeyInfo;
// the tests' throwaway CA is not in Chromium's store).
// Every chunk PUT is recorded through the DevTools protocol: `chunk_network` says which protocol and how
// many connections they used and how many were in flight at once; `chunk_next_hop` lists the
// nextHopProtocol of their Resource Timing entries.
// Output: {ok, mode, id, sha256 (shown on the page), file_sha256, server_state, server_sha256, chunk_size,
// chunk_count, put_requests: [first session, after the reload], sha256_selftest, marks (timeline), ...};
// reload adds confirmed_at_reload, resumed, resumed_id, same_id; cancel adds status_after_cancel.
// Failures (or PAGE_DEBUG=1) add the page's console and failed requests.
import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { emit, fail, load, parseArgs, recordRequests, spkiFlags, watchdog } from './lib.mjs'

const usage = 'usage: page.mjs --url SERVER_URL --file PATH [--reload-at FRACTION] [--cancel] [--screenshot PATH] [--throttle MIB_PER_S] [--timeout SECONDS] [--chromium PATH] [--token TOKEN] [--spki HASH]'
const args = parseArgs(process.argv.slice(2), {
  url: 'string', file: 'string', 'reload-at': 'number', cancel: 'bool', screenshot: 'string',
  throttle: 'number', timeout: 'number', chromium: 'string', token: 'string', spki: 'string',
}, usage)
// --token: typed into the page's token field; the driver's own status requests send it too.
const authHeaders = args.token ? { authorization: `Bearer ${args.token}` } : {}
if (!args.url || !args.file) fail(usage, 2)
const base = args.url.replace(/\/+$/, '')
const file = path.resolve(args.file)
if (!fs.existsSync(file)) fail(`no such file: ${file}`, 2)
const chromium = args.chromium || process.env.CHROMIUM || '/usr/bin/chromium'
if (!fs.existsSync(chromium)) fail(`${chromium} not found; run scripts/webclients/setup.sh install`, 2)
const timeoutMs = (args.timeout ?? 120) * 1000
const size = fs.statSync(file).size
const reloadAt = args['reload-at']
const mode = reloadAt !== undefined ? 'reload' : args.cancel ? 'cancel' : 'upload'
const throttle = args.throttle ?? (mode !== 'upload' || args.screenshot ? 8 : 0)

const result = { client: 'built-in page', mode, url: `${base}/`, file, bytes: size, throttle_mib_s: throttle || null }
const consoleLines = []
const t0 = performance.now()
const failedRequests = []
let ctx = null
let userDataDir = null
const cleanup = async () => {
  try { if (ctx) await Promise.race([ctx.close(), new Promise((r) => setTimeout(r, 5000))]) } catch {}
  try { if (userDataDir) fs.rmSync(userDataDir, { recursive: true, force: true }) } catch {}
}
watchdog(timeoutMs + 15000, `page ${mode}`, () => ({ ...result, console: consoleLines.slice(-10), failed_requests: failedRequests }))

const fileSha256 = () => new Promise((resolve, reject) => {
  const h = crypto.createHash('sha256')
  fs.createReadStream(file).on('data', (d) => h.update(d)).on('end', () => resolve(h.digest('hex'))).on('error', reject)
})

// Runs in the page: known vectors, then random inputs in random pieces against crypto.subtle.
async function selfTest () {
  const { Sha256 } = window.uploadPage
  const enc = new TextEncoder()
  const hex = (b) => Array.from(new Uint8Array(b), (x) => x.toString(16).padStart(2, '0')).join('')
  const vectors = [
    ['', 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'],
    ['abc', 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad'],
    ['abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq', '248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1'],
    ['abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu',
      'cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1'],
  ]
  const failures = []
  for (const [m, want] of vectors) {
    const got = new Sha256().update(enc.encode(m)).hex()
    if (got !== want) failures.push(`"${m.slice(0, 10)}": ${got}`)
  }
  const million = new Sha256()
  const a1000 = enc.encode('a'.repeat(1000))
  for (let i = 0; i < 1000; i++) million.update(a1000)
  if (million.hex() !== 'cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0') failures.push('a x 1e6')
  let random = 0
  for (const n of [1, 55, 56, 63, 64, 65, 119, 120, 127, 128, 1000, 4096, 1 << 20 | 13]) {
    const data = new Uint8Array(n)
    for (let o = 0; o < n; o += 65536) crypto.getRandomValues(data.subarray(o, Math.min(n, o + 65536)))
    const want = hex(await crypto.subtle.digest('SHA-256', data))
    const h = new Sha256()
    for (let o = 0; o < n;) { const k = 1 + Math.floor(Math.random() * 200); h.update(data.subarray(o, o + k)); o += k }
    if (h.hex() !== want) failures.push(`random ${n}`)
    // midstate round trip at a 64-byte boundary, as the page stores it in localStorage
    const cut = Math.floor(n / 128) * 64
    const first = new Sha256().update(data.subarray(0, cut))
    const again = Sha256.fromState(JSON.parse(JSON.stringify(first.state()))).update(data.subarray(cut))
    if (again.hex() !== want) failures.push(`midstate ${n}`)
    random++
  }
  return { ok: failures.length === 0, vectors: vectors.length + 1, random, failures }
}

const state = (page) => page.evaluate(() => {
  const el = document.querySelector('#uploads .upload')
  if (!el) return null
  const d = el.dataset
  return {
    state: d.state, id: d.id || null, confirmed: Number(d.confirmed || 0), sent: Number(d.sent || 0),
    resumed: d.resumed === 'true', sha256: d.sha256 || null,
    shown_sha256: el.querySelector('.sha')?.textContent || null,
    link: el.querySelector('.link')?.getAttribute('href') || null,
    message: el.querySelector('.msg')?.textContent || '', error: el.querySelector('.err')?.textContent || '',
    percent: el.querySelector('.pct')?.textContent || '', speed: el.querySelector('.speed')?.textContent || '',
    eta: el.querySelector('.eta')?.textContent || '',
  }
})

// Waits (bounded) until the first upload on the page matches `cond` (any of: id, state, confirmed,
// sent as minimum byte counts), or fails. No string evaluation: the page's CSP forbids it.
async function waitUpload (page, cond, what) {
  await page.waitForFunction((c) => {
    const d = document.querySelector('#uploads .upload')?.dataset
    if (!d) return false
    if (d.state === 'error' || (c.orDone && d.state === 'done')) return true
    return (!c.id || !!d.id) && (!c.state || d.state === c.state) &&
      (c.confirmed === undefined || Number(d.confirmed || 0) >= c.confirmed) &&
      (c.sent === undefined || Number(d.sent || 0) >= c.sent)
  }, cond, { timeout: timeoutMs, polling: 50 }).catch((e) => { throw new Error(`waiting for ${what}: ${e.message.split('\n')[0]}`) })
  const s = await state(page)
  mark(what)
  if (s.state === 'error') throw new Error(`page error while waiting for ${what}: ${s.error}`)
  return s
}

const marks = []
const mark = (what) => marks.push([what, Number(((performance.now() - t0) / 1000).toFixed(2)), Date.now() % 100000])

async function shot (page) {
  if (!args.screenshot) return
  mark('screenshot')
  const out = path.resolve(args.screenshot)
  fs.mkdirSync(path.dirname(out), { recursive: true })
  await page.screenshot({ path: out })
  result.screenshot = out
  mark('screenshot taken')
  result.screenshot_state = await state(page)
}

try {
  const { chromium: pw } = await load('playwright-core')
  userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'page-chromium-'))
  process.on('exit', () => { try { fs.rmSync(userDataDir, { recursive: true, force: true }) } catch {} })
  ctx = await pw.launchPersistentContext(userDataDir, {
    executablePath: chromium,
    headless: true,
    timeout: 30000,
    viewport: { width: 900, height: 640 },
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage', ...spkiFlags(args.spki)],
  })
  result.browser_version = ctx.browser()?.version() ?? null
  const page = ctx.pages()[0] || await ctx.newPage()
  const chunkRequests = await recordRequests(ctx, page, (r) => r.method === 'PUT' && r.url.includes('/chunks/'))
  page.setDefaultTimeout(timeoutMs)
  page.on('console', (m) => consoleLines.push(`[${m.type()}] ${m.text()}`.slice(0, 400)))
  page.on('pageerror', (e) => consoleLines.push(`[pageerror] ${e.message}`.slice(0, 400)))
  page.on('requestfailed', (r) => failedRequests.push(`${r.method()} ${r.url()}: ${r.failure()?.errorText}`))
  page.on('response', (r) => { if (r.status() >= 400) failedRequests.push(`${r.request().method()} ${r.url()}: HTTP ${r.status()}`) })
  let session = 0
  const puts = [0, 0]
  page.on('request', (r) => { if (r.method() === 'PUT' && r.url().includes('/chunks/')) puts[session]++ })
  result.put_requests = puts
  result.marks = marks

  const shaTask = fileSha256()
  shaTask.catch(() => {})
  const resp = await page.goto(`${base}/`, { waitUntil: 'load', timeout: 30000 })
  result.page_status = resp?.status() ?? null
  result.page_content_type = resp?.headers()['content-type'] ?? null
  await page.waitForFunction(() => document.body.dataset.ready === 'true', null, { timeout: 30000 })
  result.server_line = await page.textContent('#server')
  result.secure_context = await page.evaluate(() => window.isSecureContext)
  result.sha256_selftest = await page.evaluate(selfTest)
  if (!result.sha256_selftest.ok) throw new Error(`incremental SHA-256 self-test failed: ${result.sha256_selftest.failures.join(', ')}`)

  if (throttle) {
    const cdp = await ctx.newCDPSession(page)
    await cdp.send('Network.enable')
    await cdp.send('Network.emulateNetworkConditions', {
      offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: throttle * 1048576,
    })
  }

  mark('self-test done')
  if (args.token) {
    await page.fill('#token', args.token)
    await page.dispatchEvent('#token', 'change')
  }
  await page.setInputFiles('#file', file)
  mark('file set')
  const first = await waitUpload(page, { id: true }, 'the upload id')
  result.id = first.id

  if (mode === 'reload') {
    const s = await waitUpload(page, { confirmed: reloadAt * size, orDone: true }, `${reloadAt} acknowledged`)
    if (s.state === 'done') throw new Error(`the upload finished before ${reloadAt} could be caught; throttle more`)
    await shot(page)
    result.confirmed_at_reload = s.confirmed
    session = 1
    await page.reload({ waitUntil: 'load' })
    await page.waitForFunction(() => document.body.dataset.ready === 'true', null, { timeout: 30000 })
    result.unfinished_after_reload = (await page.textContent('#unfinished')).trim()
    if (!result.unfinished_after_reload.includes(path.basename(file))) throw new Error(`after the reload the page does not list the unfinished upload: ${result.unfinished_after_reload}`)
    await page.setInputFiles('#file', file)
    const again = await waitUpload(page, { id: true }, 'the resumed upload id')
    result.resumed_id = again.id
    result.resumed = again.resumed
    result.resume_message = again.message
    result.same_id = again.id === result.id
  } else if (mode === 'cancel') {
    const s = await waitUpload(page, { sent: 0.2 * size }, 'some bytes sent')
    await shot(page)
    result.sent_at_cancel = s.sent
    await page.focus('#uploads .upload .cancel')
    await page.keyboard.press('Enter')
    const c = await waitUpload(page, { state: 'cancelled' }, 'the page to say cancelled')
    result.state = c.state
    result.message = c.message
    const r = await fetch(`${base}/v1/uploads/${result.id}`, { headers: authHeaders })
    result.status_after_cancel = r.status
    result.problem_after_cancel = await r.json().catch(() => null)
    result.local_storage_entries = await page.evaluate(() => Object.keys(localStorage).filter((k) => k.startsWith('upload-page:')).length)
    result.ok = r.status === 410 && result.local_storage_entries === 0
    if (!result.ok) result.error = `after cancel: HTTP ${r.status}, ${result.local_storage_entries} localStorage entries`
  } else if (args.screenshot) {
    await waitUpload(page, { sent: 0.4 * size, orDone: true }, '40% sent')
    await shot(page)
  }

  if (mode !== 'cancel') {
    const done = await waitUpload(page, { state: 'done' }, 'the upload to finish')
    Object.assign(result, {
      state: done.state, sha256: done.shown_sha256, link: done.link, message: done.message,
    })
    result.file_sha256 = await shaTask
    const r = await fetch(`${base}/v1/uploads/${done.id}`, { headers: authHeaders })
    const st = await r.json()
    Object.assign(result, { server_state: st.state, server_sha256: st.sha256, chunk_size: st.chunk_size, chunk_count: st.chunk_count })
    result.local_storage_entries = await page.evaluate(() => Object.keys(localStorage).filter((k) => k.startsWith('upload-page:')).length)
    result.chunk_network = chunkRequests.stats()
    result.chunk_next_hop = await page.evaluate(() => performance.getEntriesByType('resource')
      .filter((e) => e.name.includes('/chunks/')).map((e) => e.nextHopProtocol))
    const problems = []
    if (done.shown_sha256 !== result.file_sha256) problems.push(`page shows ${done.shown_sha256}, file is ${result.file_sha256}`)
    if (st.state !== 'completed' || st.sha256 !== result.file_sha256) problems.push(`server: ${st.state} ${st.sha256}`)
    // With a token the link is a signed URL (a link cannot carry the token).
    const plain = `/v1/uploads/${done.id}/content`
    const linkOk = args.token ? done.link?.startsWith(`${plain}?`) && done.link.includes('sig=') : done.link === plain
    if (!linkOk) problems.push(`link ${done.link}`)
    if (result.local_storage_entries !== 0) problems.push('localStorage entry left after completion')
    if (mode === 'reload' && !(result.same_id && result.resumed)) problems.push(`did not resume the same id (${result.id} then ${result.resumed_id})`)
    result.ok = problems.length === 0
    if (!result.ok) result.error = problems.join('; ')
  }
} catch (e) {
  Object.assign(result, { ok: false, error: String(e && e.message || e).split('\n')[0] })
}
result.elapsed_s = Number(((performance.now() - t0) / 1000).toFixed(3))
if (process.env.PAGE_DEBUG || !result.ok) Object.assign(result, { console: consoleLines.slice(-40), failed_requests: failedRequests.slice(-10) })
await cleanup()
emit(result)
