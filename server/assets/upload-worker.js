// The upload page's chunk sender, a dedicated Worker: it reads every chunk of each file and
// computes its SHA-256 with WebCrypto, so that reading and hashing never hold the page's main
// thread, and sends the chunks in one of two ways:
// - a run: when what is missing is the file from some chunk to its end (a new upload), ONE
//   request carries it all (`POST /v1/uploads/{id}/chunks?from=k`), its body the `File` itself
//   (or its slice from chunk k), which the browser's network stack reads from disk on its own;
//   the chunks are hashed meanwhile, and their digests checked by the server at completion;
// - chunk by chunk otherwise (the holes a failed or resumed upload left): each chunk, once
//   hashed, is PUT with its `Content-Digest`, 4 at a time.
// The page (app.js) creates and completes uploads and keeps the resume state; it posts jobs
// here and gets back progress, each stored chunk, every chunk's digest and the outcome.
//
// What it costs, per byte, beyond what a client without digests pays: one more read of the file
// into this Worker and WebCrypto's SHA-256 of it. A PUT's body is the chunk's `Blob` slice,
// which the browser streams from the file itself: sending the bytes already read would cost
// more than reading them again; and one request with the whole `File` costs the browser less
// than slices of it (see the README).
//
// Messages in:  {type: 'start', uid, file, id, chunkSize, count, chunks: [index...], run, token}
//                 chunks: the ones to send; run: true to send them as one run (then they are
//                 the file from chunks[0] to its end); every chunk of `count` is hashed
//               {type: 'stop', uid}
// Messages out: {type: 'progress', uid, loaded}        bytes of unfinished requests sent so far
//               {type: 'stored', uid, index, size}      the server stored chunk `index` (a PUT)
//               {type: 'retrying', uid, index, status, delay}
//               {type: 'interrupted', uid, status, retryAfter}   a run ended early on a
//                                                       transient error, or was too large for a
//                                                       proxy (413): the page asks the server
//                                                       what it has and sends the rest
//               {type: 'failed', uid, index, status, problem, read}   (no index: the run failed)
//                                                       no new chunk starts; those
//                                                       in flight finish (and may be 'stored')
//               {type: 'sent', uid, digests}            the end: every chunk is stored; the hex
//                                                       SHA-256 of every chunk, in order
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
    job.digests[index] = hex(digest)
    if (job.alive && job.puts.has(index)) ready.push({ job, index, blob, digest })
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

// One chunk PUT.
function put (job, index, blob, digest) {
  return request(job, index, 'PUT', `/v1/uploads/${job.id}/chunks/${index}`, blob, { 'content-digest': digest })
}

// One request of the job's, known by `key` while in flight; XMLHttpRequest for its upload
// progress events.
function request (job, key, method, url, body, headers) {
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest()
    const slot = { xhr, loaded: 0 }
    job.xhrs.set(key, slot)
    const done = () => {
      job.xhrs.delete(key)
      let json = null
      try { json = JSON.parse(xhr.responseText) } catch {}
      resolve({ status: xhr.status, json, retryAfter: xhr.getResponseHeader('retry-after') })
    }
    xhr.open(method, url)
    for (const [name, value] of Object.entries(headers)) xhr.setRequestHeader(name, value)
    if (job.token) xhr.setRequestHeader('authorization', `Bearer ${job.token}`)
    xhr.upload.onprogress = (e) => { slot.loaded = e.loaded; progress(job) }
    xhr.onload = done
    xhr.onerror = done
    xhr.onabort = done
    xhr.send(body)
  })
}

// The job's run: every chunk from `from` to the end in one request, whose body is the File
// itself from the first chunk (the browser then reads the file on its own), else its slice.
async function sendRun (job, from) {
  job.busy++
  const body = from === 0 ? job.file : job.file.slice(from * job.chunkSize)
  try {
    // The page follows what the server stored from its status meanwhile.
    const r = await request(job, 'run', 'POST', `/v1/uploads/${job.id}/chunks?from=${from}`, body, {})
    if (r.status === 200 || !job.alive) {
      // stored, or stopped (the request was aborted)
    } else if (TRANSIENT.includes(r.status) || r.status === 413) {
      // 413: a proxy on the way limits request bodies; the page goes on chunk by chunk.
      drop(job)
      post(job, { type: 'interrupted', status: r.status, retryAfter: r.retryAfter })
    } else {
      // Not one chunk's answer: the problem says which chunk, if any.
      fail(job, { status: r.status, problem: r.json })
    }
  } finally {
    job.busy--
    progress(job, true)
    settle(job)
    pump()
  }
}

// Reports the job's end once nothing of it is left in flight.
function settle (job) {
  if (job.busy || job.reading || job.ended) return
  if (job.alive && (job.toRead.length || ready.some((c) => c.job === job))) return
  job.ended = true
  jobs.delete(job.uid)
  post(job, job.alive ? { type: 'sent', digests: job.digests } : { type: 'stopped' })
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
    // The chunks to send are read first, then the others (their digests go with the
    // completion, which covers chunks stored by an earlier run).
    const sending = new Set(m.chunks)
    const others = []
    for (let i = 0; i < m.count; i++) if (!sending.has(i)) others.push(i)
    const job = {
      uid: m.uid,
      file: m.file,
      id: m.id,
      chunkSize: m.chunkSize,
      count: m.count,
      toRead: m.chunks.concat(others),
      puts: m.run ? new Set() : sending,
      digests: new Array(m.count),
      token: m.token,
      alive: true,
      busy: 0, //    requests in flight or waiting to retry
      reading: 0, // chunks being read and hashed
      ended: false,
      xhrs: new Map(),
      progressAt: 0,
    }
    jobs.set(m.uid, job)
    if (m.run && m.chunks.length) sendRun(job, m.chunks[0])
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
