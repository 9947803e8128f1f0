//! A control plane of real `palisade-controlplane` processes on loopback, killed on drop.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use tempfile::TempDir;

#[path = "../support/loopback_port.rs"]
mod loopback_port;
use loopback_port::loopback_port;

/// One member's addresses and process.
pub struct Member {
    pub id: u64,
    pub raft_port: u16,
    pub api_port: u16,
    pub grpc_port: u16,
    pub child: Option<Child>,
}

/// A set of members in a temporary directory.
pub struct TestCluster {
    pub dir: TempDir,
    pub members: Vec<Member>,
    pub extra_args: Vec<String>,
    pub http: reqwest::Client,
    /// Bearer token sent by the helpers below, when set.
    pub token: Option<String>,
    /// Members run with `--tls-dir DIR/tls{id}` (the test issues those) and URLs are https.
    pub tls: bool,
    /// Members serve the automation gRPC API (`--grpc-listen`).
    pub grpc: bool,
}

/// A loopback port for a member to listen on (see [`loopback_port`]).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(loopback_port()?)
}

impl TestCluster {
    /// Allocates `n` members (ids 1..=n) without starting them.
    pub fn new(n: u64, extra_args: &[&str]) -> anyhow::Result<Self> {
        let mut members = Vec::new();
        for id in 1..=n {
            members.push(Member {
                id,
                raft_port: free_port()?,
                api_port: free_port()?,
                grpc_port: free_port()?,
                child: None,
            });
        }
        Ok(TestCluster {
            dir: tempfile::tempdir()?,
            members,
            extra_args: extra_args.iter().map(|s| (*s).to_owned()).collect(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
            token: None,
            tls: false,
            grpc: false,
        })
    }

    /// Starts `n` members with member 1 bootstrapping them all.
    pub async fn start(n: u64, extra_args: &[&str]) -> anyhow::Result<Self> {
        let mut c = TestCluster::new(n, extra_args)?;
        for id in 1..=n {
            c.spawn(id, id == 1)?;
        }
        if let Err(e) = c.wait_leader(&c.ids(), Duration::from_secs(20)).await {
            // The members are killed when `c` drops: say what they logged first.
            let tails: Vec<String> = c
                .ids()
                .into_iter()
                .map(|id| format!("--- member {id} log tail ---\n{}", c.log_tail(id)))
                .collect();
            bail!("{e:#}\n{}", tails.join("\n"));
        }
        Ok(c)
    }

    /// Adds a member slot (not started, not in the initial peer list).
    pub fn add_slot(&mut self) -> anyhow::Result<u64> {
        let id = self.members.len() as u64 + 1;
        self.members.push(Member {
            id,
            raft_port: free_port()?,
            api_port: free_port()?,
            grpc_port: free_port()?,
            child: None,
        });
        Ok(id)
    }

    pub fn ids(&self) -> Vec<u64> {
        self.members.iter().map(|m| m.id).collect()
    }

    fn member(&self, id: u64) -> &Member {
        &self.members[(id - 1) as usize]
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("data{id}"))
    }

    pub fn api(&self, id: u64) -> String {
        format!("127.0.0.1:{}", self.member(id).api_port)
    }

    pub fn raft(&self, id: u64) -> String {
        format!("127.0.0.1:{}", self.member(id).raft_port)
    }

