//! Property tests ("fuzzing" on stable Rust, with `proptest`) of every parser of the HTTP
//! layer that reads what a client sends: tus headers, the `Range` of a download, the IETF
//! draft's structured fields and `Content-Disposition`, JSON bodies, `Content-Length`,
//! `Idempotency-Key`, chunk indexes, bearer tokens and signed download URLs.
//!
//! Each property runs proptest's default number of cases (256, or `PROPTEST_CASES`) in
//! `cargo test`; `make fuzz` runs the same tests with `PROPTEST_CASES` raised. Inputs are
//! both arbitrary strings and strings drawn from each grammar's alphabet with random
//! edits ([`mutated`]), so that most of them get past the first check.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue};
use base64::Engine;
use common::api::CreateUpload;
use common::{Sha256Digest, UploadId};
use hmac::{KeyInit, Mac};
use proptest::prelude::*;
use sha2::Sha256;
use storage::checksum::ALGORITHMS;
use storage::principal::Principal;
use storage::{BodyChecksum, Concat};

use crate::auth::{signed_content, verify_jwt, Auth};
use crate::extract::{chunk_index, content_digest, content_length, idempotency_key, parse_object};
use crate::routes::ietf::{
    disposition_filename, integer_header, percent_decode, sf_boolean, sf_integer, upload_complete,
};
use crate::routes::native::{content_disposition, parse_range, RangeAsk};
use crate::routes::tus::{
    format_metadata, header_u64, parse_checksum, parse_concat, parse_metadata,
};

/// `base` with up to four random edits (insert, delete or replace one character, the new
/// ones taken from `alphabet`): near-valid inputs that reach deep into a parser.
fn mutated(
    base: impl Strategy<Value = String>,
    alphabet: &'static str,
) -> impl Strategy<Value = String> {
    let chars: Vec<char> = alphabet.chars().collect();
    let edit = (
        0u8..3,
        any::<prop::sample::Index>(),
        prop::sample::select(chars),
    );
    (base, prop::collection::vec(edit, 0..4)).prop_map(|(s, edits)| {
        let mut v: Vec<char> = s.chars().collect();
        for (kind, at, c) in edits {
            match kind {
                0 => v.insert(at.index(v.len() + 1), c),
                _ if v.is_empty() => v.push(c),
                1 => {
                    v.remove(at.index(v.len()));
                }
                _ => {
                    let i = at.index(v.len());
                    v[i] = c;
                }
            }
        }
        v.into_iter().collect()
    })
}

/// Arbitrary text or near-valid text from `regex` and `alphabet`.
fn text(regex: &'static str, alphabet: &'static str) -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), mutated(regex, alphabet)]
}

/// `value` as a header, when it can be one (headers are bytes, not always text).
fn headers(name: &'static str, value: &[u8]) -> HeaderMap {
    let mut hs = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(value) {
        hs.insert(name, v);
    }
    hs
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Header bytes: arbitrary, or near-valid text from `regex` and `alphabet`.
fn header_bytes(regex: &'static str, alphabet: &'static str) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        any::<Vec<u8>>(),
        mutated(regex, alphabet).prop_map(String::into_bytes)
    ]
}

/// Metadata keys as tus allows them: visible ASCII but `,`.
const KEY: &str = "[!-+--~]{1,12}";

/// Near-valid `Upload-Metadata`: `key base64` pairs.
const METADATA: &str =
    "( ?[a-z_]{1,8}( [A-Za-z0-9+/]{0,12}={0,2})? ?,){0,3}[a-z_]{1,8} [A-Za-z0-9+/]{0,12}={0,2}";

/// Near-valid `Upload-Concat`.
const CONCAT: &str = "(partial|final;( ?(/files/|http://h/files/)?\
    [0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/?){0,3})";

/// Near-valid `Upload-Checksum`.
const CHECKSUM: &str = "(sha1|sha256|md5|crc32|SHA1) {1,2}([A-Za-z0-9+/]{26}[AEIMQUYcgkosw048]=\
    |[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=|[A-Za-z0-9+/]{21}[AQgw]==)";

/// Near-valid RFC 9530 digest headers.
const DIGEST: &str = "(md5=:[A-Za-z0-9+/]{4,8}:, ?)?sha-256=:[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=:";

/// Near-valid RFC 8187 percent-encoded text.
const PERCENT: &str = "([a-z.]|%[+-]?[0-9A-Fa-f]{1,2}){0,12}";

