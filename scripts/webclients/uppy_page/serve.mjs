#!/usr/bin/env node
// A tiny static server for the Uppy test page: serves uppy_page/ at / and the installed npm packages
// (target/tools/node/node_modules) as native browser ES modules at /@m/<path>, with no bundler and
// no build step. Per request it only:
//   - rewrites bare/relative import specifiers in ES modules to /@m/ URLs (package.json "exports"
//     with the browser/import/default conditions, the "browser" field, "module", "main");
//   - wraps CommonJS files (lodash/throttle, classnames, mime-match, namespace-emitter, url-parse,
//     ...) as ES modules: their require()s become static imports, module.exports the default export.
//
//   node uppy_page/serve.mjs [--port N]   -> one JSON line {"ok":true,"url":"http://127.0.0.1:PORT/",...}
// or, from another script:  const srv = await startPageServer({ port: 0 }); ... srv.close()
import fs from 'node:fs'
import http from 'node:http'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { NODE_MODULES } from '../lib.mjs'

const PAGE_DIR = path.dirname(fileURLToPath(import.meta.url))
const MIME = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.mjs': 'text/javascript; charset=utf-8', '.cjs': 'text/javascript; charset=utf-8', '.css': 'text/css; charset=utf-8', '.json': 'application/json', '.png': 'image/png' }
const ESM_CONDITIONS = ['browser', 'import', 'module', 'default']
const CJS_CONDITIONS = ['browser', 'require', 'default']
const EMPTY = '/@empty'

const pjCache = new Map()
function readPj(dir) {
  if (!pjCache.has(dir)) {
    const p = path.join(dir, 'package.json')
    pjCache.set(dir, fs.existsSync(p) ? JSON.parse(fs.readFileSync(p, 'utf8')) : null)
  }
  return pjCache.get(dir)
}
// The directory of the package that owns a file (nearest package.json with a name).
function ownerDir(file) {
  for (let d = path.dirname(file); d.startsWith(NODE_MODULES); d = path.dirname(d)) {
    const pj = readPj(d)
    if (pj && pj.name) return d
  }
  return null
}
function tryFile(p) {
  for (const c of [p, p + '.js', p + '.mjs', p + '.cjs', p + '.json', path.join(p, 'index.js')]) {
    if (fs.existsSync(c) && fs.statSync(c).isFile()) return c
  }
  return null
}
function pickCond(e, conds) {
  if (e == null) return null
  if (typeof e === 'string') return e
  if (Array.isArray(e)) { for (const x of e) { const r = pickCond(x, conds); if (r) return r } return null }
  for (const [k, v] of Object.entries(e)) if (conds.includes(k)) { const r = pickCond(v, conds); if (r) return r }
  return null
}
// Apply a package's "browser" object map to a resolved file (or bare name); false -> empty module.
function browserMap(pkgDir, target) {
  const pj = pkgDir && readPj(pkgDir)
  if (!pj || typeof pj.browser !== 'object' || pj.browser === null) return target
  const rel = target.startsWith('/') ? './' + path.relative(pkgDir, target) : target
  for (const [k, v] of Object.entries(pj.browser)) {
    const kk = k.startsWith('.') ? './' + path.normalize(k) : k
    if (kk === rel || kk === rel.replace(/\.js$/, '')) return v === false ? EMPTY : (v.startsWith('.') ? tryFile(path.join(pkgDir, v)) : v)
  }
  return target
}
function findPkgDir(name, fromDir) {
  for (let d = fromDir; d.startsWith(NODE_MODULES) || d === path.dirname(NODE_MODULES); d = path.dirname(d)) {
    const c = path.join(d, 'node_modules', name)
    if (fs.existsSync(c)) return c
    if (d === path.dirname(d)) break
  }
  const top = path.join(NODE_MODULES, name)
  return fs.existsSync(top) ? top : null
}
function resolve(spec, fromFile, conds) {
  if (spec.startsWith('/@m/') || /^(https?:|data:)/.test(spec)) return null // already a URL
  if (!fromFile && (spec.startsWith('.') || spec.startsWith('/'))) return null // the page's own files
  const fromDir = fromFile ? path.dirname(fromFile) : NODE_MODULES
  if (spec.startsWith('.') || spec.startsWith('/')) {
    const f = tryFile(path.resolve(fromDir, spec))
    if (!f) throw new Error(`cannot resolve ${spec} from ${fromFile}`)
    return browserMap(ownerDir(f), f)
  }
  if (spec.startsWith('node:')) return EMPTY
  const ownMapped = fromFile ? browserMap(ownerDir(fromFile), spec) : spec
  if (ownMapped !== spec) return ownMapped.startsWith('/') ? ownMapped : resolve(ownMapped, fromFile, conds)
  const parts = spec.split('/')
  const name = spec.startsWith('@') ? parts.slice(0, 2).join('/') : parts[0]
  const sub = spec.slice(name.length + 1)
  const dir = findPkgDir(name, fromDir)
  if (!dir) {
    // Node builtins a package only uses outside browsers (fs, path, ...): an empty module.
    if (['fs', 'path', 'os', 'crypto', 'stream', 'util', 'events', 'buffer', 'http', 'https', 'url'].includes(name)) return EMPTY
    throw new Error(`package ${name} not installed (imported from ${fromFile})`)
  }
  const pj = readPj(dir) || {}
  let rel = null
  if (pj.exports) {
    const ex = pj.exports
    const key = sub ? './' + sub : '.'
    const isMap = typeof ex === 'object' && !Array.isArray(ex) && Object.keys(ex).some((k) => k.startsWith('.'))
    if (!isMap) { if (key === '.') rel = pickCond(ex, conds) } else if (key in ex) rel = pickCond(ex[key], conds)
    else {
      for (const [k, v] of Object.entries(ex)) {
        const star = k.indexOf('*')
        if (star < 0) continue
        const [pre, post] = [k.slice(0, star), k.slice(star + 1)]
        if (key.startsWith(pre) && key.endsWith(post)) {
          const t = pickCond(v, conds)
          if (t) rel = t.replace('*', key.slice(pre.length, key.length - post.length))
          break
        }
      }
    }
    if (!rel) throw new Error(`${spec}: not exported by ${name}`)
    return browserMap(dir, path.join(dir, rel))
  }
  if (sub) rel = sub
  else rel = (typeof pj.browser === 'string' && pj.browser) || (conds === ESM_CONDITIONS && pj.module) || pj.main || 'index.js'
  const f = tryFile(path.join(dir, rel))
  if (!f) throw new Error(`cannot resolve ${spec} (${path.join(dir, rel)})`)
  return browserMap(dir, f)
}
const urlOf = (f) => (f === EMPTY ? EMPTY : '/@m/' + path.relative(NODE_MODULES, f).split(path.sep).join('/'))

