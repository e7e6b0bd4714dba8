#!/usr/bin/env node
// tus-js-client (Node) driver. Prints ONE JSON line; exit 0 on success, non-zero on failure.
//
//   node tusjs.mjs --endpoint URL --file PATH [--chunk-size N] [--parallel N]
//                  [--protocol tus-v1|ietf-draft-03|ietf-draft-05] [--interrupt-at FRACTION]
//                  [--url-store PATH] [--checksum-mismatch] [--metadata k=v,...]
//                  [--defer-length] [--stream] [--timeout SECONDS] [--no-sha256] [--list-protocols]
//
// --defer-length creates the upload with its length deferred (uploadLengthDeferred), which
// tus-js-client then sends with its last PATCH (the file is read into a Buffer first).
// --stream hands tus-js-client a plain Readable of the file (not an fs.ReadStream, so it uses
// its StreamSource, which knows no size): the source of an upload whose length is unknown.
// Without --defer-length the size is given as uploadSize. Needs --chunk-size.
//
// Modes:
//   default            one upload (parallelUploads when --parallel N > 1: partial uploads + a final
//                      concatenation, so the server needs the concatenation extension).
//   --interrupt-at F   abort once F of the bytes are sent, then a NEW Upload with the same file and
//                      the same FileUrlStorage finds the stored URL by fingerprint and resumes it.
//                      ok only if it resumed the same URL at an offset > 0.
//   --checksum-mismatch  send a well-formed but wrong `Upload-Checksum: sha1 ...` on the first PATCH
//                      (set in onBeforeRequest); ok only if the server answers 460 and a HEAD
//                      afterwards shows nothing was appended.
//   --list-protocols   print the `protocol` values this tus-js-client accepts and exit.
import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { PassThrough } from 'node:stream'
import { NODE_MODULES, emit, fail, load, parseArgs, version, watchdog } from './lib.mjs'

const usage = 'usage: tusjs.mjs --endpoint URL --file PATH [--chunk-size N] [--parallel N] [--protocol P] [--interrupt-at F] [--url-store PATH] [--checksum-mismatch] [--metadata k=v,...] [--defer-length] [--stream] [--timeout S] [--no-sha256] [--list-protocols]'
const args = parseArgs(process.argv.slice(2), {
  endpoint: 'string', file: 'string', 'chunk-size': 'number', parallel: 'number', protocol: 'string',
  'interrupt-at': 'number', 'url-store': 'string', 'checksum-mismatch': 'bool', metadata: 'string',
  timeout: 'number', 'no-sha256': 'bool', 'list-protocols': 'bool', 'defer-length': 'bool', stream: 'bool',
}, usage)

const CLIENT = `tus-js-client@${version('tus-js-client')}`

// The `protocol` values this version accepts, read from its own source (upload.js validates
// options.protocol against these constants), with the Upload-Draft-Interop-Version each sends.
function supportedProtocols() {
  const src = fs.readFileSync(path.join(NODE_MODULES, 'tus-js-client/lib.esm/upload.js'), 'utf8')
  const names = [...new Set([...src.matchAll(/'((?:tus-v\d+)|(?:ietf-draft-\d+))'/g)].map((m) => m[1]))]
  const interop = {}
  for (const m of src.matchAll(/protocol === (PROTOCOL_IETF_DRAFT_\d+)\) \{\s*req\.setHeader\('Upload-Draft-Interop-Version', '(\d+)'\)/g)) {
    const name = (src.match(new RegExp(`var ${m[1]} = '([^']+)'`)) || [])[1]
    if (name) interop[name] = Number(m[2])
  }
  return { protocols: names, ietf_draft_interop_versions: interop }
}
const PROTOCOLS = supportedProtocols()
if (args['list-protocols']) emit({ ok: true, client: CLIENT, ...PROTOCOLS })

