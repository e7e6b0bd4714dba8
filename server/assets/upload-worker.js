// The upload page's chunk sender, a dedicated Worker: it reads the chunks of each file ahead,
// computes each chunk's SHA-256 with WebCrypto and PUTs it with that `Content-Digest`, 4 at a
// time, so that reading and hashing never hold the page's main thread. The page (app.js)
// creates and completes uploads and keeps the resume state; it posts jobs here and gets back
// progress, each stored chunk and the outcome.
//
// What it costs, per byte, beyond what a client without digests pays: one more read of the file
// into this Worker and WebCrypto's SHA-256 of it. The PUT body is the chunk's `Blob` slice,
// which the browser streams from the file itself: sending the bytes already read would cost
// more than reading them again (see the README).
//
// Messages in:  {type: 'start', uid, file, id, chunkSize, chunks: [index...], token}
//               {type: 'stop', uid}
// Messages out: {type: 'progress', uid, loaded}        bytes of unfinished PUTs sent so far
//               {type: 'stored', uid, index, size}      the server stored chunk `index`
//               {type: 'retrying', uid, index, status, delay}
//               {type: 'failed', uid, index, status, problem, read}   no new chunk starts; those
//                                                       in flight finish (and may be 'stored')
//               {type: 'sent', uid}                     the end: every chunk is stored
//               {type: 'stopped', uid}                  the end, after a stop or a failure
'use strict'

const PARALLEL = 4
// Chunks read and hashed ahead of the PUTs, beyond the 4 in flight: a slot that frees finds its
// next chunk ready. Only the digests are kept: the PUT body is the Blob slice, which the browser
// streams from the file, so reading ahead costs no memory beyond the chunk being hashed.
const AHEAD = 4
// Two reads at once: one chunk is hashed while the next is read.
const READS = 2
// Waits before retrying a chunk after a network error or a transient answer (Retry-After wins).
const RETRY_DELAYS = [500, 1000, 3000, 5000]
const TRANSIENT = [0, 408, 423, 429, 500, 502, 503, 504]
const PROGRESS_EVERY_MS = 100

const jobs = new Map() //  uid -> job, in the order started: earlier files go first
const ready = [] //        {job, index, blob, digest} hashed, waiting for a slot
let inflight = 0
let reading = 0
// Time-weighted PUTs in flight, for the bench (`stats` in app.js).
const usage = { since: 0, last: 0, area: 0, max: 0, was: 0 }

// Called after each change of `inflight`.
function account () {
  const now = performance.now()
  if (!usage.since) usage.since = now
  usage.area += usage.was * (now - usage.last)
  usage.last = now
  usage.was = inflight
  usage.max = Math.max(usage.max, inflight)
}

function b64 (buf) {
  let s = ''
  for (const x of new Uint8Array(buf)) s += String.fromCharCode(x)
  return btoa(s)
}
function hex (buf) { return Array.from(new Uint8Array(buf), (x) => x.toString(16).padStart(2, '0')).join('') }
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

function post (job, msg) { self.postMessage({ uid: job.uid, ...msg }) }

// Bytes of the job's PUTs in flight, sent so far; posted at most every PROGRESS_EVERY_MS.
function progress (job, force) {
  const now = performance.now()
  if (!force && now - job.progressAt < PROGRESS_EVERY_MS) return
  job.progressAt = now
  let loaded = 0
  for (const x of job.xhrs.values()) loaded += x.loaded
  post(job, { type: 'progress', loaded })
}

// Starts reads and PUTs while there is room.
function pump () {
  while (inflight < PARALLEL && ready.length) {
    const c = ready.shift()
    if (c.job.alive) send(c)
  }
  while (reading < READS && ready.length + reading + inflight < PARALLEL + AHEAD) {
    const next = nextToRead()
    if (!next) break
    read(next.job, next.index)
  }
}

function nextToRead () {
  for (const job of jobs.values()) {
    if (job.alive && job.toRead.length) return { job, index: job.toRead.shift() }
  }
  return null
}

async function read (job, index) {
  reading++
  job.reading++
  const start = index * job.chunkSize
  const blob = job.file.slice(start, Math.min(job.file.size, start + job.chunkSize))
  try {
    const digest = await crypto.subtle.digest('SHA-256', await blob.arrayBuffer())
    if (job.alive) ready.push({ job, index, blob, digest })
  } catch (e) {
    // The file was moved, changed or became unreadable since it was chosen.
    fail(job, { index, status: 0, read: `${e.name}: ${e.message}` })
  } finally {
    reading--
    job.reading--
    settle(job)
    pump()
  }
}

