#!/usr/bin/env node
// Uppy (@uppy/core + @uppy/tus) in headless Chromium, driven by playwright-core.
// Prints ONE JSON line; exit 0 on success, non-zero on failure.
//
//   node uppy.mjs --endpoint URL --file PATH [--screenshot PATH] [--chunk-size N] [--timeout SECONDS]
//                 [--chromium /usr/bin/chromium] [--upload-twice] [--page-port N] [--parallel N] [--spki HASH]
//                 [--throttle MIB_PER_S]
//
// --parallel N: tus-js-client's parallelUploads (N partial uploads at once, then a final
// concatenation). --spki HASH: trust the https endpoint's certificate key (base64 SHA-256 of its
// SubjectPublicKeyInfo). The requests to the endpoint are recorded through the DevTools protocol:
// `network` says which protocol and how many connections they used, and how many PATCHes were in
// flight at once. --throttle limits the browser's upload bandwidth (DevTools network emulation), so
// that requests last long enough on loopback to be seen in flight together.
//
// --upload-twice: after the first upload, a NEW Uppy instance in the same page (as after a reload)
// uploads the same file again: tus-js-client finds the URL in localStorage (Uppy keeps fingerprints
// on success), HEADs it and completes without sending data. ok only if it is the same URL, a HEAD
// was sent and no PATCH. This is the resume path, which also needs Upload-Length exposed.
//
// Serves uppy_page/ (and the npm packages as native ES modules, no build step) on a free
// 127.0.0.1 port, opens it in Debian's Chromium, puts the file in the page's <input type=file>
// (Uppy adds it and uploads to --endpoint), waits for Uppy's `complete` event and reports the
// upload URL from `upload-success`. The page's origin is NOT the endpoint's (other port), so this is
// a cross-origin upload: the server must allow the origin and expose Location and Upload-Offset
// (and Upload-Length, for resuming). Stops the page server and the browser before exiting.
// --page-port N serves the page on that port instead of a free one, so a server can be started
// beforehand with exactly the page's origin (`--cors-origin http://127.0.0.1:N`) rather than `*`.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { emit, fail, load, parseArgs, recordRequests, spkiFlags, version, watchdog } from './lib.mjs'
import { startPageServer } from './uppy_page/serve.mjs'

const usage = 'usage: uppy.mjs --endpoint URL --file PATH [--screenshot PATH] [--chunk-size N] [--timeout SECONDS] [--chromium PATH] [--upload-twice] [--page-port N] [--parallel N] [--spki HASH] [--throttle MIB_PER_S]'
const args = parseArgs(process.argv.slice(2), {
  endpoint: 'string', file: 'string', screenshot: 'string', 'chunk-size': 'number', timeout: 'number', chromium: 'string',
  'upload-twice': 'bool', 'page-port': 'number', parallel: 'number', spki: 'string', throttle: 'number',
}, usage)
if (!args.endpoint || !args.file) fail(usage, 2)
const file = path.resolve(args.file)
if (!fs.existsSync(file)) fail(`no such file: ${file}`, 2)
const chromium = args.chromium || process.env.CHROMIUM || '/usr/bin/chromium'
if (!fs.existsSync(chromium)) fail(`${chromium} not found; run scripts/webclients/setup.sh install`, 2)
const timeoutS = args.timeout ?? 180
const size = fs.statSync(file).size

const result = {
  client: `@uppy/core@${version('@uppy/core')} @uppy/tus@${version('@uppy/tus')} (tus-js-client@${version('tus-js-client')}) in ${path.basename(chromium)}`,
  endpoint: args.endpoint, file, bytes: size,
}
const consoleLines = []
const failedRequests = []
let browser = null
let server = null
let userDataDir = null
const cleanup = async () => {
  try { if (browser) await Promise.race([browser.close(), new Promise((r) => setTimeout(r, 5000))]) } catch {}
  try { if (server) server.close() } catch {}
  try { if (userDataDir) fs.rmSync(userDataDir, { recursive: true, force: true }) } catch {}
}
// The watchdog exits the process; playwright kills the browser it launched when its parent exits.
watchdog(timeoutS * 1000, 'uppy upload', () => ({ ...result, console: consoleLines.slice(-10), failed_requests: failedRequests }))

