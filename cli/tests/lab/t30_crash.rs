use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use palisade_lab::state::state_file;
use palisade_lab::{Lab, LabState, Phase};

use crate::util::{Cleanup, bin, down_and_assert_gone, lab_name};

#[test]
fn down_cleans_up_after_lab_up_is_killed_midway() {
    let name = lab_name("sigkill");
    let _ = Lab::down(&name);
    let _cleanup = Cleanup(name.clone());
    let mut up = Command::new(bin())
        .args([
            "lab",
            "up",
            "--name",
            &name,
            "--nodes",
            "3",
            "--pods-per-node",
            "30",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it as soon as the first pod namespace exists: nodes and the fabric are built, pods
    // are being built.
    let first_pod = format!("/run/netns/pal-{name}-n1-p1");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !Path::new(&first_pod).exists() {
        assert!(
            Instant::now() < deadline,
            "lab up never created {first_pod}"
        );
        assert!(
            up.try_wait().unwrap().is_none(),
            "lab up exited before it could be killed"
        );
        thread::sleep(Duration::from_millis(5));
    }
    up.kill().unwrap(); // SIGKILL
    up.wait().unwrap();

    // The intent was on disk before the first namespace, and it says `up` did not finish.
    let st = LabState::load(&name).unwrap();
    assert_eq!(st.phase, Phase::Creating);
    assert!(Path::new(&state_file(&name)).exists());

    down_and_assert_gone(&name, &st.processes);
}
