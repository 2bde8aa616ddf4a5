//! VERSION: the first command of a connection. The client states its protocol version
//! and capabilities as JSON; the server answers with its own.

use serde_json::{json, Value};

use super::message::{Fields, Writer};
use super::refusal::Refusal;
use super::wire::{Command, MAX_DATA_XFER};

/// The protocol version served (the only one published).
pub const MAJOR: u16 = 0;
/// Minor version served.
pub const MINOR: u16 = 0;
/// Longest JSON capability string accepted.
pub const MAX_JSON: usize = 4096;
/// DMA page size the server maps at (`pgsizes`).
pub const PAGE_SIZE: u64 = 4096;

/// What the client said about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientVersion {
    /// Minor version.
    pub minor: u16,
    /// Descriptors the client accepts in one message (default 1).
    pub max_msg_fds: u64,
}

/// What the server announces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerCaps {
    /// Descriptors one message to the server may carry.
    pub max_msg_fds: usize,
    /// DMA maps the server holds at once.
    pub max_dma_maps: usize,
}

/// Decodes the client's VERSION payload: major 0, then a NUL-terminated JSON object whose
/// optional `capabilities` member is an object.
pub fn parse(bytes: &[u8]) -> Result<ClientVersion, Refusal> {
    let c = Command::Version;
    let f = Fields::at_least(c, bytes, 4)?;
    let (major, minor) = (f.u16(0), f.u16(2));
    if major != MAJOR {
        return Err(Refusal::invalid(
            c,
            format!("major version {major}, only {MAJOR} is served"),
        ));
    }
    let text = f.rest(4);
    let text = match text.split_last() {
        None => &[][..],
        Some((0, json)) => json,
        Some(_) => return Err(Refusal::invalid(c, "capabilities are not NUL-terminated")),
    };
    if text.len() > MAX_JSON {
        return Err(Refusal::invalid(
            c,
            format!("{} bytes of capabilities (max {MAX_JSON})", text.len()),
        ));
    }
    let mut max_msg_fds = 1;
    if !text.is_empty() {
        let value: Value = serde_json::from_slice(text)
            .map_err(|e| Refusal::invalid(c, format!("capabilities are not JSON: {e}")))?;
        let obj = value
            .as_object()
            .ok_or_else(|| Refusal::invalid(c, "capabilities are not a JSON object"))?;
        if let Some(caps) = obj.get("capabilities") {
            let caps = caps
                .as_object()
                .ok_or_else(|| Refusal::invalid(c, "`capabilities` is not an object"))?;
            if let Some(v) = caps.get("max_msg_fds") {
                max_msg_fds = v
                    .as_u64()
                    .ok_or_else(|| Refusal::invalid(c, "`max_msg_fds` is not a number"))?;
            }
        }
    }
    Ok(ClientVersion { minor, max_msg_fds })
}

/// The server's VERSION reply. Only capabilities QEMU's client knows are named: it
/// refuses unknown ones. `write_multiple` and `migration` are left out (not served).
pub fn encode(caps: ServerCaps) -> Vec<u8> {
    let json = json!({
        "capabilities": {
            "max_msg_fds": caps.max_msg_fds,
            "max_data_xfer_size": MAX_DATA_XFER,
            "pgsizes": PAGE_SIZE,
            "max_dma_maps": caps.max_dma_maps,
        }
    })
    .to_string();
    Writer::default()
        .u16(MAJOR)
        .u16(MINOR)
        .bytes(json.as_bytes())
        .bytes(&[0])
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(major: u16, json: &[u8]) -> Vec<u8> {
        let mut p = major.to_le_bytes().to_vec();
        p.extend_from_slice(&0u16.to_le_bytes());
        p.extend_from_slice(json);
        p
    }

    #[test]
    fn accepts_what_qemu_11_1_sends() {
        let qemu = br#"{"capabilities": {"pgsizes": 4096, "max_msg_fds": 16, "max_dma_maps": 65535, "max_data_xfer_size": 1048576, "migration": {"max_bitmap_size": 268435456, "pgsize": 4096}, "write_multiple": true}}"#;
        let mut json = qemu.to_vec();
        json.push(0);
        let v = parse(&payload(0, &json)).unwrap();
        assert_eq!(v.max_msg_fds, 16);
    }

    #[test]
    fn refuses_other_majors_missing_nul_and_non_objects() {
        assert!(parse(&payload(1, b"{}\0")).is_err());
        assert!(parse(&payload(0, b"{}")).is_err());
        assert!(parse(&payload(0, b"[1]\0")).is_err());
        assert!(parse(&payload(0, b"{\"capabilities\": 3}\0")).is_err());
        assert!(parse(&payload(0, b"{\0")).is_err());
        assert!(parse(&[0, 0]).is_err());
        assert_eq!(parse(&payload(0, b"")).unwrap().max_msg_fds, 1);
    }

    #[test]
    fn reply_is_nul_terminated_json_with_our_bounds() {
        let r = encode(ServerCaps {
            max_msg_fds: 8,
            max_dma_maps: 32,
        });
        assert_eq!(&r[..4], &[0, 0, 0, 0]);
        assert_eq!(r.last(), Some(&0));
        let v: Value = serde_json::from_slice(&r[4..r.len() - 1]).unwrap();
        assert_eq!(v["capabilities"]["max_msg_fds"], 8);
        assert_eq!(v["capabilities"]["max_dma_maps"], 32);
        assert_eq!(v["capabilities"]["max_data_xfer_size"], MAX_DATA_XFER);
    }
}
