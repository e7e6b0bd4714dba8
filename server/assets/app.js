// The built-in upload page: native API v1, 4 chunks in flight, a Content-Digest per chunk
// (WebCrypto), the whole file's SHA-256 computed incrementally as the file is read once, and
// resume after a reload from localStorage. No dependencies, no build step.
'use strict'

// ---- SHA-256 (FIPS 180-4), incremental: WebCrypto only hashes whole buffers ----
const K = Int32Array.of(
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2)
const H0 = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19]

class Sha256 {
  constructor () {
    this.h = Int32Array.from(H0)
    this.w = new Int32Array(64)
    this.buf = new Uint8Array(64)
    this.bufLen = 0
    this.len = 0 // bytes hashed so far
  }

  // The midstate, storable as JSON; only at a 64-byte boundary (null otherwise).
  state () { return this.bufLen === 0 ? { h: Array.from(this.h), len: this.len } : null }

  static fromState (s) {
    const x = new Sha256()
    x.h.set(s.h)
    x.len = s.len
    return x
  }

  update (data) {
    const b = data instanceof Uint8Array ? data : new Uint8Array(data)
    const n = b.length
    let i = 0
    this.len += n
    if (this.bufLen > 0) {
      i = Math.min(64 - this.bufLen, n)
      this.buf.set(b.subarray(0, i), this.bufLen)
      this.bufLen += i
      if (this.bufLen < 64) return this
      this.block(this.buf, 0)
      this.bufLen = 0
    }
    for (; i + 64 <= n; i += 64) this.block(b, i)
    if (i < n) { this.buf.set(b.subarray(i), 0); this.bufLen = n - i }
    return this
  }

  block (b, o) {
    const w = this.w
    const h = this.h
    for (let t = 0; t < 16; t++, o += 4) w[t] = (b[o] << 24) | (b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]
    for (let t = 16; t < 64; t++) {
      const x = w[t - 15]
      const y = w[t - 2]
      const s0 = ((x >>> 7) | (x << 25)) ^ ((x >>> 18) | (x << 14)) ^ (x >>> 3)
      const s1 = ((y >>> 17) | (y << 15)) ^ ((y >>> 19) | (y << 13)) ^ (y >>> 10)
      w[t] = (w[t - 16] + s0 + w[t - 7] + s1) | 0
    }
    let a = h[0]; let bb = h[1]; let c = h[2]; let d = h[3]
    let e = h[4]; let f = h[5]; let g = h[6]; let hh = h[7]
    for (let t = 0; t < 64; t++) {
      const S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7))
      const t1 = (hh + S1 + ((e & f) ^ (~e & g)) + K[t] + w[t]) | 0
      const S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10))
      const t2 = (S0 + ((a & bb) ^ (a & c) ^ (bb & c))) | 0
      hh = g; g = f; f = e; e = (d + t1) | 0
      d = c; c = bb; bb = a; a = (t1 + t2) | 0
    }
    h[0] += a; h[1] += bb; h[2] += c; h[3] += d
    h[4] += e; h[5] += f; h[6] += g; h[7] += hh
  }

  // Lowercase hex of the digest; this object can go on being updated afterwards.
  hex () {
    const x = Sha256.fromState({ h: this.h, len: this.len })
    x.buf.set(this.buf)
    x.bufLen = this.bufLen
    const padLen = (this.bufLen < 56 ? 56 : 120) - this.bufLen
    const pad = new Uint8Array(padLen + 8)
    pad[0] = 0x80
    const dv = new DataView(pad.buffer)
    dv.setUint32(padLen, Math.floor(this.len / 0x20000000)) // bits, high word
    dv.setUint32(padLen + 4, (this.len * 8) >>> 0) //          bits, low word
    x.update(pad)
    return Array.from(x.h, (v) => (v >>> 0).toString(16).padStart(8, '0')).join('')
  }
}

// ---- helpers ----
const PARALLEL = 4
const RETRIES = 6
const TRANSIENT = [0, 408, 429, 500, 502, 503, 504]

// The bearer token typed in the page (kept for this tab only), as request headers.
function authHeaders () {
  const t = $('#token').value.trim()
  return t ? { authorization: `Bearer ${t}` } : {}
}
const KEY_PREFIX = 'upload-page:v1:'
const $ = (sel, el = document) => el.querySelector(sel)
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const uploads = []
let caps = null

