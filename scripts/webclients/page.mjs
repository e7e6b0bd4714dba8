#!/usr/bin/env node
// The server's built-in upload page (GET /) in headless Chromium, driven by playwright-core.
// Prints ONE JSON line; exit 0 on success, non-zero on failure.
//
//   node page.mjs --url SERVER_URL --file PATH [--pause-reload-at FRACTION] [--cancel]
//                 [--token TOKEN] [--wrong-token TOKEN] [--expect-failure] [--screenshot PATH]
//                 [--more-files PATH,PATH...]
//                 [--throttle MIB_PER_S] [--timeout SECONDS] [--chromium /usr/bin/chromium] [--spki HASH]
//
// Puts the file in the page's <input type=file> and, by default, waits until the page shows the
// upload done and reads the SHA-256 it shows and what it says about how the file was checked.
// - --pause-reload-at F: once the server has stored at least F of the bytes (the card's
//   data-confirmed), presses Pause with the keyboard, waits for the card to say paused, reloads
//   the page, checks that it lists the unfinished upload, chooses the same file again and waits
//   until done. ok only if the page resumed (data-resumed) the SAME upload id.
//   `put_requests` counts chunk PUTs per session, `run_requests` runs of chunks (one request
//   carrying the file from a chunk on).
// - --cancel: once some bytes are sent, presses Cancel with the keyboard, waits for the page to
//   say cancelled, and reports the server's status code for the id (`status_after_cancel`).
// - --token T: typed into the page's token field before choosing the file. With --wrong-token W,
//   W is typed first; the card must fail, and the failure message is reported (`failure`); then
//   T is typed and Retry pressed with the keyboard.
// - --expect-failure: the card must fail (the test makes a chunk fail for real); its message is
//   reported (`failure`), then Retry is pressed with the keyboard and the upload must finish.
// - --more-files P,Q: chosen together with --file, in that order; waits until every card is done
//   and reports the cards top to bottom (`cards`: name, state, SHA-256 shown). With
//   --wrong-token, their cards fail too and are dismissed with the keyboard (`after_dismiss`).
// - --screenshot PATH: the page mid-upload (before the pause or cancel, with the failed card, or at
//   ~40% otherwise).
// Buttons are found by their accessible role and name (as a screen reader announces them) and
// pressed with the keyboard. Uploads on loopback are too fast to catch mid-way, so with
// --pause-reload-at, --cancel or --screenshot the upload bandwidth is throttled with CDP
// Network.emulateNetworkConditions (--throttle, default 8 MiB/s; 0 = off). Every wait is on page
// state, bounded by --timeout (default 120 s).
// Output: {ok, mode, id, sha256 (shown on the page), file_sha256, server_state, server_sha256,
// chunk_size, chunk_count, token_field_visible, verification (what the card says), put_requests,
// put_without_digest, run_requests, completion_chunk_sha256 (the last completion's chunk
// digests), marks, ...}. Failures (or PAGE_DEBUG=1) add the console and failed requests.
// --spki HASH: trust the https server's certificate key (base64 SHA-256 of its
// SubjectPublicKeyInfo; the tests' throwaway CA is not in Chromium's store). The chunk PUTs' and
// runs' Resource Timing entries (in the upload Worker, which sends them) give `chunk_network`: the
// protocol each went over (nextHopProtocol) and how many were in flight at once.
import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { emit, fail, load, parseArgs, spkiFlags, timingStats, watchdog } from './lib.mjs'

const usage = 'usage: page.mjs --url SERVER_URL --file PATH [--pause-reload-at FRACTION] [--cancel] [--token TOKEN] [--wrong-token TOKEN] [--expect-failure] [--screenshot PATH] [--more-files PATH,...] [--throttle MIB_PER_S] [--timeout SECONDS] [--chromium PATH] [--spki HASH]'
const args = parseArgs(process.argv.slice(2), {
  url: 'string', file: 'string', 'pause-reload-at': 'number', cancel: 'bool', screenshot: 'string',
  throttle: 'number', timeout: 'number', chromium: 'string', token: 'string', 'wrong-token': 'string',
  'expect-failure': 'bool', 'more-files': 'string', spki: 'string',
}, usage)
if (!args.url || !args.file) fail(usage, 2)
// The driver's own status requests send the right token too.
const authHeaders = args.token ? { authorization: `Bearer ${args.token}` } : {}
const base = args.url.replace(/\/+$/, '')
const file = path.resolve(args.file)
if (!fs.existsSync(file)) fail(`no such file: ${file}`, 2)
const chromium = args.chromium || process.env.CHROMIUM || '/usr/bin/chromium'
if (!fs.existsSync(chromium)) fail(`${chromium} not found; run scripts/webclients/setup.sh install`, 2)
const timeoutMs = (args.timeout ?? 120) * 1000
const size = fs.statSync(file).size
const name = path.basename(file)
const pauseAt = args['pause-reload-at']
const mode = pauseAt !== undefined ? 'pause-reload' : args.cancel ? 'cancel' : 'upload'
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

