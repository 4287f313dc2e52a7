//! Kubernetes resource quantities (`500m`, `64Mi`, `1.5`, `2e3`): parsing to exact milli-units
//! and printing back in the form kubectl shows.

/// A parsed quantity, in thousandths of the base unit (cores, bytes, pods).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Quantity {
    millis: i128,
}

/// Why a quantity string is not valid.
#[derive(Debug, thiserror::Error)]
#[error(
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$': {0:?}"
)]
pub struct Error(String);

impl Quantity {
    /// A quantity of `millis` thousandths.
    pub fn from_millis(millis: i128) -> Self {
        Self { millis }
    }

    /// The quantity in thousandths of the unit (exact for anything kubectl prints).
    pub fn millis(self) -> i128 {
        self.millis
    }

    /// The quantity in whole units, rounded up, as Kubernetes' `Value()` does.
    pub fn value(self) -> i128 {
        (self.millis + 999).div_euclid(1000)
    }

    /// Parses `1`, `0.5`, `250m`, `64Mi`, `1G`, `2e3`.
    ///
    /// # Errors
    /// A string that is not a quantity.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let bad = || Error(s.to_owned());
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '+' | '-')))
            .unwrap_or(t.len());
        let (number, suffix) = t.split_at(split);
        let (negative, number) = match number.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, number.strip_prefix('+').unwrap_or(number)),
        };
        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && frac.is_empty())
            || !whole
                .bytes()
                .chain(frac.bytes())
                .all(|b| b.is_ascii_digit())
            || whole.len() + frac.len() > 30
        {
            return Err(bad());
        }
        // The number as an integer scaled by 10^-frac.len().
        let digits: i128 = format!("{whole}{frac}").parse().map_err(|_| bad())?;
        let (base, exp10): (i128, i32) = match suffix {
            "" => (1, 0),
            "n" => (1, -9),
            "u" => (1, -6),
            "m" => (1, -3),
            "k" => (1, 3),
            "M" => (1, 6),
            "G" => (1, 9),
            "T" => (1, 12),
            "P" => (1, 15),
            "E" => (1, 18),
            "Ki" => (1 << 10, 0),
            "Mi" => (1 << 20, 0),
            "Gi" => (1 << 30, 0),
            "Ti" => (1 << 40, 0),
            "Pi" => (1 << 50, 0),
            "Ei" => (1 << 60, 0),
            e if e.starts_with(['e', 'E']) => (1, e[1..].parse().map_err(|_| bad())?),
            _ => return Err(bad()),
        };
        // millis = digits * base * 10^(exp10 + 3 - frac.len()), rounded up like Kubernetes.
        let shift = exp10 + 3 - i32::try_from(frac.len()).map_err(|_| bad())?;
        let scaled = digits.checked_mul(base).ok_or_else(bad)?;
        let millis = if shift >= 0 {
            10i128
                .checked_pow(shift.unsigned_abs())
                .and_then(|p| scaled.checked_mul(p))
                .ok_or_else(bad)?
        } else {
            let p = 10i128
                .checked_pow(shift.unsigned_abs())
                .unwrap_or(i128::MAX);
            // Rounded up, without overflowing on tiny quantities (`5e-50`).
            scaled / p + i128::from(scaled % p != 0)
        };
        Ok(Self {
            millis: if negative { -millis } else { millis },
        })
    }

    /// The form kubectl prints for CPU: `250m`, `2`.
    pub fn cpu_string(self) -> String {
        if self.millis % 1000 == 0 {
            (self.millis / 1000).to_string()
        } else {
            format!("{}m", self.millis)
        }
    }

    /// The form kubectl prints for bytes: the largest binary suffix that divides exactly.
    pub fn bytes_string(self) -> String {
        let bytes = self.value();
        for (suffix, size) in [
            ("Ti", 1i128 << 40),
            ("Gi", 1 << 30),
            ("Mi", 1 << 20),
            ("Ki", 1 << 10),
        ] {
            if bytes != 0 && bytes % size == 0 {
                return format!("{}{suffix}", bytes / size);
            }
        }
        bytes.to_string()
    }
}

impl std::ops::Add for Quantity {
    type Output = Self;
    fn add(self, other: Self) -> Self {
        Self {
            millis: self.millis.saturating_add(other.millis),
        }
    }
}

impl std::iter::Sum for Quantity {
    fn sum<I: Iterator<Item = Self>>(iter: I) -> Self {
        iter.fold(Self::default(), |a, b| a + b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn millis(s: &str) -> i128 {
        Quantity::parse(s).unwrap().millis()
    }

    #[test]
    fn parses_every_suffix_kubernetes_accepts() {
        assert_eq!(millis("1"), 1000);
        assert_eq!(millis("250m"), 250);
        assert_eq!(millis("0.5"), 500);
        assert_eq!(millis(".1"), 100);
        assert_eq!(millis("64Mi"), 64 * (1 << 20) * 1000);
        assert_eq!(millis("1G"), 1_000_000_000_000);
        assert_eq!(millis("1.5Gi"), 1_610_612_736_000);
        assert_eq!(millis("2e3"), 2_000_000);
        assert_eq!(millis("100n"), 1, "rounded up like Kubernetes");
        assert_eq!(millis("-1"), -1000);
        for bad in [
            "",
            "Mi",
            "1x",
            "1.2.3",
            "abc",
            "1Mi2",
            "99999999999999999999999999999999999E",
        ] {
            assert!(Quantity::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prints_back_as_kubectl_does() {
        assert_eq!(Quantity::parse("250m").unwrap().cpu_string(), "250m");
        assert_eq!(Quantity::parse("2").unwrap().cpu_string(), "2");
        assert_eq!(Quantity::parse("128Mi").unwrap().bytes_string(), "128Mi");
        assert_eq!(Quantity::parse("1000").unwrap().bytes_string(), "1000");
        assert_eq!(Quantity::parse("0").unwrap().bytes_string(), "0");
    }
}
