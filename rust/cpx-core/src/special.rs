//! Special functions for p-values and intervals: the normal CDF and its inverse, the
//! regularized incomplete beta function, and the t and F tails built on it.

/// Standard normal CDF.
pub fn ndtr(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    let z = x * std::f64::consts::FRAC_1_SQRT_2;
    if z.abs() < std::f64::consts::FRAC_1_SQRT_2 {
        0.5 + 0.5 * libm::erf(z)
    } else if z > 0.0 {
        1.0 - 0.5 * libm::erfc(z)
    } else {
        0.5 * libm::erfc(-z)
    }
}

#[allow(clippy::excessive_precision)] // the coefficients are AS 241's as published
/// Inverse of the standard normal CDF (Wichura's AS 241, PPND16; relative error ~1e-16).
pub fn ndtri(p: f64) -> f64 {
    if p.is_nan() || !(0.0..=1.0).contains(&p) {
        return f64::NAN;
    }
    if p == 0.0 {
        return f64::NEG_INFINITY;
    }
    if p == 1.0 {
        return f64::INFINITY;
    }
    let q = p - 0.5;
    if q.abs() <= 0.425 {
        let r = 0.180625 - q * q;
        return q
            * (((((((r * 2509.0809287301226727 + 33430.575583588128105) * r
                + 67265.770927008700853)
                * r
                + 45921.953931549871457)
                * r
                + 13731.693765509461125)
                * r
                + 1971.5909503065514427)
                * r
                + 133.14166789178437745)
                * r
                + 3.387132872796366608)
            / (((((((r * 5226.495278852545925 + 28729.085735721942674) * r
                + 39307.89580009271061)
                * r
                + 21213.794301586595867)
                * r
                + 5394.1960214247511077)
                * r
                + 687.1870074920579083)
                * r
                + 42.313330701600911252)
                * r
                + 1.0);
    }
    let mut r = if q < 0.0 { p } else { 1.0 - p };
    r = (-r.ln()).sqrt();
    let val = if r <= 5.0 {
        r -= 1.6;
        (((((((r * 7.7454501427834140764e-4 + 0.0227238449892691845833) * r
            + 0.24178072517745061177)
            * r
            + 1.27045825245236838258)
            * r
            + 3.64784832476320460504)
            * r
            + 5.7694972214606914055)
            * r
            + 4.6303378461565452959)
            * r
            + 1.42343711074968357734)
            / (((((((r * 1.05075007164441684324e-9 + 5.475938084995344946e-4) * r
                + 0.0151986665636164571966)
                * r
                + 0.14810397642748007459)
                * r
                + 0.68976733498510000455)
                * r
                + 1.6763848301838038494)
                * r
                + 2.05319162663775882187)
                * r
                + 1.0)
    } else {
        r -= 5.0;
        (((((((r * 2.01033439929228813265e-7 + 2.71155556874348757815e-5) * r
            + 0.0012426609473880784386)
            * r
            + 0.026532189526576123093)
            * r
            + 0.29656057182850489123)
            * r
            + 1.7848265399172913358)
            * r
            + 5.4637849111641143699)
            * r
            + 6.6579046435011037772)
            / (((((((r * 2.04426310338993978564e-15 + 1.4215117583164458887e-7) * r
                + 1.8463183175100546818e-5)
                * r
                + 7.868691311456132591e-4)
                * r
                + 0.0148753612908506148525)
                * r
                + 0.13692988092273580531)
                * r
                + 0.59983220655588793769)
                * r
                + 1.0)
    };
    if q < 0.0 {
        -val
    } else {
        val
    }
}

