// The Uppy test page's script. Bare imports are rewritten by serve.mjs to the installed packages.
// The driver (uppy.mjs) calls window.uppyTest.start({ endpoint, chunkSize, parallel }) then sets the file input;
// window.uppyTest.done() resolves with { ok, uploadURL, events, ... } on `complete` or `upload-error`.
// start() may be called again: a new Uppy instance, as after a page reload (the tus fingerprint ->
// upload URL map stays in localStorage, so the same file resumes via HEAD).
import Uppy from '@uppy/core'
import Tus from '@uppy/tus'

const $ = (id) => document.getElementById(id)
const status = (t, err) => { $('status').textContent = t; $('status').className = err ? 'err' : '' }
let events = []
let resolveDone
let done = null
let uppy = null

function start({ endpoint, chunkSize, parallel }) {
  $('endpoint').textContent = endpoint
  if (uppy) uppy.destroy()
  events = []
  done = new Promise((r) => { resolveDone = r })
  uppy = new Uppy({ autoProceed: false, debug: false })
  uppy.use(Tus, { endpoint, retryDelays: [], ...(chunkSize ? { chunkSize } : {}), ...(parallel ? { parallelUploads: parallel } : {}) })
  const t0 = performance.now()
  let success = null
  uppy.on('upload-progress', (file, p) => {
    const pct = p.bytesTotal ? Math.round((100 * p.bytesUploaded) / p.bytesTotal) : 0
    $('progress').value = pct
    status(`uploading ${file.name}: ${pct}% (${p.bytesUploaded} / ${p.bytesTotal} bytes)`)
  })
  uppy.on('upload-success', (file, response) => {
    success = { uploadURL: response.uploadURL, status: response.status, name: file.name, size: file.size }
    events.push('upload-success')
    $('url').textContent = response.uploadURL
    $('progress').value = 100
  })
  uppy.on('upload-error', (file, error, response) => {
    events.push('upload-error')
    status(`error: ${error && error.message}`, true)
    resolveDone({ ok: false, error: String(error && error.message), status: response ? response.status : null, events })
  })
  uppy.on('error', (error) => { events.push('error'); status(`error: ${error && error.message}`, true) })
  uppy.on('complete', (result) => {
    events.push('complete')
    const elapsed = (performance.now() - t0) / 1000
    if (success && result.successful && result.successful.length === 1) {
      status(`done in ${elapsed.toFixed(2)} s`)
      resolveDone({ ok: true, ...success, elapsed_s: Number(elapsed.toFixed(3)), events })
    } else {
      resolveDone({ ok: false, error: `complete with ${result.failed ? result.failed.length : '?'} failed`, events })
    }
  })
  status('ready: choose a file')
}

$('file').addEventListener('change', () => {
  const f = $('file').files[0]
  if (!f || !uppy) return
  uppy.addFile({ name: f.name, type: f.type || 'application/octet-stream', data: f, source: 'Local' })
  events.push('file-added')
  uppy.upload().catch((e) => resolveDone({ ok: false, error: String(e && e.message || e), events }))
})

window.uppyTest = { start, done: () => done, versions: { core: Uppy.VERSION, tus: Tus.VERSION } }
status('modules loaded')