/// Near-valid `Range`.
const RANGE: &str =
    "bytes= ?(|||\\+)([0-9]{0,4}|[0-9]{15,21}) ?- ?(|||\\+)([0-9]{0,4}|[0-9]{15,21})\
    (|||,[0-9]{0,3}-[0-9]{0,3})";

/// Near-valid `Content-Disposition`.
const DISPOSITION: &str = "(attachment|inline)(; ?(filename|filename\\*)=\
    (\"[a-z .]{0,8}\"|UTF-8''([a-z.]|%[0-9A-Fa-f]{2}){0,8}|[a-z.]{0,8})){0,2}";

/// Near-valid JSON create requests.
const CREATE_JSON: &str =
    r#"\{"size": ?[0-9]{1,20}(, ?"chunk_size": ?[0-9]{1,5})?(, ?"filename": ?"[a-z]{0,5}")?\}"#;

/// Near-valid JWTs, maybe with their `Bearer` prefix.
const JWT: &str =
    "(Bearer |bearer )?[A-Za-z0-9_-]{0,40}\\.[A-Za-z0-9_-]{0,60}\\.[A-Za-z0-9_-]{0,43}";

/// Characters of base64 (both alphabets) and JWTs, to replace one of a token's.
const TOKEN_CHARS: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/";

/// One character: any, or one of `alphabet` (a likelier near miss).
fn one_char(alphabet: &'static str) -> impl Strategy<Value = char> {
    prop_oneof![
        any::<char>(),
        prop::sample::select(alphabet.chars().collect::<Vec<_>>())
    ]
}

/// A JSON value without floats (whose text form need not read back bit for bit).
fn json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        ".{0,8}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn create_upload() -> impl Strategy<Value = CreateUpload> {
    (
        any::<Option<u64>>(),
        any::<bool>(),
        any::<Option<u64>>(),
        any::<Option<[u8; 32]>>(),
        any::<Option<String>>(),
        prop::option::of(prop::collection::btree_map(".{0,6}", ".{0,6}", 0..3)),
    )
        .prop_map(
            |(size, defer_length, chunk_size, sha, filename, metadata)| CreateUpload {
                size,
                defer_length,
                chunk_size,
                sha256: sha.map(Sha256Digest),
                filename,
                metadata,
            },
        )
}

/// An HS256 JWT over `claims`, as a web app's backend would mint it.
fn jwt(secret: &[u8], claims: &serde_json::Value) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let h = b64.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
    let p = b64.encode(claims.to_string());
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(format!("{h}.{p}").as_bytes());
    format!("{h}.{p}.{}", b64.encode(mac.finalize().into_bytes()))
}

/// `s` with its character at `at` replaced by `c` (which differs from it).
fn replace_one(s: &str, at: prop::sample::Index, c: char) -> Option<String> {
    let mut v: Vec<char> = s.chars().collect();
    let i = at.index(v.len());
    (v[i] != c).then(|| {
        v[i] = c;
        v.into_iter().collect()
    })
}

