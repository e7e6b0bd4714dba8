// A bare Chrome DevTools Protocol client over `--remote-debugging-pipe`, for the bench: unlike
// playwright-core, it enables no domain it is not asked for. Playwright turns on the Network
// domain in every page and Worker, which makes Chromium copy and report every request body it
// can see (8 MiB ArrayBuffer bodies cost about 90 CPU-s per GB and ran at 6 MB/s) and costs
// some CPU for the others; no user's browser pays that, so the bench must not either.
//
//   const b = await launch('/usr/bin/chromium', [flags]); await b.send(method, params, sessionId)
//   b.on((message) => ...) for events; b.version; await b.close()
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'

export async function launch (executable, args) {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-chromium-'))
  const proc = spawn(executable, [...args, '--remote-debugging-pipe', `--user-data-dir=${profile}`],
    { stdio: ['ignore', 'ignore', 'pipe', 'pipe', 'pipe'] })
  let stderr = ''
  proc.stderr.on('data', (d) => { stderr = (stderr + d).slice(-4000) })
  const out = proc.stdio[3]
  const inp = proc.stdio[4]
  let buf = ''
  let next = 1
  const waiting = new Map()
  const listeners = []
  inp.on('data', (d) => {
    buf += d
    let i
    while ((i = buf.indexOf('\0')) >= 0) {
      const m = JSON.parse(buf.slice(0, i))
      buf = buf.slice(i + 1)
      if (m.id && waiting.has(m.id)) {
        const w = waiting.get(m.id); waiting.delete(m.id)
        m.error ? w.reject(new Error(`${w.method}: ${m.error.message}`)) : w.resolve(m.result)
      } else if (m.method) for (const l of listeners) l(m)
    }
  })
  const send = (method, params = {}, sessionId) => new Promise((resolve, reject) => {
    const id = next++
    waiting.set(id, { resolve, reject, method })
    out.write(JSON.stringify({ id, method, params, ...(sessionId ? { sessionId } : {}) }) + '\0')
  })
  const exited = new Promise((resolve) => proc.on('exit', resolve))
  const version = (await send('Browser.getVersion')).product
  return {
    proc, version, send, on: (f) => listeners.push(f), stderr: () => stderr,
    async close () {
      try { await Promise.race([send('Browser.close'), new Promise((r) => setTimeout(r, 3000))]) } catch {}
      await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))])
      try { proc.kill('SIGKILL') } catch {}
      fs.rmSync(profile, { recursive: true, force: true })
    },
  }
}