const state = (page) => page.evaluate(() => {
  const el = document.querySelector('#uploads .upload')
  if (!el) return null
  const d = el.dataset
  const visible = (sel) => { const b = el.querySelector(sel); return !!b && !b.hidden }
  return {
    state: d.state, id: d.id || null, confirmed: Number(d.confirmed || 0), sent: Number(d.sent || 0),
    resumed: d.resumed === 'true', sha256: d.sha256 || null,
    shown_sha256: el.querySelector('.sha')?.textContent || null,
    link: el.querySelector('.link')?.getAttribute('href') || null,
    message: el.querySelector('.msg')?.textContent || '', error: el.querySelector('.err')?.textContent || '',
    verification: el.querySelector('.result details')?.textContent.replace(/\s+/g, ' ').trim() || '',
    percent: el.querySelector('.pct')?.textContent || '', speed: el.querySelector('.speed')?.textContent || '',
    eta: el.querySelector('.eta')?.textContent || '',
    buttons: ['pause', 'resume', 'retry', 'cancel', 'dismiss'].filter((b) => visible(`.${b}`)),
  }
})

// Waits (bounded) until the first upload on the page matches `cond` (any of: id, state, confirmed,
// sent as minimum byte counts), or fails; a card in error ends the wait unless `c.error` is wanted.
// No string evaluation: the page's CSP forbids it.
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
  if (s.state === 'error' && cond.state !== 'error') throw new Error(`page error while waiting for ${what}: ${s.error}`)
  return s
}

// Focuses the button a screen reader announces as `label` and presses Enter.
async function press (page, label) {
  const b = page.getByRole('button', { name: label, exact: true })
  await b.focus()
  await page.keyboard.press('Enter')
  mark(`pressed ${label}`)
}

const marks = []
const mark = (what) => marks.push([what, Number(((performance.now() - t0) / 1000).toFixed(2))])

async function shot (page) {
  if (!args.screenshot) return
  const out = path.resolve(args.screenshot)
  fs.mkdirSync(path.dirname(out), { recursive: true })
  await page.screenshot({ path: out, fullPage: true })
  result.screenshot = out
  result.screenshot_state = await state(page)
}

