//! `palisade ui --lab NAME`: opens a lab's web UI from the host, as `cilium hubble ui` does with
//! a port-forward.
//!
//! The lab's control plane serves the UI (`--ui-listen`) on its host `10.97.0.1:1200k`, an
//! address that exists only inside the lab's namespace `pal-NAME-cp`. This command listens on
//! the host (`--listen`, default `127.0.0.1:12000`), prints the page's URL on its first stdout
//! line and forwards every connection to the first voter whose UI answers, until interrupted.
//!
//! ```text
//!  browser ──▶ 127.0.0.1:12000 (host) ──▶ dialer thread in pal-NAME-cp ──▶ 10.97.0.1:12000
//! ```
//!
//! The URL carries the lab's read-only token in its fragment (`#token=…`): browsers never send
//! a fragment to a server, and the page moves it into the tab's session storage at once.

use std::io::{self, BufRead};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use palisade_lab::state::ClusterState;
use palisade_lab::{DEFAULT_LAB, Lab};

use super::{emit, fail};

/// How long reaching one voter's UI may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);

/// Arguments of `palisade ui`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The lab whose control plane's UI to open.
    #[arg(long, value_name = "NAME", env = "PALISADE_LAB", default_value = DEFAULT_LAB)]
    lab: String,
    /// Where to listen on this host (port 0: any free port; the URL printed says which).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:12000")]
    listen: SocketAddr,
    /// Also open the URL in the desktop's browser (`xdg-open`).
    #[arg(long)]
    open: bool,
}

/// Runs `palisade ui`.
pub fn run(args: Args) -> ExitCode {
    match serve(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// A connection request to the dialer: the answer goes back on the sender.
type Dial = mpsc::Sender<io::Result<TcpStream>>;

/// The thread that makes connections inside the lab's namespace (a socket stays in the
/// namespace it was made in, so the forwarding threads need not enter it): tries each voter's
/// UI in turn, starting with the one that answered last.
fn start_dialer(netns: &str, targets: Vec<String>) -> mpsc::Sender<Dial> {
    let (tx, rx) = mpsc::channel::<Dial>();
    let _detached = palisade_lab::exec::spawn_in_netns(netns, move || {
        let mut first = 0;
        while let Ok(reply) = rx.recv() {
            let mut last = io::Error::other("no voter serves the UI");
            let mut got = None;
            for i in 0..targets.len() {
                let k = (first + i) % targets.len();
                let addr: Result<SocketAddr, _> = targets[k].parse();
                match addr.map_err(io::Error::other).and_then(|a| {
                    TcpStream::connect_timeout(&a, DIAL_TIMEOUT)
                        .map_err(|e| io::Error::new(e.kind(), format!("{a}: {e}")))
                }) {
                    Ok(s) => {
                        first = k;
                        got = Some(s);
                        break;
                    }
                    Err(e) => last = e,
                }
            }
            let _ = reply.send(got.ok_or(last));
        }
    });
    tx
}

fn dial(dialer: &mpsc::Sender<Dial>) -> io::Result<TcpStream> {
    let (tx, rx) = mpsc::channel();
    dialer
        .send(tx)
        .map_err(|_| io::Error::other("the dialer thread could not enter the lab's namespace"))?;
    rx.recv()
        .map_err(|_| io::Error::other("the dialer thread could not enter the lab's namespace"))?
}

/// Copies `from` into `to` until EOF, then half-closes `to`.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let _ = io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}

fn forward(client: TcpStream, dialer: &mpsc::Sender<Dial>) {
    let upstream = match dial(dialer) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("palisade ui: cannot reach the lab's UI: {e}");
            return;
        }
    };
    let (Ok(c2), Ok(u2)) = (client.try_clone(), upstream.try_clone()) else {
        return;
    };
    std::thread::spawn(move || pipe(client, upstream));
    pipe(u2, c2);
}

fn read_token(path: &std::path::Path) -> Result<String> {
    let f = std::fs::File::open(path).with_context(|| {
        format!(
            "reading the lab's read token `{}` (a lab made before the web UI has none: \
             recreate it)",
            path.display()
        )
    })?;
    io::BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .map(|l| l.trim().to_string())
        .find(|l| !l.is_empty())
        .ok_or_else(|| anyhow!("`{}` holds no token", path.display()))
}

fn serve(args: &Args) -> Result<()> {
    let lab = Lab::load(&args.lab)?;
    let cluster = lab.state().cluster.clone().ok_or_else(|| {
        anyhow!(
            "--lab {}: the lab runs no control plane (made with --control-plane-voters 0), so \
             no UI",
            args.lab
        )
    })?;
    let token = read_token(&ClusterState::read_token_file(&args.lab))?;
    let targets: Vec<String> = (1..=cluster.voters)
        .map(ClusterState::voter_ui_addr)
        .collect();
    let dialer = start_dialer(&cluster.cp_netns, targets.clone());
    // Reach a voter once before telling the user where to go.
    drop(dial(&dialer).map_err(|e| {
        anyhow!(
            "--lab {}: no voter's UI answers ({}): {e}",
            args.lab,
            targets.join(", ")
        )
    })?);
    let listener =
        TcpListener::bind(args.listen).with_context(|| format!("--listen {}", args.listen))?;
    let bound = listener.local_addr().context("the listener's address")?;
    let url = format!("http://{bound}/#token={token}");
    emit(&format!("{url}\n"));
    eprintln!(
        "palisade ui: forwarding {bound} to the UI of lab `{}` ({}); the link carries the lab's \
         read-only token. Ctrl-C to stop.",
        args.lab,
        targets.join(", ")
    );
    if args.open {
        match std::process::Command::new("xdg-open").arg(&url).status() {
            Ok(s) if s.success() => {}
            Ok(s) => eprintln!("palisade ui: xdg-open exited with {s}; open the URL yourself"),
            Err(e) => eprintln!("palisade ui: cannot run xdg-open ({e}); open the URL yourself"),
        }
    }
    for conn in listener.incoming() {
        match conn {
            Ok(c) => {
                let dialer = dialer.clone();
                std::thread::spawn(move || forward(c, &dialer));
            }
            Err(e) => eprintln!("palisade ui: accept: {e}"),
        }
    }
    bail!("the listener on {bound} stopped")
}
