//! Port and port-list parsing (pure, no IO).

/// A port or port list that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// The list (or one entry of it) is empty.
    #[error("empty port in `{0}`")]
    Empty(String),
    /// Not a number.
    #[error("port `{0}` is not a number")]
    NotANumber(String),
    /// Outside 1..=65535.
    #[error("port `{0}` is out of range (1..=65535)")]
    OutOfRange(String),
    /// Listed twice.
    #[error("port `{0}` is listed twice")]
    Duplicate(u16),
}

/// Parses one port, 1..=65535.
pub fn parse_port(s: &str) -> Result<u16, PortError> {
    let t = s.trim();
    if t.is_empty() {
        return Err(PortError::Empty(s.to_string()));
    }
    if !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PortError::NotANumber(t.to_string()));
    }
    match t.parse::<u32>() {
        Ok(p @ 1..=65535) => Ok(p as u16),
        _ => Err(PortError::OutOfRange(t.to_string())),
    }
}

/// Parses a comma-separated list such as `80,81`; rejects empty entries and duplicates.
pub fn parse_port_list(s: &str) -> Result<Vec<u16>, PortError> {
    let mut ports = Vec::new();
    for part in s.split(',') {
        if part.trim().is_empty() {
            return Err(PortError::Empty(s.to_string()));
        }
        let p = parse_port(part)?;
        if ports.contains(&p) {
            return Err(PortError::Duplicate(p));
        }
        ports.push(p);
    }
    Ok(ports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_ports() {
        assert_eq!(parse_port("80"), Ok(80));
        assert_eq!(parse_port("65535"), Ok(65535));
        assert_eq!(parse_port("0"), Err(PortError::OutOfRange("0".into())));
        assert_eq!(
            parse_port("65536"),
            Err(PortError::OutOfRange("65536".into()))
        );
        assert_eq!(
            parse_port("99999999999999999999"),
            Err(PortError::OutOfRange("99999999999999999999".into()))
        );
        assert_eq!(
            parse_port("http"),
            Err(PortError::NotANumber("http".into()))
        );
        assert_eq!(parse_port("-1"), Err(PortError::NotANumber("-1".into())));
        assert!(matches!(parse_port(""), Err(PortError::Empty(_))));
    }

    #[test]
    fn lists() {
        assert_eq!(parse_port_list("80"), Ok(vec![80]));
        assert_eq!(parse_port_list("80,81, 443"), Ok(vec![80, 81, 443]));
        assert_eq!(parse_port_list("80,80"), Err(PortError::Duplicate(80)));
        assert!(matches!(parse_port_list(""), Err(PortError::Empty(_))));
        assert!(matches!(parse_port_list("80,"), Err(PortError::Empty(_))));
        assert!(matches!(parse_port_list(",80"), Err(PortError::Empty(_))));
        assert!(matches!(
            parse_port_list("80,x"),
            Err(PortError::NotANumber(_))
        ));
        assert!(matches!(
            parse_port_list("80,0"),
            Err(PortError::OutOfRange(_))
        ));
    }
}
