//! `palisade kubeconfig`: a kubeconfig for the control plane's Kubernetes-compatible policy API,
//! so `kubectl apply|get|diff|edit|delete` drive Palisade's policy objects directly.
//!
//! One cluster and context per member URL (the first is current): the cluster CA as
//! `certificate-authority-data`, and as user the bearer token (kubectl sends tokens over HTTPS
//! only) plus the client certificate when the TLS directory has one. With `--lab NAME` the lab's
//! members, CA and admin token; its addresses exist only inside the namespace `pal-NAME-cp`, so
//! kubectl must run there: `ip netns exec pal-NAME-cp kubectl --kubeconfig FILE get cnp -A`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use super::connect::ConnectArgs;
use super::{emit, fail};

/// Arguments of `palisade kubeconfig`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Write the kubeconfig to this file (mode 0600) instead of standard output.
    #[arg(long, short = 'o', value_name = "FILE")]
    out: Option<PathBuf>,
    /// Name of the clusters, users and contexts (member k's context is `NAME-k`).
    #[arg(long, default_value = "palisade")]
    name: String,
    /// The contexts' default namespace.
    #[arg(long, default_value = "default")]
    namespace: String,
}

/// Runs `palisade kubeconfig`.
pub fn run(args: Args) -> ExitCode {
    match build(&args).and_then(|doc| write(&args, &doc)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn write(args: &Args, doc: &Value) -> Result<()> {
    let text = serde_yaml::to_string(doc)?;
    match &args.out {
        None => emit(&text),
        Some(path) => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("cannot write `{}`", path.display()))?;
            f.write_all(text.as_bytes())?;
        }
    }
    Ok(())
}

fn read_b64(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read `{}`", path.display()))?;
    Ok(STANDARD.encode(bytes))
}

/// The kubeconfig document.
fn build(args: &Args) -> Result<Value> {
    let c = &args.connect;
    let (servers, tls_dir, token_file) = match &c.lab {
        None => (c.servers.clone(), c.tls_dir.clone(), c.token_file.clone()),
        Some(lab) => {
            let l = palisade_lab::Lab::load(lab)?;
            let cluster = l.state().cluster.clone().ok_or_else(|| {
                anyhow!("--lab {lab}: the lab runs no control plane (it was made with --control-plane-voters 0)")
            })?;
            (
                cluster.api_urls.clone(),
                Some(cluster.operator_tls_dir(lab)),
                Some(cluster.admin_token_file(lab)),
            )
        }
    };
    let servers: Vec<String> = servers
        .iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if servers.is_empty() {
        bail!("--server: no control-plane URL given");
    }
    let mut user = serde_json::Map::new();
    if let Some(f) = &token_file {
        let token = palisade_cp_client::config::read_token_file(f)?;
        user.insert("token".into(), json!(token));
    }
    let mut ca = None;
    if let Some(dir) = &tls_dir {
        ca = Some(read_b64(&dir.join("ca.pem")).context("--tls-dir")?);
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        if cert.exists() && key.exists() {
            user.insert("client-certificate-data".into(), json!(read_b64(&cert)?));
            user.insert("client-key-data".into(), json!(read_b64(&key)?));
        }
    }
    if servers.iter().any(|s| s.starts_with("https://")) && ca.is_none() {
        bail!("--tls-dir: an https:// server needs the cluster CA (`ca.pem` in the TLS directory)");
    }
    if user.contains_key("token") && servers.iter().any(|s| !s.starts_with("https://")) {
        // Said once, plainly: kubectl would silently drop the token and get 401s.
        bail!(
            "--server: kubectl sends bearer tokens over https:// only; serve the API with --tls-dir or drop --token-file"
        );
    }
    let name = &args.name;
    let mut clusters = Vec::new();
    let mut contexts = Vec::new();
    for (i, server) in servers.iter().enumerate() {
        let cname = format!("{name}-{}", i + 1);
        let mut cluster = json!({"server": server});
        if let Some(ca) = &ca {
            cluster["certificate-authority-data"] = json!(ca);
        }
        clusters.push(json!({"name": cname, "cluster": cluster}));
        contexts.push(json!({"name": cname,
            "context": {"cluster": cname, "user": name, "namespace": args.namespace}}));
    }
    Ok(json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": clusters, "contexts": contexts,
        "users": [{"name": name, "user": user}],
        "current-context": format!("{name}-1"),
    }))
}
