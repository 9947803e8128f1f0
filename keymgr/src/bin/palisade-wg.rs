//! `palisade-wg`: runs one userspace WireGuard interface from the command line, for the benchmark
//! (`bench/wireguard.sh`) and manual experiments. The agent embeds the library instead.
//!
//! ```text
//! palisade-wg pubkey --key-dir DIR                      # prints the base64 public key
//! palisade-wg up --key-dir DIR --ifname wg0 --listen 10.0.0.1:51820 \
//!     --peer NAME,PUBKEY,EPOCH,ENDPOINT,CIDR[+CIDR...]   # runs until killed
//! ```
//! Routes into the interface are the caller's job (`ip route add CIDR dev wg0`). The private key
//! stays in the key directory; nothing here prints it.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use palisade_keymgr::{KeyStore, PeerConfig, PublicKey, TunnelConfig, UserspaceTunnel};

#[derive(Parser)]
#[command(about = "Palisade userspace WireGuard interface")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Prints the node's public key (creating the key on first use).
    Pubkey {
        /// Key directory.
        #[arg(long)]
        key_dir: PathBuf,
    },
    /// Brings the interface up and runs it until the process is killed.
    Up {
        /// Key directory.
        #[arg(long)]
        key_dir: PathBuf,
        /// TUN interface name.
        #[arg(long)]
        ifname: String,
        /// UDP listen address.
        #[arg(long)]
        listen: SocketAddr,
        /// A peer: NAME,PUBKEY,EPOCH,ENDPOINT,CIDR[+CIDR...]
        #[arg(long)]
        peer: Vec<String>,
        /// Send and receive one datagram per syscall (no UDP GSO/GRO), for comparison.
        #[arg(long)]
        no_udp_offload: bool,
        /// One MTU-sized packet per TUN read and write (no TSO, no GRO), for comparison.
        #[arg(long)]
        no_tun_offload: bool,
        /// Seconds between status lines on stderr (0: none).
        #[arg(long, default_value_t = 0)]
        status_every: u64,
    },
}

fn parse_peer(text: &str) -> Result<PeerConfig> {
    let parts: Vec<&str> = text.split(',').collect();
    let [name, key, epoch, endpoint, cidrs] = parts.as_slice() else {
        bail!("peer `{text}`: expected NAME,PUBKEY,EPOCH,ENDPOINT,CIDR[+CIDR...]");
    };
    Ok(PeerConfig {
        name: (*name).to_string(),
        public_key: PublicKey::from_base64(key).context("peer public key")?,
        epoch: epoch.parse().context("peer epoch")?,
        endpoint: endpoint.parse().context("peer endpoint")?,
        allowed_ips: cidrs
            .split('+')
            .map(|c| c.parse().with_context(|| format!("cidr `{c}`")))
            .collect::<Result<_>>()?,
    })
}

fn main() -> Result<()> {
    tracing_subscriber_init();
    match Cli::parse().command {
        Cmd::Pubkey { key_dir } => {
            let store = KeyStore::open(&key_dir)?;
            println!("{}", store.current().public_key());
        }
        Cmd::Up {
            key_dir,
            ifname,
            listen,
            peer,
            no_udp_offload,
            no_tun_offload,
            status_every,
        } => {
            let store = KeyStore::open(&key_dir)?;
            let mut config = TunnelConfig::new(ifname, listen);
            config.udp_offload = !no_udp_offload;
            config.tun_offload = !no_tun_offload;
            let tunnel = UserspaceTunnel::start(config, store.current())?;
            for p in &peer {
                tunnel.add_peer(parse_peer(p)?)?;
            }
            eprintln!(
                "palisade-wg: {} up on {}",
                tunnel.interface(),
                tunnel.listen_addr()
            );
            loop {
                if status_every == 0 {
                    std::thread::park();
                } else {
                    std::thread::sleep(std::time::Duration::from_secs(status_every));
                    eprintln!("{:?}", tunnel.status());
                }
            }
        }
    }
    Ok(())
}

/// Logs to stderr, filtered by `RUST_LOG` (default: info).
fn tracing_subscriber_init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
