//! Counting marker strings in Arrow string arrays.
//!
//! Semantics (the reference is Python): a count is the number of non-overlapping occurrences
//! found left to right, `text.count(marker)`; case-insensitively it is
//! `text.lower().count(marker.lower())` with Unicode's full lowercase mapping (so `İ` lowers
//! to `i̇`, the Kelvin sign `K` to `k`, and a final `Σ` to `ς`). Rows that are pure ASCII, the
//! common case, are matched byte-wise without lowering the text; other rows are lowered with
//! `str::to_lowercase` first. Null rows give null counts.
//!
//! All markers are counted on a row while it is in cache, so the text is read from memory
//! once; rows are processed in parallel blocks.

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef};
use arrow_buffer::{BooleanBufferBuilder, NullBuffer};
use arrow_schema::DataType;
use memchr::memmem;
use rayon::prelude::*;

use crate::error::{CoreError, Result};

/// How common a byte is in English text and code (higher is more common); the search anchor
/// of a marker is its rarest byte.
fn byte_commonness(b: u8) -> u32 {
    const LETTERS: &[u8; 26] = b"etaoinshrdlcumwfgypbvkjxqz";
    match b {
        b' ' => 1000,
        b'a'..=b'z' | b'A'..=b'Z' => {
            let lower = b.to_ascii_lowercase();
            // both cases are searched for, which costs about twice a caseless byte
            let pos = LETTERS.iter().position(|&c| c == lower).unwrap_or(25) as u32;
            2 * (500 - 15 * pos)
        }
        b'\n' | b',' | b'.' => 300,
        b'0'..=b'9' => 150,
        b'-' | b'\'' | b'"' | b':' | b'(' | b')' | b'*' | b'/' | b'?' | b'!' | b';' => 120,
        b'_' | b'=' | b'#' | b'&' | b'%' | b'+' | b'$' | b'<' | b'>' => 60,
        _ => 20,
    }
}

/// One marker, prepared for both row paths.
#[derive(Debug, Clone)]
struct Marker {
    /// `marker.to_lowercase()` when case-insensitive, else the marker itself.
    folded: String,
    folded_ascii: bool,
    /// Position and byte(s) of the anchor, for the ASCII path.
    anchor: usize,
    anchor_bytes: (u8, u8),
    finder: memmem::Finder<'static>,
}

impl Marker {
    fn new(marker: &str, case_insensitive: bool) -> Self {
        let folded = if case_insensitive { marker.to_lowercase() } else { marker.to_owned() };
        let bytes = folded.as_bytes();
        let anchor = (0..bytes.len()).min_by_key(|&i| byte_commonness(bytes[i])).unwrap_or(0);
        let b = bytes[anchor];
        let anchor_bytes = if case_insensitive { (b, b.to_ascii_uppercase()) } else { (b, b) };
        let finder = memmem::Finder::new(bytes).into_owned();
        Marker { folded_ascii: folded.is_ascii(), folded, anchor, anchor_bytes, finder }
    }

    /// Non-overlapping ASCII-case-insensitive occurrences in an ASCII row.
    #[inline]
    fn count_ascii_ci(&self, hay: &[u8], limit: u32) -> u32 {
        if !self.folded_ascii {
            return 0;
        }
        let needle = self.folded.as_bytes();
        let len = needle.len();
        let mut count = 0;
        let mut next_ok = 0usize;
        let mut check = |c: usize| -> bool {
            if c < self.anchor {
                return true;
            }
            let s = c - self.anchor;
            if s < next_ok {
                return true;
            }
            if s + len > hay.len() {
                return false;
            }
            if hay[s..s + len].eq_ignore_ascii_case(needle) {
                count += 1;
                next_ok = s + len;
                return count < limit;
            }
            true
        };
        let (b1, b2) = self.anchor_bytes;
        if b1 == b2 {
            for c in memchr::memchr_iter(b1, hay) {
                if !check(c) {
                    break;
                }
            }
        } else {
            for c in memchr::memchr2_iter(b1, b2, hay) {
                if !check(c) {
                    break;
                }
            }
        }
        count
    }

    #[inline]
    fn count_exact(&self, hay: &[u8], limit: u32) -> u32 {
        let mut count = 0;
        let mut pos = 0;
        let len = self.folded.len();
        while count < limit {
            match self.finder.find(&hay[pos..]) {
                Some(i) => {
                    count += 1;
                    pos += i + len;
                }
                None => break,
            }
        }
        count
    }
}

/// A set of markers to count, prepared once.
#[derive(Debug, Clone)]
pub struct Matcher {
    markers: Vec<Marker>,
    case_insensitive: bool,
}

