// The built-in upload page: native API v1, no dependencies, no build step.
//
// This script creates and completes uploads, keeps what it needs to resume them after a reload
// (localStorage: upload id by file name, size and last-modified time) and draws the cards. The
// chunks themselves are read, hashed (a SHA-256 `Content-Digest` per chunk, which the server
// checks) and sent by a Worker (upload-worker.js), 4 at a time, so this thread only renders.
// The server computes the whole file's SHA-256 from the chunks it checked; the page shows it.
'use strict'

const KEY_PREFIX = 'upload-page:v2:'
const TOKEN_KEY = 'upload-token'
// Files being created, sent or verified at once; later ones wait their turn, in order.
const ACTIVE = 3
const TRANSIENT = [0, 408, 429, 500, 502, 503, 504]
const RETRY_DELAYS = [500, 1000, 3000, 5000]
// Times a run cut by a transient error is picked up again (then chunk by chunk) before the
// card fails.
const RECONNECTS = 4

const $ = (sel, el = document) => el.querySelector(sel)
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const uploads = []
let caps = null
let nextJob = 1
let worker = null
const byJob = new Map() // the worker's job number -> its upload

function fmtBytes (n) {
  const units = ['bytes', 'KB', 'MB', 'GB', 'TB']
  let u = 0
  while (n >= 1000 && u < units.length - 1) { n /= 1000; u++ }
  return `${u === 0 ? n : n.toFixed(n < 10 ? 1 : 0)} ${units[u]}`
}

function fmtTime (s) {
  if (!Number.isFinite(s)) return ''
  s = Math.ceil(s)
  if (s < 60) return `${s} s`
  const h = Math.floor(s / 3600)
  const m = Math.floor((s % 3600) / 60)
  return h ? `${h} h ${m} min` : `${m} min ${String(s % 60).padStart(2, '0')} s`
}

// The access token typed in the page (kept for this tab only).
function token () { return $('#token').value.trim() }
function authHeaders () { return token() ? { authorization: `Bearer ${token()}` } : {} }

// An error for people: what went wrong and what to do, in words. `field` names the page's
// field to fix; `retry` says whether Retry can help.
class UploadError extends Error {
  constructor (message, { retry = true, field = null } = {}) {
    super(message)
    this.retry = retry
    this.field = field
  }
}

// The answer of a refused request in words; `what` says what was being done.
function refusal (what, status, problem) {
  const detail = problem?.detail ? ` (the server said: ${problem.detail})` : ''
  const type = String(problem?.type || '')
  if (status === 401) {
    showTokenField()
    return token()
      ? new UploadError('The token in the “Access token” field above was not accepted: it may be mistyped or expired. Correct it, then press Retry.', { field: 'token' })
      : new UploadError('This server needs an access token. Type it in the “Access token” field above, then press Retry.', { field: 'token' })
  }
  if (status === 403) return new UploadError(`The access token does not allow this${detail}. Check the “Access token” field above, then press Retry.`, { field: 'token' })
  if (status === 0) return new UploadError(`${what}: the server cannot be reached. Check the connection, then press Retry.`)
  if (status === 404 || status === 410) return new UploadError(`${what}: the upload no longer exists on the server${detail}. Retry starts it again.`)
  if (status === 413) return new UploadError(`The file is larger than this server accepts${detail}.`, { retry: false })
  if (status === 507) return new UploadError(`${what}: the server has no room left${detail}. Try again later.`)
  if (status === 429) return new UploadError(`${what}: the server is busy${detail}. Try again in a moment.`)
  if (type.endsWith('chunk-mismatch')) {
    const parts = (problem.mismatched || []).map(([a, b]) => (a === b ? `${a + 1}` : `${a + 1}–${b + 1}`)).join(', ')
    return new UploadError(`${what}: part ${parts} arrived damaged (its SHA-256 on the server is not the one this browser computed), so nothing was published. Press Retry to send the file again.`)
  }
  if (type.endsWith('chunk-digest-mismatch')) {
    return new UploadError(`${what}: it arrived damaged (the server's check of its SHA-256 failed) and was not stored. Press Retry to send it again.`)
  }
  return new UploadError(`${what} failed${detail || ` (HTTP ${status})`}.`)
}

