//! One `palisade-controlplane` process on loopback, killed on drop (even on panic), and a way to
//! run the `palisade` binary against it.

use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use palisade_cp_client::{Client, ClientConfig};
use serde_json::Value;

// One implementation for both control-plane fixtures.
#[path = "../../../control-plane/tests/support/loopback_port.rs"]
mod loopback_port;
use loopback_port::loopback_port;

pub const BIN: &str = env!("CARGO_BIN_EXE_palisade");

/// A token of the admin role (the daemon wants at least 16 characters).
pub const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";

/// What a run of `palisade` produced.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Asserts exit 0 and returns stdout.
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, Some(0), "{self:#?}");
        &self.stdout
    }

    /// Asserts exit `code` and a stderr of exactly one `error: ...` line; returns that line.
    pub fn error_line(&self, code: i32) -> &str {
        assert_eq!(self.code, Some(code), "{self:#?}");
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        assert_eq!(lines.len(), 1, "not one line: {self:#?}");
        assert!(lines[0].starts_with("error: "), "{self:#?}");
        lines[0]
    }
}

/// A loopback port for a member to listen on (see [`loopback_port`]).
pub fn free_port() -> u16 {
    loopback_port().expect("a free loopback port")
}

/// A scratch directory under /tmp, removed by its owner's drop.
pub fn scratch(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "palisade-cli-cp-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("mkdir");
    d
}

/// A single-voter control plane.
pub struct ControlPlane {
    child: Option<Child>,
    daemon: PathBuf,
    args: Vec<OsString>,
    pub dir: PathBuf,
    pub url: String,
    /// The admin token file, when the daemon requires tokens.
    pub token_file: Option<PathBuf>,
    /// The operator's TLS directory (the cluster CA only), when the API is HTTPS.
    pub tls_dir: Option<PathBuf>,
}

impl ControlPlane {
    /// Starts a member that bootstraps itself and waits until it is the leader.
    pub fn start(tag: &str) -> ControlPlane {
        Self::spawn(tag, false)
    }

    /// The same with `--admin-token-file` holding [`ADMIN_TOKEN`].
    pub fn start_with_token(tag: &str) -> ControlPlane {
        Self::spawn(tag, true)
    }

    /// The same over HTTPS (`--tls-dir`, certificates made with the real `certs` commands for
    /// `127.0.0.1`), with [`ADMIN_TOKEN`]: what kubectl needs (it sends tokens over TLS only).
    pub fn start_tls(tag: &str) -> ControlPlane {
        Self::spawn_with(tag, true, true, &[])
    }

    /// [`Self::start_tls`] with more daemon flags.
    pub fn start_tls_with(tag: &str, flags: &[&str]) -> ControlPlane {
        Self::spawn_with(tag, true, true, flags)
    }

    fn spawn(tag: &str, token: bool) -> ControlPlane {
        Self::spawn_with(tag, token, false, &[])
    }

    fn spawn_with(tag: &str, token: bool, tls: bool, flags: &[&str]) -> ControlPlane {
        let daemon = Path::new(BIN).with_file_name("palisade-controlplane");
        assert!(
            daemon.exists(),
            "{} is missing: build it first (cargo build -p palisade-control-plane --bin palisade-controlplane)",
            daemon.display()
        );
        let dir = scratch(tag);
        let api = format!("127.0.0.1:{}", free_port());
        let mut args: Vec<OsString> = vec![
            "--id".into(),
            "1".into(),
            "--data-dir".into(),
            dir.join("data").into(),
            "--raft-listen".into(),
            format!("127.0.0.1:{}", free_port()).into(),
            "--api-listen".into(),
            api.clone().into(),
            "--init".into(),
        ];
        args.extend(flags.iter().map(OsString::from));
        let token_file = token.then(|| {
            let f = dir.join("admin.token");
            let mut file = File::create(&f).expect("token file");
            writeln!(file, "# the admin token\n{ADMIN_TOKEN}").expect("write token");
            // Members forward with their own token; the daemon wants one with admin tokens.
            let m = dir.join("member.token");
            std::fs::write(&m, "member-token-0123456789abcdef\n").expect("member token");
            args.extend([
                "--admin-token-file".into(),
                f.clone().into(),
                "--member-token-file".into(),
                m.into(),
            ]);
            f
        });
        let tls_dir = tls.then(|| {
            let certs = |a: &[&Path]| {
                let out = Command::new(&daemon)
                    .arg("certs")
                    .args(a)
                    .output()
                    .expect("run certs");
                assert!(out.status.success(), "certs {a:?}: {out:?}");
            };
            let (ca, member, operator) = (dir.join("ca"), dir.join("tls"), dir.join("operator"));
            certs(&[Path::new("init-ca"), Path::new("--dir"), &ca]);
            certs(&[
                Path::new("issue"),
                Path::new("--ca-dir"),
                &ca,
                Path::new("--name"),
                Path::new("cp-1"),
                Path::new("--role"),
                Path::new("member"),
                Path::new("--out"),
                &member,
                Path::new("--san"),
                Path::new("127.0.0.1"),
            ]);
            std::fs::create_dir_all(&operator).expect("operator dir");
            std::fs::copy(ca.join("ca.pem"), operator.join("ca.pem")).expect("copy ca");
            args.extend(["--tls-dir".into(), member.into()]);
            operator
        });
        let scheme = if tls { "https" } else { "http" };
        let mut cp = ControlPlane {
            child: None,
            daemon,
            args,
            dir,
            url: format!("{scheme}://{api}"),
            token_file,
            tls_dir,
        };
        cp.launch();
        cp
    }