impl Matcher {
    pub fn new<S: AsRef<str>>(markers: &[S], case_insensitive: bool) -> Result<Self> {
        if markers.is_empty() {
            return Err(CoreError::input("markers is empty: give at least one marker"));
        }
        for (i, m) in markers.iter().enumerate() {
            if m.as_ref().is_empty() {
                return Err(CoreError::input(format!("markers[{i}] is the empty string")));
            }
        }
        Ok(Matcher {
            markers: markers.iter().map(|m| Marker::new(m.as_ref(), case_insensitive)).collect(),
            case_insensitive,
        })
    }

    pub fn len(&self) -> usize {
        self.markers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.markers.is_empty()
    }

    /// Counts of each marker in `row` into `out` (each count stops at `limit`).
    pub fn count_row(&self, row: &str, out: &mut [u32], limit: u32) {
        let bytes = row.as_bytes();
        if !self.case_insensitive {
            for (m, o) in self.markers.iter().zip(out.iter_mut()) {
                *o = m.count_exact(bytes, limit);
            }
        } else if bytes.is_ascii() {
            for (m, o) in self.markers.iter().zip(out.iter_mut()) {
                *o = m.count_ascii_ci(bytes, limit);
            }
        } else {
            let lowered = row.to_lowercase();
            for (m, o) in self.markers.iter().zip(out.iter_mut()) {
                *o = m.count_exact(lowered.as_bytes(), limit);
            }
        }
    }
}