async function send ({ job, index, blob, digest }) {
  inflight++
  account()
  job.busy++
  try {
    for (let attempt = 0; ; attempt++) {
      const r = await put(job, index, blob, `sha-256=:${b64(digest)}:`)
      if (r.status === 200 || r.status === 201) {
        // The receipt names the SHA-256 the server computed of what it stored.
        if (r.json?.sha256 && r.json.sha256 !== hex(digest)) {
          fail(job, { index, status: r.status, problem: { detail: `the server stored other bytes for this part (${r.json.sha256})` } })
          break
        }
        post(job, { type: 'stored', index, size: blob.size })
        break
      }
      if (!job.alive) break // stopped (this PUT was aborted) or failed meanwhile: no retry
      if (!TRANSIENT.includes(r.status) || attempt >= RETRY_DELAYS.length) {
        fail(job, { index, status: r.status, problem: r.json })
        break
      }
      const after = Number(r.retryAfter) * 1000
      const delay = after > 0 ? Math.min(after, 60000) : RETRY_DELAYS[attempt]
      post(job, { type: 'retrying', index, status: r.status, delay })
      await sleep(delay)
      if (!job.alive) break
    }
  } finally {
    inflight--
    account()
    job.busy--
    progress(job, true)
    settle(job)
    pump()
  }
}

// One chunk PUT; XMLHttpRequest for its upload progress events.
function put (job, index, blob, digest) {
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest()
    const slot = { xhr, loaded: 0 }
    job.xhrs.set(index, slot)
    const done = () => {
      job.xhrs.delete(index)
      let json = null
      try { json = JSON.parse(xhr.responseText) } catch {}
      resolve({ status: xhr.status, json, retryAfter: xhr.getResponseHeader('retry-after') })
    }
    xhr.open('PUT', `/v1/uploads/${job.id}/chunks/${index}`)
    xhr.setRequestHeader('content-digest', digest)
    if (job.token) xhr.setRequestHeader('authorization', `Bearer ${job.token}`)
    xhr.upload.onprogress = (e) => { slot.loaded = e.loaded; progress(job) }
    xhr.onload = done
    xhr.onerror = done
    xhr.onabort = done
    xhr.send(blob)
  })
}

// Reports the job's end once nothing of it is left in flight.
function settle (job) {
  if (job.busy || job.reading || job.ended) return
  if (job.alive && (job.toRead.length || ready.some((c) => c.job === job))) return
  job.ended = true
  jobs.delete(job.uid)
  post(job, { type: job.alive ? 'sent' : 'stopped' })
}

// Starts no more of the job's chunks.
function drop (job) {
  job.alive = false
  job.toRead.length = 0
  for (let i = ready.length - 1; i >= 0; i--) if (ready[i].job === job) ready.splice(i, 1)
}

// Says at once why the job cannot finish; its chunks in flight, likely fine, may still be
// stored, so that Retry has less to send.
function fail (job, why) {
  if (!job.alive) return
  drop(job)
  post(job, { type: 'failed', ...why })
  settle(job)
}

function stop (job) {
  drop(job)
  for (const { xhr } of job.xhrs.values()) xhr.abort()
}

self.onmessage = ({ data: m }) => {
  if (m.type === 'start') {
    const job = {
      uid: m.uid,
      file: m.file,
      id: m.id,
      chunkSize: m.chunkSize,
      toRead: m.chunks.slice(),
      token: m.token,
      alive: true,
      busy: 0, //    PUTs in flight or waiting to retry
      reading: 0, // chunks being read and hashed
      ended: false,
      xhrs: new Map(),
      progressAt: 0,
    }
    jobs.set(m.uid, job)
    settle(job) // an upload with nothing left to send
    pump()
  } else if (m.type === 'stop') {
    const job = jobs.get(m.uid)
    if (!job) return
    stop(job)
    settle(job)
  } else if (m.type === 'stats') {
    self.postMessage({ type: 'stats', mean_inflight: usage.last > usage.since ? usage.area / (usage.last - usage.since) : 0, max_inflight: usage.max })
  }
}
