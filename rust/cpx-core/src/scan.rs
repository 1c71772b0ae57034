//! Counting marker strings in Arrow string arrays.
//!
//! Semantics (the reference is Python): a count is the number of non-overlapping occurrences
//! found left to right, `text.count(marker)`; case-insensitively it is
//! `text.lower().count(marker.lower())` with Unicode's full lowercase mapping (so `İ` lowers
//! to `i̇`, the Kelvin sign `K` to `k`, and a final `Σ` to `ς`). Null rows give null counts.
//!
//! Case-insensitively, markers whose lowercase is ASCII are matched byte-wise on the raw row
//! (ignoring ASCII case), which equals matching the lowered row unless the row holds one of
//! the two non-ASCII characters that lower to ASCII (İ, Kelvin sign); such rows, and markers
//! whose lowercase is not ASCII, go through `str::to_lowercase`.
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
    finder: memmem::Finder<'static>,
}

impl Marker {
    fn new(marker: &str, case_insensitive: bool) -> Self {
        let folded = if case_insensitive {
            marker.to_lowercase()
        } else {
            marker.to_owned()
        };
        let finder = memmem::Finder::new(folded.as_bytes()).into_owned();
        Marker {
            folded_ascii: folded.is_ascii(),
            folded,
            finder,
        }
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

/// ASCII-folded markers searched together: one memchr/memchr2/memchr3 pass finds the
/// positions of the anchor bytes (each member's rarest byte, both cases), and each member
/// is verified at its own offset from the anchor.
#[derive(Debug, Clone)]
struct AnchorPass {
    bytes: Vec<u8>,
    /// (marker index, anchor position in the folded marker)
    members: Vec<(usize, usize)>,
}

fn case_pair(b: u8) -> Vec<u8> {
    let (l, u) = (b.to_ascii_lowercase(), b.to_ascii_uppercase());
    if l == u {
        vec![l]
    } else {
        vec![l, u]
    }
}

fn union_len(a: &[u8], b: &[u8]) -> usize {
    a.len() + b.iter().filter(|x| !a.contains(x)).count()
}

/// Groups ASCII markers into as few anchor passes as possible (at most 3 bytes a pass),
/// preferring each marker's rare bytes.
fn plan_passes(markers: &[Marker], ascii: &[usize]) -> Vec<AnchorPass> {
    let mut passes: Vec<AnchorPass> = Vec::new();
    for &mi in ascii {
        let bytes = markers[mi].folded.as_bytes();
        // 'i' and 'k' can come from İ and the Kelvin sign, which are not ASCII in the raw row:
        // an anchor must be a byte that only an ASCII byte of the row lowers to
        let mut cands: Vec<(u32, usize)> = (0..bytes.len())
            .filter(|&i| !matches!(bytes[i], b'i' | b'k'))
            .map(|i| (byte_commonness(bytes[i]), i))
            .collect();
        if cands.is_empty() {
            cands = (0..bytes.len())
                .map(|i| (byte_commonness(bytes[i]), i))
                .collect();
        }
        cands.sort();
        let best = cands[0].0;
        // a shared pass is worth a somewhat more common anchor, not a very common one
        let acceptable = (best * 3).max(150);
        let mut placed = false;
        'outer: for pass in passes.iter_mut() {
            for &(cost, pos) in &cands {
                if cost > acceptable {
                    break;
                }
                let cb = case_pair(bytes[pos]);
                if union_len(&pass.bytes, &cb) <= 3 {
                    for b in cb {
                        if !pass.bytes.contains(&b) {
                            pass.bytes.push(b);
                        }
                    }
                    pass.members.push((mi, pos));
                    placed = true;
                    break 'outer;
                }
            }
        }
        if !placed {
            let pos = cands[0].1;
            passes.push(AnchorPass {
                bytes: case_pair(bytes[pos]),
                members: vec![(mi, pos)],
            });
        }
    }
    passes
}

/// Whether `row` holds U+0130 (İ, bytes C4 B0) or U+212A (Kelvin sign, E2 84 AA): the only
/// characters outside ASCII whose lowercase contains ASCII letters ('i', 'k'; checked over
/// all of Unicode), so the only ones that make byte-wise ASCII-case-insensitive matching
/// differ from matching the lowered text.
#[inline]
fn has_special_lowercase(row: &[u8]) -> bool {
    memchr::memchr2_iter(0xC4, 0xE2, row).any(|i| {
        (row[i] == 0xC4 && row.get(i + 1) == Some(&0xB0))
            || (row[i] == 0xE2 && row.get(i + 1) == Some(&0x84) && row.get(i + 2) == Some(&0xAA))
    })
}

/// Outcome of the byte-wise pass over a row.
#[derive(PartialEq, Eq)]
enum Ascii {
    Done,
    /// `any` was set and a marker occurs.
    Found,
    /// An İ or Kelvin sign lies near an anchor where the byte-wise check failed: it might
    /// complete a match in the lowered row, so the row must be lowered.
    Lower,
}

/// A set of markers to count, prepared once.
#[derive(Debug, Clone)]
pub struct Matcher {
    markers: Vec<Marker>,
    case_insensitive: bool,
    passes: Vec<AnchorPass>,
    /// Markers whose lowercase is not ASCII (matched on the lowered row).
    unicode: Vec<usize>,
    /// Some anchor is 'i' or 'k' (a marker made of those letters only): every row must be
    /// checked for İ / Kelvin sign up front.
    check_rows: bool,
    /// The largest number of markers in one anchor pass.
    max_members: usize,
}

impl Matcher {
    pub fn new<S: AsRef<str>>(markers: &[S], case_insensitive: bool) -> Result<Self> {
        if markers.is_empty() {
            return Err(CoreError::input(
                "markers is empty: give at least one marker",
            ));
        }
        for (i, m) in markers.iter().enumerate() {
            if m.as_ref().is_empty() {
                return Err(CoreError::input(format!(
                    "markers[{i}] is the empty string"
                )));
            }
        }
        let markers: Vec<Marker> = markers
            .iter()
            .map(|m| Marker::new(m.as_ref(), case_insensitive))
            .collect();
        let ascii: Vec<usize> = (0..markers.len())
            .filter(|&i| markers[i].folded_ascii)
            .collect();
        let unicode = (0..markers.len())
            .filter(|&i| !markers[i].folded_ascii)
            .collect();
        let passes = if case_insensitive {
            plan_passes(&markers, &ascii)
        } else {
            Vec::new()
        };
        let check_rows = passes.iter().any(|p| {
            p.members
                .iter()
                .any(|&(mi, a)| matches!(markers[mi].folded.as_bytes()[a], b'i' | b'k'))
        });
        let max_members = passes.iter().map(|p| p.members.len()).max().unwrap_or(0);
        Ok(Matcher {
            markers,
            case_insensitive,
            passes,
            unicode,
            check_rows,
            max_members,
        })
    }