/// Row access over the three Arrow string layouts.
enum Strings<'a> {
    Utf8(&'a arrow_array::StringArray),
    LargeUtf8(&'a arrow_array::LargeStringArray),
    View(&'a arrow_array::StringViewArray),
    AllNull(usize),
}

impl<'a> Strings<'a> {
    fn new(a: &'a dyn Array, name: &str) -> Result<Self> {
        Ok(match a.data_type() {
            DataType::Utf8 => Strings::Utf8(a.as_string::<i32>()),
            DataType::LargeUtf8 => Strings::LargeUtf8(a.as_string::<i64>()),
            DataType::Utf8View => Strings::View(a.as_string_view()),
            DataType::Null => Strings::AllNull(a.len()),
            other => {
                return Err(CoreError::Type(format!(
                    "{name} must be a string array (string, large_string or string_view), got {other}"
                )))
            }
        })
    }

    fn len(&self) -> usize {
        match self {
            Strings::Utf8(a) => a.len(),
            Strings::LargeUtf8(a) => a.len(),
            Strings::View(a) => a.len(),
            Strings::AllNull(n) => *n,
        }
    }

    fn nulls(&self) -> Option<&NullBuffer> {
        match self {
            Strings::Utf8(a) => a.nulls(),
            Strings::LargeUtf8(a) => a.nulls(),
            Strings::View(a) => a.nulls(),
            Strings::AllNull(_) => None,
        }
    }

    #[inline]
    fn get(&self, i: usize) -> Option<&'a str> {
        match self {
            Strings::Utf8(a) => a.is_valid(i).then(|| a.value(i)),
            Strings::LargeUtf8(a) => a.is_valid(i).then(|| a.value(i)),
            Strings::View(a) => a.is_valid(i).then(|| a.value(i)),
            Strings::AllNull(_) => None,
        }
    }

    fn append_validity(&self, b: &mut BooleanBufferBuilder) {
        match (self, self.nulls()) {
            (Strings::AllNull(n), _) => b.append_n(*n, false),
            (_, Some(nulls)) => b.append_buffer(nulls.inner()),
            (_, None) => b.append_n(self.len(), true),
        }
    }
}

/// Counts per marker for every row of `chunks` (taken as one column), row-major in `out`
/// (`out[row * markers + m]`), with the column's validity.
fn scan(
    chunks: &[ArrayRef],
    matcher: &Matcher,
    limit: u32,
    name: &str,
) -> Result<(Vec<u32>, Option<NullBuffer>, usize)> {
    let views: Vec<Strings> = chunks.iter().map(|c| Strings::new(c.as_ref(), name)).collect::<Result<_>>()?;
    let rows: usize = views.iter().map(|v| v.len()).sum();
    let m = matcher.len();
    let mut out = vec![0u32; rows * m];
    // tasks of about 2,048 rows each, never spanning two chunks
    const BLOCK: usize = 2048;
    let mut tasks: Vec<(usize, usize, &mut [u32])> = Vec::new();
    let mut rest: &mut [u32] = &mut out;
    for (ci, v) in views.iter().enumerate() {
        let mut start = 0;
        while start < v.len() {
            let end = (start + BLOCK).min(v.len());
            let (head, tail) = rest.split_at_mut((end - start) * m);
            tasks.push((ci, start, head));
            rest = tail;
            start = end;
        }
    }
    crate::parallel::run(|| {
        tasks.into_par_iter().for_each(|(ci, start, buf)| {
            let v = &views[ci];
            for (k, o) in buf.chunks_exact_mut(m).enumerate() {
                if let Some(row) = v.get(start + k) {
                    matcher.count_row(row, o, limit);
                }
            }
        })
    });
    let validity = if views.iter().any(|v| v.nulls().is_some() || matches!(v, Strings::AllNull(_))) {
        let mut b = BooleanBufferBuilder::new(rows);
        for v in &views {
            v.append_validity(&mut b);
        }
        Some(NullBuffer::new(b.finish()))
    } else {
        None
    };
    Ok((out, validity, rows))
}

/// Number of non-overlapping occurrences of each marker in each row: one vector per marker,
/// and the validity of the rows (null rows have count 0 and are null).
pub fn count_markers(
    chunks: &[ArrayRef],
    matcher: &Matcher,
) -> Result<(Vec<Vec<u32>>, Option<NullBuffer>)> {
    let (flat, validity, rows) = scan(chunks, matcher, u32::MAX, "texts")?;
    let m = matcher.len();
    let mut cols = vec![Vec::with_capacity(rows); m];
    for row in flat.chunks_exact(m) {
        for (c, &v) in cols.iter_mut().zip(row) {
            c.push(v);
        }
    }
    Ok((cols, validity))
}

/// Whether any marker occurs in each row, and the rows' validity.
pub fn contains_any(chunks: &[ArrayRef], matcher: &Matcher) -> Result<(Vec<bool>, Option<NullBuffer>)> {
    let (flat, validity, _) = scan(chunks, matcher, 1, "texts")?;
    let m = matcher.len();
    Ok((flat.chunks_exact(m).map(|r| r.iter().any(|&c| c > 0)).collect(), validity))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{LargeStringArray, StringArray, StringViewArray};

    use super::*;

    fn py_count(text: &str, marker: &str, ci: bool) -> u32 {
        let (t, m) = if ci { (text.to_lowercase(), marker.to_lowercase()) } else { (text.into(), marker.into()) };
        t.matches(m.as_str()).count() as u32
    }

    #[test]
    fn counts_match_reference_on_tricky_text() {
        let texts = [
            "Hello [ZLT] world [zlt][ZlT]",
            "aaaa",
            "İstanbul İİ i̇",
            "ΣΑΣ σας ς",
            "Kelvin \u{212A} k K",
            "straße STRASSE",
            "",
            "no marker here",
        ];
        let markers = ["[zlt]", "aa", "i̇", "σ", "k", "ß", "İ"];
        let matcher = Matcher::new(&markers, true).unwrap();
        let arr: ArrayRef = Arc::new(StringArray::from(texts.to_vec()));
        let (cols, nulls) = count_markers(&[arr], &matcher).unwrap();
        assert!(nulls.is_none());
        for (mi, m) in markers.iter().enumerate() {
            for (ri, t) in texts.iter().enumerate() {
                assert_eq!(cols[mi][ri], py_count(t, m, true), "{t:?} {m:?}");
            }
        }
        assert_eq!(cols[1][1], 2, "non-overlapping");
    }

    #[test]
    fn layouts_nulls_and_slices() {
        let vals = vec![Some("x [A] [a]"), None, Some("[a]"), Some("none")];
        let matcher = Matcher::new(&["[a]"], true).unwrap();
        let arrays: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vals.clone())),
            Arc::new(LargeStringArray::from(vals.clone())),
            Arc::new(StringViewArray::from(vals.clone())),
        ];
        for a in &arrays {
            let (cols, nulls) = count_markers(&[a.clone()], &matcher).unwrap();
            assert_eq!(cols[0], vec![2, 0, 1, 0]);
            let nulls = nulls.unwrap();
            assert!(nulls.is_null(1) && nulls.is_valid(0));
            let sliced = a.slice(1, 3);
            let (cols, nulls) = count_markers(&[sliced], &matcher).unwrap();
            assert_eq!(cols[0], vec![0, 1, 0]);
            assert!(nulls.unwrap().is_null(0));
        }
        // chunked: validity of each chunk, in order
        let (cols, nulls) = count_markers(&arrays, &matcher).unwrap();
        assert_eq!(cols[0].len(), 12);
        assert!(nulls.unwrap().is_null(9));
        let (any, _) = contains_any(&arrays[..1], &matcher).unwrap();
        assert_eq!(any, vec![true, false, true, false]);
    }

    #[test]
    fn case_sensitive_and_errors() {
        let m = Matcher::new(&["[A]"], false).unwrap();
        let a: ArrayRef = Arc::new(StringArray::from(vec!["[A][a][A]"]));
        assert_eq!(count_markers(&[a], &m).unwrap().0[0], vec![2]);
        assert!(Matcher::new::<&str>(&[], true).is_err());
        assert!(Matcher::new(&["a", ""], true).is_err());
        let ints: ArrayRef = Arc::new(arrow_array::Int32Array::from(vec![1]));
        assert!(matches!(count_markers(&[ints], &m), Err(CoreError::Type(_))));
    }
}
