#!/usr/bin/env node
// One timed browser upload for bench/page.sh, in headless Chromium driven over a bare DevTools
// pipe (cdp.mjs: no Network or Fetch domain while measuring, as in a user's browser).
// Prints ONE JSON line; exit 0 on success, non-zero on failure.
//
//   node page_bench.mjs --client page|tusjs|uppy --url SERVER_URL --file PATH
//                       [--chunk-size BYTES] [--timeout SECONDS] [--chromium PATH]
//
// - page:  the server's built-in page (GET /), the file put in its <input type=file>.
// - tusjs: tus-js-client in the browser, one upload (no parallelUploads), --chunk-size PATCHes
//          (default 8 MiB), to SERVER_URL/files/.
// - uppy:  Uppy (@uppy/core + @uppy/tus), same chunk size, same endpoint.
// tusjs and uppy run in uppy_page/bench.html, served by uppy_page/serve.mjs on another port, so
// their uploads are cross-origin: start the server with `--cors-origin '*'`.
//
// Time: in the page, from the file input's `change` event to the client saying the upload is
// complete (the page's card turning `done`, after the server verified the whole file; tus
// clients' success callbacks). CPU: user + system time of every Chromium process (the
// descendants of this Node process, read from /proc, children's reaped time included) between
// just before the file is chosen and just after completion, also by process type.
// Output: {ok, client, bytes, seconds, mb_s, cpu_s, cpu_s_per_gb, browser_version, ...}; the
// page adds `long_tasks` (main-thread tasks over 50 ms during the upload: count, longest ms) and
// the page's own transfer figures (`stats`).
import fs from 'node:fs'
import path from 'node:path'
import { launch } from './cdp.mjs'
import { emit, fail, parseArgs, version, watchdog } from './lib.mjs'
import { startPageServer } from './uppy_page/serve.mjs'

const usage = 'usage: page_bench.mjs --client page|tusjs|uppy --url SERVER_URL --file PATH [--chunk-size BYTES] [--timeout SECONDS] [--chromium PATH]'
const args = parseArgs(process.argv.slice(2), {
  client: 'string', url: 'string', file: 'string', 'chunk-size': 'number', timeout: 'number', chromium: 'string',
}, usage)
if (!args.url || !args.file || !['page', 'tusjs', 'uppy'].includes(args.client)) fail(usage, 2)
const base = args.url.replace(/\/+$/, '')
const file = path.resolve(args.file)
if (!fs.existsSync(file)) fail(`no such file: ${file}`, 2)
const chromium = args.chromium || process.env.CHROMIUM || '/usr/bin/chromium'
if (!fs.existsSync(chromium)) fail(`${chromium} not found; run scripts/webclients/setup.sh install`, 2)
const bytes = fs.statSync(file).size
const timeoutMs = (args.timeout ?? 300) * 1000
const chunkSize = args['chunk-size'] ?? 8 << 20

const clientName = {
  page: 'built-in page',
  tusjs: `tus-js-client@${version('tus-js-client')}`,
  uppy: `@uppy/core@${version('@uppy/core')} @uppy/tus@${version('@uppy/tus')}`,
}[args.client]
const result = { client: args.client, client_name: clientName, url: base, file, bytes }
const consoleLines = []
watchdog(timeoutMs + 30000, `${args.client} upload`, () => ({ ...result, console: consoleLines.slice(-20) }))

const TICK = 100 // USER_HZ: /proc/PID/stat times are in 1/100 s on Linux
// CPU seconds (utime + stime + cutime + cstime) of every process descending from this one, in
// all and by Chromium process type (`--type=renderer`, `utility`…; `browser` without one).
function browserCpu () {
  const stats = []
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue
    try {
      const s = fs.readFileSync(`/proc/${d}/stat`, 'utf8')
      const f = s.slice(s.lastIndexOf(')') + 2).split(' ') // f[0] is field 3 (state)
      stats.push({ pid: Number(d), ppid: Number(f[1]), ticks: Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14]) })
    } catch {} // gone meanwhile
  }
  const mine = new Set([process.pid])
  let grew = true
  while (grew) {
    grew = false
    for (const p of stats) if (!mine.has(p.pid) && mine.has(p.ppid)) { mine.add(p.pid); grew = true }
  }
  const out = { total: 0 }
  for (const p of stats) {
    if (p.pid === process.pid || !mine.has(p.pid)) continue
    let type = 'other'
    try {
      const cmd = fs.readFileSync(`/proc/${p.pid}/cmdline`, 'utf8')
      if (/chrom/.test(cmd.split('\0')[0])) type = (cmd.match(/--type=([a-z-]+)/) || [null, 'browser'])[1]
      if (type === 'utility') type = (cmd.match(/--utility-sub-type=[a-z_]+\.mojom\.(\w+)/) || [null, 'utility'])[1]
    } catch {}
    out[type] = (out[type] || 0) + p.ticks / TICK
    out.total += p.ticks / TICK
  }
  return out
}
const cpuDelta = (a, b) => Object.fromEntries(Object.keys(b).map((k) => [k, Number((b[k] - (a[k] || 0)).toFixed(2))]))

