//! The benchmark's fake OpenAI-compatible upstream on its own port (see `openclaw_bench::upstream`).

use std::sync::Arc;

use axum::serve::ListenerExt as _;
use clap::Parser;
use openclaw_bench::upstream::{Settings, SettingsPatch, router};

#[derive(Parser)]
#[command(about = "A fast fake OpenAI-compatible chat-completions server for benchmarks")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Wait before answering (streamed: before the first token), µs.
    #[arg(long, default_value_t = 0)]
    delay_us: u64,
    /// Tokens in a streamed answer.
    #[arg(long, default_value_t = 20)]
    tokens: u64,
    /// Wait between streamed tokens, µs.
    #[arg(long, default_value_t = 1000)]
    token_interval_us: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let settings = Arc::new(Settings::new(SettingsPatch {
        delay_us: args.delay_us,
        tokens: args.tokens,
        token_interval_us: args.token_interval_us,
    }));
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    println!("fake upstream listening on {}", listener.local_addr()?);
    // Every reply is small writes (a stream's chunks): without TCP_NODELAY, Nagle holds each
    // chunk after the first until the client's delayed ACK, ~40 ms later.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router(settings)).await?;
    Ok(())
}