fn betacf(a: f64, b: f64, x: f64) -> f64 {
    const FPMIN: f64 = 1e-300;
    let qab = a + b;
    let qap = a + 1.0;
    let qam = a - 1.0;
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < FPMIN {
        d = FPMIN;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..100_000 {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        if d.abs() < FPMIN {
            d = FPMIN;
        }
        c = 1.0 + aa / c;
        if c.abs() < FPMIN {
            c = FPMIN;
        }
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        if d.abs() < FPMIN {
            d = FPMIN;
        }
        c = 1.0 + aa / c;
        if c.abs() < FPMIN {
            c = FPMIN;
        }
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < 1e-16 {
            break;
        }
    }
    h
}

/// Regularized incomplete beta `I_x(a, b)`, given `x` and `y = 1 - x` (each computed
/// accurately by the caller, so that neither tail loses precision).
pub fn ibeta(a: f64, b: f64, x: f64, y: f64) -> f64 {
    if x.is_nan() || y.is_nan() || a.is_nan() || b.is_nan() {
        return f64::NAN;
    }
    if x <= 0.0 {
        return 0.0;
    }
    if y <= 0.0 {
        return 1.0;
    }
    let ln_bt = libm::lgamma(a + b) - libm::lgamma(a) - libm::lgamma(b) + a * x.ln() + b * y.ln();
    let bt = ln_bt.exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        bt * betacf(a, b, x) / a
    } else {
        1.0 - bt * betacf(b, a, y) / b
    }
}

/// Upper tail `P(T > t)` of Student's t with `df` degrees of freedom.
pub fn t_sf(t: f64, df: f64) -> f64 {
    if t.is_nan() || df.is_nan() || df <= 0.0 {
        return f64::NAN;
    }
    if t == f64::INFINITY {
        return 0.0;
    }
    if t == f64::NEG_INFINITY {
        return 1.0;
    }
    let t2 = t * t;
    let half = 0.5 * ibeta(0.5 * df, 0.5, df / (df + t2), t2 / (df + t2));
    if t > 0.0 {
        half
    } else {
        1.0 - half
    }
}

/// Upper tail `P(F > f)` of the F distribution with `(d1, d2)` degrees of freedom.
pub fn f_sf(f: f64, d1: f64, d2: f64) -> f64 {
    if f.is_nan() || d1 <= 0.0 || d2 <= 0.0 {
        return f64::NAN;
    }
    if f <= 0.0 {
        return 1.0;
    }
    if f == f64::INFINITY {
        return 0.0;
    }
    let den = d2 + d1 * f;
    ibeta(0.5 * d2, 0.5 * d1, d2 / den, d1 * f / den)
}

/// The `q` upper quantile of the F distribution: `f` with `f_sf(f, d1, d2) = q` (bisection
/// to full double precision; `f_sf` is decreasing in `f`).
pub fn f_isf(q: f64, d1: f64, d2: f64) -> f64 {
    if !(q > 0.0 && q < 1.0 && d1 > 0.0 && d2 > 0.0) {
        return f64::NAN;
    }
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    while f_sf(hi, d1, d2) > q {
        lo = hi;
        hi *= 2.0;
        if hi > 1e300 {
            return f64::INFINITY;
        }
    }
    for _ in 0..2000 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if f_sf(mid, d1, d2) > q {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_round_trip() {
        for &p in &[
            1e-300,
            1e-20,
            1e-5,
            0.025,
            0.3,
            0.5,
            0.7,
            0.975,
            1.0 - 1e-12,
        ] {
            let x = ndtri(p);
            assert!((ndtr(x) - p).abs() <= 1e-15 + 1e-13 * p, "{p} {x}");
        }
        assert!((ndtri(0.975) - 1.959963984540054).abs() < 1e-15);
    }

    #[test]
    fn t_and_f_tails() {
        // Values from scipy.stats.t.sf / f.sf.
        assert!((t_sf(2.0, 5.0) - 0.050969739414929174).abs() < 1e-14);
        assert!((t_sf(-1.0, 3.0) - 0.8044988905221148).abs() < 1e-14);
        assert!((f_sf(3.0, 4.0, 20.0) - 0.04320099833421409).abs() < 1e-14);
        let f = f_isf(0.025, 4.0, 20.0);
        assert!((f_sf(f, 4.0, 20.0) - 0.025).abs() < 1e-15);
        // Cauchy (df = 1) has a closed form.
        let t: f64 = 1.7;
        assert!((t_sf(t, 1.0) - (0.5 - t.atan() / std::f64::consts::PI)).abs() < 1e-15);
    }
}
