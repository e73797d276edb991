#[tokio::main]
async fn main() -> anyhow::Result<()> {
    openclaw_gateway::cli::run().await
}
