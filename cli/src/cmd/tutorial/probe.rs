//! The tutorial's probes: real clients run inside pods with `ip netns exec` — `curl` for HTTP,
//! `redis-cli` for the database, `dig` for DNS — exactly what a user would `kubectl exec`. Each
//! result is reduced to what the tutorial expects of it.

use std::fmt;
use std::net::IpAddr;
use std::process::Command;

use anyhow::{Context, Result};
use palisade_lab::Lab;

use super::app::{self, API_PORT, DB_PORT, FRONTEND_PORT, PARTNER_NAME, PARTNER_PORT};

/// Every probe the tutorial runs after each step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProbeId {
    FrontendGetApi,
    FrontendPostApi,
    FrontendHeadersApi,
    FrontendDb,
    ApiDb,
    ImpostorDb,
    FrontendDns,
    ApiFrontend,
    ClientFrontend,
    ClientPartner,
    ApiPartnerByName,
    ApiElsewhere,
}

/// All probes, in the order they are shown.
pub const ALL: [ProbeId; 12] = [
    ProbeId::FrontendGetApi,
    ProbeId::FrontendPostApi,
    ProbeId::FrontendHeadersApi,
    ProbeId::FrontendDb,
    ProbeId::ApiDb,
    ProbeId::ImpostorDb,
    ProbeId::FrontendDns,
    ProbeId::ApiFrontend,
    ProbeId::ClientFrontend,
    ProbeId::ClientPartner,
    ProbeId::ApiPartnerByName,
    ProbeId::ApiElsewhere,
];

/// What a probe does.
enum Action {
    /// `curl -X METHOD http://<ip of target>:PORT/PATH`.
    Http {
        target: &'static str,
        port: u16,
        method: &'static str,
        path: &'static str,
    },
    /// `curl http://NAME:PORT/` — resolved through the pod's resolver (kube-dns).
    HttpByName { name: &'static str, port: u16 },
    /// `redis-cli -h <ip of target> PING`.
    Redis { target: &'static str },
    /// `dig @kube-dns NAME A`.
    Dns { name: &'static str },
}

impl ProbeId {
    /// The pod the probe runs in.
    pub fn from(self) -> &'static str {
        match self {
            ProbeId::FrontendGetApi
            | ProbeId::FrontendPostApi
            | ProbeId::FrontendHeadersApi
            | ProbeId::FrontendDb
            | ProbeId::FrontendDns => "frontend",
            ProbeId::ApiDb
            | ProbeId::ApiFrontend
            | ProbeId::ApiPartnerByName
            | ProbeId::ApiElsewhere => "api",
            ProbeId::ImpostorDb => "impostor",
            ProbeId::ClientFrontend | ProbeId::ClientPartner => "client",
        }
    }

    fn action(self) -> Action {
        let http = |target, port, method, path| Action::Http {
            target,
            port,
            method,
            path,
        };
        match self {
            ProbeId::FrontendGetApi => http("api", API_PORT, "GET", "/get"),
            ProbeId::FrontendPostApi => http("api", API_PORT, "POST", "/post"),
            ProbeId::FrontendHeadersApi => http("api", API_PORT, "GET", "/headers"),
            ProbeId::FrontendDb | ProbeId::ApiDb | ProbeId::ImpostorDb => {
                Action::Redis { target: "db" }
            }
            ProbeId::FrontendDns => Action::Dns {
                name: "api.demo.svc.cluster.local",
            },
            ProbeId::ApiFrontend | ProbeId::ClientFrontend => {
                http("frontend", FRONTEND_PORT, "GET", "/")
            }
            ProbeId::ClientPartner => http("partner", PARTNER_PORT, "GET", "/"),
            ProbeId::ApiPartnerByName => Action::HttpByName {
                name: PARTNER_NAME,
                port: PARTNER_PORT,
            },
            ProbeId::ApiElsewhere => http("elsewhere", PARTNER_PORT, "GET", "/"),
        }
    }

    /// What the probe is, for the tables.
    pub fn describe(self) -> String {
        let from = self.from();
        match self.action() {
            Action::Http {
                target,
                port,
                method,
                path,
            } => format!("{from} → {target}:{port} {method} {path}"),
            Action::HttpByName { name, port } => format!("{from} → http://{name}:{port}/"),
            Action::Redis { target } => format!("{from} → {target}:{DB_PORT} redis PING"),
            Action::Dns { name } => format!("{from} → kube-dns:53 dig {name}"),
        }
    }

    /// The flows this probe makes, as (destination, port, protocol): for the "only expected
    /// flows" check. A probe by name also talks to kube-dns.
    pub fn flows(self) -> Vec<(&'static str, u16, &'static str)> {
        match self.action() {
            Action::Http { target, port, .. } => vec![(target, port, "TCP")],
            Action::HttpByName { port, .. } => {
                vec![("partner", port, "TCP"), ("kube-dns", 53, "UDP")]
            }
            Action::Redis { target } => vec![(target, DB_PORT, "TCP")],
            Action::Dns { .. } => vec![("kube-dns", 53, "UDP")],
        }
    }
}

/// What a probe found, reduced to what the tutorial compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The server answered (HTTP status from the server, PONG, a DNS answer).
    Allowed,
    /// Nothing came back: the packets were dropped (or, by name, the name never resolved).
    Dropped,
    /// The agent's HTTP proxy answered `403 Access denied`.
    Forbidden,
    /// The DNS proxy answered REFUSED.
    Refused,
    /// Anything else (connection refused, a reset, a tool failure): never expected.
    Error,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Allowed => "allowed",
            Outcome::Dropped => "dropped",
            Outcome::Forbidden => "403 denied",
            Outcome::Refused => "REFUSED",
            Outcome::Error => "error",
        })
    }
}

