//! A long-lived TCP connection between two pods carrying a known byte pattern both ways: the
//! server echoes, the client checks every byte it gets back, so a reset, a stall or a corrupted
//! byte is seen.

use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use palisade_lab::exec::spawn_in_netns;

/// Bytes per write.
const CHUNK: usize = 4096;
/// Pause between writes.
const EVERY: Duration = Duration::from_millis(20);

/// What the connection saw.
#[derive(Debug, Clone, Default)]
pub struct StreamReport {
    /// Bytes sent and verified on the echo.
    pub verified_bytes: u64,
    /// Errors (a reset, a timeout, a mismatched byte); empty when the connection was clean.
    pub errors: Vec<String>,
    /// The longest one chunk took to come back.
    pub worst_round_trip: Duration,
}

/// A running stream.
pub struct Stream {
    stop: Arc<AtomicBool>,
    client: JoinHandle<Result<StreamReport, palisade_lab::LabError>>,
}

fn pattern(offset: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        let x = offset + i as u64;
        *b = (x.wrapping_mul(2_654_435_761) >> 13) as u8;
    }
}

impl Stream {
    /// Starts an echo server on `port` in `server_netns` and a client in `client_netns`
    /// connecting to `server_ip:port`.
    pub fn start(
        client_netns: &str,
        server_netns: &str,
        server_ip: IpAddr,
        port: u16,
    ) -> anyhow::Result<Stream> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let _server = spawn_in_netns(server_netns, move || {
            let listener = match TcpListener::bind(("0.0.0.0", port)) {
                Ok(l) => l,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            if let Ok((mut conn, _)) = listener.accept() {
                let mut buf = [0u8; 65536];
                loop {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if conn.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .context("echo server did not start")?
            .map_err(|e| anyhow::anyhow!("echo server: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let client = spawn_in_netns(client_netns, move || {
            let mut report = StreamReport::default();
            let mut conn =
                match TcpStream::connect_timeout(&(server_ip, port).into(), Duration::from_secs(3))
                {
                    Ok(c) => c,
                    Err(e) => {
                        report.errors.push(format!("connect: {e}"));
                        return report;
                    }
                };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
            let mut sent = vec![0u8; CHUNK];
            let mut got = vec![0u8; CHUNK];
            let mut offset = 0u64;
            while !stop2.load(Ordering::Relaxed) {
                pattern(offset, &mut sent);
                let t = Instant::now();
                if let Err(e) = conn
                    .write_all(&sent)
                    .and_then(|()| conn.read_exact(&mut got))
                {
                    report.errors.push(format!("after {offset} bytes: {e}"));
                    break;
                }
                report.worst_round_trip = report.worst_round_trip.max(t.elapsed());
                if got != sent {
                    report
                        .errors
                        .push(format!("corrupted echo after {offset} bytes"));
                    break;
                }
                offset += CHUNK as u64;
                report.verified_bytes = offset;
                std::thread::sleep(EVERY);
            }
            report
        });
        Ok(Stream { stop, client })
    }

    /// Stops the client (the connection closes cleanly) and returns its report.
    pub fn finish(self) -> anyhow::Result<StreamReport> {
        self.stop.store(true, Ordering::Relaxed);
        Ok(self
            .client
            .join()
            .map_err(|_| anyhow::anyhow!("stream client panicked"))??)
    }
}

/// TCP segments retransmitted in `netns` so far (`nstat`): a measure of packets lost.
pub fn retransmits(netns: &str) -> u64 {
    palisade_lab::exec::exec_in(netns, "nstat", &["-asz", "TcpRetransSegs"])
        .ok()
        .and_then(|out| {
            out.lines()
                .find(|l| l.starts_with("TcpRetransSegs"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