// Chromium as playwright-core starts it (its default switches, headless, no startup window, a
// fresh browser context, focus emulated), so that the figures compare with the page tests'.
const FLAGS = ['--disable-field-trial-config', '--disable-background-networking', '--disable-background-timer-throttling',
  '--disable-backgrounding-occluded-windows', '--disable-back-forward-cache', '--disable-breakpad',
  '--disable-component-extensions-with-background-pages', '--disable-component-update', '--no-default-browser-check',
  '--disable-default-apps', '--disable-dev-shm-usage', '--disable-extensions',
  '--disable-features=AvoidUnnecessaryBeforeUnloadCheckSync,DestroyProfileOnBrowserClose,HttpsUpgrades,HttpsFirstBalancedModeAutoEnable,LensOverlay,MediaRouter,PaintHolding,ThirdPartyStoragePartitioning,AvoidCorsURLLoaderRestartOnRedirect,OptimizationHints,NetworkTimeServiceQuerying,AimEnabled,PreconnectToSearch',
  '--allow-pre-commit-input', '--disable-hang-monitor', '--disable-ipc-flooding-protection', '--disable-popup-blocking',
  '--disable-prompt-on-repost', '--disable-renderer-backgrounding', '--force-color-profile=srgb', '--metrics-recording-only',
  '--no-first-run', '--password-store=basic', '--use-mock-keychain', '--no-service-autorun', '--disable-search-engine-choice-screen',
  '--disable-sync', '--headless', '--hide-scrollbars', '--mute-audio',
  '--blink-settings=primaryHoverType=2,availableHoverTypes=2,primaryPointerType=4,availablePointerTypes=4',
  '--no-sandbox', '--no-startup-window',
  // as the Playwright-driven bench had them
  '--disable-gpu', '--disable-quic']