function fmtBytes (n) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let u = 0
  while (n >= 1024 && u < units.length - 1) { n /= 1024; u++ }
  return `${u === 0 ? n : n.toFixed(1)} ${units[u]}`
}

function fmtTime (s) {
  if (!Number.isFinite(s)) return ''
  s = Math.ceil(s)
  const h = Math.floor(s / 3600)
  const m = Math.floor((s % 3600) / 60)
  const ss = String(s % 60).padStart(2, '0')
  return h ? `${h}:${String(m).padStart(2, '0')}:${ss}` : `${m}:${ss}`
}

function b64 (buf) { return btoa(String.fromCharCode(...new Uint8Array(buf))) }

// An error worth showing as is: the server's problem+json `detail` when there is one.
class UploadError extends Error {
  constructor (what, status, problem) {
    const why = problem?.detail || problem?.title || (status ? `HTTP ${status}` : 'cannot reach the server')
    super(`${what}: ${why}`)
    this.status = status
  }
}

// JSON request to the native API; network errors and 5xx are retried a few times.
async function api (method, path, body) {
  for (let attempt = 0; ; attempt++) {
    let status = 0
    let json = null
    let headers = null
    try {
      const r = await fetch(path, {
        method,
        cache: 'no-store',
        headers: { ...authHeaders(), ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
        body: body === undefined ? undefined : JSON.stringify(body)
      })
      status = r.status
      headers = r.headers
      const text = await r.text()
      try { json = text ? JSON.parse(text) : null } catch { json = null }
    } catch { status = 0 }
    if (!TRANSIENT.includes(status) || attempt >= 3) return { status, ok: status >= 200 && status < 300, json, headers }
    await sleep(500 * 2 ** attempt)
  }
}

const storageKey = (f) => `${KEY_PREFIX}${f.name}:${f.size}:${f.lastModified}`
function loadSaved (key) { try { return JSON.parse(localStorage.getItem(key)) } catch { return null } }
function forget (key) { localStorage.removeItem(key); renderUnfinished() }

// ---- one upload ----
class Upload {
  constructor (file) {
    this.file = file
    this.key = storageKey(file)
    this.id = null
    this.stopped = false
    this.inflight = new Map() // chunk index -> { xhr, loaded }
    this.confirmed = 0 //        bytes the server has acknowledged
    this.samples = []
    this.el = $('#upload-template').content.firstElementChild.cloneNode(true)
    $('.name', this.el).textContent = file.name
    $('.size', this.el).textContent = fmtBytes(file.size)
    $('progress', this.el).setAttribute('aria-label', `Upload of ${file.name}`)
    $('.pause', this.el).addEventListener('click', () => this.pause())
    $('.resume', this.el).addEventListener('click', () => this.resume())
    $('.cancel', this.el).addEventListener('click', () => this.cancel())
    $('#uploads').prepend(this.el)
    $('#uploads-title').hidden = false
  }

  setState (state, msg) {
    this.state = state
    this.el.dataset.state = state
    const active = state === 'uploading' || state === 'starting'
    $('.pause', this.el).disabled = !active
    $('.resume', this.el).disabled = !(state === 'paused' || (state === 'error' && this.id && this.retryable))
    $('.cancel', this.el).disabled = !this.id || ['done', 'cancelled', 'cancelling', 'verifying'].includes(state)
    if (msg !== undefined) this.say(msg)
    if (state !== 'error') $('.err', this.el).textContent = ''
    this.render()
  }

  say (msg) { $('.msg', this.el).textContent = msg }

  save () {
    localStorage.setItem(this.key, JSON.stringify({
      id: this.id,
      name: this.file.name,
      size: this.file.size,
      chunkSize: this.chunkSize,
      hash: this.hasher.state(), // SHA-256 midstate of the prefix read so far
      saved: Date.now()
    }))
  }

  setMissing (ranges) {
    this.missing = new Set()
    let missingBytes = 0
    for (const [a, b] of ranges || []) {
      for (let i = a; i <= b; i++) {
        this.missing.add(i)
        missingBytes += Math.min(this.chunkSize, this.file.size - i * this.chunkSize)
      }
    }
    this.confirmed = this.file.size - missingBytes
  }

  adopt (status) {
    this.id = status.id
    this.chunkSize = status.chunk_size
    this.count = status.chunk_count
    this.el.dataset.id = status.id
    this.setMissing(status.missing)
  }

  async start () {
    this.setState('starting', 'Starting…')
    try {
      if (caps && this.file.size > caps.max_upload_size) {
        throw new UploadError('Cannot upload', 0, { detail: `the file is larger than the server accepts (${fmtBytes(caps.max_upload_size)})` })
      }
      await this.open()
      await this.run()
    } catch (e) { this.fail(e) }
  }

  // Resume the upload remembered for this file, or create a new one.
  async open () {
    const saved = loadSaved(this.key)
    if (saved?.id) {
      const r = await api('GET', `/v1/uploads/${saved.id}`)
      if (r.ok && r.json.size === this.file.size && ['uploading', 'completed'].includes(r.json.state)) {
        this.adopt(r.json)
        const h = saved.hash
        const fresh = h && saved.chunkSize === this.chunkSize && (h.len % this.chunkSize === 0 || h.len === this.file.size)
        this.hasher = fresh ? Sha256.fromState(h) : new Sha256()
        this.resumed = true
        this.el.dataset.resumed = 'true'
        renderUnfinished()
        this.say(`Resuming: ${this.count - this.missing.size} of ${this.count} chunks are already on the server.` +
          (this.hasher.len ? '' : ' The file is read again from the start to compute its SHA-256.'))
        return
      }
      forget(this.key)
      this.say(`The earlier upload of this file is gone from the server (${r.json?.detail || r.json?.state || 'HTTP ' + r.status}); starting over.`)
    }
    // No chunk_size: the server picks its default (GET /v1), grown if the file needs too many chunks.
    const r = await api('POST', '/v1/uploads', { size: this.file.size, filename: this.file.name })
    if (!r.ok) throw new UploadError('Cannot create the upload', r.status, r.json)
    this.adopt(r.json)
    this.hasher = new Sha256()
    this.save()
    renderUnfinished()
  }

  // Read the file once, in order: hash what the midstate does not cover yet, send what is missing.
  async run () {
    const gen = this.gen = (this.gen || 0) + 1
    const alive = () => !this.stopped && gen === this.gen // a paused run may still be unwinding
    this.stopped = false
    this.retryable = true
    this.samples = [[performance.now(), this.confirmed]]
    this.setState('uploading', this.resumed && this.gen === 1 ? undefined : `Uploading, ${PARALLEL} chunks at a time.`)
    const cs = this.chunkSize
    const slots = new Set()
    for (let i = 0; i < this.count && alive(); i++) {
      const hashIt = this.hasher.len === i * cs
      const sendIt = this.missing.has(i)
      if (!hashIt && !sendIt) continue
      if (sendIt) while (slots.size >= PARALLEL) await Promise.race(slots)
      if (!alive()) break
      // The page reads each chunk once, for both hashes; the PUT body is the Blob slice itself,
      // which the browser streams from disk (much faster than sending the ArrayBuffer).
      const blob = this.file.slice(i * cs, Math.min(this.file.size, (i + 1) * cs))
      const buf = await blob.arrayBuffer()
        .catch((e) => { throw new UploadError('Cannot read the file', 0, { detail: e.message }) })
      if (!alive()) break
      if (hashIt) { this.hasher.update(buf); this.save() }
      if (sendIt) {
        const digest = `sha-256=:${b64(await crypto.subtle.digest('SHA-256', buf))}:`
        const p = this.send(i, blob, digest, alive).catch((e) => this.fail(e)).finally(() => slots.delete(p))
        slots.add(p)
      }
    }
    await Promise.all(slots)
    if (alive()) await this.complete()
  }

  // Sends chunk i (a Blob), retrying transient failures; the Content-Digest is of the bytes
  // hashed, so a file that changed since is refused by the server rather than stored.
  async send (i, blob, digest, alive) {
    for (let attempt = 0; alive(); attempt++) {
      const r = await this.put(i, blob, digest)
      if (r.aborted) return
      if (r.status === 200 || r.status === 201) {
        if (this.missing.delete(i)) this.confirmed += blob.size
        return
      }
      if (!TRANSIENT.includes(r.status) || attempt >= RETRIES) {
        if (r.status === 404 || r.status === 410) { this.retryable = false; forget(this.key) }
        throw new UploadError(`Chunk ${i + 1} of ${this.count} was refused`, r.status, r.json)
      }
      const after = Number(r.retryAfter) * 1000
      const delay = after > 0 ? after : Math.min(8000, 500 * 2 ** attempt) * (0.5 + Math.random() / 2)
      this.say(`Chunk ${i + 1}: ${r.status ? 'HTTP ' + r.status : 'connection lost'}; retrying in ${(delay / 1000).toFixed(1)} s.`)
      await sleep(delay)
    }
  }

  // One chunk PUT with XMLHttpRequest, for upload progress events.
  put (i, blob, digest) {
    return new Promise((resolve) => {
      const xhr = new XMLHttpRequest()
      const slot = { xhr, loaded: 0 }
      this.inflight.set(i, slot)
      const done = (aborted) => {
        this.inflight.delete(i)
        let json = null
        try { json = JSON.parse(xhr.responseText) } catch {}
        resolve({ status: xhr.status, json, aborted, retryAfter: xhr.getResponseHeader('retry-after') })
      }
      xhr.open('PUT', `/v1/uploads/${this.id}/chunks/${i}`)
      xhr.setRequestHeader('content-digest', digest)
      for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v)
      xhr.upload.onprogress = (e) => { slot.loaded = e.loaded }
      xhr.onload = () => done(false)
      xhr.onerror = () => done(false)
      xhr.onabort = () => done(true)
      xhr.send(blob)
    })
  }

  async complete () {
    const sha = this.hasher.hex()
    this.setState('verifying', 'All chunks are on the server; it is checking the whole file…')
    let r = await api('POST', `/v1/uploads/${this.id}/complete`, { sha256: sha })
    while (r.status === 202 || (r.ok && r.json?.state === 'completing')) {
      await sleep(1000)
      r = await api('GET', `/v1/uploads/${this.id}`)
    }
    if (r.status === 409 && r.json?.missing && !this.again) { // should not happen; send them once more
      this.again = true
      this.setMissing(r.json.missing)
      return this.run()
    }
    if (!r.ok || r.json?.state !== 'completed') {
      this.retryable = false
      if (r.status === 422 || r.json?.state === 'failed') forget(this.key)
      const p = r.json || {}
      if (p.expected_sha256) p.detail = `${p.detail || 'SHA-256 mismatch'} (file ${p.expected_sha256}, server ${p.actual_sha256})`
      throw new UploadError('The server did not accept the file', r.status, p)
    }
    if (r.json.sha256 !== sha) {
      this.retryable = false
      throw new UploadError('SHA-256 mismatch', 0, { detail: `this file has ${sha}, the server has ${r.json.sha256}` })
    }
    forget(this.key)
    this.confirmed = this.file.size
    this.el.dataset.sha256 = sha
    $('.sha', this.el).textContent = sha
    const link = $('.link', this.el)
    link.href = `/v1/uploads/${this.id}/content`
    if (Object.keys(authHeaders()).length) {
      // A link cannot carry the token: a signed URL that needs none.
      const signed = await api('POST', `/v1/uploads/${this.id}/content-url`, {})
      if (signed.ok) link.href = signed.json.url
    }
    link.textContent = `Download ${this.file.name}`
    $('.result', this.el).hidden = false
    this.setState('done', "Done. The server's SHA-256 matches this file.")
  }

  stop () {
    this.stopped = true
    for (const { xhr } of this.inflight.values()) xhr.abort()
  }

  fail (e) {
    if (this.state === 'error' || this.state === 'cancelled' || this.state === 'cancelling') return
    this.stop()
    console.error(e)
    this.setState('error', this.retryable && this.id ? 'Stopped. Resume tries again from what the server has.' : '')
    $('.err', this.el).textContent = e instanceof UploadError ? e.message : `Unexpected error: ${e.message || e}`
  }

  pause () {
    if (this.state !== 'uploading') return
    this.stop()
    this.setState('paused', `Paused. ${this.count - this.missing.size} of ${this.count} chunks are on the server.`)
    $('.resume', this.el).focus()
  }

  async resume () {
    if (this.state !== 'paused' && this.state !== 'error') return
    this.setState('starting', 'Asking the server what it still needs…')
    await sleep(0) // let aborted requests settle
    try {
      const r = await api('GET', `/v1/uploads/${this.id}`)
      if (!r.ok) {
        if (r.status === 404 || r.status === 410) { this.retryable = false; forget(this.key) }
        throw new UploadError('Cannot resume', r.status, r.json)
      }
      this.adopt(r.json)
      await this.run()
    } catch (e) { this.fail(e) }
  }

  async cancel () {
    if (!this.id) return
    this.stop()
    this.setState('cancelling', 'Cancelling…')
    const r = await api('DELETE', `/v1/uploads/${this.id}`)
    if (r.ok || r.status === 404 || r.status === 410) {
      forget(this.key)
      this.setState('cancelled', 'Cancelled. The server deleted what it had received.')
    } else {
      this.retryable = false
      this.state = 'cancel-failed'
      this.setState('error')
      $('.err', this.el).textContent = new UploadError('Cannot cancel', r.status, r.json).message
      $('.cancel', this.el).disabled = false
    }
  }

  // Percent, speed (over the last 3 s) and ETA.
  render () {
    const size = this.file.size
    let sent = this.confirmed
    for (const s of this.inflight.values()) sent += s.loaded
    if (this.state === 'done') sent = size
    sent = Math.min(sent, size)
    const frac = size ? sent / size : (this.state === 'done' ? 1 : 0)
    $('progress', this.el).value = Math.round(frac * 1000)
    $('.pct', this.el).textContent = `${Math.floor(frac * 100)}%`
    this.el.dataset.confirmed = String(this.confirmed)
    this.el.dataset.sent = String(sent)
    const now = performance.now()
    let speed = ''
    let eta = ''
    if (this.state === 'uploading') {
      this.samples.push([now, sent])
      while (this.samples.length > 2 && now - this.samples[1][0] > 3000) this.samples.shift()
      const [t0, b0] = this.samples[0]
      if (now - t0 > 300) {
        const bps = Math.max(0, (sent - b0) / ((now - t0) / 1000))
        speed = `${fmtBytes(bps)}/s`
        if (bps > 0) eta = `${fmtTime((size - sent) / bps)} left`
      }
    }
    if (this.count !== undefined) $('.chunks', this.el).textContent = `${this.count - this.missing.size} of ${this.count} chunks stored`
    $('.speed', this.el).textContent = speed
    $('.eta', this.el).textContent = eta
  }
}

