//! Kubernetes resource quantities (`100m`, `1.5`, `128Mi`, `1G`, `2e3`), as
//! `k8s.io/apimachinery/pkg/api/resource` reads them: a decimal number, then a binary suffix
//! (`Ki` … `Ei`), a decimal suffix (`n`, `u`, `m`, `k`, `M` … `E`) or a decimal exponent (`e3`,
//! `E-2`). Values are kept exactly (in billionths) and rounded up where a whole unit is asked for,
//! as the API server rounds requests up.

use std::fmt;

/// Why a quantity was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("{0:?} is not a quantity (a number with an optional suffix: 100m, 1.5, 128Mi, 1G)")]
    Syntax(String),
    #[error("{0:?} must not be negative")]
    Negative(String),
    #[error("{0:?} is out of range")]
    OutOfRange(String),
}

/// A non-negative quantity, exactly, in billionths of its unit (`1` is 10⁹, `1m` is 10⁶).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Quantity {
    nanos: u128,
}

const NANOS: u128 = 1_000_000_000;

impl Quantity {
    /// Parses a quantity.
    ///
    /// # Errors
    /// [`QuantityError`] naming the text when it is not a quantity, is negative or does not fit.
    pub fn parse(text: &str) -> Result<Self, QuantityError> {
        let syntax = || QuantityError::Syntax(text.to_owned());
        let out_of_range = || QuantityError::OutOfRange(text.to_owned());
        let trimmed = text.trim();
        let (negative, unsigned) = match trimmed.as_bytes().first() {
            Some(b'-') => (true, &trimmed[1..]),
            Some(b'+') => (false, &trimmed[1..]),
            _ => (false, trimmed),
        };
        let number_end = unsigned
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(unsigned.len());
        let (number, suffix) = unsigned.split_at(number_end);
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
            return Err(syntax());
        }
        // (multiplier in billionths, divisor): the suffix's value.
        let (multiplier, divisor): (u128, u128) = match suffix {
            "" => (NANOS, 1),
            "n" => (1, 1),
            "u" => (1_000, 1),
            "m" => (1_000_000, 1),
            "k" => (NANOS * 1_000, 1),
            "M" => (NANOS * 1_000_000, 1),
            "G" => (NANOS * 1_000_000_000, 1),
            "T" => (NANOS * 1_000_000_000_000, 1),
            "P" => (NANOS * 1_000_000_000_000_000, 1),
            "E" => (NANOS * 1_000_000_000_000_000_000, 1),
            "Ki" => (NANOS << 10, 1),
            "Mi" => (NANOS << 20, 1),
            "Gi" => (NANOS << 30, 1),
            "Ti" => (NANOS << 40, 1),
            "Pi" => (NANOS << 50, 1),
            "Ei" => (NANOS << 60, 1),
            exponent if exponent.starts_with(['e', 'E']) => {
                let power: i32 = exponent[1..].parse().map_err(|_| syntax())?;
                let ten = |p: u32| 10u128.checked_pow(p).ok_or_else(out_of_range);
                let down = power.unsigned_abs();
                if power >= 0 {
                    (NANOS.checked_mul(ten(down)?).ok_or_else(out_of_range)?, 1)
                } else if down <= 9 {
                    (NANOS / ten(down)?, 1)
                } else {
                    (1, ten(down - 9)?)
                }
            }
            _ => return Err(syntax()),
        };
        let digits = format!("{whole}{fraction}");
        let mantissa: u128 = digits.parse().map_err(|_| out_of_range())?;
        if negative && mantissa != 0 {
            return Err(QuantityError::Negative(text.to_owned()));
        }
        let scale = u32::try_from(fraction.len())
            .ok()
            .and_then(|len| 10u128.checked_pow(len))
            .ok_or_else(out_of_range)?;
        let numerator = mantissa.checked_mul(multiplier).ok_or_else(out_of_range)?;
        let denominator = scale.checked_mul(divisor).ok_or_else(out_of_range)?;
        Ok(Self {
            nanos: numerator.div_ceil(denominator),
        })
    }

    /// From whole thousandths (CPU millicores).
    #[must_use]
    pub fn from_millis(millis: u64) -> Self {
        Self {
            nanos: u128::from(millis) * 1_000_000,
        }
    }

    /// In thousandths, rounded up (CPU in millicores).
    #[must_use]
    pub fn millis(self) -> u128 {
        self.nanos.div_ceil(1_000_000)
    }

    /// In whole units, rounded up (memory in bytes).
    #[must_use]
    pub fn units(self) -> u128 {
        self.nanos.div_ceil(NANOS)
    }
}

