// The bench page of ../page_bench.mjs: one file uploaded over tus by tus-js-client (one upload)
// or by Uppy (@uppy/core + @uppy/tus), in the browser, timed from the file input's `change`
// to the client's success callback. Bare imports are rewritten by serve.mjs.
// The driver calls window.bench.start({ client: 'tusjs' | 'uppy', endpoint, chunkSize }), sets the
// file input, then awaits window.bench.done() → { ok, url, seconds, error }.
import * as tus from 'tus-js-client'
import Uppy from '@uppy/core'
import Tus from '@uppy/tus'

const $ = (id) => document.getElementById(id)
let options = null
let t0 = 0
let resolveDone
const done = new Promise((resolve) => { resolveDone = resolve })
const finish = (r) => { $('status').textContent = JSON.stringify(r); resolveDone(r) }
const progress = (sent, total) => { $('progress').value = total ? Math.round((100 * sent) / total) : 0 }

function withTusJs (file, { endpoint, chunkSize }) {
  const up = new tus.Upload(file, {
    endpoint,
    chunkSize,
    metadata: { filename: file.name, filetype: file.type || 'application/octet-stream' },
    onProgress: progress,
    onError: (e) => finish({ ok: false, error: String(e && e.message || e) }),
    onSuccess: () => finish({ ok: true, url: up.url, seconds: (performance.now() - t0) / 1000 }),
  })
  up.start()
}

function withUppy (file, { endpoint, chunkSize }) {
  const uppy = new Uppy({ autoProceed: false })
  uppy.use(Tus, { endpoint, chunkSize })
  let url = null
  uppy.on('upload-progress', (_, p) => progress(p.bytesUploaded, p.bytesTotal))
  uppy.on('upload-success', (_, response) => { url = response.uploadURL })
  uppy.on('upload-error', (_, e) => finish({ ok: false, error: String(e && e.message || e) }))
  uppy.on('complete', (r) => {
    if (url && r.successful?.length === 1) finish({ ok: true, url, seconds: (performance.now() - t0) / 1000 })
    else finish({ ok: false, error: `complete with ${r.failed?.length} failed` })
  })
  uppy.addFile({ name: file.name, type: file.type || 'application/octet-stream', data: file, source: 'Local' })
  uppy.upload().catch((e) => finish({ ok: false, error: String(e && e.message || e) }))
}

$('file').addEventListener('change', () => {
  t0 = performance.now()
  const file = $('file').files[0]
  if (!file || !options) return
  $('status').textContent = 'uploading'
  ;(options.client === 'uppy' ? withUppy : withTusJs)(file, options)
})

window.bench = {
  start: (o) => { options = o; $('client').textContent = o.client; $('status').textContent = 'ready' },
  done: () => done,
}
$('status').textContent = 'modules loaded'
