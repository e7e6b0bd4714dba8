#!/usr/bin/env node
// Hostile web pages against an upload-server without authentication, in headless Chromium
// (playwright-core). Prints ONE JSON line; exit 0 once every attempt ran.
//
//   node cross-site.mjs --url SERVER_URL [--timeout SECONDS] [--chromium PATH]
//
// Each page tries to create an upload of 1 TiB on the server, the way a page the local user
// visits could:
// - cross-site: a page of another origin (served here, on another port) sends the JSON as
//   text/plain with fetch(mode: 'no-cors') and as a text/plain form (both "simple" requests,
//   which a browser sends without asking the server first), and as application/json with a
//   CORS fetch (which needs the server's consent in a preflight);
// - rebinding: a page of http://rebind.test:PORT (the server's own port), where the browser
//   resolves rebind.test to 127.0.0.1 as it would after DNS rebinding: same-origin with the
//   server, it posts the JSON as application/json and can read the answer.
// Output: {ok, attempts: [{page, how, status | error}]}. Whether anything was created is for
// the caller to check on the server.
import http from 'node:http'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { emit, fail, load, parseArgs, watchdog } from './lib.mjs'

const usage = 'usage: cross-site.mjs --url SERVER_URL [--timeout SECONDS] [--chromium PATH]'
const args = parseArgs(process.argv.slice(2), { url: 'string', timeout: 'number', chromium: 'string' }, usage)
if (!args.url) fail(usage, 2)
const target = new URL(args.url)
const chromium = args.chromium || process.env.CHROMIUM || '/usr/bin/chromium'
if (!fs.existsSync(chromium)) fail(`${chromium} not found; run scripts/webclients/setup.sh install`, 2)
const timeoutMs = (args.timeout ?? 60) * 1000
const attempts = []
watchdog(timeoutMs, 'the hostile pages', () => ({ attempts }))

const body = JSON.stringify({ size: 2 ** 40 })
// Runs in the page: every attempt, then window.results.
const script = (server) => `
  window.results = (async () => {
    const out = []
    const json = ${JSON.stringify(body)}
    const tries = [
      ['fetch no-cors text/plain', () => fetch('${server}/v1/uploads', { method: 'POST', mode: 'no-cors',
        headers: { 'content-type': 'text/plain' }, body: json })],
      ['fetch cors application/json', () => fetch('${server}/v1/uploads', { method: 'POST',
        headers: { 'content-type': 'application/json' }, body: json })],
      ['form text/plain', () => new Promise((resolve) => {
        const sink = document.createElement('iframe')
        sink.name = 'sink'
        sink.onload = () => resolve({ status: 'submitted' })
        document.body.appendChild(sink)
        const form = document.createElement('form')
        form.method = 'POST'; form.action = '${server}/v1/uploads'; form.enctype = 'text/plain'; form.target = 'sink'
        const input = document.createElement('input')
        // name=value: {"size": 1099511627776, "x": "="}
        input.name = json.slice(0, -1) + ', "x": "'; input.value = '"}'
        form.appendChild(input); document.body.appendChild(form); form.submit()
      })],
    ]
    for (const [how, run] of tries) {
      try {
        const r = await run()
        out.push({ how, status: r.type === 'opaque' ? 'opaque' : r.status })
      } catch (e) { out.push({ how, error: String(e) }) }
    }
    return out
  })()`

let ctx = null
let userDataDir = null
let attacker = null
try {
  attacker = http.createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/html' })
    res.end(`<!doctype html><body><script>${script(target.origin)}</script></body>`)
  })
  await new Promise((r) => attacker.listen(0, '127.0.0.1', r))
  const attackerUrl = `http://127.0.0.1:${attacker.address().port}/attack.html`

  const { chromium: pw } = await load('playwright-core')
  userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'cross-site-chromium-'))
  ctx = await pw.launchPersistentContext(userDataDir, {
    executablePath: chromium,
    headless: true,
    timeout: 30000,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage',
      '--host-resolver-rules=MAP rebind.test 127.0.0.1',
      // Chromium's own guard against public pages reaching private addresses (Private
      // Network Access) is off: other browsers have none, and the server must not rely on it.
      '--disable-features=BlockInsecurePrivateNetworkRequests,PrivateNetworkAccessSendPreflights,PrivateNetworkAccessRespectPreflightResults,LocalNetworkAccessChecks'],
  })
  const page = ctx.pages()[0] || await ctx.newPage()
  page.setDefaultTimeout(timeoutMs)

  await page.goto(attackerUrl)
  for (const r of await page.evaluate(() => window.results)) attempts.push({ page: 'cross-site', ...r })

  // The rebound page: its document comes from "the attacker" (fulfilled here), its requests
  // go to the server, which rebind.test now resolves to.
  const rebound = `http://rebind.test:${target.port}`
  await page.route(`${rebound}/attack.html`, (route) => route.fulfill({
    contentType: 'text/html',
    body: `<!doctype html><body><script>
      window.results = fetch('/v1/uploads', { method: 'POST', headers: { 'content-type': 'application/json' },
        body: ${JSON.stringify(body)} }).then((r) => [{ how: 'same-origin fetch application/json', status: r.status }],
        (e) => [{ how: 'same-origin fetch application/json', error: String(e) }])
    </script></body>`,
  }))
  await page.goto(`${rebound}/attack.html`)
  for (const r of await page.evaluate(() => window.results)) attempts.push({ page: 'rebinding', ...r })
  await ctx.close()
  attacker.close()
  fs.rmSync(userDataDir, { recursive: true, force: true })
  emit({ ok: true, attempts })
} catch (e) {
  try { if (ctx) await ctx.close() } catch {}
  try { if (attacker) attacker.close() } catch {}
  try { if (userDataDir) fs.rmSync(userDataDir, { recursive: true, force: true }) } catch {}
  fail(e?.stack || e, 1, { attempts })
}
