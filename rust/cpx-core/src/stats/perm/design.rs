//! The rearrangements a permutation test draws from: blocks (orderings, combinations, sign
//! flips) and their product, a design, enumerated by rank or stepped, or drawn at random.

use crate::rng::Rng;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockKind {
    /// All orderings of `m` items.
    Perm,
    /// Which `k` of `m` items are labelled 1.
    Comb { k: usize },
    /// A sign (0 = keep, 1 = flip) for each of `m` items.
    Signs,
}

#[derive(Clone, Copy, Debug)]
pub struct Block {
    pub kind: BlockKind,
    pub m: usize,
}

fn binom(n: usize, k: usize) -> u128 {
    if k > n {
        return 0;
    }
    let k = k.min(n - k);
    let mut r: u128 = 1;
    for i in 0..k {
        // exact at every step: r * (n - i) is divisible by (i + 1)
        r = match r.checked_mul((n - i) as u128) {
            Some(v) => v / (i as u128 + 1),
            None => return u128::MAX,
        };
    }
    r
}

fn factorial(n: usize) -> u128 {
    let mut r: u128 = 1;
    for i in 2..=n as u128 {
        r = match r.checked_mul(i) {
            Some(v) => v,
            None => return u128::MAX,
        };
    }
    r
}

fn next_permutation(v: &mut [u32]) -> bool {
    let n = v.len();
    if n < 2 {
        return true;
    }
    let mut i = n - 1;
    while i > 0 && v[i - 1] >= v[i] {
        i -= 1;
    }
    if i == 0 {
        v.reverse();
        return true;
    }
    let mut j = n - 1;
    while v[j] <= v[i - 1] {
        j -= 1;
    }
    v.swap(i - 1, j);
    v[i..].reverse();
    false
}

impl Block {
    /// Number of distinct rearrangements (saturating).
    pub fn count(&self) -> u128 {
        match self.kind {
            BlockKind::Perm => factorial(self.m),
            BlockKind::Comb { k } => binom(self.m, k),
            BlockKind::Signs => {
                if self.m >= 127 {
                    u128::MAX
                } else {
                    1u128 << self.m
                }
            }
        }
    }

    fn base(&self, st: &mut [u32]) {
        match self.kind {
            BlockKind::Perm => st.iter_mut().enumerate().for_each(|(i, v)| *v = i as u32),
            BlockKind::Comb { k } => {
                let m = self.m;
                st.iter_mut()
                    .enumerate()
                    .for_each(|(i, v)| *v = (i >= m - k) as u32)
            }
            BlockKind::Signs => st.fill(0),
        }
    }

    /// The `r`-th rearrangement in lexicographic order.
    pub(super) fn unrank(&self, mut r: u128, st: &mut [u32]) {
        let m = self.m;
        match self.kind {
            BlockKind::Perm => {
                let mut avail: Vec<u32> = (0..m as u32).collect();
                for (i, slot) in st.iter_mut().enumerate() {
                    let f = factorial(m - 1 - i);
                    let d = (r / f) as usize;
                    r %= f;
                    *slot = avail.remove(d);
                }
            }
            BlockKind::Comb { k } => {
                let mut ones = k;
                for (i, slot) in st.iter_mut().enumerate() {
                    let rest = m - i - 1;
                    if ones == 0 {
                        *slot = 0;
                        continue;
                    }
                    let with_zero = binom(rest, ones);
                    if r < with_zero {
                        *slot = 0;
                    } else {
                        r -= with_zero;
                        *slot = 1;
                        ones -= 1;
                    }
                }
            }
            BlockKind::Signs => {
                for (i, slot) in st.iter_mut().enumerate() {
                    *slot = ((r >> (m - 1 - i)) & 1) as u32;
                }
            }
        }
    }

    /// Steps to the next rearrangement; returns true when it wrapped around to the first.
    pub(super) fn advance(&self, st: &mut [u32]) -> bool {
        match self.kind {
            BlockKind::Perm | BlockKind::Comb { .. } => next_permutation(st),
            BlockKind::Signs => {
                for v in st.iter_mut().rev() {
                    if *v == 0 {
                        *v = 1;
                        return false;
                    }
                    *v = 0;
                }
                true
            }
        }
    }

    pub(super) fn randomize(&self, rng: &mut Rng, st: &mut [u32]) {
        match self.kind {
            BlockKind::Perm | BlockKind::Comb { .. } => {
                self.base(st);
                rng.shuffle(st);
            }
            BlockKind::Signs => {
                let mut bits = 0u64;
                for (i, v) in st.iter_mut().enumerate() {
                    if i % 64 == 0 {
                        bits = rng.next_u64();
                    }
                    *v = (bits & 1) as u32;
                    bits >>= 1;
                }
            }
        }
    }
}

/// A product of blocks; the state is one flat `u32` vector, block after block.
#[derive(Clone, Debug)]
pub struct Design {
    pub blocks: Vec<Block>,
    offsets: Vec<usize>,
    pub(super) len: usize,
}

impl Design {
    pub fn new(blocks: Vec<Block>) -> Self {
        let mut offsets = Vec::with_capacity(blocks.len());
        let mut len = 0;
        for b in &blocks {
            offsets.push(len);
            len += b.m;
        }
        Design {
            blocks,
            offsets,
            len,
        }
    }

    /// Number of distinct rearrangements of the whole design (saturating).
    pub fn count(&self) -> u128 {
        self.blocks
            .iter()
            .fold(1u128, |acc, b| acc.saturating_mul(b.count()))
    }

    fn slice<'a>(&self, i: usize, st: &'a mut [u32]) -> &'a mut [u32] {
        &mut st[self.offsets[i]..self.offsets[i] + self.blocks[i].m]
    }

    pub(super) fn unrank(&self, mut r: u128, st: &mut [u32]) {
        for i in (0..self.blocks.len()).rev() {
            let c = self.blocks[i].count();
            self.blocks[i].unrank(r % c, self.slice(i, st));
            r /= c;
        }
    }

    pub(super) fn advance(&self, st: &mut [u32]) {
        for i in (0..self.blocks.len()).rev() {
            if !self.blocks[i].advance(self.slice(i, st)) {
                return;
            }
        }
    }

    pub(super) fn randomize(&self, rng: &mut Rng, st: &mut [u32]) {
        for i in 0..self.blocks.len() {
            self.blocks[i].randomize(rng, self.slice(i, st));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_states(design: &Design) -> Vec<Vec<u32>> {
        let n = design.count() as usize;
        let mut st = vec![0u32; design.len];
        design.unrank(0, &mut st);
        let mut out = Vec::new();
        for r in 0..n {
            let mut u = vec![0u32; design.len];
            design.unrank(r as u128, &mut u);
            assert_eq!(u, st, "unrank({r}) disagrees with stepping");
            out.push(st.clone());
            design.advance(&mut st);
        }
        out
    }

    #[test]
    fn enumeration_is_complete_and_distinct() {
        let design = Design::new(vec![
            Block {
                kind: BlockKind::Perm,
                m: 3,
            },
            Block {
                kind: BlockKind::Comb { k: 2 },
                m: 4,
            },
            Block {
                kind: BlockKind::Signs,
                m: 2,
            },
        ]);
        assert_eq!(design.count(), 6 * 6 * 4);
        let mut states = all_states(&design);
        states.sort();
        states.dedup();
        assert_eq!(states.len(), 144);
    }
}