// ---- page ----
function addFiles (files) {
  for (const file of files) {
    const busy = uploads.find((u) => u.key === storageKey(file) && ['starting', 'uploading', 'verifying', 'cancelling'].includes(u.state))
    if (busy) { busy.say('This file is already being uploaded.'); continue }
    const u = new Upload(file)
    uploads.push(u)
    u.start()
  }
}

function renderUnfinished () {
  const list = $('#unfinished')
  list.replaceChildren()
  const active = new Set(uploads.filter((u) => !['done', 'cancelled', 'error'].includes(u.state)).map((u) => u.key))
  for (let i = 0; i < localStorage.length; i++) {
    const key = localStorage.key(i)
    if (!key.startsWith(KEY_PREFIX) || active.has(key)) continue
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

async function init () {
  const token = $('#token')
  token.value = sessionStorage.getItem('upload-token') || ''
  token.addEventListener('change', () => sessionStorage.setItem('upload-token', token.value.trim()))
  const input = $('#file')
  input.addEventListener('change', () => { addFiles(input.files); input.value = '' })
  const drop = $('#drop')
  drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over') })
  drop.addEventListener('dragleave', () => drop.classList.remove('over'))
  drop.addEventListener('drop', (e) => { e.preventDefault(); drop.classList.remove('over'); addFiles(e.dataTransfer.files) })
  setInterval(() => { for (const u of uploads) if (u.state === 'uploading') u.render() }, 250)
  renderUnfinished()
  const r = await api('GET', '/v1')
  if (r.ok) {
    caps = r.json
    $('#server').textContent = `Chunks of ${fmtBytes(caps.chunk_size.default)} (the server's default), ` +
      `${PARALLEL} at a time; files up to ${fmtBytes(caps.max_upload_size)}.`
  } else {
    $('#server').textContent = `The server does not answer: ${r.json?.detail || 'HTTP ' + r.status}.`
  }
  document.body.dataset.ready = 'true'
}

window.uploadPage = { Sha256, uploads }
init()
