//! Write benchmark against a running control plane (see `bench/controlplane.sh`).
//!
//! ```text
//! cargo run --release -p palisade-control-plane --example cp_bench -- \
//!     --api 127.0.0.1:8001 --mode latency --requests 2000 --concurrency 1
//! ```
//! Modes: `latency` (policy applies, prints p50/p99), `throughput` (policy applies from
//! `--concurrency` clients), `identities` (distinct label sets allocated from `--concurrency`
//! clients), `gc` (one bulk collection of every unreferenced identity). Every write is acknowledged only after Raft committed and applied it with the log
//! fsynced on a quorum.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use serde_json::json;

#[derive(Debug, Parser)]
struct Args {
    /// Client API address of the member to write to (the leader avoids a forwarding hop).
    #[arg(long)]
    api: String,
    /// `latency`, `throughput` or `identities`.
    #[arg(long, default_value = "latency")]
    mode: String,
    /// Total writes.
    #[arg(long, default_value_t = 2000)]
    requests: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 1)]
    concurrency: u64,
    /// Prefix making names unique across runs.
    #[arg(long, default_value = "b")]
    prefix: String,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !matches!(
        args.mode.as_str(),
        "latency" | "throughput" | "identities" | "gc"
    ) {
        bail!("--mode must be latency, throughput, identities or gc");
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(args.concurrency as usize)
        .tcp_nodelay(true)
        .build()?;
    if args.mode == "gc" {
        let t = Instant::now();
        let r: serde_json::Value = http
            .post(format!("http://{}/v1/identities/gc", args.api))
            .timeout(Duration::from_secs(300))
            .json(&json!({"grace_seconds": 0}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let n = r["collected"].as_u64().unwrap_or(0);
        let s = t.elapsed().as_secs_f64();
        println!(
            "mode=gc collected={n} seconds={s:.2} ids_per_s={:.0}",
            n as f64 / s
        );
        return Ok(());
    }
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let args = Arc::new(args);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (http, next, errors, args) = (http.clone(), next.clone(), errors.clone(), args.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= args.requests {
                    return lat;
                }
                let t = Instant::now();
                let req = if args.mode == "identities" {
                    http.post(format!("http://{}/v1/identities", args.api))
                        .json(&json!({"labels": [format!("k8s:bench={}-{i}", args.prefix)]}))
                } else {
                    let name = format!("{}-{i}", args.prefix);
                    http.put(format!(
                        "http://{}/v1/policies/CiliumNetworkPolicy/default/{name}",
                        args.api
                    ))
                    .json(&json!({
                        "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
                        "metadata": {"name": name, "namespace": "default"},
                        "spec": {"endpointSelector": {"matchLabels": {"app": "bench"}}}
                    }))
                };
                match req.send().await {
                    Ok(r) if r.status().is_success() => lat.push(t.elapsed()),
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.context("client task")?);
    }
    let elapsed = started.elapsed();
    lat.sort();
    println!(
        "mode={} requests={} concurrency={} ok={} errors={} seconds={:.2} writes_per_s={:.0} p50_ms={:.2} p99_ms={:.2} max_ms={:.2}",
        args.mode,
        args.requests,
        args.concurrency,
        lat.len(),
        errors.load(Ordering::Relaxed),
        elapsed.as_secs_f64(),
        lat.len() as f64 / elapsed.as_secs_f64(),
        percentile(&lat, 0.50).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
    Ok(())
}
