//! Byte sizes in config: a plain integer, or a number with a unit (`4MiB`, `512KiB`, `1MB`).

use serde::{Deserialize, Deserializer};

/// A size in bytes, written as an integer or with a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub usize);

impl ByteSize {
    /// Parses `123`, `64KiB`, `4MiB`, `1GiB`, `10KB`, `2MB` (units are case-insensitive).
    pub fn parse(s: &str) -> Result<ByteSize, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: usize = num
            .parse()
            .map_err(|_| format!("`{s}` is not a size such as 4194304 or 4MiB"))?;
        let mult: usize = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kib" => 1 << 10,
            "mib" => 1 << 20,
            "gib" => 1 << 30,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            other => {
                return Err(format!(
                    "unknown size unit `{other}` (use B, KiB, MiB, GiB, KB, MB, GB)"
                ))
            }
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("`{s}` is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ByteSize, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => usize::try_from(n)
                .map(ByteSize)
                .map_err(|_| serde::de::Error::custom("size is too large")),
            Raw::Text(s) => ByteSize::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_and_without_units() {
        assert_eq!(ByteSize::parse("4194304"), Ok(ByteSize(4 << 20)));
        assert_eq!(ByteSize::parse("4MiB"), Ok(ByteSize(4 << 20)));
        assert_eq!(ByteSize::parse("64 kib"), Ok(ByteSize(64 << 10)));
        assert_eq!(ByteSize::parse("2MB"), Ok(ByteSize(2_000_000)));
    }

    #[test]
    fn bad_sizes_are_refused_with_a_reason() {
        for s in [
            "",
            "MiB",
            "4 parsecs",
            "-1",
            "99999999999999999999999GiB",
            "1.5MiB",
        ] {
            assert!(ByteSize::parse(s).is_err(), "{s}");
        }
    }
}
