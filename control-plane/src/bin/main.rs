//! `palisade-controlplane`: one member of the Palisade control plane, or `certs` to manage its
//! certificates. Everything lives in [`palisade_control_plane::daemon`].
#![forbid(unsafe_code)]

use clap::Parser;
use palisade_control_plane::daemon::{Args, main_with};

fn main() -> std::process::ExitCode {
    main_with(Args::parse())
}
