//! The spec versions this plugin speaks, and the `VERSION` reply.

use serde::Serialize;

/// The versions this plugin supports, oldest first. 0.3.0 is the first with the rich result
/// (interfaces, ips, routes); CHECK needs 0.4.0.
pub const SUPPORTED_VERSIONS: [&str; 4] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"];

/// The version this plugin answers in when the request names none it supports.
pub const CURRENT_VERSION: &str = "1.0.0";

/// A supported spec version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CniVersion {
    /// 0.3.0.
    V0_3_0,
    /// 0.3.1.
    V0_3_1,
    /// 0.4.0: adds CHECK and `prevResult` on DEL.
    V0_4_0,
    /// 1.0.0: drops `version` from `ips` entries.
    V1_0_0,
}

// === impl CniVersion ===

impl CniVersion {
    /// Parses one of [`SUPPORTED_VERSIONS`].
    pub fn parse(s: &str) -> Option<CniVersion> {
        match s {
            "0.3.0" => Some(CniVersion::V0_3_0),
            "0.3.1" => Some(CniVersion::V0_3_1),
            "0.4.0" => Some(CniVersion::V0_4_0),
            "1.0.0" => Some(CniVersion::V1_0_0),
            _ => None,
        }
    }

    /// The spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CniVersion::V0_3_0 => "0.3.0",
            CniVersion::V0_3_1 => "0.3.1",
            CniVersion::V0_4_0 => "0.4.0",
            CniVersion::V1_0_0 => "1.0.0",
        }
    }

    /// Whether CHECK exists in this version.
    pub fn has_check(self) -> bool {
        self >= CniVersion::V0_4_0
    }

    /// Whether `ips` entries carry `version` ("4"/"6"): before 1.0.0.
    pub fn ips_carry_version(self) -> bool {
        self < CniVersion::V1_0_0
    }
}

/// The `VERSION` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionReply {
    /// The version of this reply.
    #[serde(rename = "cniVersion")]
    pub cni_version: &'static str,
    /// [`SUPPORTED_VERSIONS`].
    #[serde(rename = "supportedVersions")]
    pub supported_versions: [&'static str; 4],
}

/// The `VERSION` reply: in the request's `cniVersion` when it is one we support (the spec says
/// to echo it), otherwise in [`CURRENT_VERSION`]. Never fails: a runtime probes with whatever
/// it has.
pub fn version_reply(stdin: &[u8]) -> VersionReply {
    let asked = serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().and_then(CniVersion::parse));
    VersionReply {
        cni_version: asked.map_or(CURRENT_VERSION, CniVersion::as_str),
        supported_versions: SUPPORTED_VERSIONS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_reply_is_exact() {
        let r = serde_json::to_string(&version_reply(br#"{"cniVersion":"1.0.0"}"#)).unwrap();
        assert_eq!(
            r,
            r#"{"cniVersion":"1.0.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0"]}"#
        );
        assert_eq!(
            version_reply(br#"{"cniVersion":"0.4.0"}"#).cni_version,
            "0.4.0"
        );
        assert_eq!(version_reply(b"").cni_version, "1.0.0");
        assert_eq!(
            version_reply(br#"{"cniVersion":"9.9.9"}"#).cni_version,
            "1.0.0"
        );
        for v in SUPPORTED_VERSIONS {
            assert_eq!(CniVersion::parse(v).map(CniVersion::as_str), Some(v));
        }
        assert!(!CniVersion::V0_3_1.has_check() && CniVersion::V0_4_0.has_check());
        assert!(CniVersion::V0_4_0.ips_carry_version() && !CniVersion::V1_0_0.ips_carry_version());
    }
}