    pub fn len(&self) -> usize {
        self.markers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.markers.is_empty()
    }

    /// Checks candidate anchor position `c` of `pass` in the row `hay` for every member,
    /// counting matches into `out` (the row's counts).
    #[inline]
    fn visit(
        &self,
        pass: &AnchorPass,
        hay: &[u8],
        c: usize,
        next_ok: &mut [usize],
        out: &mut [u32],
        any: bool,
    ) -> Ascii {
        let b = hay[c].to_ascii_lowercase();
        for (k, &(mi, anchor)) in pass.members.iter().enumerate() {
            let needle = self.markers[mi].folded.as_bytes();
            if needle[anchor] != b {
                continue;
            }
            let len = needle.len();
            if c >= anchor && c - anchor >= next_ok[k] && c - anchor + len <= hay.len() {
                let s = c - anchor;
                if hay[s..s + len].eq_ignore_ascii_case(needle) {
                    out[mi] += 1;
                    next_ok[k] = s + len;
                    if any {
                        return Ascii::Found;
                    }
                    continue;
                }
            }
            // In the lowered row an İ (2 bytes) or Kelvin sign (3 bytes) becomes one ASCII
            // letter, so a match through this anchor spans at most 3 raw bytes per marker byte.
            let lo = c.saturating_sub(3 * anchor);
            let hi = (c + 3 * (len - anchor)).min(hay.len());
            if has_special_lowercase(&hay[lo..hi]) {
                return Ascii::Lower;
            }
        }
        Ascii::Done
    }

    /// ASCII-case-insensitive counts of the ASCII markers in `hay` (see [`Ascii`]).
    #[inline]
    fn count_ascii(&self, hay: &[u8], out: &mut [u32], any: bool) -> Ascii {
        let mut next_ok = vec![0usize; self.max_members];
        for pass in &self.passes {
            next_ok.fill(0);
            let mut outcome = Ascii::Done;
            let mut step = |c: usize| -> bool {
                outcome = self.visit(pass, hay, c, &mut next_ok, out, any);
                outcome == Ascii::Done
            };
            match pass.bytes[..] {
                [a] => memchr::memchr_iter(a, hay).all(&mut step),
                [a, b] => memchr::memchr2_iter(a, b, hay).all(&mut step),
                [a, b, c] => memchr::memchr3_iter(a, b, c, hay).all(&mut step),
                _ => unreachable!("a pass has 1 to 3 bytes"),
            };
            if outcome != Ascii::Done {
                return outcome;
            }
        }
        Ascii::Done
    }

