//! Syntax checks for the names the plugin accepts (pure). Each returns `Err(reason)` with a
//! lowercase reason the caller puts next to the field's name.

fn alnum(c: char) -> bool {
    c.is_ascii_alphanumeric()
}

/// A CNI container id or network name: an alphanumeric, then alphanumerics, `_`, `.` or `-`.
pub fn cni_id(s: &str) -> Result<(), String> {
    let mut chars = s.chars();
    match chars.next() {
        None => Err("must not be empty".into()),
        Some(c) if !alnum(c) => Err("must start with a letter or digit".into()),
        Some(_) if chars.all(|c| alnum(c) || matches!(c, '_' | '.' | '-')) => Ok(()),
        Some(_) => Err("may contain only letters, digits, `_`, `.` and `-`".into()),
    }
}

/// A Linux interface name: 1 to 15 bytes, not `.` or `..`, no `/`, `:` or whitespace.
pub fn ifname(s: &str) -> Result<(), String> {
    if s.is_empty() {
        Err("must not be empty".into())
    } else if s.len() > 15 {
        Err("must be at most 15 bytes".into())
    } else if s == "." || s == ".." {
        Err("must not be `.` or `..`".into())
    } else if s
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        Err("must not contain `/`, `:` or whitespace".into())
    } else {
        Ok(())
    }
}

/// An RFC 1123 DNS label (Kubernetes namespace): 1 to 63 of `[a-z0-9-]`, alphanumeric at both
/// ends.
pub fn dns_label(s: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    if s.is_empty() || s.len() > 63 {
        return Err("must be 1 to 63 characters".into());
    }
    if !s.chars().all(ok_char) {
        return Err("may contain only lowercase letters, digits and `-`".into());
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err("must start and end with a letter or digit".into());
    }
    Ok(())
}

/// An RFC 1123 DNS subdomain (Kubernetes pod or service account name): at most 253 characters,
/// dot-separated DNS labels.
pub fn dns_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 253 {
        return Err("must be 1 to 253 characters".into());
    }
    for part in s.split('.') {
        dns_label(part).map_err(|r| format!("`{part}`: {r}"))?;
    }
    Ok(())
}

fn label_name(s: &str) -> Result<(), String> {
    if s.len() > 63 {
        return Err("must be at most 63 characters".into());
    }
    let mut chars = s.chars();
    let first_last_ok = s.chars().next().is_some_and(alnum) && s.chars().last().is_some_and(alnum);
    if !first_last_ok {
        return Err("must start and end with a letter or digit".into());
    }
    if !chars.all(|c| alnum(c) || matches!(c, '-' | '_' | '.')) {
        return Err("may contain only letters, digits, `-`, `_` and `.`".into());
    }
    Ok(())
}

/// A Kubernetes label key: `[prefix/]name`, the prefix a DNS subdomain, the name 1 to 63
/// characters.
pub fn label_key(s: &str) -> Result<(), String> {
    match s.split_once('/') {
        Some((prefix, name)) => {
            dns_subdomain(prefix).map_err(|r| format!("prefix {r}"))?;
            label_name(name)
        }
        None => label_name(s),
    }
}

/// A Kubernetes label value: empty, or like a label name.
pub fn label_value(s: &str) -> Result<(), String> {
    if s.is_empty() { Ok(()) } else { label_name(s) }
}

/// An IANA service name, as Kubernetes requires of a named container port (the rule lives with
/// the type, [`palisade_api::agent::ContainerPort::check_name`]).
pub fn port_name(s: &str) -> Result<(), String> {
    palisade_api::agent::ContainerPort::check_name(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(cni_id("abc-1_2.3").is_ok());
        assert!(cni_id("").is_err() && cni_id("-a").is_err() && cni_id("a/b").is_err());
        assert!(ifname("eth0").is_ok() && ifname("a23456789012345").is_ok());
        for bad in [
            "",
            ".",
            "..",
            "a2345678901234567",
            "a/b",
            "a:b",
            "a b",
            "a\n",
        ] {
            assert!(ifname(bad).is_err(), "{bad:?}");
        }
        assert!(dns_label("kube-system").is_ok());
        for bad in ["", "Default", "-a", "a-", "a.b", &"a".repeat(64)] {
            assert!(dns_label(bad).is_err(), "{bad:?}");
        }
        assert!(dns_subdomain("api-7d9f.x").is_ok() && dns_subdomain("a..b").is_err());
        assert!(label_key("app").is_ok() && label_key("k8s.io/app.Name_x").is_ok());
        for bad in ["", "/a", "a/", "A_/b", "-a", "a b", &"a".repeat(64)] {
            assert!(label_key(bad).is_err(), "{bad:?}");
        }
        assert!(label_value("").is_ok() && label_value("v1.2-x").is_ok());
        assert!(label_value("a b").is_err() && label_value("_a").is_err());
    }
}