impl std::str::FromStr for Quantity {
    type Err = QuantityError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

/// Canonical form, as the API server writes it: whole units (`4`, memory in bytes as `Ki`/`Mi`/`Gi`
/// when it divides evenly), else millis (`1500m`), else billionths (`5n`).
impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nanos.is_multiple_of(NANOS) {
            let units = self.nanos / NANOS;
            for (suffix, shift) in [
                ("Ei", 60),
                ("Pi", 50),
                ("Ti", 40),
                ("Gi", 30),
                ("Mi", 20),
                ("Ki", 10),
            ] {
                if units != 0 && units.is_multiple_of(1u128 << shift) && units >= 1u128 << 20 {
                    return write!(f, "{}{suffix}", units >> shift);
                }
            }
            write!(f, "{units}")
        } else if self.nanos.is_multiple_of(1_000_000) {
            write!(f, "{}m", self.nanos / 1_000_000)
        } else {
            write!(f, "{}n", self.nanos)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Quantity, QuantityError};

    fn millis(text: &str) -> u128 {
        Quantity::parse(text)
            .unwrap_or_else(|error| panic!("{text}: {error}"))
            .millis()
    }

    fn bytes(text: &str) -> u128 {
        Quantity::parse(text)
            .unwrap_or_else(|error| panic!("{text}: {error}"))
            .units()
    }

    #[test]
    fn cpu_quantities_in_millicores() {
        for (text, expected) in [
            ("100m", 100),
            ("1", 1000),
            ("0.5", 500),
            ("1.5", 1500),
            (".25", 250),
            ("2.", 2000),
            ("+3", 3000),
            ("0", 0),
            ("-0", 0),
            ("1500000u", 1500),
            ("1n", 1),
            ("0.0001", 1),
            ("1e3", 1_000_000),
            ("1E-3", 1),
            ("5e-10", 1),
            ("1k", 1_000_000),
        ] {
            assert_eq!(millis(text), expected, "{text} in millicores");
        }
    }

    #[test]
    fn memory_quantities_in_bytes() {
        for (text, expected) in [
            ("128Mi", 128 << 20),
            ("1Gi", 1 << 30),
            ("1G", 1_000_000_000),
            ("1.5Gi", 3 << 29),
            ("64Ki", 64 << 10),
            ("1M", 1_000_000),
            ("100", 100),
            ("129e6", 129_000_000),
            ("1Ei", 1 << 60),
            ("1500m", 2),
        ] {
            assert_eq!(bytes(text), expected, "{text} in bytes");
        }
    }

    #[test]
    fn bad_quantities_are_refused_naming_the_text() {
        for text in [
            "", "m", "abc", "1.2.3", "1 Gi", "1gi", "1KB", "--1", "1e", "1ee3", "Gi",
        ] {
            assert_eq!(
                Quantity::parse(text),
                Err(QuantityError::Syntax(text.to_owned())),
                "{text:?}"
            );
        }
        assert_eq!(
            Quantity::parse("-100m"),
            Err(QuantityError::Negative("-100m".to_owned()))
        );
        assert!(matches!(
            Quantity::parse("999999999999999999999999999999Ei"),
            Err(QuantityError::OutOfRange(_))
        ));
        assert!(matches!(
            Quantity::parse("1e99"),
            Err(QuantityError::OutOfRange(_))
        ));
        let message = Quantity::parse("lots").unwrap_err().to_string();
        assert!(message.contains("\"lots\""), "{message}");
    }

    #[test]
    fn canonical_form() {
        for (text, shown) in [
            ("4", "4"),
            ("1500m", "1500m"),
            ("16384Mi", "16Gi"),
            ("1048576Ki", "1Gi"),
            ("1536Mi", "1536Mi"),
            ("1000", "1000"),
            ("5n", "5n"),
        ] {
            assert_eq!(Quantity::parse(text).unwrap().to_string(), shown, "{text}");
        }
        assert_eq!(Quantity::from_millis(2500).to_string(), "2500m");
    }
}
