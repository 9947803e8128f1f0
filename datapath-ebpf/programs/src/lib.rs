//! Host-side placeholder: the programs live in `main.rs` and only build for the BPF target.
#![no_std]