/// One probe's result.
#[derive(Debug, Clone)]
pub struct Observed {
    pub id: ProbeId,
    pub outcome: Outcome,
    /// What was seen (status line, answer, error).
    pub detail: String,
}

/// Runs every probe at once (each is its own process in its own pod).
pub fn run_all(lab: &Lab, ids: &[ProbeId]) -> Result<Vec<Observed>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = ids
            .iter()
            .map(|id| s.spawn(move || run(lab, *id)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("probe thread panicked"))
            .collect()
    })
}

/// Runs one probe.
pub fn run(lab: &Lab, id: ProbeId) -> Result<Observed> {
    let netns = lab
        .state()
        .pod(id.from())
        .map(|p| p.netns.clone())
        .with_context(|| format!("the lab has no pod `{}`", id.from()))?;
    let ip_of = |name: &str| -> Result<IpAddr> {
        app::pod_ip(lab, name).or_else(|_| app::external_ip(lab, name))
    };
    let (outcome, detail) = match id.action() {
        Action::Http {
            target,
            port,
            method,
            path,
        } => curl(
            &netns,
            method,
            &format!("http://{}:{port}{path}", ip_of(target)?),
        )?,
        Action::HttpByName { name, port } => {
            curl(&netns, "GET", &format!("http://{name}:{port}/"))?
        }
        Action::Redis { target } => redis_ping(&netns, ip_of(target)?)?,
        Action::Dns { name } => dig(&netns, ip_of("kube-dns")?, name)?,
    };
    Ok(Observed {
        id,
        outcome,
        detail,
    })
}

fn in_pod(netns: &str, program: &str) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns, program]);
    cmd
}

/// `curl` with short timeouts; the last output line is the status code.
fn curl(netns: &str, method: &str, url: &str) -> Result<(Outcome, String)> {
    let mut cmd = in_pod(netns, "curl");
    cmd.args([
        "-sS",
        "--connect-timeout",
        "2",
        "--max-time",
        "4",
        "-X",
        method,
    ]);
    if method == "POST" {
        cmd.args(["-d", "tutorial=1"]);
    }
    cmd.args(["-w", "\n%{http_code}", url]);
    let out = cmd.output().context("running curl")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (body, code) = stdout.trim_end().rsplit_once('\n').unwrap_or(("", &stdout));
    let code = code.trim();
    Ok(match out.status.code() {
        Some(0) if code == "403" && body.contains("Access denied") => {
            (Outcome::Forbidden, "403 Access denied".to_string())
        }
        Some(0) => (Outcome::Allowed, format!("HTTP {code}")),
        // 6: could not resolve the name; 28: timed out.
        Some(6) => (Outcome::Dropped, "name not resolved".to_string()),
        Some(28) => (Outcome::Dropped, "timed out".to_string()),
        other => (
            Outcome::Error,
            format!(
                "curl exit {}: {}",
                other.map_or("signal".to_string(), |c| c.to_string()),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ),
    })
}

/// `redis-cli PING`, bounded by `timeout` (redis-cli waits for a dropped SYN otherwise).
fn redis_ping(netns: &str, ip: IpAddr) -> Result<(Outcome, String)> {
    let mut cmd = in_pod(netns, "timeout");
    cmd.args([
        "3",
        "redis-cli",
        "-h",
        &ip.to_string(),
        "-p",
        &DB_PORT.to_string(),
        "PING",
    ]);
    let out = cmd.output().context("running redis-cli")?;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Ok(match out.status.code() {
        Some(0) if stdout == "PONG" => (Outcome::Allowed, "PONG".to_string()),
        Some(124) => (Outcome::Dropped, "timed out".to_string()),
        _ => (
            Outcome::Error,
            format!("{stdout} {}", String::from_utf8_lossy(&out.stderr).trim())
                .trim()
                .to_string(),
        ),
    })
}

/// `dig @server name A`: the status and the answer.
fn dig(netns: &str, server: IpAddr, name: &str) -> Result<(Outcome, String)> {
    let mut cmd = in_pod(netns, "dig");
    cmd.args([
        "+time=2",
        "+tries=1",
        "+noall",
        "+comments",
        "+answer",
        &format!("@{server}"),
        name,
        "A",
    ]);
    let out = cmd.output().context("running dig")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.code() == Some(9) {
        return Ok((Outcome::Dropped, "no reply".to_string()));
    }
    let status = stdout
        .lines()
        .find_map(|l| l.split("status: ").nth(1))
        .and_then(|s| s.split(',').next())
        .unwrap_or("")
        .to_string();
    let answers: Vec<&str> = stdout
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().last())
        .collect();
    Ok(match status.as_str() {
        "NOERROR" if !answers.is_empty() => (Outcome::Allowed, answers.join(",")),
        "REFUSED" => (Outcome::Refused, "REFUSED".to_string()),
        _ => (
            Outcome::Error,
            format!("status `{status}`, {} answer(s)", answers.len()),
        ),
    })
}