let browser = null
let pageServer = null
try {
  browser = await launch(chromium, FLAGS)
  result.browser_version = browser.version
  const { browserContextId } = await browser.send('Target.createBrowserContext', { disposeOnDetach: true })
  const { targetId } = await browser.send('Target.createTarget', { url: 'about:blank', browserContextId })
  const { sessionId } = await browser.send('Target.attachToTarget', { targetId, flatten: true })
  const send = (method, params) => browser.send(method, params, sessionId)
  await send('Emulation.setFocusEmulationEnabled', { enabled: true })
  await send('Emulation.setDeviceMetricsOverride', { width: 900, height: 640, deviceScaleFactor: 1, mobile: false })
  // Runtime (console and exceptions, for the failure report) is the only domain enabled.
  browser.on((m) => {
    if (m.sessionId !== sessionId) return
    if (m.method === 'Runtime.consoleAPICalled') consoleLines.push(`[${m.params.type}] ${m.params.args.map((a) => a.value ?? a.description ?? '').join(' ')}`.slice(0, 400))
    if (m.method === 'Runtime.exceptionThrown') consoleLines.push(`[pageerror] ${m.params.exceptionDetails.exception?.description || m.params.exceptionDetails.text}`.slice(0, 400))
  })
  await send('Runtime.enable')
  const evaluate = async (expression, awaitPromise = false) => {
    const r = await send('Runtime.evaluate', { expression, awaitPromise, returnByValue: true })
    if (r.exceptionDetails) throw new Error(r.exceptionDetails.exception?.description || r.exceptionDetails.text)
    return r.result.value
  }
  const until = async (expression, ms) => {
    const end = Date.now() + ms
    while (!(await evaluate(expression))) {
      if (Date.now() > end) throw new Error(`timed out waiting for ${expression}`)
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
  }

  if (args.client === 'page') {
    if (process.env.PAGE_ASSETS) {
      // Trying changes to the page without rebuilding the server: its assets from this directory,
      // intercepted while the page loads only.
      const csp = (await fetch(`${base}/`)).headers.get('content-security-policy')
      browser.on((m) => {
        if (m.sessionId !== sessionId || m.method !== 'Fetch.requestPaused') return
        const name = new URL(m.params.request.url).pathname.slice(1) || 'index.html'
        if (!['index.html', 'app.js', 'upload-worker.js', 'style.css'].includes(name)) {
          send('Fetch.continueRequest', { requestId: m.params.requestId })
          return
        }
        const type = name.endsWith('.js') ? 'text/javascript' : name.endsWith('.css') ? 'text/css' : 'text/html'
        send('Fetch.fulfillRequest', {
          requestId: m.params.requestId,
          responseCode: 200,
          body: fs.readFileSync(path.join(process.env.PAGE_ASSETS, name)).toString('base64'),
          responseHeaders: [{ name: 'content-type', value: type }, { name: 'content-security-policy', value: csp }],
        })
      })
      await send('Fetch.enable', { patterns: [{ urlPattern: `${base}/*` }] })
    }
    await send('Page.navigate', { url: `${base}/` })
    await until("document.body?.dataset.ready === 'true'", 30000)
    if (process.env.PAGE_ASSETS) {
      await new Promise((resolve) => setTimeout(resolve, 500)) // the worker script
      await send('Fetch.disable')
    }
    // Marks taken in the page: the input's change, the card turning done, long main-thread tasks.
    await evaluate(`(() => {
      const b = window.benchMarks = { t0: 0, t1: 0, long: [] }
      b.done = new Promise((resolve) => { b.resolve = resolve })
      document.querySelector('#file').addEventListener('change', () => { b.t0 = performance.now() }, { capture: true })
      new MutationObserver(() => {
        const s = document.querySelector('#uploads .upload')?.dataset.state
        if (!b.t1 && (s === 'done' || s === 'error')) { b.t1 = performance.now(); b.state = s; b.resolve() }
      }).observe(document.querySelector('#uploads'), { subtree: true, attributes: true, attributeFilter: ['data-state'], childList: true })
      new PerformanceObserver((l) => { for (const e of l.getEntries()) if (b.t0 && !b.t1) b.long.push(e.duration) })
        .observe({ type: 'longtask', buffered: false })
    })()`)
  } else {
    pageServer = await startPageServer({ log: (m) => consoleLines.push(`[server] ${m}`) })
    await send('Page.navigate', { url: `${pageServer.url}bench.html` })
    await until('!!window.bench', 30000)
    await evaluate(`window.bench.start(${JSON.stringify({ client: args.client, endpoint: `${base}/files/`, chunkSize })})`)
  }

  const { result: input } = await send('Runtime.evaluate', { expression: "document.querySelector('#file')" })
  // A new Chromium keeps busy for a few seconds after it starts (its top-chrome WebUI renderer
  // alone took 0.2–0.5 CPU-s), whatever the page: measure only once it is idle (at most 1 tick
  // in 300 ms), for at most 15 s.
  for (const end = Date.now() + 15000; Date.now() < end;) {
    const a = browserCpu().total
    await new Promise((resolve) => setTimeout(resolve, 300))
    if (browserCpu().total - a <= 1 / TICK + 1e-9) break
  }
  const cpu0 = browserCpu()
  await send('DOM.setFileInputFiles', { files: [file], objectId: input.objectId })
  let seconds
  if (args.client === 'page') {
    await Promise.race([evaluate('window.benchMarks.done', true), new Promise((resolve, reject) => setTimeout(() => reject(new Error('the upload did not end in time')), timeoutMs))])
    result.cpu_by_process = cpuDelta(cpu0, browserCpu())
    const m = await evaluate(`(() => {
      const b = window.benchMarks
      const el = document.querySelector('#uploads .upload')
      return { t0: b.t0, t1: b.t1, state: b.state, long: b.long, error: el.querySelector('.err')?.textContent || '', sha256: el.dataset.sha256 || null }
    })()`)
    m.stats = await evaluate('window.uploadPage?.stats?.() ?? null', true)
    if (m.state !== 'done') throw new Error(`the page's upload failed: ${m.error}`)
    seconds = (m.t1 - m.t0) / 1000
    result.sha256 = m.sha256
    result.long_tasks = { count: m.long.length, longest_ms: Math.round(Math.max(0, ...m.long)) }
    result.stats = m.stats
  } else {
    const out = await evaluate('window.bench.done()', true)
    result.cpu_by_process = cpuDelta(cpu0, browserCpu())
    if (!out.ok) throw new Error(`${args.client}: ${out.error}`)
    seconds = out.seconds
    result.upload_url = out.url
  }
  result.seconds = Number(seconds.toFixed(3))
  result.mb_s = Number((bytes / 1e6 / seconds).toFixed(1))
  result.cpu_s = result.cpu_by_process.total
  result.cpu_s_per_gb = Number((result.cpu_s / (bytes / 1e9)).toFixed(2))
  result.ok = true
} catch (e) {
  Object.assign(result, { ok: false, error: String(e && e.message || e).split('\n')[0], console: consoleLines.slice(-20), stderr: browser?.stderr().slice(-1000) })
}
try { if (browser) await browser.close() } catch {}
try { if (pageServer) pageServer.close() } catch {}
emit(result)