// JSON request to the native API; network errors and transient answers are retried a few times.
async function api (method, path, body) {
  for (let attempt = 0; ; attempt++) {
    let status = 0
    let json = null
    let retryAfter = null
    try {
      const r = await fetch(path, {
        method,
        cache: 'no-store',
        headers: { ...authHeaders(), ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
        body: body === undefined ? undefined : JSON.stringify(body)
      })
      status = r.status
      retryAfter = r.headers.get('retry-after')
      const text = await r.text()
      try { json = text ? JSON.parse(text) : null } catch { json = null }
    } catch { status = 0 }
    if (!TRANSIENT.includes(status) || attempt >= RETRY_DELAYS.length) return { status, ok: status >= 200 && status < 300, json }
    await sleep(Number(retryAfter) > 0 ? Math.min(Number(retryAfter) * 1000, 60000) : RETRY_DELAYS[attempt])
  }
}

// The chunk size asked for a file of `size` bytes: the largest of CHUNK_SIZES that still makes at
// least MIN_CHUNKS chunks, so that the 4 slots stay busy; null (the server's default, from
// `GET /v1`) when none does, or when the server would refuse it. Each request costs the browser
// a fixed amount of CPU, so fewer, larger chunks cost less per byte; 32 MiB ones were no
// cheaper and kept fewer PUTs in flight (see the README).
const CHUNK_SIZES = [16 << 20]
const MIN_CHUNKS = 8
function chunkSizeFor (size) {
  const bounds = caps?.chunk_size
  if (!bounds) return null
  for (const c of CHUNK_SIZES) {
    if (size / c >= MIN_CHUNKS && c > bounds.default && c >= bounds.min && c <= bounds.max && Math.ceil(size / c) <= caps.max_chunks) return c
  }
  return null
}

const storageKey = (f) => `${KEY_PREFIX}${f.name}:${f.size}:${f.lastModified}`
function loadSaved (key) { try { return JSON.parse(localStorage.getItem(key)) } catch { return null } }
function forget (key) { localStorage.removeItem(key); renderUnfinished() }

// ---- the Worker that reads, hashes and sends chunks ----
function chunkSender () {
  if (!worker) {
    worker = new Worker('/upload-worker.js')
    worker.onmessage = ({ data: m }) => {
      if (m.type === 'stats') { statsWaiter?.(m); return }
      const u = byJob.get(m.uid)
      if (u?.job === m.uid) u.onWorker(m)
    }
  }
  return worker
}
let statsWaiter = null

// ---- one upload ----
class Upload {
  constructor (file) {
    this.job = 0 // the worker's job for this upload, while one runs
    this.file = file
    this.key = storageKey(file)
    this.id = null
    this.confirmed = 0 // bytes the server has stored
    this.loaded = 0 //    bytes of unfinished PUTs sent so far
    this.samples = []
    this.el = $('#upload-template').content.firstElementChild.cloneNode(true)
    $('.name', this.el).textContent = file.name
    $('.size', this.el).textContent = fmtBytes(file.size)
    $('progress', this.el).setAttribute('aria-label', `Upload of ${file.name}`)
    for (const [cls, action, label] of [
      ['pause', () => this.pause(), 'Pause'], ['resume', () => this.resume(), 'Resume'],
      ['cancel', () => this.cancel(), 'Cancel'], ['retry', () => this.retry(), 'Retry'],
      ['dismiss', () => this.dismiss(), 'Dismiss']
    ]) {
      const b = $(`.${cls}`, this.el)
      b.addEventListener('click', action)
      b.setAttribute('aria-label', `${label} the upload of ${file.name}`)
    }
    $('#uploads').append(this.el)
    $('#uploads-title').hidden = false
    this.setState('queued', 'Waiting for the files before it.')
  }

  setState (state, msg) {
    this.state = state
    this.el.dataset.state = state
    const show = (cls, on) => { $(`.${cls}`, this.el).hidden = !on }
    show('pause', state === 'uploading')
    show('resume', state === 'paused')
    show('cancel', ['queued', 'starting', 'uploading', 'paused'].includes(state))
    show('retry', state === 'error' && this.retryable)
    show('dismiss', ['error', 'done', 'cancelled'].includes(state))
    $('.cancel', this.el).disabled = state === 'starting'
    if (msg !== undefined) this.say(msg)
    if (state !== 'error') $('.err', this.el).textContent = ''
    this.render()
  }

  say (msg) { $('.msg', this.el).textContent = msg }

  save () {
    localStorage.setItem(this.key, JSON.stringify({ id: this.id, name: this.file.name, size: this.file.size, saved: Date.now() }))
  }

  adopt (status) {
    this.id = status.id
    this.chunkSize = status.chunk_size
    this.count = status.chunk_count
    this.el.dataset.id = status.id
    this.missing = []
    for (const [a, b] of status.missing || []) for (let i = a; i <= b; i++) this.missing.push(i)
    let missingBytes = 0
    for (const i of this.missing) missingBytes += Math.min(this.chunkSize, this.file.size - i * this.chunkSize)
    this.confirmed = this.file.size - missingBytes
    this.loaded = 0
  }

  // Resumes the upload remembered for this file, or creates a new one; then sends what is missing.
  async start () {
    this.setState('starting', 'Starting…')
    this.retryable = true
    try {
      if (caps && this.file.size > caps.max_upload_size) {
        throw new UploadError(`This file is larger than the server accepts (${fmtBytes(caps.max_upload_size)}).`, { retry: false })
      }
      await this.open()
      this.send()
    } catch (e) { this.fail(e) }
  }

  async open () {
    const saved = this.id ? { id: this.id } : loadSaved(this.key)
    if (saved?.id) {
      const r = await api('GET', `/v1/uploads/${saved.id}`)
      if (r.ok && r.json.size === this.file.size && ['uploading', 'completing', 'completed'].includes(r.json.state)) {
        this.adopt(r.json)
        if (!this.resumed) {
          this.resumed = true
          this.el.dataset.resumed = 'true'
          this.say(`Picking up where it stopped: ${fmtBytes(this.confirmed)} of ${fmtBytes(this.file.size)} were already on the server.`)
        }
        renderUnfinished()
        return
      }
      if (r.status === 401 || r.status === 403 || !(r.status === 404 || r.status === 410 || r.ok)) throw refusal('Resuming', r.status, r.json)
      forget(this.key)
      this.id = null
      this.say('The earlier upload of this file is no longer on the server; starting again.')
    }
    const chunkSize = chunkSizeFor(this.file.size)
    const r = await api('POST', '/v1/uploads', { size: this.file.size, filename: this.file.name, ...(chunkSize ? { chunk_size: chunkSize } : {}) })
    if (!r.ok) throw refusal('Starting the upload', r.status, r.json)
    this.adopt(r.json)
    this.save()
    renderUnfinished()
  }

  // Sends what is missing: a new upload as one run (the whole file in one request, the cheapest
  // for the browser), the holes of an interrupted or resumed one chunk by chunk, each with its
  // own digest. Every chunk is hashed either way, for the completion.
  send () {
    this.setState('uploading', this.resumed ? undefined : 'Uploading…')
    this.samples = [[performance.now(), this.confirmed]]
    this.sending = true
    this.run = !this.noRuns && this.count > 0 && this.missing.length === this.count
    this.runLoaded = 0
    this.digests = null
    byJob.delete(this.job)
    this.job = nextJob++
    byJob.set(this.job, this)
    chunkSender().postMessage({
      type: 'start', uid: this.job, file: this.file, id: this.id, chunkSize: this.chunkSize, count: this.count, chunks: this.missing, run: this.run, token: token()
    })
    if (this.run) this.followRun(this.job)
  }

  // While a run is in flight, what the server has stored comes from its status.
  async followRun (job) {
    while (this.job === job && this.sending) {
      await sleep(1000)
      if (this.job !== job || !this.sending) break
      const r = await api('GET', `/v1/uploads/${this.id}`)
      if (r.ok && this.job === job && this.sending) this.confirmed = r.json.received_bytes
    }
  }

  // A run ended early on a transient error, or a proxy on the way refused a body that large
  // (413): after a pause, the server says what it has and the rest of this file goes chunk by
  // chunk (a proxy that cuts long requests would cut the next run too).
  async reconnect ({ status, retryAfter }) {
    this.reconnects = (this.reconnects || 0) + 1
    if (this.reconnects > RECONNECTS) { this.fail(refusal('Sending the file', status, null)); return }
    this.noRuns = true
    const after = Number(retryAfter) * 1000
    const delay = status === 413 ? 0 : after > 0 ? Math.min(after, 60000) : 1000 * this.reconnects
    this.say(`${status ? `The server answered ${status}` : 'The connection was lost'}; going on in ${Math.ceil(delay / 1000)} s.`)
    await sleep(delay)
    if (this.state !== 'uploading') return
    try {
      await this.open()
      this.send()
    } catch (e) { this.fail(e) }
  }

  onWorker (m) {
    switch (m.type) {
      case 'progress':
        if (this.run) this.runLoaded = m.loaded
        else this.loaded = m.loaded
        break
      case 'stored': this.confirmed += m.size; break
      case 'retrying':
        this.say(`Part ${m.index + 1} of ${this.count}: ${m.status ? `the server answered ${m.status}` : 'the connection was lost'}; trying again in ${Math.ceil(m.delay / 1000)} s.`)
        break
      case 'interrupted': this.interrupted = m; break
      case 'sent':
        this.digests = m.digests
        this.ended()
        if (this.state === 'uploading' || this.state === 'pausing') this.complete().catch((e) => this.fail(e))
        break
      case 'stopped': {
        this.ended()
        const why = this.interrupted
        this.interrupted = null
        if (why && this.state === 'uploading') this.reconnect(why)
        break
      }
      case 'failed': {
        if (this.state !== 'uploading' && this.state !== 'pausing') break
        const what = m.index === undefined ? 'Sending the file' : `Part ${m.index + 1} of ${this.count}`
        this.fail(m.read
          ? new UploadError(`The file cannot be read any more (${m.read}): was it moved or changed? Choose it again to continue.`, { retry: false })
          : m.status === 200 || m.status === 201 ? new UploadError(`${what}: ${m.problem.detail}.`, { retry: false }) : refusal(what, m.status, m.problem))
        break
      }
    }
  }

  // The worker's job for this upload ended (all sent, or stopped after a stop or a failure).
  ended () {
    this.sending = false
    byJob.delete(this.job)
    this.onStopped?.()
  }

  // Asks the worker to stop this upload's chunks; resolves once none is in flight.
  halt () {
    if (!this.sending) return Promise.resolve()
    return new Promise((resolve) => {
      this.onStopped = () => { this.onStopped = null; resolve() }
      chunkSender().postMessage({ type: 'stop', uid: this.job })
    })
  }

  async complete () {
    this.setState('verifying', 'All parts are on the server; it is checking the whole file…')
    // Every chunk's SHA-256 as this page read it: the server checks them all before it
    // publishes anything (chunks of a run were sent without a digest of their own).
    const digests = this.digests?.length === this.count && this.digests.every((d) => d) ? this.digests : null
    let r = await api('POST', `/v1/uploads/${this.id}/complete`, digests ? { chunk_sha256: digests } : {})
    while (r.status === 202 || (r.ok && r.json?.state === 'completing')) {
      await sleep(500)
      r = await api('GET', `/v1/uploads/${this.id}`)
    }
    if (r.status === 409 && r.json?.missing && !this.again) { // parts the server lost meanwhile: once more
      this.again = true
      this.adopt({ ...r.json, id: this.id, chunk_size: this.chunkSize, chunk_count: this.count })
      return this.send()
    }
    if (!r.ok || r.json?.state !== 'completed' || !/^[0-9a-f]{64}$/.test(r.json.sha256 || '')) {
      if (r.status === 422 || r.json?.state === 'failed') {
        // Nothing was published; what the server holds is not this file: it goes, and Retry
        // sends the file again.
        if (r.json?.mismatched) await api('DELETE', `/v1/uploads/${this.id}`)
        forget(this.key)
        this.id = null
      }
      throw refusal('Checking the whole file', r.status, r.json)
    }
    forget(this.key)
    const sha = r.json.sha256
    this.confirmed = this.file.size
    this.el.dataset.sha256 = sha
    $('.sha', this.el).textContent = sha
    const link = $('.link', this.el)
    link.href = `/v1/uploads/${this.id}/content`
    if (token()) {
      // A link cannot carry the token: a signed URL that needs none.
      const signed = await api('POST', `/v1/uploads/${this.id}/content-url`, {})
      if (signed.ok) link.href = signed.json.url
    }
    link.textContent = `Download ${this.file.name}`
    $('.result', this.el).hidden = false
    this.setState('done', 'Done: uploaded and verified.')
    admit()
  }

  fail (e) {
    if (['error', 'retrying', 'cancelled', 'cancelling'].includes(this.state)) return
    if (!(e instanceof UploadError)) console.error(e)
    this.retryable = e instanceof UploadError ? e.retry : true
    this.setState('error', this.id && this.retryable ? 'Stopped. What the server already has is kept: Retry sends the rest.' : '')
    $('.err', this.el).textContent = e instanceof UploadError ? e.message : `Something went wrong: ${e.message || e}. Press Retry to try again.`
    if (e.field === 'token') $('#token').setAttribute('aria-invalid', 'true')
    admit()
  }

  async pause () {
    if (this.state !== 'uploading') return
    this.setState('pausing', 'Pausing…')
    await this.halt()
    if (this.state !== 'pausing') return // it finished or failed meanwhile
    if (this.run) {
      // What the run got to store before it was stopped.
      const r = await api('GET', `/v1/uploads/${this.id}`)
      if (r.ok) this.adopt(r.json)
      if (this.state !== 'pausing') return
    }
    this.setState('paused', `Paused. ${fmtBytes(this.confirmed)} of ${fmtBytes(this.file.size)} are on the server.`)
    $('.resume', this.el).focus()
    admit()
  }

  resume () {
    if (this.state !== 'paused') return
    this.setState('queued', 'Waiting for the files before it.')
    admit()
  }

  async retry () {
    if (this.state !== 'error') return
    $('#token').removeAttribute('aria-invalid')
    this.el.focus() // the Retry button goes away: keep the keyboard on this card
    // The error goes at once; what the failed attempt still had in flight is stopped first.
    this.setState('retrying', 'Stopping what the failed attempt still had on its way…')
    await this.halt()
    if (this.state !== 'retrying') return
    if (!this.id) delete this.el.dataset.id // the next attempt is a new upload
    this.setState('queued', 'Waiting for the files before it.')
    admit()
  }

  async cancel () {
    this.setState('cancelling', 'Cancelling…')
    await this.halt()
    if (!this.id) { this.setState('cancelled', 'Cancelled.'); admit(); return }
    const r = await api('DELETE', `/v1/uploads/${this.id}`)
    if (r.ok || r.status === 404 || r.status === 410) {
      forget(this.key)
      this.setState('cancelled', 'Cancelled. The server deleted what it had received.')
    } else {
      this.retryable = false
      this.setState('error', '')
      $('.err', this.el).textContent = refusal('Cancelling', r.status, r.json).message
      show(this.el, '.cancel')
    }
    admit()
  }

  // Removes the card. An unfinished upload stays on the server and under "Unfinished uploads".
  dismiss () {
    this.halt()
    this.el.remove()
    uploads.splice(uploads.indexOf(this), 1)
    if (!uploads.length) $('#uploads-title').hidden = true
    renderUnfinished()
    ;($('#uploads .upload button:not([hidden])') || $('#file')).focus()
  }

  // Percent, bytes, speed (over the last 3 s) and time left.
  render () {
    const size = this.file.size
    const inFlight = this.state !== 'uploading' ? 0 : this.run ? this.runLoaded - this.confirmed : this.loaded
    const sent = this.state === 'done' ? size : Math.min(size, this.confirmed + Math.max(0, inFlight))
    const frac = size ? sent / size : (this.state === 'done' ? 1 : 0)
    $('progress', this.el).value = Math.round(frac * 1000)
    $('.pct', this.el).textContent = `${Math.floor(frac * 100)}%`
    $('.bytes', this.el).textContent = `${fmtBytes(sent)} of ${fmtBytes(size)}`
    this.el.dataset.confirmed = String(this.confirmed)
    this.el.dataset.sent = String(sent)
    const now = performance.now()
    let speed = ''
    let eta = ''
    if (this.state === 'uploading') {
      this.samples.push([now, sent])
      while (this.samples.length > 2 && now - this.samples[1][0] > 3000) this.samples.shift()
      const [t0, b0] = this.samples[0]
      if (now - t0 > 500) {
        const bps = Math.max(0, (sent - b0) / ((now - t0) / 1000))
        speed = `${fmtBytes(bps)}/s`
        if (bps > 0) eta = `${fmtTime((size - sent) / bps)} left`
      }
    }
    $('.speed', this.el).textContent = speed
    $('.eta', this.el).textContent = eta
  }
}

function show (el, sel) { $(sel, el).hidden = false }

// Starts queued uploads, in the order chosen, while fewer than ACTIVE are busy.
function admit () {
  let busy = uploads.filter((u) => ['starting', 'uploading', 'pausing', 'verifying'].includes(u.state)).length
  for (const u of uploads) {
    if (busy >= ACTIVE) break
    if (u.state === 'queued') { busy++; u.start() }
  }
}

// ---- page ----
function addFiles (files) {
  for (const file of files) {
    const busy = uploads.find((u) => u.key === storageKey(file) && !['done', 'cancelled', 'error'].includes(u.state))
    if (busy) { busy.say('This file is already in the list.'); continue }
    uploads.push(new Upload(file))
  }
  admit()
  renderUnfinished()
}

function renderUnfinished () {
  const list = $('#unfinished')
  list.replaceChildren()
  const listed = new Set(uploads.filter((u) => u.state !== 'cancelled').map((u) => u.key))
  for (let i = 0; i < localStorage.length; i++) {
    const key = localStorage.key(i)
    if (!key.startsWith(KEY_PREFIX) || listed.has(key)) continue
    const s = loadSaved(key)
    if (!s?.id) continue
    const li = document.createElement('li')
    const label = document.createElement('span')
    label.textContent = `${s.name} (${fmtBytes(s.size)})`
    const discard = document.createElement('button')
    discard.type = 'button'
    discard.textContent = 'Discard'
    discard.setAttribute('aria-label', `Discard the unfinished upload of ${s.name}`)
    discard.addEventListener('click', async () => {
      await api('DELETE', `/v1/uploads/${s.id}`)
      forget(key)
    })
    li.append(label, discard)
    list.append(li)
  }
  $('#unfinished-section').hidden = list.children.length === 0
}

function showTokenField () { $('#token-field').hidden = false }

async function init () {
  const field = $('#token')
  field.value = sessionStorage.getItem(TOKEN_KEY) || ''
  field.addEventListener('change', () => {
    sessionStorage.setItem(TOKEN_KEY, field.value.trim())
    field.removeAttribute('aria-invalid')
  })
  const input = $('#file')
  input.addEventListener('change', () => { addFiles(input.files); input.value = '' })
  const drop = $('#drop')
  drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over') })
  drop.addEventListener('dragleave', () => drop.classList.remove('over'))
  drop.addEventListener('drop', (e) => { e.preventDefault(); drop.classList.remove('over'); addFiles(e.dataTransfer.files) })
  setInterval(() => { for (const u of uploads) if (u.state === 'uploading') u.render() }, 250)
  renderUnfinished()
  chunkSender() // loaded now, so that the first file starts at once
  const r = await api('GET', '/v1')
  if (r.ok) {
    caps = r.json
    if (caps.token_required) showTokenField()
    $('#server').textContent = `Files up to ${fmtBytes(caps.max_upload_size)}.`
  } else {
    showTokenField()
    $('#server').textContent = `The server does not answer (${r.json?.detail || (r.status ? `HTTP ${r.status}` : 'no connection')}); uploads may fail.`
  }
  document.body.dataset.ready = 'true'
}

// For the tests and the bench: the uploads, and the chunk sender's figures.
window.uploadPage = {
  uploads,
  stats: () => new Promise((resolve) => {
    if (!worker) { resolve(null); return }
    statsWaiter = (m) => { statsWaiter = null; resolve({ mean_inflight: m.mean_inflight, max_inflight: m.max_inflight }) }
    worker.postMessage({ type: 'stats' })
  })
}
init()