// Types into the token field as a person would, and leaves it (its `change` event).
async function typeToken (page, token) {
  await page.fill('#token', token)
  await page.dispatchEvent('#token', 'change')
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
  page.setDefaultTimeout(timeoutMs)
  page.on('console', (m) => consoleLines.push(`[${m.type()}] ${m.text()}`.slice(0, 400)))
  page.on('pageerror', (e) => consoleLines.push(`[pageerror] ${e.message}`.slice(0, 400)))
  // The context sees the Worker's requests too (the page's own listeners may not).
  ctx.on('requestfailed', (r) => failedRequests.push(`${r.method()} ${r.url()}: ${r.failure()?.errorText}`))
  ctx.on('response', (r) => { if (r.status() >= 400) failedRequests.push(`${r.request().method()} ${r.url()}: HTTP ${r.status()}`) })
  let session = 0
  const puts = [0, 0]
  result.put_requests = puts
  result.put_without_digest = 0
  const runs = [0, 0]
  result.run_requests = runs
  result.completion_chunk_sha256 = null
  ctx.on('request', (r) => {
    if (r.method() === 'POST' && /\/chunks(\?|$)/.test(r.url())) runs[session]++
    if (r.method() === 'POST' && r.url().endsWith('/complete')) {
      try { result.completion_chunk_sha256 = JSON.parse(r.postData() || '{}').chunk_sha256 ?? null } catch {}
    }
  })
  ctx.on('request', (r) => {
    if (r.method() !== 'PUT' || !r.url().includes('/chunks/')) return
    puts[session]++
    if (!/^sha-256=:[A-Za-z0-9+/]{43}=:$/.test(r.headers()['content-digest'] || '')) result.put_without_digest++
  })
  result.marks = marks

  const shaTask = fileSha256()
  shaTask.catch(() => {})
  const resp = await page.goto(`${base}/`, { waitUntil: 'load', timeout: 30000 })
  result.page_status = resp?.status() ?? null
  result.page_content_type = resp?.headers()['content-type'] ?? null
  result.page_csp = resp?.headers()['content-security-policy'] ?? null
  await page.waitForFunction(() => document.body.dataset.ready === 'true', null, { timeout: 30000 })
  result.server_line = await page.textContent('#server')
  result.secure_context = await page.evaluate(() => window.isSecureContext)
  result.token_field_visible = await page.isVisible('#token')

  if (throttle) {
    const cdp = await ctx.newCDPSession(page)
    await cdp.send('Network.enable')
    await cdp.send('Network.emulateNetworkConditions', {
      offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: throttle * 1048576,
    })
  }

  if (args['wrong-token'] || args.token) {
    if (!result.token_field_visible) throw new Error('the page shows no token field, but the server needs a token')
    await typeToken(page, args['wrong-token'] || args.token)
  }
  const more = (args['more-files'] || '').split(',').filter(Boolean).map((f) => path.resolve(f))
  await page.setInputFiles('#file', [file, ...more])
  mark('file set')

  if (args['wrong-token'] || args['expect-failure']) {
    const f = await waitUpload(page, { state: 'error' }, 'the card to fail')
    result.failure = { message: f.message, error: f.error, buttons: f.buttons, id: f.id }
    result.token_invalid_marked = await page.getAttribute('#token', 'aria-invalid') === 'true'
    await shot(page)
    if (more.length) {
      // The other files failed too: dismiss them from the list, with the keyboard.
      await page.waitForFunction(() => [...document.querySelectorAll('#uploads .upload')]
        .every((el) => el.dataset.state === 'error'), null, { timeout: timeoutMs, polling: 50 })
      for (const f of more) await press(page, `Dismiss the upload of ${path.basename(f)}`)
      result.after_dismiss = await page.evaluate(() => ({
        cards: [...document.querySelectorAll('#uploads .upload .name')].map((e) => e.textContent),
        focused: document.activeElement?.getAttribute('aria-label') || document.activeElement?.id || null,
      }))
      more.length = 0
    }
    if (args['wrong-token']) await typeToken(page, args.token)
    await press(page, `Retry the upload of ${name}`)
  }

  const first = await waitUpload(page, { id: true }, 'the upload id')
  result.id = first.id

  if (mode === 'pause-reload') {
    const s = await waitUpload(page, { confirmed: pauseAt * size, orDone: true }, `${pauseAt} stored`)
    if (s.state === 'done') throw new Error(`the upload finished before ${pauseAt} could be caught; throttle more`)
    await shot(page)
    await press(page, `Pause the upload of ${name}`)
    const p = await waitUpload(page, { state: 'paused' }, 'the card to say paused')
    result.paused = { message: p.message, buttons: p.buttons, confirmed: p.confirmed }
    result.focused_after_pause = await page.evaluate(() => document.activeElement?.getAttribute('aria-label'))
    const r = await fetch(`${base}/v1/uploads/${result.id}`, { headers: authHeaders })
    result.server_received_at_pause = (await r.json()).received_bytes
    session = 1
    await page.reload({ waitUntil: 'load' })
    await page.waitForFunction(() => document.body.dataset.ready === 'true', null, { timeout: 30000 })
    result.unfinished_after_reload = (await page.textContent('#unfinished')).trim()
    if (!result.unfinished_after_reload.includes(name)) throw new Error(`after the reload the page does not list the unfinished upload: ${result.unfinished_after_reload}`)
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
    await press(page, `Cancel the upload of ${name}`)
    const c = await waitUpload(page, { state: 'cancelled' }, 'the page to say cancelled')
    result.state = c.state
    result.message = c.message
    const r = await fetch(`${base}/v1/uploads/${result.id}`, { headers: authHeaders })
    result.status_after_cancel = r.status
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
      verification: done.verification, buttons_when_done: done.buttons,
    })
    result.file_sha256 = await shaTask
    const r = await fetch(`${base}/v1/uploads/${done.id}`, { headers: authHeaders })
    const st = await r.json()
    Object.assign(result, { server_state: st.state, server_sha256: st.sha256, chunk_size: st.chunk_size, chunk_count: st.chunk_count })
    if (more.length) {
      await page.waitForFunction(() => [...document.querySelectorAll('#uploads .upload')]
        .every((el) => ['done', 'error'].includes(el.dataset.state)), null, { timeout: timeoutMs, polling: 100 })
      result.cards = await page.evaluate(() => [...document.querySelectorAll('#uploads .upload')].map((el) => ({
        name: el.querySelector('.name').textContent, state: el.dataset.state, sha256: el.querySelector('.sha')?.textContent || null,
      })))
    }
    result.local_storage_entries = await page.evaluate(() => Object.keys(localStorage).filter((k) => k.startsWith('upload-page:')).length)
    const worker = page.workers()[0]
    result.chunk_network = timingStats(worker ? await worker.evaluate(() => performance.getEntriesByType('resource')
      .filter((e) => /\/chunks(\/|\?|$)/.test(e.name))
      .map((e) => ({ protocol: e.nextHopProtocol, start: e.startTime, end: e.responseEnd }))) : [])
    const problems = []
    if (done.shown_sha256 !== result.file_sha256) problems.push(`page shows ${done.shown_sha256}, file is ${result.file_sha256}`)
    if (st.state !== 'completed' || st.sha256 !== result.file_sha256) problems.push(`server: ${st.state} ${st.sha256}`)
    // With a token the link is a signed URL (a link cannot carry the token).
    const plain = `/v1/uploads/${done.id}/content`
    const linkOk = args.token ? done.link?.startsWith(`${plain}?`) && done.link.includes('sig=') : done.link === plain
    if (!linkOk) problems.push(`link ${done.link}`)
    if (result.local_storage_entries !== 0) problems.push('localStorage entry left after completion')
    if (mode === 'pause-reload' && !(result.same_id && result.resumed)) problems.push(`did not resume the same id (${result.id} then ${result.resumed_id})`)
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