    /// Starts the daemon (appending to its log) and waits until it leads.
    fn launch(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("controlplane.log"))
            .expect("log file");
        let child = Command::new(&self.daemon)
            .args(&self.args)
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn palisade-controlplane");
        self.child = Some(child);
        self.wait_leader(Duration::from_secs(20));
    }

    /// SIGKILLs the daemon and starts it again on the same data directory and ports.
    pub fn restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.launch();
    }

    /// A client of this member (with the admin token when there is one).
    pub fn client(&self) -> Client {
        let mut cfg = ClientConfig::new([self.url.clone()]);
        if self.token_file.is_some() {
            cfg = cfg.with_token(ADMIN_TOKEN);
        }
        if let Some(dir) = &self.tls_dir {
            cfg = cfg.with_tls(palisade_cp_client::TlsConfig::from_dir(dir).expect("tls dir"));
        }
        Client::new(cfg).expect("client")
    }

    fn wait_leader(&self, timeout: Duration) {
        let client = self.client();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(s) = client.cluster_status()
                && s["state"] == "leader"
                && s["leader"] == 1
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no leader within {timeout:?}:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `palisade ARGS` against this member (through `PALISADE_SERVER`, as a user would set
    /// it), without any token unless the arguments pass one.
    pub fn palisade(&self, args: &[&str]) -> Run {
        self.palisade_stdin(args, None)
    }

    /// The same, with `stdin` as standard input.
    pub fn palisade_stdin(&self, args: &[&str], stdin: Option<&str>) -> Run {
        let tls = self
            .tls_dir
            .as_ref()
            .map(|d| d.to_string_lossy().into_owned());
        let mut env = vec![("PALISADE_SERVER", self.url.as_str())];
        if let Some(dir) = &tls {
            env.push(("PALISADE_TLS_DIR", dir.as_str()));
        }
        run(args, &env, stdin)
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("controlplane.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- control plane log tail ---\n{}", self.log_tail());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `palisade ARGS` with `env` set and the connection variables otherwise cleared.
pub fn run(args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Run {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("PALISADE_SERVER")
        .env_remove("PALISADE_TOKEN_FILE")
        .env_remove("PALISADE_TLS_DIR")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn palisade");
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).expect("write stdin");
    }
    let out = child.wait_with_output().expect("palisade output");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `METHOD path` on the member's API with curl, a JSON merge patch body (kubectl before v1.24, e.g. Debian's v1.20,
/// has no `--subresource`): the status code and the body.
pub fn curl(cluster: &ControlPlane, method: &str, path: &str, body: &str) -> (u16, Value) {
    let ca = cluster.tls_dir.as_ref().expect("tls").join("ca.pem");
    let out = Command::new("curl")
        .args(["-sS", "-X", method, "--cacert"])
        .arg(&ca)
        .args([
            "-H",
            &format!("Authorization: Bearer {ADMIN_TOKEN}"),
            "-H",
            "Content-Type: application/merge-patch+json",
            "--data-binary",
            body,
            "-w",
            "\n%{http_code}",
            &format!("{}{path}", cluster.url),
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run curl ({e}): install it with scripts/bootstrap.sh"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, "0"));
    (
        code.trim().parse().unwrap_or(0),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}
