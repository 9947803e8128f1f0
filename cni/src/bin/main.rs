//! The `palisade-cni` executable: reads the `CNI_*` environment and stdin, runs the plugin,
//! prints its result or error on stdout, and exits 0 on success, 1 on error. Logs go to stderr.

use std::io::{Read, Write};
use std::process::ExitCode;

use palisade_cni::agent::UnixAgent;
use palisade_cni::env::CniEnv;
use palisade_cni::runner::System;

/// The largest network config read from stdin.
const MAX_STDIN_BYTES: u64 = 4 << 20;

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let read = std::io::stdin()
        .take(MAX_STDIN_BYTES)
        .read_to_end(&mut stdin)
        .map(|_| stdin);
    let outcome = palisade_cni::run(CniEnv::from_process(), read, &System, UnixAgent::new);
    let (text, code) = match outcome {
        Ok(text) => (text, ExitCode::SUCCESS),
        Err(reply) => {
            eprintln!("palisade-cni: error {}: {}", reply.code, reply.msg);
            let text = serde_json::to_string(&reply).unwrap_or_else(|_| {
                format!(
                    r#"{{"cniVersion":"1.0.0","code":{},"msg":"unencodable error"}}"#,
                    reply.code
                )
            });
            (text, ExitCode::FAILURE)
        }
    };
    let mut out = std::io::stdout().lock();
    if !text.is_empty() {
        // A runtime that closed our stdout has stopped listening; nothing more to do.
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    }
    code
}