    pub fn url(&self, id: u64, path: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.api(id))
    }

    /// The automation gRPC API's URL of member `id` (served when `grpc` is set).
    pub fn grpc_url(&self, id: u64) -> String {
        format!("http://127.0.0.1:{}", self.member(id).grpc_port)
    }

    /// The tls dir of member `id` (used when `tls` is set).
    pub fn tls_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("tls{id}"))
    }

    /// Starts member `id` (the peer list is the initial members 1..=3 or all, whichever fewer).
    pub fn spawn(&mut self, id: u64, init: bool) -> anyhow::Result<()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("member{id}.log")))?;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_palisade-controlplane"));
        cmd.arg("--id")
            .arg(id.to_string())
            .arg("--data-dir")
            .arg(self.data_dir(id))
            .arg("--raft-listen")
            .arg(self.raft(id))
            .arg("--api-listen")
            .arg(self.api(id));
        if init {
            for m in &self.members {
                if m.child.is_some() || m.id == id || m.id <= 3 {
                    cmd.arg("--peer").arg(format!(
                        "{}={}={}",
                        m.id,
                        self.raft(m.id),
                        self.api(m.id)
                    ));
                }
            }
            cmd.arg("--init");
        }
        if self.tls {
            cmd.arg("--tls-dir").arg(self.tls_dir(id));
        }
        if self.grpc {
            cmd.arg("--grpc-listen")
                .arg(format!("127.0.0.1:{}", self.member(id).grpc_port));
        }
        cmd.args(&self.extra_args)
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd.spawn().context("cannot spawn palisade-controlplane")?;
        self.members[(id - 1) as usize].child = Some(child);
        Ok(())
    }

    /// SIGKILLs member `id`.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut c) = self.members[(id - 1) as usize].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERMs member `id` and waits for it to exit (SIGKILL after 10 s).
    pub fn terminate(&mut self, id: u64) -> anyhow::Result<()> {
        let Some(mut c) = self.members[(id - 1) as usize].child.take() else {
            return Ok(());
        };
        let pid = Pid::from_raw(i32::try_from(c.id())?);
        kill(pid, Signal::SIGTERM)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = c.try_wait()? {
                if !status.success() {
                    bail!("member {id} exited with {status} after SIGTERM");
                }
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        bail!("member {id} did not exit within 10 s of SIGTERM")
    }

    fn authed(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    pub async fn status(&self, id: u64) -> anyhow::Result<Value> {
        Ok(self
            .authed(self.http.get(self.url(id, "/v1/cluster/status")))
            .timeout(Duration::from_secs(2))
            .send()
            .await?
            .json()
            .await?)
    }

    /// Waits until every member in `ids` names the same leader, itself one of `ids` and
    /// reporting `leader`. Returns its id.
    pub async fn wait_leader(&self, ids: &[u64], timeout: Duration) -> anyhow::Result<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut leaders = Vec::new();
            for &id in ids {
                match self.status(id).await {
                    Ok(s) => leaders.push(s["leader"].as_u64()),
                    Err(_) => leaders.push(None),
                }
            }
            if let Some(Some(l)) = leaders.first()
                && leaders.iter().all(|x| *x == Some(*l))
                && ids.contains(l)
                && self.status(*l).await?["state"] == "leader"
            {
                return Ok(*l);
            }
            if Instant::now() > deadline {
                bail!("no agreed leader among {ids:?} within {timeout:?}: {leaders:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn post(&self, id: u64, path: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
        let r = self
            .authed(self.http.post(self.url(id, path)))
            .json(body)
            .send()
            .await?;
        Ok((r.status().as_u16(), r.json().await.unwrap_or(Value::Null)))
    }

    pub async fn put(&self, id: u64, path: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
        let r = self
            .authed(self.http.put(self.url(id, path)))
            .json(body)
            .send()
            .await?;
        Ok((r.status().as_u16(), r.json().await.unwrap_or(Value::Null)))
    }

    pub async fn get(&self, id: u64, path: &str) -> anyhow::Result<(u16, Value)> {
        let r = self
            .authed(self.http.get(self.url(id, path)))
            .send()
            .await?;
        Ok((r.status().as_u16(), r.json().await.unwrap_or(Value::Null)))
    }

    /// The tail of member `id`'s log, for failure messages.
    pub fn log_tail(&self, id: u64) -> String {
        let text = std::fs::read_to_string(self.dir.path().join(format!("member{id}.log")))
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        for id in self.ids() {
            self.kill(id);
            if panicking {
                eprintln!("--- member {id} log tail ---\n{}", self.log_tail(id));
            }
        }
    }
}

/// Runs `palisade-controlplane certs ARGS...`; fails with its stderr.
pub fn certs(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(env!("CARGO_BIN_EXE_palisade-controlplane"))
        .arg("certs")
        .args(args)
        .output()
        .context("cannot run palisade-controlplane certs")?;
    if !out.status.success() {
        bail!(
            "certs {args:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// An HTTPS client trusting the CA in `ca_dir` only, presenting the certificate of the tls dir
/// `identity` when given.
pub fn tls_client(ca_dir: &Path, identity: Option<&Path>) -> anyhow::Result<reqwest::Client> {
    let ca = std::fs::read(ca_dir.join("ca.pem"))?;
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
        .timeout(Duration::from_secs(10));
    if let Some(dir) = identity {
        let mut pem = std::fs::read(dir.join("cert.pem"))?;
        pem.extend(std::fs::read(dir.join("key.pem"))?);
        b = b.identity(reqwest::Identity::from_pem(&pem)?);
    }
    Ok(b.build()?)
}

/// A policy object named `name`.
pub fn policy(name: &str, port: u32) -> Value {
    serde_json::json!({
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"endpointSelector": {"matchLabels": {"app": name}},
                 "ingress": [{"toPorts": [{"ports": [{"port": port.to_string(), "protocol": "TCP"}]}]}]}
    })
}