proptest! {
    // ---- tus: Upload-Metadata --------------------------------------------------------

    /// `Upload-Metadata`: any map with valid keys and any text values is written by
    /// `format_metadata` (what `HEAD` answers) and read back the same.
    #[test]
    fn tus_metadata_round_trip(m in prop::collection::btree_map(KEY, any::<String>(), 0..6)) {
        prop_assert_eq!(parse_metadata(&format_metadata(&m)).unwrap(), m);
    }

    /// `Upload-Metadata`: any text is parsed without panicking; what is accepted has keys
    /// without spaces or commas (non-empty, visible ASCII), each named in the header, and
    /// values that are exactly what the header's canonical base64 encodes (bad base64 or
    /// non-UTF-8 values are refused, never decoded loosely).
    #[test]
    fn tus_metadata_accepts_only_valid(raw in text(METADATA, "a Z9+/=,;\t\u{e9}\0")) {
        let Ok(m) = parse_metadata(&raw) else { return Ok(()) };
        for (k, v) in &m {
            prop_assert!(!k.is_empty(), "{raw:?}");
            prop_assert!(k.bytes().all(|b| b.is_ascii_graphic() && b != b','), "{k:?}");
            let pair = raw
                .split(',')
                .map(str::trim)
                .find(|p| p.split(' ').next() == Some(k.as_str()))
                .unwrap();
            prop_assert_eq!(pair[k.len()..].trim(), b64(v.as_bytes()), "{:?}", raw);
        }
        prop_assert_eq!(parse_metadata(&format_metadata(&m)).unwrap(), m);
    }

    // ---- tus: Upload-Concat ----------------------------------------------------------

    /// `Upload-Concat`: `final;` with the parts' URLs (paths or absolute, with or without
    /// a trailing slash) reads back as the same ids in order; `partial` as partial.
    #[test]
    fn tus_concat_round_trip(
        ids in prop::collection::vec(any::<u128>(), 1..5),
        prefix in prop::sample::select(vec!["/files/", "http://h:1/files/", "https://x/a/b/", ""]),
        slash in any::<bool>(),
        sep in "[ \t]{1,3}",
    ) {
        let ids: Vec<UploadId> = ids
            .iter()
            .map(|&n| uuid::Uuid::from_u128(n).hyphenated().to_string().parse().unwrap())
            .collect();
        let slash = if slash { "/" } else { "" };
        let urls: Vec<String> = ids.iter().map(|id| format!("{prefix}{id}{slash}")).collect();
        let raw = format!("final;{}", urls.join(&sep));
        prop_assert_eq!(parse_concat(&raw).unwrap(), Concat::Final { parts: ids, urls });
        let partial = format!(" partial{sep}");
        prop_assert_eq!(parse_concat(&partial).unwrap(), Concat::Partial);
    }

    /// `Upload-Concat`: any text is parsed without panicking; a final upload accepted
    /// names at least one part, and each part is an upload id spelled canonically as the
    /// last segment of a URL of the header.
    #[test]
    fn tus_concat_accepts_only_valid(raw in text(CONCAT, "partilfn; /:.0a-F\u{e9}")) {
        match parse_concat(&raw) {
            Ok(Concat::Partial) => prop_assert_eq!(raw.trim(), "partial"),
            Ok(Concat::Final { parts, .. }) => {
                prop_assert!(!parts.is_empty());
                let list = raw.trim().strip_prefix("final;").unwrap();
                let urls: Vec<&str> = list.split_whitespace().collect();
                prop_assert_eq!(urls.len(), parts.len());
                for (url, id) in urls.iter().zip(&parts) {
                    let tail = url.trim_end_matches('/').strip_suffix(&id.to_string());
                    prop_assert!(tail.is_some_and(|t| t.is_empty() || t.ends_with('/')), "{url}");
                }
            }
            Err(_) => {}
        }
    }

    // ---- tus: Upload-Checksum, Upload-Length / Upload-Offset -------------------------

    /// `Upload-Checksum`: each supported algorithm with a digest of its length reads back
    /// as that checksum; any other length is refused.
    #[test]
    fn tus_checksum_round_trip(
        alg in prop::sample::select(ALGORITHMS.to_vec()),
        bytes in prop::collection::vec(any::<u8>(), 0..40),
    ) {
        let got = parse_checksum(&format!("{alg} {}", b64(&bytes)));
        match BodyChecksum::new(alg, &bytes) {
            Some(c) => prop_assert_eq!(got.unwrap(), c),
            None => prop_assert!(got.is_err()),
        }
    }

    /// `Upload-Checksum`: any text is parsed without panicking; what is accepted names a
    /// supported algorithm and is the canonical base64 of a digest of the right length.
    #[test]
    fn tus_checksum_accepts_only_valid(
        raw in text(CHECKSUM, "shamd15 +/=A9\t")
    ) {
        if let Ok(c) = parse_checksum(&raw) {
            let bytes: &[u8] = match &c {
                BodyChecksum::Sha1(d) => d,
                BodyChecksum::Sha256(d) => d,
                BodyChecksum::Md5(d) => d,
            };
            let (alg, digest) = raw.trim().split_once(' ').unwrap();
            prop_assert_eq!(alg, c.algorithm());
            prop_assert_eq!(digest.trim(), b64(bytes));
        }
    }

    /// tus `Upload-Length` / `Upload-Offset` (and `Content-Length` as tus reads it): any
    /// header bytes are read without panicking; every `u64` reads back; what is accepted
    /// is plain digits whose value fits (an overflow is an error, never a wrapped value).
    #[test]
    fn tus_integer_headers(n in any::<u64>(), raw in header_bytes("[+]?[0-9]{1,21}", "0123456789 +-.e")) {
        let hs = headers("upload-offset", n.to_string().as_bytes());
        prop_assert_eq!(header_u64(&hs, "upload-offset").unwrap(), Some(n));
        if let Ok(Some(v)) = header_u64(&headers("upload-offset", &raw), "upload-offset") {
            prop_assert!(!raw.is_empty() && raw.iter().all(u8::is_ascii_digit));
            let exact: u128 = std::str::from_utf8(&raw).unwrap().parse().unwrap();
            prop_assert_eq!(exact, u128::from(v));
        }
    }

    // ---- native: Range ---------------------------------------------------------------

    /// `Range` of a download: any text and any file size are handled without panicking;
    /// a range served is within the file (`first <= last < size`), so neither the length
    /// `last - first + 1` nor `Content-Range` can overflow or read past the end, and it
    /// was written with digits only (`+5` is not a position).
    #[test]
    fn native_range_within_file(
        raw in text(RANGE, "bytes=-0123456789, +"),
        size in prop_oneof![Just(0u64), Just(1), Just(u64::MAX), any::<u64>(), 0u64..1000],
    ) {
        if let RangeAsk::Range(a, b) = parse_range(&raw, size) {
            prop_assert!(a <= b && b < size, "{raw:?} of {size} gave {a}-{b}");
            let spec = raw.trim().strip_prefix("bytes=").unwrap();
            prop_assert!(spec.bytes().all(|c| c.is_ascii_digit() || b"- \t".contains(&c)), "{raw:?}");
        }
    }

    /// `Range` of a download: each form of a single byte range asks what RFC 9110 says
    /// (clamped to the file; a range starting past the end is unsatisfiable).
    #[test]
    fn native_range_round_trip(
        size in prop_oneof![any::<u64>(), 0u64..1000],
        first in prop_oneof![any::<u64>(), 0u64..1000],
        len in prop_oneof![any::<u64>(), 0u64..1000],
    ) {
        let last = first.saturating_add(len);
        let end = size.saturating_sub(1);
        let expect = |r| if first >= size { RangeAsk::Unsatisfiable } else { r };
        let closed = parse_range(&format!("bytes={first}-{last}"), size);
        prop_assert_eq!(closed, expect(RangeAsk::Range(first, last.min(end))));
        let open = parse_range(&format!("bytes={first}-"), size);
        prop_assert_eq!(open, expect(RangeAsk::Range(first, end)));
        let suffix = parse_range(&format!("bytes=-{len}"), size);
        if len == 0 || size == 0 {
            prop_assert_eq!(suffix, RangeAsk::Unsatisfiable);
        } else {
            prop_assert_eq!(suffix, RangeAsk::Range(size - len.min(size), end));
        }
    }

    // ---- IETF draft: structured fields -----------------------------------------------

    /// Structured-field Integers (`Upload-Offset`, `Upload-Length`,
    /// `Upload-Draft-Interop-Version`): every value of at most 15 digits reads back, with
    /// parameters or spaces; any header bytes are read without panicking, and what is
    /// accepted was 1 to 15 digits (below 10^15: no overflow downstream).
    #[test]
    fn ietf_integer(
        n in prop_oneof![0u64..1_000_000_000_000_000, 0u64..100],
        params in "(;[a-z]{1,3}=([0-9]{1,3}|[a-z]{1,3}|\\?[01])){0,2}",
        raw in header_bytes(" ?[+-]?[0-9]{1,17} ?(;[a-z]=[0-9])?", "0123456789-+.; ?e"),
    ) {
        prop_assert_eq!(sf_integer(&format!(" {n}{params} ")), Some(n));
        prop_assert_eq!(sf_integer(&(n + 1_000_000_000_000_000).to_string()), None);
        for name in ["upload-offset", "upload-length"] {
            if let Some(v) = integer_header(&headers(name, &raw), name) {
                let s = std::str::from_utf8(&raw).unwrap();
                // RFC 9651: an optional minus (`-0` is 0) and 1 to 15 digits.
                let bare = s.split(';').next().unwrap().trim();
                let digits = bare.strip_prefix('-').unwrap_or(bare);
                prop_assert!((1..=15).contains(&digits.len()), "{s:?}");
                prop_assert!(digits.bytes().all(|b| b.is_ascii_digit()), "{s:?}");
                prop_assert_eq!(bare.parse::<i64>().unwrap(), v as i64);
            }
        }
    }

    /// Structured-field Booleans (`Upload-Complete`): `?1`/`?0` (with parameters) read back;
    /// any header bytes are read without panicking, and nothing else is a Boolean.
    #[test]
    fn ietf_boolean(
        b in any::<bool>(),
        params in "(;[a-z]{1,3}=([0-9]{1,3}|[a-z]{1,3}|\\?[01])){0,2}",
        raw in header_bytes("\\?[01](;[a-z]=\\?[01])?", "?01;= tf"),
    ) {
        prop_assert_eq!(sf_boolean(&format!("?{}{params}", u8::from(b))), Some(b));
        if let Some(v) = upload_complete(&headers("upload-complete", &raw)) {
            let s = std::str::from_utf8(&raw).unwrap();
            prop_assert_eq!(s.split(';').next().unwrap().trim(), if v { "?1" } else { "?0" });
        }
    }

    /// RFC 9530 digest headers as requests carry them (`Content-Digest`; `Repr-Digest`
    /// goes through the same parser): any header bytes are read without panicking, and
    /// the header is read exactly as `Sha256Digest::from_header` reads its text.
    #[test]
    fn digest_headers(
        bytes in any::<[u8; 32]>(),
        raw in header_bytes(DIGEST, "sha-256=:,+/A"),
    ) {
        let d = Sha256Digest(bytes);
        let hs = headers("content-digest", d.to_header().as_bytes());
        prop_assert_eq!(content_digest(&hs).unwrap(), Some(d));
        let got = content_digest(&headers("content-digest", &raw));
        if let Ok(Some(d)) = got {
            let text = std::str::from_utf8(&raw).unwrap();
            prop_assert_eq!(Sha256Digest::from_header(text), Ok(Some(d)));
        }
    }

    // ---- IETF draft: Content-Disposition ---------------------------------------------

    /// `Content-Disposition` file names: what the download answer writes
    /// (`content_disposition`: `filename*` in RFC 8187 form plus an ASCII fallback) reads
    /// back as the same name; a quoted plain `filename` reads back too, also when a
    /// malformed or unknown `filename*` comes along (RFC 6266 §4.3: fall back to it).
    #[test]
    fn ietf_disposition_round_trip(name in ".{1,24}", plain in "[^;\"\\\\]{1,16}") {
        let written = content_disposition(Some(&name));
        prop_assert_eq!(disposition_filename(&written), Some(name.clone()), "{}", written);
        let extras = ["", "; filename*=nonsense", "; filename*=UTF-8''%zz", "; filename*=latin1''x"];
        for extra in extras {
            let raw = format!("attachment; filename=\"{plain}\"{extra}");
            prop_assert_eq!(disposition_filename(&raw), Some(plain.clone()), "{}", raw);
        }
    }

    /// `Content-Disposition` and RFC 8187 percent-decoding: any text is parsed without
    /// panicking; a decoded name is non-empty UTF-8, and only `%` followed by two hex
    /// digits is decoded (`%+F`, `%-1` or a cut `%4` are refused, not read loosely).
    #[test]
    fn ietf_disposition_accepts_only_valid(
        raw in text(DISPOSITION, "%+-'\";=*\\ aF9\u{e9}"),
        encoded in text(PERCENT, "%+-0123456789abcdefABCDEFgG \u{e9}"),
    ) {
        if let Some(name) = disposition_filename(&raw) {
            prop_assert!(!name.is_empty());
        }
        if let Some(decoded) = percent_decode(&encoded) {
            prop_assert!(!decoded.is_empty());
            let b = encoded.as_bytes();
            for (i, _) in encoded.match_indices('%') {
                let hex = b.get(i + 1..i + 3);
                prop_assert!(hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)), "{encoded:?}");
            }
        }
    }

    // ---- extract: JSON bodies, Content-Length, Idempotency-Key, chunk index ----------

    /// JSON bodies: any JSON value is accepted exactly when it is an object (an array or
    /// a scalar is refused even where serde would read it), and reads back the same.
    #[test]
    fn json_body_objects_only(v in json()) {
        let got = parse_object::<serde_json::Value>(&serde_json::to_vec(&v).unwrap());
        if v.is_object() {
            prop_assert_eq!(got.unwrap(), v);
        } else {
            prop_assert!(got.is_err());
        }
    }

    /// JSON bodies: a create request reads back as itself; its array form, which serde
    /// alone would take, is refused; arbitrary or mutated bytes and deep nesting are
    /// refused without panicking or exhausting the stack.
    #[test]
    fn json_body_create_upload(
        c in create_upload(),
        junk in header_bytes(CREATE_JSON, "{}[]\":,0123456789-.e \\nul"),
        depth in 0usize..4000,
    ) {
        let bytes = serde_json::to_vec(&c).unwrap();
        prop_assert_eq!(parse_object::<CreateUpload>(&bytes).unwrap(), c.clone());
        let array = format!("[{}]", c.size.unwrap_or(0));
        prop_assert!(serde_json::from_str::<CreateUpload>(&array).is_ok());
        prop_assert!(parse_object::<CreateUpload>(array.as_bytes()).is_err());
        if parse_object::<CreateUpload>(&junk).is_ok() {
            let v: serde_json::Value = serde_json::from_slice(&junk).unwrap();
            prop_assert!(v.is_object());
        }
        let deep = format!("{}{}", "{\"a\":".repeat(depth), "}".repeat(depth));
        let _ = parse_object::<serde_json::Value>(deep.as_bytes());
        let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let deep = format!("{{\"size\":1,\"metadata\":{nested}}}");
        prop_assert!(parse_object::<CreateUpload>(deep.as_bytes()).is_err());
    }

    /// `Content-Length`: any header bytes are read without panicking; every `u64` reads
    /// back; what is accepted is plain digits whose value fits.
    #[test]
    fn content_length_header(n in any::<u64>(), raw in header_bytes("[+]?[0-9]{1,21}", "0123456789 +-.e")) {
        let hs = headers("content-length", n.to_string().as_bytes());
        prop_assert_eq!(content_length(&hs).unwrap(), Some(n));
        if let Ok(Some(v)) = content_length(&headers("content-length", &raw)) {
            let s = std::str::from_utf8(&raw).unwrap().trim();
            prop_assert!(!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()), "{s:?}");
            prop_assert_eq!(s.parse::<u64>().unwrap(), v);
        }
    }

    /// `Idempotency-Key`: any header bytes are read without panicking; a key accepted is
    /// the header's text, 1 to 255 visible ASCII characters.
    #[test]
    fn idempotency_key_header(raw in header_bytes("[!-~]{0,260}", " \t\u{e9}")) {
        if let Ok(Some(k)) = idempotency_key(&headers("idempotency-key", &raw)) {
            prop_assert_eq!(k.as_bytes(), &raw[..]);
            prop_assert!((1..=255).contains(&k.len()));
            prop_assert!(k.bytes().all(|b| b.is_ascii_graphic()));
        }
    }

    /// Chunk index of `PUT .../chunks/{index}`: every `u64` reads back; what is accepted
    /// is plain digits (`+5` is not a second name of chunk 5) whose value fits.
    #[test]
    fn chunk_index_path(n in any::<u64>(), raw in text("[+]?[0-9]{1,21}", "0123456789 +-.e%")) {
        prop_assert_eq!(chunk_index(&n.to_string()), Some(n));
        if let Some(v) = chunk_index(&raw) {
            prop_assert!(!raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit()), "{raw:?}");
            prop_assert_eq!(raw.parse::<u64>().unwrap(), v);
        }
    }

    // ---- auth: bearer tokens and signed URLs -----------------------------------------

    /// JWTs: a token minted with the secret reads back as its `sub` until `exp`, also
    /// through `Authorization: Bearer`; the same token is refused once expired, with
    /// another secret, or with any one character changed.
    #[test]
    fn jwt_round_trip_and_tamper(
        secret in "[ -~]{1,40}",
        other in "[ -~]{1,40}",
        sub in ".{1,16}",
        exp in 1i64..1 << 40,
        at in any::<prop::sample::Index>(),
        c in one_char(TOKEN_CHARS),
    ) {
        let key = secret.as_bytes();
        let token = jwt(key, &serde_json::json!({ "sub": sub, "exp": exp }));
        prop_assert_eq!(verify_jwt(&token, key, exp - 1), Ok(sub.clone()));
        prop_assert!(verify_jwt(&token, key, exp).is_err());
        if other != secret {
            prop_assert!(verify_jwt(&token, other.as_bytes(), exp - 1).is_err());
        }
        if let Some(changed) = replace_one(&token, at, c) {
            prop_assert!(verify_jwt(&changed, key, exp - 1).is_err(), "{changed}");
        }
        let auth = Auth::new(None, Some(&secret)).unwrap();
        let token = jwt(key, &serde_json::json!({ "sub": sub, "exp": i64::MAX }));
        let header = format!("Bearer {token}");
        prop_assert_eq!(auth.principal(Some(&header)), Ok(Principal::Owner(sub)));
    }

    /// Bearer tokens: any `Authorization` text and any would-be JWT is refused without
    /// panicking when auth is on.
    #[test]
    fn bearer_refuses_junk(raw in text(JWT, "AZaz09-_.= +/")) {
        let auth = Auth::new(None, Some("secret")).unwrap();
        prop_assert!(auth.principal(Some(&raw)).is_err());
        let token = raw.strip_prefix("Bearer ").unwrap_or(&raw);
        prop_assert!(verify_jwt(token, b"secret", 0).is_err());
    }

    /// Signed download URLs: the query read back from a signed URL is the id, expiry and
    /// signature written, and verifies until the expiry; any other signature text is
    /// refused, and so is one character changed (unless it only changes the case of a
    /// hex digit, which spells the same MAC); any query is read without panicking, and
    /// is taken as a signed URL (well formed or refused) exactly when it names `exp` or
    /// `sig`.
    #[test]
    fn signed_url_round_trip_and_tamper(
        id in "[0-9a-f-]{1,36}",
        exp in any::<i64>(),
        junk in text("[0-9a-f]{64}", "0123456789abcdefABCDEFg%"),
        query in "[a-z0-9=&%+-]{0,40}",
        at in any::<prop::sample::Index>(),
        c in one_char("0123456789abcdefABCDEF"),
    ) {
        let auth = Auth::new(None, Some("secret")).unwrap();
        let signed = auth.sign_content(&id, exp);
        let url = format!("/v1/uploads/{id}/content?{signed}");
        let req = Request::get(&url).body(Body::empty()).unwrap();
        let (got_id, got_exp, sig) = signed_content(&req).unwrap().unwrap();
        prop_assert_eq!((got_id.as_str(), got_exp), (id.as_str(), exp));
        let now = exp.saturating_sub(1);
        prop_assert_eq!(auth.verify_content(&id, exp, &sig, now), exp > now);
        prop_assert!(!auth.verify_content(&id, exp, &sig, exp));
        let same_mac = |s: &str| s.to_ascii_lowercase() == sig;
        prop_assert!(!auth.verify_content(&id, exp, &junk, now) || same_mac(&junk));
        if let Some(changed) = replace_one(&sig, at, c) {
            let refused = !auth.verify_content(&id, exp, &changed, now);
            prop_assert!(refused || same_mac(&changed), "{changed}");
        }
        let any_url = format!("/v1/uploads/{id}/content?{query}");
        if let Ok(req) = Request::get(any_url).body(Body::empty()) {
            let named = query
                .split('&')
                .any(|p| p.split_once('=').is_some_and(|(k, _)| k == "exp" || k == "sig"));
            prop_assert_eq!(signed_content(&req).is_some(), named, "{}", query);
        }
    }
}