if (!args.endpoint || !args.file) fail(usage, 2)
const file = path.resolve(args.file)
if (!fs.existsSync(file)) fail(`no such file: ${file}`, 2)
const size = fs.statSync(file).size
const protocol = args.protocol || 'tus-v1'
if (!PROTOCOLS.protocols.includes(protocol)) fail(`protocol ${protocol} not supported by ${CLIENT} (supports ${PROTOCOLS.protocols.join(', ')})`, 2)
const chunkSize = args['chunk-size'] ?? Infinity
const parallel = args.parallel ?? 1
const metadata = { filename: path.basename(file), filetype: 'application/octet-stream' }
for (const kv of (args.metadata || '').split(',').filter(Boolean)) {
  const i = kv.indexOf('=')
  if (i < 0) fail(`--metadata wants k=v pairs, got ${kv}`, 2)
  metadata[kv.slice(0, i)] = kv.slice(i + 1)
}
const timeoutS = args.timeout ?? 300
const mode = args['checksum-mismatch'] ? 'checksum-mismatch' : args['interrupt-at'] != null ? 'interrupt-resume' : parallel > 1 ? 'parallel' : 'single'
const base = { client: CLIENT, mode, protocol, endpoint: args.endpoint, file, bytes: size, chunk_size: Number.isFinite(chunkSize) ? chunkSize : null, parallel }
const requests = {}
watchdog(timeoutS * 1000, `${mode} upload`, () => ({ ...base, requests }))
// An upload whose promises never settle and that holds no timer or socket lets the event loop
// drain, and Node would exit 0 with nothing printed (tus-js-client 4.3.1's StreamSource does
// that when a stream ends exactly at a chunk boundary): a failure line instead.
process.on('beforeExit', () => emit({ ...base, requests, ok: false, error: `the event loop drained before the ${mode} upload finished (a tus-js-client promise never settled)` }))

const tus = await load('tus-js-client')

function sha256(p) {
  return new Promise((resolve, reject) => {
    const h = crypto.createHash('sha256')
    fs.createReadStream(p).on('data', (d) => h.update(d)).on('end', () => resolve(h.digest('hex'))).on('error', reject)
  })
}

function errInfo(err) {
  const res = err && err.originalResponse
  return { error: String(err && err.message || err).split('\n')[0], status: res ? res.getStatus() : null, response_body: res ? String(res.getBody() || '').slice(0, 300) : null }
}

// One Upload; resolves {url, upload} on success, rejects with the tus error.
// hooks: onProgress(sent,total,upload), onBeforeRequest(req), onAfterResponse(req,res)
function runUpload(opts, hooks = {}) {
  return new Promise((resolve, reject) => {
    // With a deferred length, a Buffer: for an fs.ReadStream tus-js-client 4.3 uses its
    // FileSource, which announces a full Content-Length (min(chunkSize, file size)) for a
    // short last slice, and that request never ends.
    // --stream: a Readable that is no fs.ReadStream (a PassThrough), so StreamSource.
    const source = args.stream ? fs.createReadStream(file).pipe(new PassThrough())
      : args['defer-length'] ? fs.readFileSync(file) : fs.createReadStream(file)
    const up = new tus.Upload(source, {
      endpoint: args.endpoint,
      chunkSize,
      parallelUploads: parallel,
      // The length is sent only with the last PATCH (creation-defer-length).
      uploadLengthDeferred: Boolean(args['defer-length']),
      ...(args.stream && !args['defer-length'] ? { uploadSize: size } : {}),
      protocol,
      metadata,
      retryDelays: [],
      onBeforeRequest: (req) => { requests[req.getMethod()] = (requests[req.getMethod()] || 0) + 1; return hooks.onBeforeRequest?.(req) },
      onAfterResponse: (req, res) => hooks.onAfterResponse?.(req, res),
      onProgress: (sent, total) => hooks.onProgress?.(sent, total, up),
      onError: reject,
      onSuccess: () => resolve({ url: up.url, upload: up }),
      ...opts,
    })
    hooks.created?.(up)
    ;(hooks.beforeStart ? hooks.beforeStart(up) : Promise.resolve()).then(() => up.start(), reject)
  })
}

async function headOffset(url) {
  const headers = protocol === 'tus-v1' ? { 'Tus-Resumable': '1.0.0' } : { 'Upload-Draft-Interop-Version': String(PROTOCOLS.ietf_draft_interop_versions[protocol]) }
  const r = await fetch(url, { method: 'HEAD', headers, signal: AbortSignal.timeout(10000) })
  return { status: r.status, offset: r.headers.get('upload-offset') == null ? null : Number(r.headers.get('upload-offset')) }
}