function isEsm(file, src) {
  if (file.endsWith('.mjs')) return true
  if (file.endsWith('.cjs')) return false
  const own = ownerDir(file)
  if (own && readPj(own).type === 'module') return true
  // Statement-level import/export, also in minified code (preact's "...;export{C as Component,...}").
  return /(^|[;})]\s*)(import\s*[\w{*'"]|export\s*(default\b|const\b|let\b|var\b|function\b|class\b|async\b|\{|\*))/m.test(src)
}

// ESM: point every import specifier at a /@m/ URL.
function rewriteEsm(src, file) {
  const fix = (spec) => { const r = resolve(spec, file, ESM_CONDITIONS); return r ? urlOf(r) : spec }
  return src
    .replace(/(\bfrom\s*)(['"])([^'"\n]+)\2/g, (_, a, q, s) => a + q + fix(s) + q)
    .replace(/(^|[;\n]\s*)(import\s*)(['"])([^'"\n]+)\3/g, (_, p, a, q, s) => p + a + q + fix(s) + q)
    .replace(/(\bimport\s*\(\s*)(['"])([^'"\n]+)\2(\s*\))/g, (_, a, q, s, b) => a + q + fix(s) + q + b)
}

// CommonJS -> ES module.
function wrapCjs(src, file) {
  const specs = [...new Set([...src.matchAll(/\brequire\s*\(\s*(['"])([^'"\n]+)\1\s*\)/g)].map((m) => m[2]))]
  const imports = []
  const deps = []
  specs.forEach((s, i) => {
    const r = resolve(s, file, CJS_CONDITIONS)
    if (r === EMPTY) { deps.push(`${JSON.stringify(s)}: () => ({})`); return }
    if (r.endsWith('.json')) {
      imports.push(`import __r${i} from ${JSON.stringify(urlOf(r))} with { type: 'json' };`)
      deps.push(`${JSON.stringify(s)}: () => __r${i}`)
      return
    }
    const esm = isEsm(r, fs.readFileSync(r, 'utf8'))
    imports.push(esm ? `import * as __r${i} from ${JSON.stringify(urlOf(r))};` : `import __r${i} from ${JSON.stringify(urlOf(r))};`)
    deps.push(`${JSON.stringify(s)}: () => ${esm ? `(__r${i}.default !== undefined && Object.keys(__r${i}).length === 1 ? __r${i}.default : __r${i})` : `__r${i}`}`)
  })
  const named = [...new Set([...src.matchAll(/\bexports\.([A-Za-z_$][\w$]*)\s*=/g), ...src.matchAll(/defineProperty\(\s*exports\s*,\s*['"]([A-Za-z_$][\w$]*)['"]/g)].map((m) => m[1]))]
    .filter((n) => n !== 'default' && n !== '__esModule')
  return `${imports.join('\n')}
const __deps = {${deps.join(', ')}};
const __module = { exports: {} };
// Lazy: a require() found only in a comment (namespace-emitter's JSDoc requires itself) is never read.
const __require = (s) => { if (s in __deps) return __deps[s](); throw new Error('serve.mjs: require(' + s + ') not found in ${path.basename(file)}') };
const __process = globalThis.process || { env: { NODE_ENV: 'production' } };
(function (module, exports, require, process, global) {
${src}
}).call(__module.exports, __module, __module.exports, __require, __process, globalThis);
const __e = __module.exports;
export default __e;
${named.map((n) => `export const ${n} = __e.${n};`).join('\n')}
`
}

const cache = new Map()
function moduleSource(file) {
  if (cache.has(file)) return cache.get(file)
  const src = fs.readFileSync(file, 'utf8')
  let out
  out = isEsm(file, src) ? rewriteEsm(src, file) : wrapCjs(src, file)
  cache.set(file, out)
  return out
}

export function startPageServer({ port = 0, log = () => {} } = {}) {
  const server = http.createServer((req, res) => {
    const send = (code, type, body) => { res.writeHead(code, { 'Content-Type': type, 'Cache-Control': 'no-store' }); res.end(body) }
    try {
      const u = new URL(req.url, 'http://x')
      let p = decodeURIComponent(u.pathname)
      if (p === EMPTY) return send(200, MIME['.js'], 'export default {};')
      if (p.startsWith('/@m/')) {
        const f = path.join(NODE_MODULES, p.slice(4))
        if (!f.startsWith(NODE_MODULES + path.sep) || !fs.existsSync(f)) return send(404, 'text/plain', 'not found\n')
        // JSON is served as JSON: ES modules import it `with { type: 'json' }`.
        if (/\.(m|c)?js$/.test(f)) return send(200, MIME['.js'], moduleSource(f))
        return send(200, MIME[path.extname(f)] || 'application/octet-stream', fs.readFileSync(f))
      }
      if (p === '/') p = '/index.html'
      const f = path.join(PAGE_DIR, p)
      if (!f.startsWith(PAGE_DIR + path.sep) || !fs.existsSync(f) || !fs.statSync(f).isFile()) return send(404, 'text/plain', 'not found\n')
      let body = fs.readFileSync(f)
      if (/\.m?js$/.test(f)) body = rewriteEsm(body.toString('utf8'), null)
      return send(200, MIME[path.extname(f)] || 'application/octet-stream', body)
    } catch (e) {
      log(`serve.mjs: ${req.url}: ${e.message}`)
      return send(500, 'text/plain', String(e.message))
    }
  })
  return new Promise((resolveP, reject) => {
    server.on('error', reject)
    server.listen(port, '127.0.0.1', () => {
      const p = server.address().port
      resolveP({ url: `http://127.0.0.1:${p}/`, port: p, close: () => { server.closeAllConnections?.(); server.close() } })
    })
  })
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const i = process.argv.indexOf('--port')
  const srv = await startPageServer({ port: i > 0 ? Number(process.argv[i + 1]) : 0, log: (m) => console.error(m) })
  fs.writeSync(1, JSON.stringify({ ok: true, url: srv.url, port: srv.port, pid: process.pid }) + '\n')
  const stop = () => { srv.close(); process.exit(0) }
  process.on('SIGTERM', stop)
  process.on('SIGINT', stop)
}