    /// Counts for rows `0..n` whose bytes are `values[off(r)..off(r + 1)]`, contiguous and in
    /// order (string and large_string arrays): each anchor pass runs once over the whole
    /// range, so short rows cost no per-row search set-up. Only for case-insensitive
    /// matchers whose markers all lower to ASCII.
    fn count_contiguous(
        &self,
        values: &[u8],
        off: &dyn Fn(usize) -> usize,
        valid: &dyn Fn(usize) -> bool,
        n: usize,
        out: &mut [u32],
        any: bool,
    ) {
        const NORMAL: u8 = 0;
        const DONE: u8 = 1;
        const LOWER: u8 = 2;
        let m = self.markers.len();
        let mut state = vec![NORMAL; n];
        for (r, st) in state.iter_mut().enumerate() {
            if !valid(r) {
                *st = DONE;
            } else if self.check_rows && has_special_lowercase(&values[off(r)..off(r + 1)]) {
                *st = LOWER;
            }
        }
        let base = off(0);
        let region = &values[base..off(n)];
        let mut next_ok = vec![0usize; self.max_members];
        for pass in &self.passes {
            let mut r = 0usize;
            let mut row_start = 0usize;
            let mut row_end = off(1) - base;
            next_ok.fill(0);
            let mut step = |p: usize| -> bool {
                if p >= row_end {
                    while p >= row_end {
                        r += 1;
                        row_end = off(r + 1) - base;
                    }
                    row_start = off(r) - base;
                    next_ok.fill(0);
                }
                if state[r] != NORMAL {
                    return true;
                }
                let hay = &region[row_start..row_end];
                match self.visit(
                    pass,
                    hay,
                    p - row_start,
                    &mut next_ok,
                    &mut out[r * m..(r + 1) * m],
                    any,
                ) {
                    Ascii::Done => {}
                    Ascii::Found => state[r] = DONE,
                    Ascii::Lower => state[r] = LOWER,
                }
                true
            };
            match pass.bytes[..] {
                [a] => memchr::memchr_iter(a, region).for_each(|p| {
                    step(p);
                }),
                [a, b] => memchr::memchr2_iter(a, b, region).for_each(|p| {
                    step(p);
                }),
                [a, b, c] => memchr::memchr3_iter(a, b, c, region).for_each(|p| {
                    step(p);
                }),
                _ => unreachable!("a pass has 1 to 3 bytes"),
            }
        }
        for r in 0..n {
            if state[r] == LOWER {
                // SAFETY of from_utf8: Arrow string data is UTF-8; checked anyway, rows that
                // are not keep their byte-wise counts.
                if let Ok(row) = std::str::from_utf8(&values[off(r)..off(r + 1)]) {
                    self.count_lowered(row, &mut out[r * m..(r + 1) * m], any);
                }
            }
        }
    }

    fn count_lowered(&self, row: &str, out: &mut [u32], any: bool) {
        out.fill(0);
        let limit = if any { 1 } else { u32::MAX };
        let lowered = row.to_lowercase();
        for (m, o) in self.markers.iter().zip(out.iter_mut()) {
            *o = m.count_exact(lowered.as_bytes(), limit);
            if any && *o > 0 {
                return;
            }
        }
    }

