//! Sets of chunk indexes written as inclusive ranges, so a status stays small even for an
//! upload of 100,000 chunks with holes.

/// Inclusive `[first, last]` ranges of chunk indexes, sorted and disjoint.
pub type IndexRanges = Vec<[u64; 2]>;

/// Collapses an ascending sequence of indexes into inclusive ranges.
pub fn to_ranges(indexes: impl IntoIterator<Item = u64>) -> IndexRanges {
    let mut out: IndexRanges = Vec::new();
    for i in indexes {
        match out.last_mut() {
            Some(last) if last[1].checked_add(1) == Some(i) => last[1] = i,
            _ => out.push([i, i]),
        }
    }
    out
}

/// Every index covered by `ranges`, in order.
pub fn iter_ranges(ranges: &[[u64; 2]]) -> impl Iterator<Item = u64> + '_ {
    ranges.iter().flat_map(|[a, b]| *a..=*b)
}

/// How many indexes `ranges` covers. The ranges may come from a server or a journal: an
/// inverted pair covers nothing (as in [`iter_ranges`]) and the total saturates.
pub fn count(ranges: &[[u64; 2]]) -> u64 {
    ranges
        .iter()
        .map(|&[a, b]| b.checked_sub(a).map_or(0, |n| n.saturating_add(1)))
        .fold(0, u64::saturating_add)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collapses_and_expands() {
        let r = to_ranges([0, 1, 2, 3, 7, 9, 10]);
        assert_eq!(r, vec![[0, 3], [7, 7], [9, 10]]);
        assert_eq!(
            iter_ranges(&r).collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 7, 9, 10]
        );
        assert_eq!(count(&r), 7);
        assert!(to_ranges([]).is_empty());
    }
}
