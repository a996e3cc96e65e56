//! The user-space WAN emulator (placeholder while the client and server land).
use anyhow::Result;
use clap::Args;

#[derive(Args)]
pub struct WanArgs {}

pub fn main(_a: WanArgs) -> Result<i32> {
    anyhow::bail!("not yet")
}
