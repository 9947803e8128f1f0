//! A lab whose control-plane voters each live on their own host (a lab external: a network
//! namespace with one interface on the fabric bridge), so faults can cut one voter off the way a
//! real network fails: its link taken down, netem on it, nftables drops. The test's clients run
//! on one more host, `client`.
//!
//! ```text
//!   v1 10.97.1.1   v2 10.97.1.2   v3 10.97.1.3   client 10.97.1.100
//!        │              │              │              │
//!        └──────────────┴──── br0 (fabric) ───────────┘
//! ```

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use palisade_lab::exec::{enter_netns, ip_batch};
use palisade_lab::state::state_dir;
use palisade_lab::{ExternalPlan, Lab, LabSpec, ProcessRecord, ProcessRole};

use crate::api::Api;
use crate::faults;

/// Raft port of every voter.
pub const RAFT_PORT: u16 = 7000;
/// Client API port of every voter.
pub const API_PORT: u16 = 8000;
/// The client host's address.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 97, 1, 100);

/// Voter `k`'s (1-based) address.
pub fn voter_ip(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 97, 1, u8::try_from(k).unwrap_or(99))
}

/// What [`VoterLab::kill_leader_and_measure`] saw.
#[derive(Debug, Clone, Copy)]
pub struct Failover {
    /// The new leader.
    pub new_leader: usize,
    /// Its term.
    pub term: u64,
    /// From the kill until a survivor said it leads.
    pub elected: Duration,
    /// From the kill until every survivor named it.
    pub agreed: Duration,
}

/// The voters' lab; tears itself down when dropped.
pub struct VoterLab {
    lab: Lab,
    voters: usize,
    bin: PathBuf,
    procs: Vec<Option<ProcessRecord>>,
}

impl VoterLab {
    /// Builds lab `name` (one node with one pod, which the voters do not use, and the hosts
    /// above) and starts `voters` voters, voter 1 bootstrapping; waits for a leader.
    pub fn up(name: &str, voters: usize, bin: &Path) -> anyhow::Result<VoterLab> {
        let _ = Lab::down(name);
        let mut spec = LabSpec::new(name, 1, 1, bin);
        spec.serve_udp.clear();
        for k in 1..=voters {
            spec.externals.push(ExternalPlan {
                name: format!("v{k}"),
                ip: voter_ip(k),
            });
        }
        spec.externals.push(ExternalPlan {
            name: "client".into(),
            ip: CLIENT_IP,
        });
        let lab = Lab::up(&spec).with_context(|| format!("lab up {name}"))?;
        let mut me = VoterLab {
            lab,
            voters,
            bin: bin.to_path_buf(),
            procs: vec![None; voters],
        };
        // The hosts know the underlay and the pods only; let them reach each other on the bridge.
        for x in &me.lab.state().externals {
            ip_batch(&x.netns, "route add 10.97.1.0/24 dev eth0\n")?;
        }
        for k in 1..=voters {
            me.start(k, k == 1)?;
        }
        me.wait_leader(&(1..=voters).collect::<Vec<_>>(), Duration::from_secs(30))?;
        Ok(me)
    }

    /// The lab's name.
    pub fn name(&self) -> &str {
        self.lab.name()
    }

    /// Host `name`'s namespace.
    pub fn netns(&self, host: &str) -> String {
        self.lab
            .state()
            .externals
            .iter()
            .find(|x| x.name == host)
            .map(|x| x.netns.clone())
            .unwrap_or_default()
    }

    /// Host `name`'s port on the fabric bridge (in the fabric namespace).
    pub fn fabric_port(&self, host: &str) -> (String, String) {
        let iface = self
            .lab
            .state()
            .externals
            .iter()
            .find(|x| x.name == host)
            .map(|x| x.fabric_iface.clone())
            .unwrap_or_default();
        (self.lab.state().fabric.netns.clone(), iface)
    }

    /// Voter `k`'s client API URL.
    pub fn api(&self, k: usize) -> String {
        format!("http://{}:{API_PORT}", voter_ip(k))
    }

    /// Every voter's client API URL.
    pub fn apis(&self) -> Vec<String> {
        (1..=self.voters).map(|k| self.api(k)).collect()
    }

    /// Starts voter `k` on its host (`--init` is a no-op on a non-empty log).
    pub fn start(&mut self, k: usize, init: bool) -> anyhow::Result<()> {
        let data = state_dir(self.lab.name()).join(format!("voter{k}"));
        let ip = voter_ip(k);
        let mut args = vec![
            "controlplane".to_string(),
            "--id".into(),
            k.to_string(),
            "--data-dir".into(),
            data.display().to_string(),
            "--raft-listen".into(),
            format!("{ip}:{RAFT_PORT}"),
            "--api-listen".into(),
            format!("{ip}:{API_PORT}"),
        ];
        if init {
            args.push("--init".into());
        }
        for j in 1..=self.voters {
            let ip = voter_ip(j);
            args.push("--peer".into());
            args.push(format!("{j}={ip}:{RAFT_PORT}={ip}:{API_PORT}"));
        }
        let netns = self.netns(&format!("v{k}"));
        let rec = self.lab.spawn(
            ProcessRole::ControlPlane,
            &format!("v{k}"),
            Some(&netns),
            &self.bin,
            &args,
        )?;
        self.procs[k - 1] = Some(rec);
        Ok(())
    }

    /// Voter `k`'s process.
    pub fn process(&self, k: usize) -> anyhow::Result<&ProcessRecord> {
        self.procs[k - 1]
            .as_ref()
            .with_context(|| format!("voter {k} is not running"))
    }