const result = { ...base, requests }
let tmpDir = null
try {
  const t0 = performance.now()
  if (mode === 'single' || mode === 'parallel') {
    const { url } = await runUpload({})
    result.url = url
  } else if (mode === 'interrupt-resume') {
    const frac = args['interrupt-at']
    if (!(frac > 0 && frac < 1)) fail('--interrupt-at wants a fraction between 0 and 1', 2)
    if (!args['url-store']) { tmpDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tusjs-')); process.on('exit', () => fs.rmSync(tmpDir, { recursive: true, force: true })) }
    const store = args['url-store'] || path.join(tmpDir, 'urls.json')
    const urlStorage = new tus.FileUrlStorage(store)
    result.url_store = store
    // Phase 1: upload until `frac` of the bytes are sent, then abort (without terminating).
    let aborted = false
    const first = await new Promise((resolve, reject) => {
      runUpload({ urlStorage, storeFingerprintForResuming: true, removeFingerprintOnSuccess: false }, {
        onProgress: (sent, total, up) => {
          if (!aborted && sent >= frac * size) {
            aborted = true
            up.abort(false).then(() => resolve({ url: up.url, sent }), reject)
          }
        },
      }).then(() => reject(new Error(`upload finished before --interrupt-at ${frac} was reached`)), reject)
    })
    result.first_url = first.url
    result.aborted_after_sent = first.sent
    // No pause here: a real client resumes at once, and the HEAD below says what the server has.
    // A server still finishing the aborted PATCH may answer 423 (locked) or 409; phase 2 therefore
    // runs with tus-js-client's DEFAULT retryDelays (it retries 409/423 after a new HEAD), as an
    // unmodified client would, and reports every such answer in `retried_statuses`.
    // Phase 2: a new Upload object, as after a process restart: find the URL by fingerprint and resume.
    let resumedOffset = null
    let previous = []
    const retried = {}
    result.retried_statuses = retried
    const { url } = await runUpload({ urlStorage, storeFingerprintForResuming: true, removeFingerprintOnSuccess: true, retryDelays: tus.defaultOptions.retryDelays }, {
      beforeStart: async (up) => {
        previous = await up.findPreviousUploads()
        if (previous.length) up.resumeFromPreviousUpload(previous[0])
      },
      onAfterResponse: (req, res) => {
        if (req.getMethod() === 'HEAD' && resumedOffset === null) resumedOffset = Number(res.getHeader('Upload-Offset'))
        const st = res.getStatus()
        if (st === 409 || st === 423) retried[`${req.getMethod()} ${st}`] = (retried[`${req.getMethod()} ${st}`] || 0) + 1
      },
    })
    result.previous_uploads_found = previous.length
    result.resumed_offset = resumedOffset
    result.url = url
    if (!previous.length) throw new Error('no previous upload found in the FileUrlStorage')
    if (url !== first.url) throw new Error(`resumed into a different upload: ${url} != ${first.url}`)
    if (!(resumedOffset > 0)) throw new Error(`resumed at offset ${resumedOffset}, wanted > 0`)
  } else if (mode === 'checksum-mismatch') {
    // tus-js-client has no checksum support of its own; set a wrong digest on the first PATCH
    // (sha1 of nothing: well-formed base64 of 20 bytes, never the digest of a non-empty chunk).
    const wrong = 'sha1 ' + crypto.createHash('sha1').update('').digest('base64')
    let upload = null
    result.sent_checksum = wrong
    try {
      await runUpload({}, {
        created: (up) => { upload = up },
        onBeforeRequest: (req) => { if (req.getMethod() === 'PATCH') req.setHeader('Upload-Checksum', wrong) },
      })
      result.url = upload.url
      result.status = 204
      throw new Error('server accepted a PATCH with a wrong Upload-Checksum (no checksum extension?)')
    } catch (e) {
      if (!e.originalResponse) throw e
      Object.assign(result, errInfo(e))
      result.url = upload && upload.url
    }
    const h = result.url ? await headOffset(result.url) : { status: null, offset: null }
    result.offset_after = h.offset
    if (result.status !== 460) throw new Error(`expected 460 for a wrong Upload-Checksum, got ${result.status}`)
    if (h.offset !== 0) throw new Error(`bytes were appended despite the checksum mismatch: offset ${h.offset}`)
    delete result.error
  }
  const elapsed = (performance.now() - t0) / 1000
  result.elapsed_s = Number(elapsed.toFixed(3))
  result.mib_per_s = Number((size / 1048576 / elapsed).toFixed(1))
  if (!args['no-sha256']) result.sha256 = await sha256(file)
  result.ok = true
  emit(result)
} catch (e) {
  const info = errInfo(e)
  for (const k of ['status', 'response_body']) if (info[k] == null) delete info[k]
  emit({ ...result, ok: false, ...info })
}
