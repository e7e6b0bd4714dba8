//! Property tests ("fuzzing" on stable Rust, with `proptest`) of every parser here that
//! reads text from the network, a journal or a flag: digests, upload ids, sizes,
//! durations, rates and chunk ranges.
//!
//! Each property runs proptest's default number of cases (256) in `cargo test`, a few
//! milliseconds each; `make fuzz` runs the same tests with `PROPTEST_CASES` raised.
//! Inputs are both arbitrary strings and strings drawn from each grammar's alphabet with
//! random edits ([`mutated`]), so that most of them get past the first check.

use std::path::{Component, Path};
use std::time::Duration;

use base64::Engine;
use proptest::prelude::*;

use crate::digest::{DigestError, Sha256Digest};
use crate::id::UploadId;
use crate::ranges::{count, iter_ranges, to_ranges};
use crate::units::{format_size, parse_duration, parse_rate, parse_size};

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

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Arbitrary text or near-valid text from `regex` and `alphabet`.
fn text(regex: &'static str, alphabet: &'static str) -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), mutated(regex, alphabet)]
}

/// Near-valid RFC 9530 digest headers: lists of `alg=:base64:` members.
fn digest_header_like() -> impl Strategy<Value = String> {
    text(
        "((sha-256|sha-512|md5|[a-z0-9*._-]{1,8}) ?= ?:[A-Za-z0-9+/]{0,48}={0,2}: ?, ?){0,2}\
         (sha-256|md5)=:[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=:",
        "sha-256=:,; +/=AZaz09\t\"\u{e9}",
    )
}

/// Names of digest algorithms other than SHA-256 (RFC 9530 keys).
const OTHER_ALGORITHM: &str = "(md5|sha-512|unixsum|crc32c|[a-z*][a-z0-9*._-]{0,6})";

/// Near-valid upload ids.
fn id_like() -> impl Strategy<Value = String> {
    text(
        "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
        "0123456789abcdefABCDEFg-{}/.\\\0: %\u{e9}",
    )
}

/// Near-valid sizes and rates.
fn size_like() -> impl Strategy<Value = String> {
    text(
        " ?[0-9]{0,22}(\\.[0-9]{0,6})?(e[0-9]{1,3})? ?([kKmMgGtTpPeEzZyY]i?[bB]?|[bB])?(/s)? ?",
        "0123456789.,+-_ eEkKMGTPiIbB/s\u{b5}\u{e9}\u{ff10}",
    )
}

/// Near-valid durations.
fn duration_like() -> impl Strategy<Value = String> {
    text(
        "([0-9]{1,22} ?(ns|us|ms|s|sec|m|min|h|hr|d|days|w|M|y|years) ?){1,3}",
        "0123456789 .+-nsumhdwMyec\u{b5}\u{e9}",
    )
}