/// Deep nesting in a JSON body is refused by serde_json's recursion limit, not by a stack
/// overflow (which would abort the server, not fail one request).
#[test]
fn json_body_very_deep() {
    let deep = "[".repeat(1 << 20);
    assert!(parse_object::<serde_json::Value>(deep.as_bytes()).is_err());
    let deep = format!("{{\"size\":1,\"metadata\":{}", "{\"a\":".repeat(1 << 18));
    assert!(parse_object::<CreateUpload>(deep.as_bytes()).is_err());
}

/// The smallest inputs of the bugs these properties found, fixed since; kept as plain
/// cases so they stay checked whatever the strategies become.
#[test]
fn found_bugs() {
    // `u64::from_str` takes a leading `+`: a second spelling of a number.
    assert_eq!(chunk_index("+0"), None);
    assert!(content_length(&headers("content-length", b"+0")).is_err());
    assert_eq!(parse_range("bytes=+0-0", 1), RangeAsk::Ignore);
    // `u8::from_str_radix` takes `+F`: `%+F` is not a percent-encoding.
    assert_eq!(percent_decode("%0A%+0"), None);
    // A malformed `filename*` dropped the valid `filename` beside it.
    assert_eq!(
        disposition_filename("attachment; filename=\"a\"; filename*=nonsense").as_deref(),
        Some("a")
    );
}