try {
  const { chromium: pw } = await load('playwright-core')
  server = await startPageServer({ port: args['page-port'] ?? 0, log: (m) => consoleLines.push(`[server] ${m}`) })
  result.page = server.url
  userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'uppy-chromium-'))
  // Also on the watchdog's exit path (playwright kills Chromium when this process exits).
  process.on('exit', () => { try { fs.rmSync(userDataDir, { recursive: true, force: true }) } catch {} })
  // Flags from the machine notes: the closed network refuses Chromium's background connections.
  const ctx = await pw.launchPersistentContext(userDataDir, {
    executablePath: chromium,
    headless: true,
    timeout: 30000,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage', ...spkiFlags(args.spki)],
  })
  browser = ctx
  result.browser_version = ctx.browser()?.version() ?? null
  const page = ctx.pages()[0] || await ctx.newPage()
  const network = await recordRequests(ctx, page, (r) => r.url.startsWith(args.endpoint) && r.method === 'PATCH')
  if (args.throttle) {
    const cdp = await ctx.newCDPSession(page)
    await cdp.send('Network.enable')
    await cdp.send('Network.emulateNetworkConditions', {
      offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: args.throttle * 1048576,
    })
  }
  page.setDefaultTimeout(timeoutS * 1000)
  page.on('console', (m) => consoleLines.push(`[${m.type()}] ${m.text()}`.slice(0, 400)))
  page.on('pageerror', (e) => consoleLines.push(`[pageerror] ${e.message}`.slice(0, 400)))
  page.on('requestfailed', (r) => failedRequests.push(`${r.method()} ${r.url()}: ${r.failure()?.errorText}`))
  const requests = {}
  page.on('request', (r) => { if (r.url().startsWith(args.endpoint)) requests[r.method()] = (requests[r.method()] || 0) + 1 })
  result.requests = requests
  page.on('response', (r) => { if (r.status() >= 400) failedRequests.push(`${r.request().method()} ${r.url()}: HTTP ${r.status()}`) })
  await page.goto(server.url, { waitUntil: 'load', timeout: 30000 })
  await page.waitForFunction(() => window.uppyTest, null, { timeout: 30000 })
  result.page_versions = await page.evaluate(() => window.uppyTest.versions)
  await page.evaluate((o) => window.uppyTest.start(o), { endpoint: args.endpoint, chunkSize: args['chunk-size'] || null, parallel: args.parallel || null })
  await page.setInputFiles('#file', file)
  const t0 = performance.now()
  const out = await page.evaluate(() => window.uppyTest.done())
  result.wall_s = Number(((performance.now() - t0) / 1000).toFixed(3))
  if (args.screenshot) {
    fs.mkdirSync(path.dirname(path.resolve(args.screenshot)), { recursive: true })
    await page.screenshot({ path: args.screenshot, fullPage: true })
    result.screenshot = path.resolve(args.screenshot)
  }
  Object.assign(result, out)
  result.network = network.stats()
  if (result.ok) result.url = out.uploadURL
  else { result.console = consoleLines.slice(-10); result.failed_requests = failedRequests }
  if (result.ok && result.elapsed_s) result.mib_per_s = Number((size / 1048576 / result.elapsed_s).toFixed(1))
  if (result.ok && args['upload-twice']) {
    const before = { ...requests }
    await page.evaluate((o) => window.uppyTest.start(o), { endpoint: args.endpoint, chunkSize: args['chunk-size'] || null })
    await page.setInputFiles('#file', []) // same file again: clear first so `change` fires
    await page.setInputFiles('#file', file)
    const again = await page.evaluate(() => window.uppyTest.done())
    const delta = Object.fromEntries(Object.keys(requests).map((m) => [m, requests[m] - (before[m] || 0)]).filter(([, n]) => n))
    result.second = { ok: again.ok, url: again.uploadURL, error: again.error, requests: delta, events: again.events }
    if (!again.ok) Object.assign(result, { ok: false, error: `second upload: ${again.error}`, console: consoleLines.slice(-10) })
    else if (again.uploadURL !== result.url) Object.assign(result, { ok: false, error: `second upload went to a new URL ${again.uploadURL}` })
    else if (!delta.HEAD || delta.PATCH || delta.POST) Object.assign(result, { ok: false, error: `second upload did not resume via HEAD: ${JSON.stringify(delta)}` })
  }
} catch (e) {
  Object.assign(result, { ok: false, error: String(e && e.message || e).split('\n')[0], console: consoleLines.slice(-10), failed_requests: failedRequests })
}
await cleanup()
emit(result)