proptest! {
    // ---- digest.rs -------------------------------------------------------------------

    /// Hex digests: 32 bytes written as hex (either case) read back as the same digest,
    /// and `to_hex`/serde always write 64 lowercase characters.
    #[test]
    fn digest_hex_round_trip(bytes in any::<[u8; 32]>(), upper in any::<bool>()) {
        let d = Sha256Digest(bytes);
        let hex = d.to_hex();
        prop_assert_eq!(hex.len(), 64);
        prop_assert!(hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        let text = if upper { hex.to_uppercase() } else { hex.clone() };
        prop_assert_eq!(text.parse::<Sha256Digest>(), Ok(d));
        let json = serde_json::to_string(&d).unwrap();
        prop_assert_eq!(&json, &format!("\"{hex}\""));
        prop_assert_eq!(serde_json::from_str::<Sha256Digest>(&json).unwrap(), d);
    }

    /// Hex digests: any text is parsed without panicking, and only 64 hex digits are
    /// accepted, as the digest they spell.
    #[test]
    fn digest_hex_rejects_the_rest(
        s in text("[0-9a-fA-F]{64}", "0123456789abcdefABCDEFgG \u{e9}+-")
    ) {
        if let Ok(d) = s.parse::<Sha256Digest>() {
            prop_assert_eq!(s.len(), 64);
            prop_assert!(s.bytes().all(|b| b.is_ascii_hexdigit()));
            prop_assert_eq!(d.to_hex(), s.to_ascii_lowercase());
        }
    }

    /// Digest headers: the header we write reads back as the same digest, alone, among
    /// other algorithms' members (which are skipped), or repeated with the same value;
    /// two different `sha-256` values are refused.
    #[test]
    fn digest_header_round_trip(
        bytes in any::<[u8; 32]>(),
        other in any::<[u8; 32]>(),
        others in prop::collection::vec((OTHER_ALGORITHM, any::<Vec<u8>>()), 0..3),
        spaces in "[ \t]{0,2}",
    ) {
        let d = Sha256Digest(bytes);
        let h = d.to_header();
        prop_assert_eq!(Sha256Digest::from_header(&h), Ok(Some(d)));
        let mut members: Vec<String> = others
            .iter()
            .filter(|(k, _)| k != "sha-256")
            .map(|(k, v)| format!("{k}=:{}:", b64(v)))
            .collect();
        if !members.is_empty() {
            prop_assert_eq!(Sha256Digest::from_header(&members.join(",")), Ok(None));
        }
        members.push(h.clone());
        let list = members.join(&format!(",{spaces}"));
        prop_assert_eq!(Sha256Digest::from_header(&list), Ok(Some(d)));
        prop_assert_eq!(Sha256Digest::from_header(&format!("{h}, {h}")), Ok(Some(d)));
        let two = format!("{h}, {}", Sha256Digest(other).to_header());
        prop_assert_eq!(
            Sha256Digest::from_header(&two),
            if other == bytes { Ok(Some(d)) } else { Err(DigestError::BadHeader) }
        );
    }

    /// Digest headers: any text is parsed without panicking. An accepted `sha-256` value
    /// is the canonical base64 of exactly 32 bytes (bad or non-canonical base64 is an
    /// error, never decoded loosely), and `Ok(None)` means no member is `sha-256`.
    #[test]
    fn digest_header_accepts_only_valid(
        s in digest_header_like()
    ) {
        match Sha256Digest::from_header(&s) {
            Ok(Some(d)) => {
                let canonical = format!(":{}:", b64(&d.0));
                prop_assert!(s.contains(&canonical), "{s:?} gave {d:?}");
                for m in s.split(',') {
                    let (k, v) = m.split_once('=').unwrap();
                    if k.trim() == "sha-256" {
                        prop_assert_eq!(v.trim(), canonical.as_str());
                    }
                }
            }
            Ok(None) => prop_assert!(!s
                .split(',')
                .any(|m| m.split_once('=').is_some_and(|(k, _)| k.trim() == "sha-256"))),
            Err(_) => {}
        }
    }

    /// Digest headers: a valid header with one character changed is refused, or reads as
    /// a digest whose canonical header is exactly the changed text: a non-canonical
    /// base64 spelling (set trailing bits, wrong padding) is never decoded loosely.
    #[test]
    fn digest_header_one_change(
        bytes in any::<[u8; 32]>(),
        at in any::<prop::sample::Index>(),
        c in any::<char>(),
    ) {
        let mut h: Vec<char> = Sha256Digest(bytes).to_header().chars().collect();
        let i = at.index(h.len());
        h[i] = c;
        let h: String = h.into_iter().collect();
        if let Ok(Some(got)) = Sha256Digest::from_header(&h) {
            prop_assert_eq!(got.to_header(), h.trim());
        }
    }

    // ---- id.rs -----------------------------------------------------------------------

    /// Upload ids: every UUID's canonical text reads back as the same id (and through
    /// serde); its other spellings (upper case, braces, URN, no hyphens) are refused, so
    /// an upload has one name.
    #[test]
    fn id_round_trip(n in any::<u128>()) {
        let u = uuid::Uuid::from_u128(n);
        let text = u.hyphenated().to_string();
        let id: UploadId = text.parse().unwrap();
        prop_assert_eq!(id.to_string(), text.clone());
        let json = serde_json::to_string(&id).unwrap();
        prop_assert_eq!(serde_json::from_str::<UploadId>(&json).unwrap(), id);
        let upper = text.to_uppercase();
        if upper != text {
            prop_assert!(upper.parse::<UploadId>().is_err());
        }
        for other in [
            u.braced().to_string(),
            u.urn().to_string(),
            u.simple().to_string(),
            format!(" {text}"),
            format!("{text}/"),
        ] {
            prop_assert!(other.parse::<UploadId>().is_err(), "{other}");
        }
    }

    /// Upload ids: any text is parsed without panicking, and what is accepted is a
    /// canonical lowercase UUID that is safe as a path segment or object key (one normal
    /// path component; no `/`, `.`, `\`, NUL or other non-hex character).
    #[test]
    fn id_accepts_only_safe(s in id_like()) {
        if let Ok(id) = s.parse::<UploadId>() {
            prop_assert_eq!(id.to_string(), s.clone());
            prop_assert_eq!(s.len(), 36);
            for (i, b) in s.bytes().enumerate() {
                if [8, 13, 18, 23].contains(&i) {
                    prop_assert_eq!(b, b'-');
                } else {
                    prop_assert!(b.is_ascii_digit() || (b'a'..=b'f').contains(&b), "{s:?}");
                }
            }
            prop_assert!(!s.contains(['/', '.', '\\', '\0']));
            let parts: Vec<_> = Path::new(&s).components().collect();
            prop_assert_eq!(parts, vec![Component::Normal(s.as_ref())]);
        }
    }

    // ---- units.rs --------------------------------------------------------------------

    /// Sizes: any text is parsed without panicking; plain numbers read back exactly, and
    /// a number with a unit is the exact product, or an error when that overflows `u64`
    /// (never a wrapped or saturated value).
    #[test]
    fn size_round_trip(
        n in prop_oneof![any::<u64>(), 0u64..100_000],
        unit in prop::sample::select(vec![
            ("", 1u64), ("B", 1), ("KiB", 1 << 10), ("kib", 1 << 10), ("K", 1 << 10),
            ("MiB", 1 << 20), (" MiB", 1 << 20), ("M", 1 << 20), ("GiB", 1 << 30),
            ("TiB", 1 << 40), ("PiB", 1 << 50), ("EiB", 1 << 60),
            // Binary even when spelled as decimal: `parse_size` uses `with_binary`.
            ("kB", 1 << 10), ("MB", 1 << 20), ("GB", 1 << 30),
        ]),
        junk in size_like(),
    ) {
        let _ = parse_size(&junk);
        let (suffix, mult) = unit;
        let got = parse_size(&format!("{n}{suffix}"));
        match n.checked_mul(mult) {
            Some(v) => prop_assert_eq!(got, Ok(v), "{}{}", n, suffix),
            None => prop_assert!(got.is_err(), "{n}{suffix} gave {got:?}"),
        }
    }

    /// Sizes: what `format_size` writes for messages reads back within its rounding
    /// (0.05 of the unit shown).
    #[test]
    fn size_format_reads_back(n in prop_oneof![any::<u64>(), 0u64..1 << 20, 0u64..1 << 40]) {
        let text = format_size(n);
        match parse_size(&text) {
            Ok(back) => {
                // The unit shown: B, KiB, ..., PiB.
                let unit = 1u64 << (10 * (n.checked_ilog2().unwrap_or(0) / 10).min(5));
                let err = back.abs_diff(n) as f64;
                prop_assert!(err <= unit as f64 * 0.05 + 1.0, "{n} -> {text} -> {back}");
            }
            // Only the very top of the range, which rounds up past u64::MAX.
            Err(e) => prop_assert!(n > u64::MAX - (1 << 50), "{n} -> {text}: {e}"),
        }
    }

    /// Durations: any text is parsed without panicking; what humantime writes reads back
    /// exactly, and `<n><unit>` is the exact product or an error when it overflows.
    #[test]
    fn duration_round_trip(
        secs in prop_oneof![any::<u64>(), 0u64..1_000_000],
        nanos in 0u32..1_000_000_000,
        unit in prop::sample::select(vec![("s", 1u64), ("m", 60), ("h", 3600), ("d", 86400)]),
        junk in duration_like(),
    ) {
        let _ = parse_duration(&junk);
        let d = Duration::new(secs, nanos);
        let text = humantime::format_duration(d).to_string();
        prop_assert_eq!(parse_duration(&text), Ok(d), "{}", text);
        let (suffix, mult) = unit;
        let got = parse_duration(&format!("{secs}{suffix}"));
        match secs.checked_mul(mult) {
            Some(v) => prop_assert_eq!(got, Ok(Duration::from_secs(v))),
            None => prop_assert!(got.is_err(), "{secs}{suffix} gave {got:?}"),
        }
    }

    /// Rates: any text is parsed without panicking; an accepted rate is above zero and
    /// is the size of the text without its `/s`.
    #[test]
    fn rate(s in size_like(), n in 1u64..) {
        if let Ok(r) = parse_rate(&s) {
            prop_assert!(r > 0);
            let t = s.trim();
            prop_assert_eq!(parse_size(t.strip_suffix("/s").unwrap_or(t)), Ok(r));
        }
        prop_assert_eq!(parse_rate(&format!("{n}/s")), Ok(n));
        prop_assert_eq!(parse_rate(&n.to_string()), Ok(n));
        prop_assert!(parse_rate("0/s").is_err());
    }

    // ---- ranges.rs -------------------------------------------------------------------

    /// Chunk ranges: a set of indexes collapses to sorted, disjoint, non-adjacent ranges
    /// that expand back to the same set and count its size, up to `u64::MAX`.
    #[test]
    fn ranges_round_trip(
        set in prop::collection::btree_set(
            prop_oneof![0u64..300, u64::MAX - 300..=u64::MAX],
            0..120,
        )
    ) {
        let r = to_ranges(set.iter().copied());
        for w in r.windows(2) {
            prop_assert!(w[0][1].checked_add(1).is_some_and(|next| next < w[1][0]), "{r:?}");
        }
        prop_assert!(r.iter().all(|[a, b]| a <= b));
        let back: Vec<u64> = iter_ranges(&r).collect();
        prop_assert_eq!(back, set.iter().copied().collect::<Vec<_>>());
        prop_assert_eq!(count(&r), set.len() as u64);
    }

    /// Chunk ranges as a server or a journal sends them (any pairs, inverted or spanning
    /// all of `u64`): counting never panics or wraps; it agrees with the expansion,
    /// which yields nothing for an inverted pair, and saturates at `u64::MAX`.
    #[test]
    fn ranges_count_untrusted(
        small in prop::collection::vec([0u64..512, 0u64..512], 0..8),
        big in prop::collection::vec(any::<[u64; 2]>(), 0..4),
        any_seq in prop::collection::vec(prop_oneof![any::<u64>(), Just(u64::MAX), Just(0)], 0..16),
    ) {
        prop_assert_eq!(count(&small), iter_ranges(&small).count() as u64);
        let exact: u128 = big
            .iter()
            .map(|&[a, b]| if b < a { 0 } else { u128::from(b - a) + 1 })
            .sum();
        prop_assert_eq!(count(&big), u64::try_from(exact).unwrap_or(u64::MAX));
        // Not ascending, as the contract asks: no panic all the same.
        let _ = to_ranges(any_seq);
    }
}

/// The smallest inputs of the bugs these properties found, fixed since; kept as plain
/// cases so they stay checked whatever the strategies become.
#[test]
fn found_bugs() {
    // `count` of ranges from a server: an inverted pair underflowed, a full span overflowed.
    assert_eq!(count(&[[305, 0]]), 0);
    assert_eq!(count(&[[0, u64::MAX]]), u64::MAX);
    // `to_ranges` overflowed on an index after `u64::MAX`.
    assert_eq!(to_ranges([u64::MAX, 0]), vec![[u64::MAX, u64::MAX], [0, 0]]);
}
