//! MCP protocol revisions and the transport era each belongs to.

/// A protocol revision the gateway knows, as sent in `MCP-Protocol-Version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProtocolVersion {
    /// The legacy HTTP+SSE transport's revision.
    V2024_11_05,
    /// First Streamable HTTP revision; the only one that allows JSON-RPC batches.
    V2025_03_26,
    /// Adds the `MCP-Protocol-Version` header; no batches.
    V2025_06_18,
    /// Session era, newest: Origin must be validated, priming events.
    V2025_11_25,
    /// Stateless era: no `initialize`, no sessions, `Mcp-Method`/`Mcp-Name` headers.
    V2026_07_28,
}

/// The three shapes of MCP over HTTP a gateway meets in a real fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Era {
    /// `GET /sse` plus a POST endpoint (2024-11-05).
    Legacy,
    /// Streamable HTTP with `initialize` and optional `Mcp-Session-Id`.
    Session,
    /// Streamable HTTP without sessions (2026-07-28 on).
    Stateless,
}

impl ProtocolVersion {
    /// Every revision the gateway accepts, oldest first.
    pub const ALL: [ProtocolVersion; 5] = [
        ProtocolVersion::V2024_11_05,
        ProtocolVersion::V2025_03_26,
        ProtocolVersion::V2025_06_18,
        ProtocolVersion::V2025_11_25,
        ProtocolVersion::V2026_07_28,
    ];

    /// What a session-era request without the header is assumed to speak (the spec's rule).
    pub const ASSUMED_WITHOUT_HEADER: ProtocolVersion = ProtocolVersion::V2025_03_26;

    /// Parses the exact revision string; anything else is unsupported.
    pub fn parse(s: &str) -> Option<ProtocolVersion> {
        Some(match s {
            "2024-11-05" => ProtocolVersion::V2024_11_05,
            "2025-03-26" => ProtocolVersion::V2025_03_26,
            "2025-06-18" => ProtocolVersion::V2025_06_18,
            "2025-11-25" => ProtocolVersion::V2025_11_25,
            "2026-07-28" => ProtocolVersion::V2026_07_28,
            _ => return None,
        })
    }

    /// The revision string as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ProtocolVersion::V2024_11_05 => "2024-11-05",
            ProtocolVersion::V2025_03_26 => "2025-03-26",
            ProtocolVersion::V2025_06_18 => "2025-06-18",
            ProtocolVersion::V2025_11_25 => "2025-11-25",
            ProtocolVersion::V2026_07_28 => "2026-07-28",
        }
    }

    /// The transport era this revision belongs to.
    pub fn era(self) -> Era {
        match self {
            ProtocolVersion::V2024_11_05 => Era::Legacy,
            ProtocolVersion::V2026_07_28 => Era::Stateless,
            _ => Era::Session,
        }
    }

    /// Only 2025-03-26 allowed a JSON-RPC batch array in one POST body.
    pub fn allows_batch(self) -> bool {
        self == ProtocolVersion::V2025_03_26
    }

    /// The supported revisions as a comma-separated list, for error data and docs.
    pub fn supported_list() -> Vec<&'static str> {
        Self::ALL.iter().map(|v| v.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_round_trips_every_known_revision() {
        for v in ProtocolVersion::ALL {
            assert_eq!(ProtocolVersion::parse(v.as_str()), Some(v));
        }
    }

    #[test]
    fn unknown_and_malformed_revisions_are_unsupported() {
        for s in ["", "2025-03-27", "2025-11-25 ", "latest", "2026-07-28\0"] {
            assert_eq!(ProtocolVersion::parse(s), None, "{s:?}");
        }
    }

    #[test]
    fn eras_and_batches_follow_the_spec() {
        assert_eq!(ProtocolVersion::V2026_07_28.era(), Era::Stateless);
        assert_eq!(ProtocolVersion::V2025_11_25.era(), Era::Session);
        assert_eq!(ProtocolVersion::V2024_11_05.era(), Era::Legacy);
        assert!(ProtocolVersion::V2025_03_26.allows_batch());
        assert!(!ProtocolVersion::V2025_06_18.allows_batch());
        assert!(!ProtocolVersion::V2026_07_28.allows_batch());
    }
}
