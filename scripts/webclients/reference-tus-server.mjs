#!/usr/bin/env node
// Reference tus server for validating the client drivers (and for `make bench`):
// @tus/server + @tus/file-store on 127.0.0.1, tus endpoint at /files/.
//
//   node reference-tus-server.mjs [--port N] [--dir DIR] [--expose-headers H1,H2|none]
//                                 [--allowed-origins O1,O2] [--pid-file PATH] [--max-size BYTES] [--log-requests]
//
// Prints ONE JSON line once listening, then serves until SIGTERM/SIGINT:
//   {"ok":true,"endpoint":"http://127.0.0.1:PORT/files/","port":PORT,"pid":PID,"dir":DIR,"server":"@tus/server@x ..."}
// Without --dir it stores in a temp dir that it removes on SIGTERM/SIGINT.
// --port 0 (the default) lets the kernel pick a free port: no race between choosing and binding.
// --log-requests prints one JSON line per request on stderr (shows what CORS preflights ask for).
// --expose-headers replaces the Access-Control-Expose-Headers value @tus/server sends (it always
// sends its full list) so the Uppy driver can find which headers a browser client really needs.
// Extensions of @tus/file-store: creation, creation-with-upload, creation-defer-length,
// termination, expiration. No concatenation (parallelUploads -> 501/400) and no checksum
// (Upload-Checksum is ignored), no IETF draft.
import fs from 'node:fs'
import http from 'node:http'
import os from 'node:os'
import path from 'node:path'
import { fail, load, parseArgs, version } from './lib.mjs'

const usage = 'usage: reference-tus-server.mjs [--port N] [--dir DIR] [--expose-headers H1,H2|none] [--allowed-origins O1,O2] [--pid-file PATH] [--max-size BYTES] [--log-requests]'
const args = parseArgs(process.argv.slice(2), {
  port: 'number', dir: 'string', 'expose-headers': 'string', 'allowed-origins': 'string',
  'pid-file': 'string', 'max-size': 'number', 'log-requests': 'bool',
}, usage)

const dir = args.dir || fs.mkdtempSync(path.join(os.tmpdir(), 'tus-ref-'))
fs.mkdirSync(dir, { recursive: true })

const { Server } = await load('@tus/server')
const { FileStore } = await load('@tus/file-store')
const tus = new Server({
  path: '/files',
  datastore: new FileStore({ directory: dir }),
  ...(args['allowed-origins'] ? { allowedOrigins: args['allowed-origins'].split(',') } : {}),
  ...(args['max-size'] ? { maxSize: args['max-size'] } : {}),
})

const expose = args['expose-headers']
function overrideExpose(res) {
  if (expose === undefined) return
  const value = expose === 'none' ? null : expose
  const isExpose = (k) => String(k).toLowerCase() === 'access-control-expose-headers'
  const setHeader = res.setHeader.bind(res)
  res.setHeader = (k, v) => isExpose(k) ? (value === null ? res : setHeader(k, value)) : setHeader(k, v)
  const writeHead = res.writeHead.bind(res)
  res.writeHead = (status, ...rest) => {
    const hi = rest.findIndex((x) => x && typeof x === 'object')
    if (hi >= 0) {
      let h = rest[hi]
      if (Array.isArray(h)) {
        const flat = []
        const pairs = Array.isArray(h[0]) ? h : Array.from({ length: h.length / 2 }, (_, i) => [h[2 * i], h[2 * i + 1]])
        for (const [k, v] of pairs) if (!isExpose(k)) flat.push(k, v)
        if (value !== null) flat.push('Access-Control-Expose-Headers', value)
        h = flat
      } else {
        h = Object.fromEntries(Object.entries(h).filter(([k]) => !isExpose(k)))
        if (value !== null) h['Access-Control-Expose-Headers'] = value
      }
      rest[hi] = h
    }
    if (res.hasHeader('access-control-expose-headers')) {
      res.removeHeader('access-control-expose-headers')
      if (value !== null) setHeader('Access-Control-Expose-Headers', value)
    }
    return writeHead(status, ...rest)
  }
}

const server = http.createServer((req, res) => {
  // --log-requests: one JSON line per request on stderr (method, url, origin, preflight asks, status).
  if (args['log-requests']) {
    const h = req.headers
    res.on('finish', () => process.stderr.write(JSON.stringify({ method: req.method, url: req.url, origin: h.origin,
      'access-control-request-method': h['access-control-request-method'], 'access-control-request-headers': h['access-control-request-headers'],
      status: res.statusCode }) + '\n'))
  }
  overrideExpose(res)
  tus.handle(req, res).catch((e) => { res.statusCode = 500; res.end(String(e)) })
})
server.on('error', (e) => fail(`listen failed: ${e.message}`))
server.listen(args.port ?? 0, '127.0.0.1', () => {
  const port = server.address().port
  if (args['pid-file']) fs.writeFileSync(args['pid-file'], `${process.pid}\n`)
  const line = {
    ok: true, endpoint: `http://127.0.0.1:${port}/files/`, port, pid: process.pid, dir,
    server: `@tus/server@${version('@tus/server')} @tus/file-store@${version('@tus/file-store')}`,
  }
  fs.writeSync(1, JSON.stringify(line) + '\n')
})
const stop = () => {
  server.close(); server.closeAllConnections?.()
  if (!args.dir) fs.rmSync(dir, { recursive: true, force: true }) // our own temp dir only
  process.exit(0)
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
