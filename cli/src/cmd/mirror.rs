//! `palisade mirror`: runs the Kubernetes mirror (crate `palisade-mirror`) in the foreground:
//! the policy objects of the cluster a kubeconfig points at are copied into the control plane
//! (`--server`/`--lab` and credentials as for `palisade policy`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use kube::config::{KubeConfigOptions, Kubeconfig};

use super::connect::ConnectArgs;
use super::fail;

/// Arguments of `palisade mirror`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The kubeconfig of the cluster to mirror from (its current context unless --context).
    /// Without one, the mirror runs in the cluster: the pod's service account
    /// (`KUBERNETES_SERVICE_HOST` and /var/run/secrets/kubernetes.io/serviceaccount), as the
    /// Deployment in deploy/kubernetes/ runs it.
    #[arg(long, value_name = "FILE", env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long)]
    context: Option<String>,
    /// The name copies carry as their source (annotation `policy.palisade.io/mirrored-from`);
    /// the mirror deletes only copies with its own name.
    #[arg(long, default_value = "kubernetes")]
    source: String,
    /// Serve Prometheus metrics (`GET /metrics`: objects mirrored by kind, copies written and
    /// refused, deletions, watch restarts and errors, status writes) on this address.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
    #[command(flatten)]
    connect: ConnectArgs,
}

/// Runs `palisade mirror` until it is stopped.
pub fn run(args: Args) -> ExitCode {
    match mirror(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn mirror(args: Args) -> Result<()> {
    // The blocking control-plane client (and `--lab`'s namespace switch) before any runtime.
    let dest = args.connect.client()?;
    let kubeconfig = match &args.kubeconfig {
        Some(path) => Some(
            Kubeconfig::read_from(path)
                .with_context(|| format!("--kubeconfig `{}`", path.display()))?,
        ),
        None if args.context.is_some() => {
            anyhow::bail!("--context needs --kubeconfig (in the cluster there are no contexts)")
        }
        None => None,
    };
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..KubeConfigOptions::default()
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let config = match kubeconfig {
            Some(k) => kube::Config::from_custom_kubeconfig(k, &options)
                .await
                .context("--kubeconfig")?,
            None => kube::Config::incluster().context(
                "no --kubeconfig (nor KUBECONFIG), and not in a cluster's pod (its service account)",
            )?,
        };
        let client = kube::Client::try_from(config).context("kubernetes client")?;
        if let Some(addr) = args.metrics_listen {
            palisade_mirror::metrics::serve(addr).await?;
        }
        palisade_mirror::run(client, dest, args.source).await?;
        Ok(())
    })
}
