//! Ranks with ties averaged (scipy's `rankdata(method="average")`).

/// Twice the average rank of each element (1-based), so that tied ranks stay integers.
pub fn doubled_ranks(x: &[f64]) -> Vec<f64> {
    let n = x.len();
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut out = vec![0.0; n];
    let mut i = 0;
    while i < n {
        let mut j = i + 1;
        while j < n && x[idx[j]] == x[idx[i]] {
            j += 1;
        }
        // positions i..j (0-based) hold ranks i+1..=j; twice their mean is i + 1 + j.
        let r2 = (i + 1 + j) as f64;
        for &k in &idx[i..j] {
            out[k] = r2;
        }
        i = j;
    }
    out
}

/// Average ranks (1-based).
pub fn ranks(x: &[f64]) -> Vec<f64> {
    doubled_ranks(x).into_iter().map(|r| r / 2.0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_are_averaged() {
        assert_eq!(ranks(&[10.0, 20.0, 10.0, 5.0]), vec![2.5, 4.0, 2.5, 1.0]);
        assert_eq!(ranks(&[1.0, 1.0, 1.0]), vec![2.0, 2.0, 2.0]);
    }
}