    /// SIGKILLs voter `k`.
    pub fn kill(&mut self, k: usize) -> anyhow::Result<()> {
        faults::sigkill(self.process(k)?)?;
        self.procs[k - 1] = None;
        Ok(())
    }

    /// SIGKILLs voter `leader` (leading at `term`) and measures, from the moment it is gone,
    /// when a survivor first says it leads at a higher term (`elected`) and when every survivor
    /// names that leader (`agreed`). The pollers' clients are built before the kill and ask every
    /// 10 ms, so the figures are not inflated by the test's own setup.
    pub fn kill_leader_and_measure(
        &mut self,
        leader: usize,
        term: u64,
        timeout: Duration,
    ) -> anyhow::Result<Failover> {
        let survivors: Vec<usize> = (1..=self.voters).filter(|k| *k != leader).collect();
        let urls: Vec<(usize, String)> = survivors.iter().map(|&k| (k, self.api(k))).collect();
        let netns = self.client_netns();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        let (kill_tx, kill_rx) = std::sync::mpsc::channel::<Instant>();
        let poller = std::thread::spawn(move || -> anyhow::Result<Failover> {
            enter_netns(&netns)?;
            let apis = urls
                .iter()
                .map(|(k, u)| Ok((*k, Api::new(u, Duration::from_millis(300))?)))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let _ = ready_tx.send(());
            let killed = kill_rx.recv()?;
            let mut elected: Option<(usize, u64, Duration)> = None;
            loop {
                let mut named = Vec::new();
                for (k, api) in &apis {
                    let s = api.status().ok();
                    let t = s.as_ref().and_then(|s| s["term"].as_u64()).unwrap_or(0);
                    if elected.is_none()
                        && s.as_ref().is_some_and(|s| s["state"] == "leader")
                        && t > term
                    {
                        elected = Some((*k, t, killed.elapsed()));
                    }
                    named.push(s.and_then(|s| s["leader"].as_u64()));
                }
                if let Some((new_leader, term, elected)) = elected
                    && named.iter().all(|l| *l == Some(new_leader as u64))
                {
                    return Ok(Failover {
                        new_leader,
                        term,
                        elected,
                        agreed: killed.elapsed(),
                    });
                }
                anyhow::ensure!(
                    killed.elapsed() < timeout,
                    "no new leader agreed within {timeout:?} (elected: {elected:?}, named: {named:?})"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        ready_rx.recv()?;
        self.kill(leader)?;
        kill_tx.send(Instant::now())?;
        poller
            .join()
            .map_err(|_| anyhow::anyhow!("failover poller panicked"))?
    }

    /// SIGTERMs voter `k` and waits for it to exit.
    pub fn terminate(&mut self, k: usize) -> anyhow::Result<()> {
        faults::sigterm(self.process(k)?)?;
        self.procs[k - 1] = None;
        Ok(())
    }

    /// Voter `k`'s log, for failure messages.
    pub fn log_tail(&self, k: usize) -> String {
        let Some(p) = &self.procs[k - 1] else {
            return String::new();
        };
        let text = std::fs::read_to_string(&p.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// The client host's namespace; threads that talk to the voters enter it first
    /// ([`VoterLab::enter_client`]).
    pub fn client_netns(&self) -> String {
        self.netns("client")
    }

    /// Moves the calling thread onto the client host (clients must be built afterwards: the
    /// blocking client's worker thread is created in the namespace of its creator).
    pub fn enter_client(&self) -> anyhow::Result<()> {
        enter_netns(&self.client_netns())?;
        Ok(())
    }

    /// Voter `k`'s status, asked from the client host (the calling thread must be there).
    pub fn status(&self, k: usize) -> anyhow::Result<serde_json::Value> {
        Ok(Api::new(&self.api(k), Duration::from_millis(500))?.status()?)
    }

    /// Waits until every voter in `ids` names the same leader, itself in `ids` and saying it
    /// leads; returns it and its term. The calling thread must be on the client host.
    pub fn wait_leader(&self, ids: &[usize], timeout: Duration) -> anyhow::Result<(usize, u64)> {
        let on_client = std::thread::scope(|s| {
            s.spawn(|| -> anyhow::Result<(usize, u64)> {
                self.enter_client()?;
                let deadline = Instant::now() + timeout;
                let mut last = Vec::new();
                loop {
                    if let Some(l) = self.agreed_leader(ids, &mut last) {
                        return Ok(l);
                    }
                    if Instant::now() > deadline {
                        bail!("no agreed leader among {ids:?} within {timeout:?}: {last:?}");
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
            .join()
        });
        on_client.map_err(|_| anyhow::anyhow!("leader poller panicked"))?
    }

    /// The leader every voter in `ids` names now, if they agree (the calling thread must be on
    /// the client host); `seen` gets what each said.
    pub fn agreed_leader(
        &self,
        ids: &[usize],
        seen: &mut Vec<Option<u64>>,
    ) -> Option<(usize, u64)> {
        seen.clear();
        let mut term = 0;
        for &k in ids {
            let s = self.status(k).ok();
            seen.push(s.as_ref().and_then(|s| s["leader"].as_u64()));
            if let Some(s) = s
                && s["state"] == "leader"
            {
                term = s["term"].as_u64().unwrap_or(0);
            }
        }
        match seen.first() {
            Some(Some(l))
                if seen.iter().all(|x| *x == Some(*l))
                    && ids.contains(&(*l as usize))
                    && term > 0 =>
            {
                Some((*l as usize, term))
            }
            _ => None,
        }
    }
}

impl Drop for VoterLab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for k in 1..=self.voters {
                eprintln!("--- voter {k} log tail ---\n{}", self.log_tail(k));
            }
        }
        let _ = Lab::down(self.lab.name());
    }
}