    /// Counts of each marker in `row` into `out` (zeroed by the caller). With `any`, stops at
    /// the first occurrence of any marker (for `contains_any`).
    pub fn count_row(&self, row: &str, out: &mut [u32], any: bool) {
        let bytes = row.as_bytes();
        let limit = if any { 1 } else { u32::MAX };
        if !self.case_insensitive {
            for (m, o) in self.markers.iter().zip(out.iter_mut()) {
                *o = m.count_exact(bytes, limit);
                if any && *o > 0 {
                    return;
                }
            }
            return;
        }
        if self.check_rows && has_special_lowercase(bytes) {
            return self.count_lowered(row, out, any);
        }
        match self.count_ascii(bytes, out, any) {
            Ascii::Found => return,
            Ascii::Lower => return self.count_lowered(row, out, any),
            Ascii::Done => {}
        }
        if !self.unicode.is_empty() && !bytes.is_ascii() {
            let lowered = row.to_lowercase();
            for &mi in &self.unicode {
                out[mi] = self.markers[mi].count_exact(lowered.as_bytes(), limit);
                if any && out[mi] > 0 {
                    return;
                }
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
    any: bool,
    name: &str,
) -> Result<(Vec<u32>, Option<NullBuffer>, usize)> {
    let views: Vec<Strings> = chunks
        .iter()
        .map(|c| Strings::new(c.as_ref(), name))
        .collect::<Result<_>>()?;
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
            let n = buf.len() / m;
            let streaming = matcher.case_insensitive && matcher.unicode.is_empty();
            match v {
                Strings::Utf8(a) if streaming => {
                    let offs = a.value_offsets();
                    let off = |r: usize| offs[start + r] as usize;
                    let valid = |r: usize| a.is_valid(start + r);
                    matcher.count_contiguous(a.value_data(), &off, &valid, n, buf, any);
                }
                Strings::LargeUtf8(a) if streaming => {
                    let offs = a.value_offsets();
                    let off = |r: usize| offs[start + r] as usize;
                    let valid = |r: usize| a.is_valid(start + r);
                    matcher.count_contiguous(a.value_data(), &off, &valid, n, buf, any);
                }
                _ => {
                    for (k, o) in buf.chunks_exact_mut(m).enumerate() {
                        if let Some(row) = v.get(start + k) {
                            matcher.count_row(row, o, any);
                        }
                    }
                }
            }
        })
    });
    let validity = if views
        .iter()
        .any(|v| v.nulls().is_some() || matches!(v, Strings::AllNull(_)))
    {
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
    let (flat, validity, rows) = scan(chunks, matcher, false, "texts")?;
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
pub fn contains_any(
    chunks: &[ArrayRef],
    matcher: &Matcher,
) -> Result<(Vec<bool>, Option<NullBuffer>)> {
    let (flat, validity, _) = scan(chunks, matcher, true, "texts")?;
    let m = matcher.len();
    Ok((
        flat.chunks_exact(m)
            .map(|r| r.iter().any(|&c| c > 0))
            .collect(),
        validity,
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{LargeStringArray, StringArray, StringViewArray};

    use super::*;

    fn py_count(text: &str, marker: &str, ci: bool) -> u32 {
        let (t, m) = if ci {
            (text.to_lowercase(), marker.to_lowercase())
        } else {
            (text.into(), marker.into())
        };
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
            "[MAR\u{212A}ER] x [marker] ZELTHARİ zelthari",
            "ik \u{212A}İ kİ",
        ];
        let markers = [
            "[zlt]", "aa", "i̇", "σ", "k", "ß", "İ", "[marker]", "zelthari", "ki", "ik",
        ];
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
            let (cols, nulls) = count_markers(std::slice::from_ref(a), &matcher).unwrap();
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
    fn several_anchor_passes_and_shared_anchors() {
        let markers = ["[a]", "{b}", "<c>", "|d|", "~e~", "[a][", "zz", "Q"];
        let m = Matcher::new(&markers, true).unwrap();
        assert!(m.passes.len() >= 2);
        let texts = ["[A][a][ {B} <c> |D| ~e~ ZZZ q", "zzzz [a][a] qQ", "plain"];
        let arr: ArrayRef = Arc::new(StringArray::from(texts.to_vec()));
        let (cols, _) = count_markers(std::slice::from_ref(&arr), &m).unwrap();
        for (mi, mk) in markers.iter().enumerate() {
            for (ri, t) in texts.iter().enumerate() {
                assert_eq!(cols[mi][ri], py_count(t, mk, true), "{t:?} {mk:?}");
            }
        }
        let (any, _) = contains_any(&[arr], &m).unwrap();
        assert_eq!(any, vec![true, true, false]);
    }

    #[test]
    fn case_sensitive_and_errors() {
        let m = Matcher::new(&["[A]"], false).unwrap();
        let a: ArrayRef = Arc::new(StringArray::from(vec!["[A][a][A]"]));
        assert_eq!(count_markers(&[a], &m).unwrap().0[0], vec![2]);
        assert!(Matcher::new::<&str>(&[], true).is_err());
        assert!(Matcher::new(&["a", ""], true).is_err());
        let ints: ArrayRef = Arc::new(arrow_array::Int32Array::from(vec![1]));
        assert!(matches!(
            count_markers(&[ints], &m),
            Err(CoreError::Type(_))
        ));
    }
}
