//! [`Matrix`]: the result of probing every ordered pair of distinct pods, and its grid rendering.

use std::collections::HashMap;
use std::fmt::Write;
use std::net::IpAddr;

use palisade_workload::{Outcome, Protocol};
use serde::{Deserialize, Serialize};

/// One probed pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairResult {
    /// Source pod.
    pub from: String,
    /// Destination pod.
    pub to: String,
    /// Destination pod IP.
    pub to_ip: IpAddr,
    /// True iff the server's reply came back.
    pub reachable: bool,
    /// How the probe ended.
    pub result: Outcome,
    /// Round-trip time when reachable.
    pub rtt_us: Option<u64>,
    /// The reply line or what went wrong.
    pub detail: String,
}

/// Every ordered pair of distinct pods, probed on one port and protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Matrix {
    /// Port probed.
    pub port: u16,
    /// Protocol probed.
    pub protocol: Protocol,
    /// True iff every pair is reachable.
    pub all_reachable: bool,
    /// Pairs in row order (from), then column order (to).
    pub pairs: Vec<PairResult>,
}

/// Grid cell symbols; the legend printed under the grid.
pub const LEGEND: &str =
    "legend: ok = reachable, TO = timeout, RF = refused, UN = unreachable, ER = error, -- = self";

fn symbol(o: Outcome) -> &'static str {
    match o {
        Outcome::Ok => "ok",
        Outcome::Timeout => "TO",
        Outcome::Refused => "RF",
        Outcome::Unreachable => "UN",
        Outcome::Error => "ER",
    }
}

// === impl Matrix ===

impl Matrix {
    /// Builds a matrix from pairs.
    pub fn new(port: u16, protocol: Protocol, pairs: Vec<PairResult>) -> Self {
        let all_reachable = pairs.iter().all(|p| p.reachable);
        Matrix {
            port,
            protocol,
            all_reachable,
            pairs,
        }
    }

    /// The pairs that are not reachable.
    pub fn unreachable(&self) -> impl Iterator<Item = &PairResult> {
        self.pairs.iter().filter(|p| !p.reachable)
    }

    /// The result for one pair.
    pub fn get(&self, from: &str, to: &str) -> Option<&PairResult> {
        self.pairs.iter().find(|p| p.from == from && p.to == to)
    }

    /// The summary line: `30/30 pairs reachable` or the count plus the failing pairs.
    pub fn summary(&self) -> String {
        let total = self.pairs.len();
        let ok = self.pairs.iter().filter(|p| p.reachable).count();
        let mut s = format!(
            "summary: {ok}/{total} pairs reachable ({} {})",
            self.protocol, self.port
        );
        if ok < total {
            let bad: Vec<String> = self
                .unreachable()
                .map(|p| format!("{}->{} {}", p.from, p.to, p.result))
                .collect();
            let _ = write!(s, "; not reachable: {}", bad.join(", "));
        }
        s
    }

    /// The grid: rows are sources, columns destinations, in `pods` order; then legend and summary.
    pub fn grid(&self, pods: &[String]) -> String {
        let cells: HashMap<(&str, &str), Outcome> = self
            .pairs
            .iter()
            .map(|p| ((p.from.as_str(), p.to.as_str()), p.result))
            .collect();
        let head = "from \\ to";
        let w0 = pods
            .iter()
            .map(String::len)
            .chain([head.len()])
            .max()
            .unwrap_or(0);
        let mut out = format!("{head:<w0$}");
        for to in pods {
            let _ = write!(out, "  {to:>w$}", w = to.len().max(2));
        }
        out.push('\n');
        for from in pods {
            let _ = write!(out, "{from:<w0$}");
            for to in pods {
                let sym = if from == to {
                    "--"
                } else {
                    cells
                        .get(&(from.as_str(), to.as_str()))
                        .map(|o| symbol(*o))
                        .unwrap_or("  ")
                };
                let _ = write!(out, "  {sym:>w$}", w = to.len().max(2));
            }
            out.push('\n');
        }
        out.push_str(LEGEND);
        out.push('\n');
        out.push_str(&self.summary());
        out.push('\n');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(from: &str, to: &str, result: Outcome) -> PairResult {
        PairResult {
            from: from.into(),
            to: to.into(),
            to_ip: "10.200.1.11".parse().unwrap(),
            reachable: result == Outcome::Ok,
            result,
            rtt_us: None,
            detail: String::new(),
        }
    }

    #[test]
    fn grid_and_summary() {
        let m = Matrix::new(
            80,
            Protocol::Tcp,
            vec![
                pair("a", "b", Outcome::Ok),
                pair("b", "a", Outcome::Timeout),
            ],
        );
        assert!(!m.all_reachable);
        let g = m.grid(&["a".into(), "b".into()]);
        let lines: Vec<&str> = g.lines().collect();
        assert_eq!(lines[0], "from \\ to   a   b");
        assert_eq!(lines[1], "a          --  ok");
        assert_eq!(lines[2], "b          TO  --");
        assert_eq!(lines[3], LEGEND);
        assert_eq!(
            lines[4],
            "summary: 1/2 pairs reachable (tcp 80); not reachable: b->a timeout"
        );
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["all_reachable"], false);
        assert_eq!(v["pairs"][1]["result"], "timeout");
        assert_eq!(v["protocol"], "tcp");
    }
}
